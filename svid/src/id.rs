//! SPIFFE IDs and trust domains (the SPIFFE-ID standard).
//!
//! Parsing is lenient exactly where the standard allows (scheme and trust domain compare
//! case-insensitively on input, so they are lowercased), and strict everywhere else. IDs we
//! *generate* go through [`SpiffeId::new`], which refuses uppercase in the trust domain instead
//! of silently fixing it, so a template bug surfaces rather than minting a surprising ID.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID we accept or produce, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error(
        "trust domain has the character {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// A trust domain name given as a URI (`spiffe://example.org`) where a bare name is asked
    /// for; holds the name to write instead when one can be made out.
    #[error("give the trust domain name without the scheme{}", instead(.0))]
    TrustDomainScheme(Option<String>),
    /// Uppercase in a trust domain we are about to generate; holds the lowercase name.
    #[error("trust domain names are lowercase: {0}")]
    UppercaseTrustDomain(String),
    /// A port, userinfo, path, query or fragment in a trust domain name (`what` says which).
    #[error("a trust domain name has no {what}{}", instead(.suggestion))]
    TrustDomainNameExtra {
        what: &'static str,
        suggestion: Option<String>,
    },
    #[error("SPIFFE ID must not contain a port, userinfo, query or fragment")]
    Authority,
    #[error("path has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment,
    #[error("path has a \".\" or \"..\" segment")]
    DotSegment,
    #[error("path has the character {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    #[error("a trust domain ID has no path")]
    NotTrustDomainId,
    #[error("path segment is not a valid segment: {0:?}")]
    BadSegment(String),
}

