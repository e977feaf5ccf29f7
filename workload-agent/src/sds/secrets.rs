//! The Secrets of one answer, built from what the caller holds ([`Snapshot`]) for the names it
//! asked for ([`Requested`]), in SPIRE's shapes:
//!
//! - an X.509-SVID: `tls_certificate` with `certificate_chain` (PEM, leaf first) and
//!   `private_key` (PKCS#8 PEM), both inline;
//! - one trust domain's bundle: `validation_context` with `trusted_ca` (PEM) or, per
//!   [`ValidationMode`], `custom_validator_config` = `envoy.tls.cert_validator.spiffe` with a
//!   `SPIFFECertValidatorConfig` naming that trust domain and its bundle;
//! - `ALL`: `validation_context` with the SPIFFE validator naming every bundle the caller is
//!   entitled to, sorted by trust domain (always the validator: `trusted_ca` cannot keep trust
//!   domains apart; SPIRE refuses `ALL` to an Envoy it would give `trusted_ca`).
//!
//! Order: the own bundle (by trust domain ID, `ROOTCA`, `ALL`), federated bundles, then
//! certificates (by SPIFFE ID, `default`). Names that match nothing the caller holds are
//! refused as SPIRE refuses them; an identity it is entitled to but does not hold yet is
//! temporary (`Unavailable`).
//!
//! Key material: the private key's PEM is only ever in buffers wiped on drop here
//! ([`Resources`] wipes its encoded Secrets); the copy handed to tonic for sending is not (as
//! with the Workload API). envoy-types' generated `Debug` prints every byte of a message, the
//! key included: never log a Secret, a `DiscoveryResponse` or an `Any` holding one.
//! [`Resources`]' own `Debug` prints names only.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::Any;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain, X509Svid};
use prost::{Message as _, Name as _};
use zeroize::Zeroize as _;

use super::names::{ALL_BUNDLES_NAME, DEFAULT_SVID_NAME, ROOT_CA_NAME, Requested};
use super::node::ValidationMode;
use super::refusal::SdsRefusal;
use crate::identities::{Entitlement, IdentityError};

/// The name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// `type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret`, the one type served.
pub fn secret_type_url() -> String {
    Secret::type_url()
}

/// What the caller holds, at one moment.
pub struct Snapshot<'a> {
    /// Its identities, default first.
    pub entitlements: &'a [Entitlement],
    /// The X.509-SVIDs held for them, in their order (empty when none was asked for).
    pub svids: &'a [Arc<X509Svid>],
    /// Every bundle it is entitled to (`crate::identities::bundles_for`).
    pub bundles: &'a BundleSet,
}

/// The Secrets of one answer, encoded as `Any`s, wiped on drop; comparable, so a stream
/// tells a changed answer from the same one.
#[derive(Default, PartialEq)]
pub struct Resources {
    names: Vec<String>,
    items: Vec<Any>,
}

impl Resources {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A copy of the encoded Secrets, for a `DiscoveryResponse`.
    pub fn to_any(&self) -> Vec<Any> {
        self.items.clone()
    }

    fn push(&mut self, mut secret: Secret) {
        self.items.push(Any {
            type_url: secret_type_url(),
            value: secret.encode_to_vec(),
        });
        self.names.push(std::mem::take(&mut secret.name));
        wipe(&mut secret);
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        for item in &mut self.items {
            item.value.zeroize();
        }
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Wipes the private key a Secret may hold.
fn wipe(secret: &mut Secret) {
    if let Some(secret::Type::TlsCertificate(tls)) = &mut secret.r#type
        && let Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(key)),
            ..
        }) = &mut tls.private_key
    {
        key.zeroize();
    }
}

/// Which requested names are still unanswered.
struct Wanted {
    everything: bool,
    left: BTreeSet<String>,
}

impl Wanted {
    /// Whether `name` is asked for, by name or by asking for everything.
    fn take(&mut self, name: &str) -> bool {
        self.left.remove(name) || self.everything
    }

    /// Whether `name` is asked for by name (aliases are never part of "everything").
    fn take_named(&mut self, name: &str) -> bool {
        self.left.remove(name)
    }
}

