//! When a root or intermediate is close enough to its end to warn: `lanyard check` and
//! `lanyard ca status` warn [`WARN_BEFORE_SECS`] (60 days) ahead, time enough to issue a new
//! intermediate or run a root rotation through all its phases.

use crate::report::CertSummary;

/// 60 days.
pub const WARN_BEFORE_SECS: i64 = 60 * 86_400;

/// How close a certificate is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryStatus {
    Ok,
    /// Within [`WARN_BEFORE_SECS`] of expiry.
    Soon {
        days_left: i64,
    },
    Expired,
}

impl std::fmt::Display for ExpiryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Soon { .. } => "expires_soon",
            Self::Expired => "expired",
        })
    }
}

/// The status of a certificate ending at `not_after` (Unix seconds), judged at `now`.
pub fn status(not_after: i64, now: i64) -> ExpiryStatus {
    if not_after <= now {
        ExpiryStatus::Expired
    } else if not_after - now <= WARN_BEFORE_SECS {
        ExpiryStatus::Soon {
            days_left: (not_after - now) / 86_400,
        }
    } else {
        ExpiryStatus::Ok
    }
}

/// One line per certificate that is expired or expires within 60 days, naming `kind`
/// ("root", "intermediate") and the certificate; empty when all are fine.
pub fn warnings<'a>(
    certs: impl IntoIterator<Item = (&'static str, &'a CertSummary)>,
    now: i64,
) -> Vec<String> {
    certs
        .into_iter()
        .filter_map(|(kind, cert)| match status(cert.not_after, now) {
            ExpiryStatus::Ok => None,
            ExpiryStatus::Soon { days_left } => Some(format!(
                "{kind} {} ({}) expires in {days_left} days",
                cert.short(),
                cert.subject
            )),
            ExpiryStatus::Expired => Some(format!(
                "{kind} {} ({}) has expired",
                cert.short(),
                cert.subject
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_inside_sixty_days_and_not_before() {
        let now = 1_000_000_000;
        assert_eq!(status(now + WARN_BEFORE_SECS + 1, now), ExpiryStatus::Ok);
        assert_eq!(
            status(now + WARN_BEFORE_SECS, now),
            ExpiryStatus::Soon { days_left: 60 }
        );
        assert_eq!(status(now, now), ExpiryStatus::Expired);
        let cert = |not_after| CertSummary {
            fingerprint: "0123456789abcdef0123".into(),
            subject: "CN=x".into(),
            not_after,
        };
        let (far, near) = (cert(now + 400 * 86_400), cert(now + 3 * 86_400));
        let lines = warnings([("root", &far), ("intermediate", &near)], now);
        assert_eq!(
            lines,
            ["intermediate 0123456789abcdef (CN=x) expires in 3 days"]
        );
    }
}