/// A trust domain name, e.g. `example.org`. Always lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`); uppercase is folded, as the standard asks of input.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if strip_scheme(input).is_ok() {
            let id = SpiffeId::parse(input)?;
            if !id.is_trust_domain_id() {
                return Err(IdError::NotTrustDomainId);
            }
            return Ok(id.trust_domain);
        }
        check_bare_name(input)?;
        Self::from_name(&input.to_ascii_lowercase())
    }

    /// Builds a trust domain we are about to *generate* into certificates, from a bare name
    /// (`example.org`, as a `--trust-domain` flag gives it): uppercase is refused, not folded,
    /// and so is a URI; each refusal names the trust domain to write instead.
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.contains("://") {
            return Err(IdError::TrustDomainScheme(suggest_name(name)));
        }
        check_bare_name(name)?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            // Another problem with the name comes first: lowercase alone would not fix it.
            let lower = Self::from_name(&name.to_ascii_lowercase())?;
            return Err(IdError::UppercaseTrustDomain(lower.0));
        }
        Self::from_name(name)
    }

    fn from_name(name: &str) -> Result<Self, IdError> {
        if name.is_empty() {
            return Err(IdError::MissingTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(IdError::TrustDomainTooLong);
        }
        // A port, userinfo, query or fragment in the authority part.
        if name.contains([':', '@', '?', '#']) {
            return Err(IdError::Authority);
        }
        if let Some(c) = name.chars().find(|&c| !is_trust_domain_char(c)) {
            return Err(IdError::BadTrustDomainChar(c));
        }
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://example.org`: the key of bundle maps in the
    /// Workload API.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// The SPIFFE ID `spiffe://<td><path>`; `path` must start with `/` or be empty.
    pub fn id(&self, path: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::new(self.clone(), path)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

impl SpiffeId {
    /// Parses an ID received from elsewhere (a certificate, a request, a config file).
    /// The scheme and trust domain are compared case-insensitively and lowercased.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = strip_scheme(input)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // Query and fragment may sit in the path part too.
        if path.contains(['?', '#']) {
            return Err(IdError::Authority);
        }
        let trust_domain = TrustDomain::from_name(&authority.to_ascii_lowercase())?;
        validate_path(path)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Builds an ID we are about to generate: refuses uppercase in the trust domain (already
    /// guaranteed by [`TrustDomain`]) and any invalid path.
    pub fn new(trust_domain: TrustDomain, path: &str) -> Result<Self, IdError> {
        validate_path(path)?;
        let id = Self {
            trust_domain,
            path: path.to_owned(),
        };
        if id.to_string().len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(id)
    }

    /// Builds an ID from path segments, each checked as one segment (so a `/` inside a
    /// segment value, e.g. from a Kubernetes name, is refused rather than adding depth).
    pub fn from_segments<S: AsRef<str>>(
        trust_domain: TrustDomain,
        segments: &[S],
    ) -> Result<Self, IdError> {
        let mut path = String::new();
        for segment in segments {
            let segment = segment.as_ref();
            if segment.contains('/') || segment.is_empty() {
                return Err(IdError::BadSegment(segment.to_owned()));
            }
            path.push('/');
            path.push_str(segment);
        }
        Self::new(trust_domain, &path)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True for the trust domain's own ID (no path), which never names a workload.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }

    /// The path's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Refuses what a URI has and a bare trust domain name does not (a port, userinfo, path, query
/// or fragment), naming it: `from_name` alone would call them all an authority problem.
fn check_bare_name(name: &str) -> Result<(), IdError> {
    let what = if name.contains('/') {
        "path"
    } else if name.contains(['?', '#']) {
        "query or fragment"
    } else if name.contains('@') {
        "userinfo"
    } else if name.contains(':') {
        "port"
    } else {
        return Ok(());
    };
    Err(IdError::TrustDomainNameExtra {
        what,
        suggestion: suggest_name(name),
    })
}

/// The trust domain name a user most likely meant by `input` (`spiffe://Example.org:8443/x` →
/// `example.org`), if what is left is a valid name.
fn suggest_name(input: &str) -> Option<String> {
    let rest = input.split_once("://").map_or(input, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host.split_once(':').map_or(host, |(host, _)| host);
    let name = host.to_ascii_lowercase();
    TrustDomain::from_name(&name).ok().map(|td| td.0)
}

/// `": example.org"` when there is a name to suggest, else an example of the form.
fn instead(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(": {name}"),
        None => " (e.g. example.org)".to_owned(),
    }
}

/// Strips a case-insensitive `spiffe://`.
fn strip_scheme(input: &str) -> Result<&str, IdError> {
    match input.get(..SCHEME.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(SCHEME) => Ok(&input[SCHEME.len()..]),
        _ => Err(IdError::WrongScheme),
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdError::BadPathChar(path.chars().next().unwrap_or('/')));
    };
    for segment in rest.split('/') {
        match segment {
            "" => return Err(IdError::EmptySegment),
            "." | ".." => return Err(IdError::DotSegment),
            _ => {
                if let Some(c) = segment.chars().find(|&c| !is_path_char(c)) {
                    return Err(IdError::BadPathChar(c));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn parses_and_formats_round_trip() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/web",
            "spiffe://example.org/ns/default/sa/web",
            "spiffe://a-b_c.9/A.b-C_9",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn scheme_and_trust_domain_are_case_insensitive_on_input() {
        let id = SpiffeId::parse("SPIFFE://Example.ORG/Web").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/Web");
        assert_eq!(id.trust_domain().name(), "example.org");
        assert_eq!(
            TrustDomain::parse("Example.org").unwrap(),
            td("example.org")
        );
    }

    #[test]
    fn path_is_case_sensitive() {
        assert_ne!(
            SpiffeId::parse("spiffe://example.org/Web").unwrap(),
            SpiffeId::parse("spiffe://example.org/web").unwrap()
        );
    }

    #[test]
    fn generated_trust_domain_refuses_uppercase() {
        let err = TrustDomain::new("Example.ORG").unwrap_err();
        assert_eq!(err, IdError::UppercaseTrustDomain("example.org".into()));
        assert_eq!(
            err.to_string(),
            "trust domain names are lowercase: example.org"
        );
    }

    /// Each refusal of a bare name says what is wrong and what to write instead.
    #[test]
    fn a_refused_trust_domain_name_says_what_to_write() {
        for (input, message) in [
            (
                "spiffe://example.org",
                "give the trust domain name without the scheme: example.org",
            ),
            (
                "SPIFFE://Example.org/",
                "give the trust domain name without the scheme: example.org",
            ),
            (
                "https://user@Example.org:8443/x?y",
                "give the trust domain name without the scheme: example.org",
            ),
            (
                "spiffe://",
                "give the trust domain name without the scheme (e.g. example.org)",
            ),
            (
                "example.org:8443",
                "a trust domain name has no port: example.org",
            ),
            (
                "admin@example.org",
                "a trust domain name has no userinfo: example.org",
            ),
            (
                "example.org/web",
                "a trust domain name has no path: example.org",
            ),
            (
                "example.org?x",
                "a trust domain name has no query or fragment: example.org",
            ),
        ] {
            let err = TrustDomain::new(input).unwrap_err();
            assert_eq!(err.to_string(), message, "{input}");
        }
        // When lowercase alone would not do, the other problem is named.
        assert_eq!(
            TrustDomain::new("Ex ample.org"),
            Err(IdError::BadTrustDomainChar(' '))
        );
        // Input parsing still folds case and takes the trust domain's ID, and names the problem.
        assert_eq!(
            TrustDomain::parse("spiffe://Example.org").unwrap(),
            td("example.org")
        );
        assert_eq!(
            TrustDomain::parse("Example.org:1").unwrap_err().to_string(),
            "a trust domain name has no port: example.org"
        );
    }

    #[test]
    fn refuses_wrong_scheme() {
        for s in [
            "http://example.org/web",
            "spiffe:/example.org",
            "example.org/web",
            "spiffe:",
        ] {
            assert_eq!(SpiffeId::parse(s), Err(IdError::WrongScheme), "{s}");
        }
    }

    #[test]
    fn refuses_userinfo_port_query_fragment() {
        for s in [
            "spiffe://user@example.org/web",
            "spiffe://example.org:8080/web",
            "spiffe://example.org/web?x=1",
            "spiffe://example.org/web#frag",
            "spiffe://example.org?x",
        ] {
            assert_eq!(SpiffeId::parse(s), Err(IdError::Authority), "{s}");
        }
    }

    #[test]
    fn refuses_bad_trust_domains() {
        assert_eq!(
            SpiffeId::parse("spiffe://"),
            Err(IdError::MissingTrustDomain)
        );
        assert_eq!(
            SpiffeId::parse("spiffe:///web"),
            Err(IdError::MissingTrustDomain)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://exa%6dple.org/web"),
            Err(IdError::BadTrustDomainChar('%'))
        );
        assert_eq!(
            SpiffeId::parse("spiffe://ex ample.org"),
            Err(IdError::BadTrustDomainChar(' '))
        );
        assert_eq!(
            TrustDomain::parse("example.org/"),
            Err(IdError::TrustDomainNameExtra {
                what: "path",
                suggestion: Some("example.org".into())
            })
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org/web"),
            Err(IdError::NotTrustDomainId)
        );
    }

    #[test]
    fn trust_domain_length_limit() {
        let ok = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(TrustDomain::new(&ok).is_ok());
        let long = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(TrustDomain::new(&long), Err(IdError::TrustDomainTooLong));
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{long}")),
            Err(IdError::TrustDomainTooLong)
        );
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/"),
            Err(IdError::EmptySegment)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org//web"),
            Err(IdError::EmptySegment)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/web/"),
            Err(IdError::EmptySegment)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/./web"),
            Err(IdError::DotSegment)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/web/.."),
            Err(IdError::DotSegment)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/we%62"),
            Err(IdError::BadPathChar('%'))
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/w eb"),
            Err(IdError::BadPathChar(' '))
        );
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/wéb"),
            Err(IdError::BadPathChar('é'))
        );
        // Dots inside a segment are fine.
        assert!(SpiffeId::parse("spiffe://example.org/..web/a.b").is_ok());
    }

    #[test]
    fn length_limit_2048_bytes() {
        let prefix = "spiffe://example.org/";
        let exact = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(exact.len(), MAX_ID_LEN);
        assert!(SpiffeId::parse(&exact).is_ok());
        let over = format!("{exact}a");
        assert_eq!(SpiffeId::parse(&over), Err(IdError::TooLong));
        // Never generated longer either.
        let path = format!("/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(
            SpiffeId::new(td("example.org"), &path),
            Err(IdError::TooLong)
        );
    }

    #[test]
    fn generated_paths_are_validated() {
        let t = td("example.org");
        assert!(SpiffeId::new(t.clone(), "/web").is_ok());
        assert_eq!(
            SpiffeId::new(t.clone(), "web"),
            Err(IdError::BadPathChar('w'))
        );
        assert_eq!(
            SpiffeId::from_segments(t.clone(), &["ns", "a/b"]),
            Err(IdError::BadSegment("a/b".into()))
        );
        let id = SpiffeId::from_segments(t, &["ns", "default", "sa", "web"]).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "default", "sa", "web"]
        );
    }

    #[test]
    fn trust_domain_id() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert!(id.is_trust_domain_id());
        assert_eq!(id.trust_domain().id_string(), "spiffe://example.org");
        assert!(
            !SpiffeId::parse("spiffe://example.org/x")
                .unwrap()
                .is_trust_domain_id()
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/web\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/web\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/\"").is_err());
    }
}
