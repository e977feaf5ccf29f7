//! Workload API hints: the hint an entitlement carries (a pod identity's, from its
//! registration) reaches the X509SVID and JWTSVID replies, on the wire and through the Rust
//! `spiffe` crate; hints stay unique within one response.

mod workload_api_support;

use lanyard_agent::identities::Entitlement;
use lanyard_agent::workload_api::Limits;
use lanyard_proto::workload::{JwtsvidRequest, X509svidRequest};
use lanyard_svid::SpiffeId;
use workload_api_support::*;

fn hinted(id: &SpiffeId, hint: &str) -> Entitlement {
    Entitlement {
        hint: hint.to_owned(),
        federates_with: Vec::new(),
        ..entitlement(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_reach_the_replies_unique_within_each() {
    install_ring();
    let pki = Pki::new();
    let (pod, entry, other) = (pki.id("/ns/web/sa/api"), pki.id("/web"), pki.id("/other"));
    let identities = FakeIdentities::new(pki, &[]);
    // The pod identity's hint; a static entry without one; a third sharing the first's hint
    // (the resolver never makes one, but a response must not carry it twice).
    identities.set_entitlements(vec![
        hinted(&pod, "internal"),
        hinted(&entry, ""),
        hinted(&other, "internal"),
    ]);
    let agent = Agent::start(identities.clone(), Limits::default()).await;

    let mut client = agent.raw_client().await;
    let mut stream = within(
        "FetchX509SVID",
        client.fetch_x509svid(req(X509svidRequest {})),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("the first X.509 message", stream.message())
        .await
        .unwrap()
        .expect("a message");
    let got: Vec<(String, String)> = first
        .svids
        .iter()
        .map(|s| (s.spiffe_id.clone(), s.hint.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (pod.to_string(), "internal".to_owned()),
            (entry.to_string(), String::new()),
            (other.to_string(), String::new()),
        ]
    );

    let jwts = within(
        "FetchJWTSVID",
        client.fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })),
    )
    .await
    .unwrap()
    .into_inner();
    let got: Vec<&str> = jwts.svids.iter().map(|s| s.hint.as_str()).collect();
    assert_eq!(got, ["internal", "", ""]);

    // A third-party client sees it.
    let spiffe = agent.spiffe_client().await;
    let all = within("fetch_all_x509_svids", spiffe.fetch_all_x509_svids())
        .await
        .unwrap();
    assert_eq!(all[0].hint(), Some("internal"));
    assert!(
        all[1].hint().is_none_or(str::is_empty),
        "{:?}",
        all[1].hint()
    );

    // A changed hint is a changed response on the open stream.
    identities.set_entitlements(vec![hinted(&pod, "public")]);
    let next = within("the next X.509 message", stream.message())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(next.svids.len(), 1);
    assert_eq!(next.svids[0].hint, "public");
}
