//! RBAC authorization, evaluated as the API server's RBAC authorizer evaluates it.
//!
//! Reference: "Using RBAC Authorization"
//! (<https://kubernetes.io/docs/reference/access-authn-authz/rbac/>) and "Authorization
//! overview" for request attributes
//! (<https://kubernetes.io/docs/reference/access-authn-authz/authorization/#review-your-request-attributes>).
//!
//! - Rules are additive; there are no deny rules. A request is allowed if any rule reachable
//!   from a binding whose subjects include the user matches verb, API group, resource
//!   (`resource/subresource`, `*`, `*/subresource`) and, when the rule lists `resourceNames`,
//!   the request's name.
//! - ClusterRoleBindings grant everywhere (all namespaces and cluster-scoped resources).
//!   RoleBindings grant only in their own namespace, whether they reference a Role (of that
//!   namespace) or a ClusterRole.
//! - Subjects: `ServiceAccount` (name + namespace), `User`, `Group`. ServiceAccounts belong to
//!   the groups `system:serviceaccounts`, `system:serviceaccounts:<ns>` and
//!   `system:authenticated`.
//! - Request name for `list`/`watch`: as the API server does, a `metadata.name=NAME` field
//!   selector makes NAME the request's name, so a rule with `resourceNames` can allow watching
//!   one named object. `create` requests have no name.
//! - The group `system:masters` bypasses authorization (the fixture's admin identity).
//!
//! Simplified: `aggregationRule` on ClusterRoles is ignored, `nonResourceURLs` rules are not
//! evaluated (non-resource paths the fixture serves are public), and no default roles
//! (`system:*`) are pre-loaded: a test loads exactly the RBAC it means to test.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};

use crate::status::{ApiError, Reason, qualified};
use crate::store::Store;

/// The group whose members bypass RBAC, as in a real cluster.
pub const SUPERUSER_GROUP: &str = "system:masters";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// `system:serviceaccount:NS:NAME` for ServiceAccounts.
    pub name: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
}

/// What a request asks to do (the RBAC-relevant request attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// API group, "" for core.
    pub api_group: String,
    /// Plural resource, e.g. `secrets`.
    pub resource: String,
    /// Subresource, e.g. `status`.
    pub subresource: Option<String>,
    /// Namespace for namespaced requests.
    pub namespace: Option<String>,
    /// Object name, when the request is about one object.
    pub name: Option<String>,
}

/// The authorizer's answer. `Display` is a snake_case label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The user is in `system:masters`.
    AllowedSuperuser,
    /// A rule allowed it; names the binding and role, e.g.
    /// `RoleBinding ns/name -> ClusterRole view`.
    AllowedBy(String),
    /// No rule allows it.
    Denied,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::AllowedSuperuser => "allowed_superuser",
            Decision::AllowedBy(_) => "allowed_rbac",
            Decision::Denied => "denied",
        })
    }
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Denied)
    }
}

/// Decides a request against the RBAC objects currently in `store`.
pub fn authorize(store: &Store, user: &User, attrs: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == SUPERUSER_GROUP) {
        return Decision::AllowedSuperuser;
    }
    let cluster_roles = store.list::<ClusterRole>(None).unwrap_or_default();
    let cluster_role = |name: &str| {
        cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
    };

    for binding in store.list::<ClusterRoleBinding>(None).unwrap_or_default() {
        if binding.role_ref.kind != "ClusterRole"
            || !any_subject_matches(binding.subjects.as_deref(), user, None)
        {
            continue;
        }
        if let Some(role) = cluster_role(&binding.role_ref.name)
            && rules_allow(role.rules.as_deref(), attrs)
        {
            return Decision::AllowedBy(format!(
                "ClusterRoleBinding {} -> ClusterRole {}",
                binding.metadata.name.unwrap_or_default(),
                binding.role_ref.name
            ));
        }
    }

    let Some(ns) = attrs.namespace.as_deref() else {
        return Decision::Denied;
    };
    let roles = store.list::<Role>(Some(ns)).unwrap_or_default();
    for binding in store.list::<RoleBinding>(Some(ns)).unwrap_or_default() {
        if !any_subject_matches(binding.subjects.as_deref(), user, Some(ns)) {
            continue;
        }
        let rules = match binding.role_ref.kind.as_str() {
            "ClusterRole" => cluster_role(&binding.role_ref.name).and_then(|r| r.rules.as_deref()),
            "Role" => roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
                .and_then(|r| r.rules.as_deref()),
            _ => None,
        };
        if rules_allow(rules, attrs) {
            return Decision::AllowedBy(format!(
                "RoleBinding {ns}/{} -> {} {}",
                binding.metadata.name.unwrap_or_default(),
                binding.role_ref.kind,
                binding.role_ref.name
            ));
        }
    }
    Decision::Denied
}