/// The Secrets answering `requested` from `snapshot`.
pub fn build(
    requested: &Requested,
    snapshot: &Snapshot<'_>,
    mode: ValidationMode,
) -> Result<Resources, SdsRefusal> {
    let default = snapshot
        .entitlements
        .first()
        .ok_or(SdsRefusal::NoIdentity)?;
    let own_domain = default.spiffe_id.trust_domain();
    let mut wanted = match requested {
        Requested::Everything => Wanted {
            everything: true,
            left: BTreeSet::new(),
        },
        Requested::Names(names) => Wanted {
            everything: false,
            left: names.clone(),
        },
    };
    let mut out = Resources::default();

    let own_id = own_domain.id_string();
    for (name, asked) in [
        (own_id.as_str(), wanted.take(&own_id)),
        (ROOT_CA_NAME, wanted.take_named(ROOT_CA_NAME)),
    ] {
        if asked {
            let own = x509_bundle(snapshot.bundles, own_domain)?;
            out.push(bundle_secret(name, own, mode));
        }
    }
    if wanted.take_named(ALL_BUNDLES_NAME) {
        // The own bundle must be there; others without X.509 authorities are left out.
        x509_bundle(snapshot.bundles, own_domain)?;
        let all = snapshot
            .bundles
            .iter()
            .filter(|b| !b.x509_authorities().is_empty());
        out.push(all_bundles_secret(ALL_BUNDLES_NAME, all));
    }
    for bundle in snapshot.bundles.iter() {
        let domain = bundle.trust_domain();
        // One without X.509 authorities stays unanswered: refused below if named.
        if domain == own_domain || bundle.x509_authorities().is_empty() {
            continue;
        }
        let id = domain.id_string();
        if wanted.take(&id) {
            out.push(bundle_secret(&id, bundle, mode));
        }
    }
    for svid in snapshot.svids {
        let id = svid.spiffe_id().to_string();
        if wanted.take(&id) {
            out.push(tls_secret(&id, svid)?);
        }
    }
    if let Some(first) = snapshot.svids.first()
        && wanted.take_named(DEFAULT_SVID_NAME)
    {
        out.push(tls_secret(DEFAULT_SVID_NAME, first)?);
    }
    if wanted.left.is_empty() {
        return Ok(out);
    }
    // Entitled to, but not held (yet): temporary. Anything else: not this caller's.
    let entitled_not_held = wanted.left.iter().any(|name| {
        name == DEFAULT_SVID_NAME
            || snapshot
                .entitlements
                .iter()
                .any(|e| e.spiffe_id.to_string() == *name)
    });
    if entitled_not_held {
        return Err(SdsRefusal::Identity(IdentityError::NotReady(
            "the X.509-SVID asked for is not issued yet".to_owned(),
        )));
    }
    if let Some(domain) = wanted.left.iter().find_map(|name| {
        snapshot
            .bundles
            .iter()
            .find(|b| b.trust_domain().id_string() == *name)
    }) {
        return Err(SdsRefusal::NoBundle {
            trust_domain: domain.trust_domain().id_string(),
        });
    }
    Err(SdsRefusal::NotAuthorized {
        names: wanted.left.into_iter().collect(),
    })
}

/// `domain`'s bundle, if it has X.509 authorities.
fn x509_bundle<'b>(
    bundles: &'b BundleSet,
    domain: &TrustDomain,
) -> Result<&'b TrustBundle, SdsRefusal> {
    bundles
        .get(domain)
        .filter(|b| !b.x509_authorities().is_empty())
        .ok_or_else(|| SdsRefusal::NoBundle {
            trust_domain: domain.id_string(),
        })
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        watched_directory: None,
    })
}

fn validation_secret(name: &str, context: CertificateValidationContext) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

/// One trust domain's bundle, as `mode` writes it.
fn bundle_secret(name: &str, bundle: &TrustBundle, mode: ValidationMode) -> Secret {
    let context = match mode {
        ValidationMode::TrustedCa => CertificateValidationContext {
            trusted_ca: inline(bundle.x509_authorities_pem().into_bytes()),
            ..CertificateValidationContext::default()
        },
        ValidationMode::SpiffeValidator => spiffe_validator([bundle]),
    };
    validation_secret(name, context)
}

fn all_bundles_secret<'b>(
    name: &str,
    bundles: impl IntoIterator<Item = &'b TrustBundle>,
) -> Secret {
    validation_secret(name, spiffe_validator(bundles))
}

/// A validation context with the SPIFFE validator naming `bundles`' trust domains (bare
/// names, as Envoy wants them) with their CA certificates.
fn spiffe_validator<'b>(
    bundles: impl IntoIterator<Item = &'b TrustBundle>,
) -> CertificateValidationContext {
    let config = SpiffeCertValidatorConfig {
        trust_domains: bundles
            .into_iter()
            .map(|b| spiffe_cert_validator_config::TrustDomain {
                name: b.trust_domain().name().to_owned(),
                trust_bundle: inline(b.x509_authorities_pem().into_bytes()),
                workload_trust_domain: String::new(),
            })
            .collect(),
        trust_bundles: None,
    };
    CertificateValidationContext {
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR.to_owned(),
            typed_config: Some(Any {
                type_url: SpiffeCertValidatorConfig::type_url(),
                value: config.encode_to_vec(),
            }),
        }),
        ..CertificateValidationContext::default()
    }
}

