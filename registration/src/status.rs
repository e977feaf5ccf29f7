//! Each resource's `status`, computed from the registry and every pod: the same inputs give
//! the same status on every replica, so a write that changes nothing is skipped.
//!
//! Counts per resource: `podsMatched` is every pod its selectors select; `podsIssued` the pods
//! issued the identity it renders (several agreeing resources each count the pod);
//! `podsRefused` the pods refused for it (its own render failed, or it conflicts with
//! another: a conflict counts in every resource involved). A fallback resource's pods that a
//! non-fallback resource takes are matched but neither issued nor refused.

use std::collections::BTreeMap;

use crate::registry::{PodFacts, Registry, ResourceOutcome};
use crate::resource::{LanyardIdentityStatus, RefusedPod};

/// Most refusals listed in one status (the counts are always complete).
pub const MAX_LISTED_REFUSALS: usize = 10;

/// The status of every resource of our class (valid or not), by name.
pub fn statuses<'a>(
    registry: &Registry,
    pods: impl IntoIterator<Item = PodFacts<'a>>,
) -> BTreeMap<String, LanyardIdentityStatus> {
    let mut out: BTreeMap<String, LanyardIdentityStatus> = BTreeMap::new();
    for c in registry.identities() {
        out.insert(
            c.name.clone(),
            LanyardIdentityStatus {
                observed_generation: c.generation,
                ..Default::default()
            },
        );
    }
    for (name, error) in registry.spec_errors() {
        out.insert(
            name.clone(),
            LanyardIdentityStatus {
                observed_generation: registry.spec_error_generation(name),
                spec_error: Some(error.to_string()),
                ..Default::default()
            },
        );
    }

    for pod in pods {
        for (name, outcome) in registry.decide(&pod).resources {
            let Some(status) = out.get_mut(&name) else {
                continue;
            };
            status.pods_matched += 1;
            match outcome {
                ResourceOutcome::Issued => status.pods_issued += 1,
                ResourceOutcome::Refused(refusal) => {
                    status.pods_refused += 1;
                    status.refusals.push(RefusedPod {
                        pod: format!("{}/{}", pod.namespace, pod.name),
                        reason: refusal.reason.to_string(),
                        message: refusal.message,
                    });
                    // Bounded memory whatever the pod count: keep only the first ones.
                    if status.refusals.len() >= 4 * MAX_LISTED_REFUSALS {
                        keep_first(&mut status.refusals);
                    }
                }
                ResourceOutcome::Superseded => {}
            }
        }
    }
    for status in out.values_mut() {
        keep_first(&mut status.refusals);
    }
    out
}