/// The `403 Forbidden` the API server sends for a denied request.
pub fn forbidden(user: &User, attrs: &Attributes) -> ApiError {
    let resource = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.clone(),
    };
    let subject = match &attrs.name {
        Some(name) => format!(
            "{} \"{name}\"",
            qualified(&attrs.api_group, &attrs.resource)
        ),
        None => qualified(&attrs.api_group, &attrs.resource),
    };
    let scope = match &attrs.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    ApiError::new(
        Reason::Forbidden,
        format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, attrs.verb, attrs.api_group
        ),
    )
    .with_details(
        &attrs.api_group,
        &attrs.resource,
        attrs.name.as_deref().unwrap_or(""),
    )
}

fn any_subject_matches(
    subjects: Option<&[Subject]>,
    user: &User,
    binding_ns: Option<&str>,
) -> bool {
    subjects
        .unwrap_or_default()
        .iter()
        .any(|s| subject_matches(s, user, binding_ns))
}

fn subject_matches(subject: &Subject, user: &User, binding_ns: Option<&str>) -> bool {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            // A RoleBinding's ServiceAccount subject defaults to the binding's namespace.
            let ns = subject
                .namespace
                .as_deref()
                .filter(|s| !s.is_empty())
                .or(binding_ns);
            ns.is_some_and(|ns| user.name == format!("system:serviceaccount:{ns}:{}", subject.name))
        }
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        _ => false,
    }
}

fn rules_allow(rules: Option<&[PolicyRule]>, attrs: &Attributes) -> bool {
    rules
        .unwrap_or_default()
        .iter()
        .any(|r| rule_allows(r, attrs))
}

fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| {
        list.as_deref()
            .unwrap_or_default()
            .iter()
            .any(|x| x == "*" || x == want)
    };
    if !has(&Some(rule.verbs.clone()), &attrs.verb) || !has(&rule.api_groups, &attrs.api_group) {
        return false;
    }
    let resource_ok = rule
        .resources
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| match &attrs.subresource {
            None => r == "*" || *r == attrs.resource,
            Some(sub) => {
                r == "*"
                    || *r == format!("{}/{sub}", attrs.resource)
                    || r.strip_prefix("*/") == Some(sub.as_str())
            }
        });
    if !resource_ok {
        return false;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => attrs
            .name
            .as_deref()
            .is_some_and(|n| names.iter().any(|x| x == n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: String::new(),
            resource: resource.into(),
            subresource: None,
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    fn rule(verbs: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: (!names.is_empty())
                .then(|| names.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn resource_names_need_a_request_name() {
        let r = rule(&["get", "watch", "list"], &["secrets"], &["ca"]);
        assert!(rule_allows(
            &r,
            &attrs("get", "secrets", Some("ns"), Some("ca"))
        ));
        assert!(!rule_allows(
            &r,
            &attrs("get", "secrets", Some("ns"), Some("other"))
        ));
        assert!(!rule_allows(
            &r,
            &attrs("list", "secrets", Some("ns"), None)
        ));
        assert!(!rule_allows(
            &r,
            &attrs("update", "secrets", Some("ns"), Some("ca"))
        ));
    }

    #[test]
    fn subresources_match_explicitly_or_by_wildcard() {
        let mut a = attrs("update", "pods", Some("ns"), Some("p"));
        a.subresource = Some("status".into());
        assert!(!rule_allows(&rule(&["update"], &["pods"], &[]), &a));
        assert!(rule_allows(&rule(&["update"], &["pods/status"], &[]), &a));
        assert!(rule_allows(&rule(&["update"], &["*/status"], &[]), &a));
        assert!(rule_allows(&rule(&["*"], &["*"], &[]), &a));
    }

    #[test]
    fn service_account_subjects_match_by_namespace_and_name() {
        let user = User {
            name: "system:serviceaccount:lanyard:server".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let sa = |ns: Option<&str>| Subject {
            kind: "ServiceAccount".into(),
            name: "server".into(),
            namespace: ns.map(Into::into),
            ..Default::default()
        };
        assert!(subject_matches(&sa(Some("lanyard")), &user, None));
        assert!(!subject_matches(&sa(Some("other")), &user, None));
        assert!(subject_matches(&sa(None), &user, Some("lanyard")));
        let group = Subject {
            kind: "Group".into(),
            name: "system:serviceaccounts".into(),
            ..Default::default()
        };
        assert!(subject_matches(&group, &user, None));
    }

    #[test]
    fn forbidden_messages_read_like_the_api_server() {
        let user = User {
            name: "system:serviceaccount:ns:sa".into(),
            groups: vec![],
        };
        let e = forbidden(&user, &attrs("get", "secrets", Some("ns"), Some("x")));
        assert_eq!(
            e.message,
            "secrets \"x\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot get resource \"secrets\" in API group \"\" in the namespace \"ns\""
        );
        assert_eq!(e.code(), 403);
        assert_eq!(Decision::Denied.to_string(), "denied");
    }
}
