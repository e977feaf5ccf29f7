//! CSR-to-SVID signing against its crypto floor, measured in one run (DESIGN.md section 3:
//! in-process signing should reach at least 50% of the bare rate).
//!
//! - `bare_p256_verify_plus_sign`: one ring ECDSA P-256 verify plus one P-256 sign over a
//!   message the size of a CSR's signed part: the work no CA can avoid per SVID.
//! - `csr_to_svid`: `VerifiedCsr::from_der` (parse, key checks, signature verify) plus
//!   `Issuer::sign_x509_svid` (profile, DER encoding, signature) for a fresh P-256 CSR.
//!
//! Run: `cargo bench -p lanyard-svid --bench signing -- --warm-up-time 1 --measurement-time 5`.
//! Criterion measures the two one after the other, so on a shared machine a load change
//! between them skews their ratio. After criterion, the same run therefore also measures
//! both *interleaved* (alternating batches, median of per-round ratios) and prints that
//! ratio: the figure to compare with the 50% target.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use lanyard_svid::ca::RootCa;
use lanyard_svid::csr::{KeyAlgorithm, KeyAndCsr, VerifiedCsr};
use lanyard_svid::{SpiffeId, TrustDomain};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Everything both measurements need, built once.
struct Setup {
    rng: SystemRandom,
    key: EcdsaKeyPair,
    public: UnparsedPublicKey<Vec<u8>>,
    message: Vec<u8>,
    sig: Vec<u8>,
    issuer: lanyard_svid::ca::Issuer,
    id: SpiffeId,
    csr_der: Vec<u8>,
    now: SystemTime,
}

impl Setup {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let message = vec![0x5a_u8; 400];
        let sig = key.sign(&rng, &message).unwrap().as_ref().to_vec();
        let public = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            key.public_key().as_ref().to_vec(),
        );
        let now = SystemTime::now();
        let td = TrustDomain::new("example.org").unwrap();
        let root = RootCa::generate(&td, 7 * DAY, now).unwrap();
        let issuer = root.issue_intermediate(DAY, now).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        let csr_der = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .csr_der;
        Self {
            rng,
            key,
            public,
            message,
            sig,
            issuer,
            id,
            csr_der,
            now,
        }
    }

    /// (a) The bare crypto: one verify (of the CSR) and one sign (of the certificate).
    fn bare(&self) {
        self.public
            .verify(black_box(&self.message), black_box(&self.sig))
            .unwrap();
        black_box(self.key.sign(&self.rng, black_box(&self.message)).unwrap());
    }

    /// (b) The full path the server runs per CSR.
    fn csr_to_svid(&self) {
        let csr = VerifiedCsr::from_der(black_box(&self.csr_der)).unwrap();
        black_box(
            self.issuer
                .sign_x509_svid(&csr, &self.id, HOUR, self.now)
                .unwrap(),
        );
    }
}

fn signing(c: &mut Criterion, setup: &Setup) {
    let mut group = c.benchmark_group("signing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_p256_verify_plus_sign", |b| b.iter(|| setup.bare()));
    group.bench_function("csr_to_svid", |b| b.iter(|| setup.csr_to_svid()));
    group.finish();
}

/// Alternates batches of the two, so both see the same machine load; returns the rates.
fn interleaved(setup: &Setup, rounds: usize, batch: usize) -> (f64, f64, f64) {
    let mut ratios = Vec::with_capacity(rounds);
    let (mut bare_total, mut full_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..batch {
            setup.bare();
        }
        let bare = start.elapsed();
        let start = Instant::now();
        for _ in 0..batch {
            setup.csr_to_svid();
        }
        let full = start.elapsed();
        ratios.push(bare.as_secs_f64() / full.as_secs_f64());
        bare_total += bare;
        full_total += full;
    }
    ratios.sort_by(f64::total_cmp);
    let n = (rounds * batch) as f64;
    (
        n / bare_total.as_secs_f64(),
        n / full_total.as_secs_f64(),
        ratios[rounds / 2],
    )
}

fn main() {
    let setup = Setup::new();
    let mut c = Criterion::default().configure_from_args();
    signing(&mut c, &setup);
    c.final_summary();
    // `cargo test --benches` runs this binary without `--bench`: skip the long part there.
    if std::env::args().any(|a| a == "--bench") {
        let (bare, full, ratio) = interleaved(&setup, 60, 200);
        println!(
            "interleaved: bare {bare:.0}/s, csr_to_svid {full:.0}/s, \
             median per-round ratio {:.1}% (target >= 50%)",
            ratio * 100.0
        );
    }
}