/// Sorts by pod (then reason and message, for a total order) and keeps the first
/// [`MAX_LISTED_REFUSALS`].
fn keep_first(refusals: &mut Vec<RefusedPod>) {
    refusals.sort_by(|a, b| (&a.pod, &a.reason, &a.message).cmp(&(&b.pod, &b.reason, &b.message)));
    refusals.dedup();
    refusals.truncate(MAX_LISTED_REFUSALS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::registry::tests::{Pod, config, pod, resource};

    fn registry() -> Registry {
        let mut fb = resource("fallback", "/fb/{namespace}", "");
        fb.spec.fallback = true;
        let mut web = resource("web", "/web/{label:tier}", "web");
        web.metadata.generation = Some(3);
        let mut broken = resource("broken", "/lanyard/x", "web");
        broken.metadata.generation = Some(9);
        let mut other = resource("other-class", "/o", "");
        other.spec.class_name = Some("elsewhere".into());
        Registry::new(
            config(Some("/ns/{namespace}/sa/{service_account}")),
            &[
                fb,
                web,
                broken,
                other,
                resource("api-a", "/api/a", "api"),
                resource("api-b", "/api/b", "api"),
            ],
        )
    }

    fn pods() -> Vec<Pod> {
        let mut pods = vec![
            pod("prod", "web-1", &[("app", "web"), ("tier", "front")]),
            pod("prod", "web-2", &[("app", "web")]),
            pod("dev", "web-3", &[("app", "web")]),
            pod("prod", "api-1", &[("app", "api")]),
            pod("prod", "batch-1", &[("app", "batch")]),
        ];
        let mut unknown_ns = pod("new", "x", &[]);
        unknown_ns.namespace_labels = None;
        pods.push(unknown_ns);
        pods
    }

    #[test]
    fn counts_refusals_and_spec_errors() {
        let reg = registry();
        let pods = pods();
        let s = statuses(&reg, pods.iter().map(Pod::facts));
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            ["api-a", "api-b", "broken", "fallback", "web"],
            "every resource of our class, valid or not, and no other"
        );

        let web = &s["web"];
        assert_eq!(web.observed_generation, Some(3));
        assert_eq!(web.spec_error, None);
        assert_eq!(
            (web.pods_matched, web.pods_issued, web.pods_refused),
            (3, 1, 2)
        );
        let listed: Vec<(&str, &str)> = web
            .refusals
            .iter()
            .map(|r| (r.pod.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("dev/web-3", "missing_value"),
                ("prod/web-2", "missing_value")
            ],
            "sorted by pod"
        );
        assert!(web.refusals[0].message.contains("label tier is not set"));

        // Selected everything, but took only what no other resource selected.
        let fb = &s["fallback"];
        assert_eq!(
            (fb.pods_matched, fb.pods_issued, fb.pods_refused),
            (6, 2, 0)
        );

        // A conflict counts in both resources.
        for name in ["api-a", "api-b"] {
            let st = &s[name];
            assert_eq!(
                (st.pods_matched, st.pods_issued, st.pods_refused),
                (1, 0, 1)
            );
            assert_eq!(st.refusals[0].reason, "conflict");
            assert!(st.refusals[0].message.contains("api-a, api-b"));
        }

        let broken = &s["broken"];
        assert_eq!(broken.observed_generation, Some(9));
        assert!(
            broken
                .spec_error
                .as_deref()
                .unwrap()
                .starts_with("spec.spiffeIDTemplate: ")
        );
        assert_eq!(
            (broken.pods_matched, broken.pods_issued, broken.pods_refused),
            (0, 0, 0)
        );
    }

    #[test]
    fn the_same_inputs_in_any_order_give_the_same_status() {
        let reg = registry();
        let pods = pods();
        let want = statuses(&reg, pods.iter().map(Pod::facts));
        let reversed = statuses(&reg, pods.iter().rev().map(Pod::facts));
        assert_eq!(reversed, want);
        let mut rotated: Vec<&Pod> = pods.iter().collect();
        rotated.rotate_left(2);
        assert_eq!(statuses(&reg, rotated.into_iter().map(Pod::facts)), want);
        // And resources given in another order.
        let mut fb = resource("fallback", "/fb/{namespace}", "");
        fb.spec.fallback = true;
        let mut web = resource("web", "/web/{label:tier}", "web");
        web.metadata.generation = Some(3);
        let mut broken = resource("broken", "/lanyard/x", "web");
        broken.metadata.generation = Some(9);
        let reg2 = Registry::new(
            config(Some("/ns/{namespace}/sa/{service_account}")),
            &[
                resource("api-b", "/api/b", "api"),
                broken,
                resource("api-a", "/api/a", "api"),
                web,
                fb,
            ],
        );
        assert_eq!(statuses(&reg2, pods.iter().map(Pod::facts)), want);
    }

    #[test]
    fn listed_refusals_are_capped_and_counts_are_not() {
        let reg = Registry::new(config(None), &[resource("r", "/r/{label:missing}", "")]);
        let pods: Vec<Pod> = (0..(10 * MAX_LISTED_REFUSALS))
            .rev()
            .map(|i| pod("ns", &format!("p{i:03}"), &[]))
            .collect();
        let s = &statuses(&reg, pods.iter().map(Pod::facts))["r"];
        let n = i64::try_from(pods.len()).unwrap();
        assert_eq!((s.pods_matched, s.pods_refused, s.pods_issued), (n, n, 0));
        assert_eq!(s.refusals.len(), MAX_LISTED_REFUSALS);
        let listed: Vec<&str> = s.refusals.iter().map(|r| r.pod.as_str()).collect();
        let want: Vec<String> = (0..MAX_LISTED_REFUSALS)
            .map(|i| format!("ns/p{i:03}"))
            .collect();
        assert_eq!(
            listed, want,
            "the first pods in order, whatever order they came in"
        );
    }
}