/// An X.509-SVID with its key, named `name`.
fn tls_secret(name: &str, svid: &X509Svid) -> Result<Secret, SdsRefusal> {
    let key = svid
        .private_key_pkcs8()
        .ok_or_else(|| SdsRefusal::SvidWithoutKey {
            spiffe_id: svid.spiffe_id().to_string(),
        })?;
    let key_pem = lanyard_svid::pem::encode_private_key(key);
    let chain_pem = lanyard_svid::pem::encode_certificates(svid.chain());
    Ok(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem.into_bytes()),
            private_key: inline(key_pem.as_bytes().to_vec()),
            ..TlsCertificate::default()
        })),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SpiffeCertValidatorConfig;
    use lanyard_svid::{Issuer, KeyAlgorithm, KeyAndCsr, RootCa, SpiffeId, VerifiedCsr};

    use super::*;

    struct Pki {
        root: RootCa,
        issuer: Issuer,
        partner: RootCa,
    }

    impl Pki {
        fn new() -> Self {
            let now = SystemTime::now();
            let day = Duration::from_secs(86400);
            let root =
                RootCa::generate(&TrustDomain::new("example.org").unwrap(), day, now).unwrap();
            let issuer = root.issue_intermediate(day / 2, now).unwrap();
            let partner =
                RootCa::generate(&TrustDomain::new("partner.test").unwrap(), day, now).unwrap();
            Self {
                root,
                issuer,
                partner,
            }
        }

        fn svid(&self, path: &str) -> Arc<X509Svid> {
            let id = SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap();
            let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
            let signed = self
                .issuer
                .sign_x509_svid(&csr, &id, Duration::from_secs(3600), SystemTime::now())
                .unwrap();
            Arc::new(X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap())
        }

        fn bundles(&self, federated: bool) -> BundleSet {
            let mut set = BundleSet::from(TrustBundle::from_x509_authorities(
                self.root.trust_domain().clone(),
                [self.root.cert_der().clone()],
            ));
            if federated {
                set.insert(TrustBundle::from_x509_authorities(
                    self.partner.trust_domain().clone(),
                    [self.partner.cert_der().clone()],
                ));
            }
            set
        }
    }

    fn entitlement(svid: &X509Svid) -> Entitlement {
        Entitlement {
            spiffe_id: svid.spiffe_id().clone(),
            workload: Default::default(),
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }
    }

    fn names(list: &[&str]) -> Requested {
        Requested::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn secrets(resources: &Resources) -> Vec<Secret> {
        resources
            .to_any()
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, secret_type_url());
                Secret::decode(any.value.as_slice()).unwrap()
            })
            .collect()
    }

    fn inline_bytes(source: &Option<DataSource>) -> &[u8] {
        match source {
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(bytes)),
                ..
            }) => bytes,
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    fn validator_domains(secret: &Secret) -> Vec<(String, Vec<u8>)> {
        let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
            panic!("not a validation context");
        };
        assert!(context.trusted_ca.is_none());
        let custom = context.custom_validator_config.as_ref().unwrap();
        assert_eq!(custom.name, SPIFFE_VALIDATOR);
        let any = custom.typed_config.as_ref().unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
        );
        SpiffeCertValidatorConfig::decode(any.value.as_slice())
            .unwrap()
            .trust_domains
            .into_iter()
            .map(|td| (td.name, inline_bytes(&td.trust_bundle).to_vec()))
            .collect()
    }

    #[test]
    fn default_and_rootca_as_spire_names_them() {
        let pki = Pki::new();
        let (web, db) = (pki.svid("/web"), pki.svid("/db"));
        let svids = [web.clone(), db.clone()];
        let entitlements = [entitlement(&web), entitlement(&db)];
        let bundles = pki.bundles(false);
        let snapshot = Snapshot {
            entitlements: &entitlements,
            svids: &svids,
            bundles: &bundles,
        };
        let built = build(
            &names(&["default", "ROOTCA", "spiffe://example.org/db"]),
            &snapshot,
            ValidationMode::TrustedCa,
        )
        .unwrap();
        assert_eq!(
            built.names(),
            ["ROOTCA", "spiffe://example.org/db", "default"]
        );
        let secrets = secrets(&built);
        let Some(secret::Type::ValidationContext(context)) = &secrets[0].r#type else {
            panic!("ROOTCA is a validation context");
        };
        assert_eq!(
            inline_bytes(&context.trusted_ca),
            bundles
                .iter()
                .next()
                .unwrap()
                .x509_authorities_pem()
                .as_bytes()
        );
        for (secret, svid) in [(&secrets[1], &db), (&secrets[2], &web)] {
            let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
                panic!("a TLS certificate");
            };
            assert_eq!(
                inline_bytes(&tls.certificate_chain),
                lanyard_svid::pem::encode_certificates(svid.chain()).as_bytes()
            );
            assert_eq!(
                inline_bytes(&tls.private_key),
                lanyard_svid::pem::encode_private_key(svid.private_key_pkcs8().unwrap()).as_bytes()
            );
        }
        // Debug names the resources and prints nothing of the key.
        assert_eq!(
            format!("{built:?}"),
            "Resources { names: [\"ROOTCA\", \"spiffe://example.org/db\", \"default\"], .. }"
        );
    }

    #[test]
    fn everything_and_all_and_the_spiffe_validator() {
        let pki = Pki::new();
        let web = pki.svid("/web");
        let svids = [web.clone()];
        let entitlements = [entitlement(&web)];
        let bundles = pki.bundles(true);
        let snapshot = Snapshot {
            entitlements: &entitlements,
            svids: &svids,
            bundles: &bundles,
        };
        let everything = build(
            &Requested::Everything,
            &snapshot,
            ValidationMode::SpiffeValidator,
        )
        .unwrap();
        assert_eq!(
            everything.names(),
            [
                "spiffe://example.org",
                "spiffe://partner.test",
                "spiffe://example.org/web"
            ]
        );
        let secrets_of_everything = secrets(&everything);
        assert_eq!(
            validator_domains(&secrets_of_everything[1]),
            [(
                "partner.test".to_owned(),
                pki.bundles(true)
                    .iter()
                    .nth(1)
                    .unwrap()
                    .x509_authorities_pem()
                    .into_bytes()
            )]
        );

        // ALL: the validator with every entitled bundle, sorted, whatever the mode.
        let all = build(&names(&["ALL"]), &snapshot, ValidationMode::TrustedCa).unwrap();
        let domains: Vec<String> = validator_domains(&secrets(&all)[0])
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(domains, ["example.org", "partner.test"]);

        // A per-domain name for a domain not entitled: refused as SPIRE refuses it.
        let own_only = pki.bundles(false);
        let snapshot = Snapshot {
            bundles: &own_only,
            ..snapshot
        };
        match build(
            &names(&["spiffe://partner.test"]),
            &snapshot,
            ValidationMode::TrustedCa,
        ) {
            Err(SdsRefusal::NotAuthorized { names }) => {
                assert_eq!(names, ["spiffe://partner.test"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_and_not_yet_held_names() {
        let pki = Pki::new();
        let web = pki.svid("/web");
        let entitlements = [entitlement(&web)];
        let bundles = pki.bundles(false);
        let held = [web.clone()];
        let snapshot = Snapshot {
            entitlements: &entitlements,
            svids: &held,
            bundles: &bundles,
        };
        match build(
            &names(&["default", "spiffe://example.org/other", "bogus"]),
            &snapshot,
            ValidationMode::TrustedCa,
        ) {
            Err(SdsRefusal::NotAuthorized { names }) => {
                assert_eq!(names, ["bogus", "spiffe://example.org/other"])
            }
            other => panic!("{other:?}"),
        }
        // Entitled, but the SVID is not there (yet): temporary.
        let none_held = Snapshot {
            svids: &[],
            ..snapshot
        };
        for name in ["default", "spiffe://example.org/web"] {
            let refusal =
                build(&names(&[name]), &none_held, ValidationMode::TrustedCa).unwrap_err();
            assert!(!refusal.ends_stream(), "{name}: {refusal:?}");
        }
        // No own bundle yet: temporary too.
        let empty = BundleSet::new();
        let no_bundle = Snapshot {
            bundles: &empty,
            ..snapshot
        };
        let refusal =
            build(&names(&["ROOTCA"]), &no_bundle, ValidationMode::TrustedCa).unwrap_err();
        assert!(
            matches!(refusal, SdsRefusal::NoBundle { .. }),
            "{refusal:?}"
        );
        assert!(!refusal.ends_stream());
        // No identity at all.
        let nobody = Snapshot {
            entitlements: &[],
            ..snapshot
        };
        assert!(matches!(
            build(&Requested::Everything, &nobody, ValidationMode::TrustedCa),
            Err(SdsRefusal::NoIdentity)
        ));
    }
}
