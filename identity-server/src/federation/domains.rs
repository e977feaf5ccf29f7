//! The federated trust domains in force and one fetch task per domain.
//!
//! The desired set is `[[federation]]` from `--config`, plus in cluster mode the
//! `LanyardFederation` resources (a watch of their checked list). A trust domain in both is
//! fetched as the configuration says (WARN once). A domain that appears gets a fetch task; one
//! whose definition changes gets a new task (starting from the bundle held); one that goes
//! has its task stopped and its bundle dropped (from the agents' feeds and the data dir).

use std::collections::{HashMap, HashSet};

use lanyard_registration::federation::{EndpointProfile, FederatedDomain};
use lanyard_svid::{TrustBundle, TrustDomain};
use tokio::sync::watch;

use super::fetch::Fetcher;
use super::persist;
use super::schedule::{self, FetchTiming, Sink};

/// `config` with the resources' domains that it does not name. `warned` remembers the
/// conflicts already logged.
pub fn merge(
    config: &[FederatedDomain],
    resources: &[FederatedDomain],
    warned: &mut HashSet<TrustDomain>,
) -> Vec<FederatedDomain> {
    let mut out = config.to_vec();
    for domain in resources {
        match config
            .iter()
            .find(|c| c.trust_domain == domain.trust_domain)
        {
            Some(configured) => {
                if warned.insert(domain.trust_domain.clone()) {
                    tracing::warn!(
                        trust_domain = %domain.trust_domain,
                        ignored = %domain.source,
                        used = %configured.source,
                        "trust domain federated twice; the server's configuration wins"
                    );
                }
            }
            None if out.iter().any(|d| d.trust_domain == domain.trust_domain) => {
                tracing::warn!(trust_domain = %domain.trust_domain, ignored = %domain.source, "trust domain named by two resources; the first is used");
            }
            None => out.push(domain.clone()),
        }
    }
    // A conflict resolved (the resource or the table gone) may be warned about again.
    warned.retain(|td| {
        config.iter().any(|c| &c.trust_domain == td)
            && resources.iter().any(|r| &r.trust_domain == td)
    });
    out
}

/// A fetch task, aborted when dropped.
struct Running {
    domain: FederatedDomain,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fetch tasks of the domains in force.
pub struct Domains {
    running: HashMap<TrustDomain, Running>,
    timing: FetchTiming,
    sink: Sink,
}

impl Domains {
    pub fn new(timing: FetchTiming, sink: Sink) -> Self {
        Self {
            running: HashMap::new(),
            timing,
            sink,
        }
    }

    /// The trust domains fetched now.
    pub fn trust_domains(&self) -> Vec<TrustDomain> {
        let mut out: Vec<_> = self.running.keys().cloned().collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// Makes `desired` the domains fetched.
    pub fn apply(&mut self, desired: &[FederatedDomain]) {
        let gone: Vec<TrustDomain> = self
            .running
            .keys()
            .filter(|td| !desired.iter().any(|d| &d.trust_domain == *td))
            .cloned()
            .collect();
        for td in gone {
            self.running.remove(&td);
            self.sink.federated.remove(&td);
            if let Some(metrics) = &self.sink.metrics {
                metrics.forget_federated(&td);
            }
            if let Some(dir) = &self.sink.persist_dir
                && let Err(e) = persist::remove(dir, &td)
            {
                tracing::warn!(trust_domain = %td, error = %e, "cannot delete the kept federated bundle");
            }
            tracing::info!(trust_domain = %td, "federation removed; its bundle is no longer served");
        }
        for domain in desired {
            if self
                .running
                .get(&domain.trust_domain)
                .is_some_and(|r| &r.domain == domain)
            {
                continue;
            }
            // New or changed: the old task (if any) stops when replaced.
            let task = self.spawn(domain);
            self.running.insert(
                domain.trust_domain.clone(),
                Running {
                    domain: domain.clone(),
                    task,
                },
            );
        }
    }

    fn spawn(&self, domain: &FederatedDomain) -> tokio::task::JoinHandle<()> {
        let td = domain.trust_domain.clone();
        let held = self.starting_bundle(domain);
        tracing::info!(
            trust_domain = %td,
            url = %domain.bundle_endpoint_url,
            source = %domain.source,
            holding = held.as_ref().map(|b| b.sequence()),
            "fetching the federated trust domain's bundle"
        );
        if let Some(bundle) = &held
            && self.sink.federated.current().get(&td).is_none()
        {
            // Served until a fetch replaces it: the bundle fetched before a restart, or the
            // bootstrap bundle the operator gave (as SPIRE serves `trustDomainBundle`).
            self.sink.federated.insert(bundle.clone());
        }
        let timing = self.timing;
        let sink = self.sink.clone();
        match Fetcher::new(domain) {
            Ok(fetcher) => tokio::spawn(schedule::run_domain(td, fetcher, held, timing, sink)),
            Err(e) => {
                let outcome = e.outcome();
                if let Some(metrics) = &sink.metrics {
                    metrics.federation_fetched(&td, outcome);
                }
                tracing::warn!(trust_domain = %td, reason = %outcome, error = %e, "cannot fetch the federated bundle");
                tokio::spawn(std::future::pending())
            }
        }
    }

    /// The bundle a new task starts from: the one held now (a changed definition), else the
    /// one kept in the data dir, else the bootstrap bundle.
    fn starting_bundle(&self, domain: &FederatedDomain) -> Option<TrustBundle> {
        let td = &domain.trust_domain;
        if let Some(held) = self.sink.federated.current().get(td) {
            return Some(held.clone());
        }
        if let Some(dir) = &self.sink.persist_dir {
            match persist::load(dir, td) {
                Ok(Some(kept)) => return Some(kept),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "kept federated bundle unreadable")
                }
            }
        }
        match &domain.profile {
            EndpointProfile::HttpsSpiffe { bootstrap, .. } => bootstrap.clone(),
            EndpointProfile::HttpsWeb { .. } => None,
        }
    }
}

