//! Durations in the daemons' options, static entries and LanyardIdentity TTLs (`--x509-ttl 1h`,
//! `x509_ttl = "10m"`, `x509TTL: 1h`, `token generate --ttl 90s`): one parser, one set of bounds.

use std::time::Duration;

/// Parses a duration such as `1h`, `10m`, `90s`; shortest 1 s, longest 1 year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(366 * 24 * 3600) {
        return Err(format!("{text:?}: must be between 1s and 1 year"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_one_second_to_one_year() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(
            parse_duration("500ms")
                .unwrap_err()
                .contains("between 1s and 1 year")
        );
        assert!(
            parse_duration("2years")
                .unwrap_err()
                .contains("between 1s and 1 year")
        );
        assert!(parse_duration("soon").is_err());
    }
}