/// Applies `config`, then follows `resources` (when watched) for as long as it runs.
pub async fn run(
    mut domains: Domains,
    config: Vec<FederatedDomain>,
    resources: Option<watch::Receiver<Vec<FederatedDomain>>>,
) {
    let mut warned = HashSet::new();
    let Some(mut resources) = resources else {
        domains.apply(&config);
        return std::future::pending().await;
    };
    loop {
        let listed = resources.borrow_and_update().clone();
        domains.apply(&merge(&config, &listed, &mut warned));
        if resources.changed().await.is_err() {
            tracing::warn!(
                "the LanyardFederation watch ended; the federations in force stay as they are"
            );
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::FederatedBundles;
    use lanyard_svid::SpiffeId;

    fn domain(td: &str, url: &str, source: &str) -> FederatedDomain {
        FederatedDomain {
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url.into(),
            profile: EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse(&format!("spiffe://{td}/server")).unwrap(),
                bootstrap: None,
            },
            source: source.into(),
        }
    }

    #[test]
    fn configuration_wins_over_a_resource() {
        let config = [domain("a.test", "https://config", "--config")];
        let resources = [
            domain("a.test", "https://resource", "LanyardFederation/a"),
            domain("b.test", "https://b", "LanyardFederation/b"),
        ];
        let mut warned = HashSet::new();
        let merged = merge(&config, &resources, &mut warned);
        assert_eq!(
            merged
                .iter()
                .map(|d| d.bundle_endpoint_url.as_str())
                .collect::<Vec<_>>(),
            ["https://config", "https://b"]
        );
        assert_eq!(warned.len(), 1);
        merge(&config, &resources, &mut warned);
        assert_eq!(warned.len(), 1, "warned once");
        merge(&config, &resources[1..], &mut warned);
        assert!(warned.is_empty(), "conflict resolved");
    }

    #[tokio::test]
    async fn removed_domains_stop_and_drop_their_bundle() {
        let federated = FederatedBundles::new();
        let sink = Sink {
            federated: federated.clone(),
            metrics: None,
            persist_dir: None,
        };
        let mut domains = Domains::new(FetchTiming::default(), sink);
        let (tx, rx) = watch::channel(vec![domain("b.test", "https://127.0.0.1:1", "r/b")]);
        let config = vec![domain("c.test", "https://127.0.0.1:1", "--config")];
        domains.apply(&merge(&config, &rx.borrow(), &mut HashSet::new()));
        assert_eq!(
            domains
                .trust_domains()
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>(),
            ["b.test", "c.test"]
        );
        let b = TrustDomain::new("b.test").unwrap();
        federated.insert(TrustBundle::new(b.clone()));
        tx.send_replace(Vec::new());
        domains.apply(&merge(&config, &rx.borrow(), &mut HashSet::new()));
        assert_eq!(domains.trust_domains().len(), 1);
        assert!(
            federated.current().get(&b).is_none(),
            "its bundle is dropped"
        );
    }
}
