//! HTTP routing: the API server's REST paths, verbs and query parameters, mapped onto the
//! store, the token authority and the RBAC authorizer.
//!
//! Reference: "API Concepts", resource URIs and verbs
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris>) and the
//! request-info rules of `k8s.io/apiserver` (how a path becomes namespace, resource, name and
//! subresource).
//!
//! - `/api/v1/...` and `/apis/GROUP/VERSION/...`; namespaced collections under
//!   `namespaces/NS/RESOURCE`, all-namespace lists and watches at `RESOURCE`. The resource is
//!   a built-in type or one a stored CustomResourceDefinition defines
//!   ([`crate::Store::resolve`]); anything else is 404.
//! - Verbs: GET one (`get`), GET a collection (`list`, or `watch` with `watch=true`),
//!   POST (`create`), PUT (`update`), PATCH (`patch`), DELETE one (`delete`). `status` is a
//!   subresource of the types that have one. `deletecollection` answers 405.
//! - Every request but `/version`, `/healthz`, `/livez` and `/readyz` needs a bearer token
//!   (else `401`), then RBAC (else `403`), then the verb runs.
//! - Lists: `resourceVersion` unset, `0` or `NotOlderThan` serve the current state with the
//!   current resourceVersion; a version newer than the store answers 504 "Too large resource
//!   version". `resourceVersionMatch=Exact` is served only for the current version, else 410.
//!   **`limit` is ignored**: every list is one complete page without a `continue` token (the
//!   API server does the same for lists served from its watch cache), and a `continue` token,
//!   which the fixture never issues, is a 400.
//! - `dryRun` is refused with 400 rather than silently persisting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::patch::PatchKind;
use crate::rbac::{self, Attributes};
use crate::resources::TypeRef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Reason};
use crate::store::{Filter, Preconditions, Store, Target, WatchFrom};
use crate::tls::Body;
use crate::tokens::Tokens;
use crate::watch::{self as watch_stream, WatchOptions};

/// Largest request body accepted (the API server's limit is about 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Longest watch a client may ask for (the API server caps `timeoutSeconds` similarly).
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Watch duration when `timeoutSeconds` is absent (the API server picks 30-60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Everything a request handler needs.
pub(crate) struct Api {
    pub store: Arc<Store>,
    pub tokens: Arc<Tokens>,
    pub bookmark_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// A request path resolved to REST coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Api {
    /// Handles one request; never fails (errors become Status responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let result = self.route(req).await;
        match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(%method, %path, reason = %e.reason, message = %e.message, "kube-fixture: request refused");
                status_response(&e)
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" => return Ok(text_response("ok")),
            "/version" => {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-fixture", "platform": "linux/amd64"}),
                ));
            }
            _ => {}
        }
        let token = bearer_token(&req)
            .ok_or_else(|| ApiError::new(Reason::Unauthorized, "Unauthorized"))?;
        let who = self
            .tokens
            .authenticate_request(&self.store, &token)
            .map_err(|rejection| {
                tracing::debug!(reason = %rejection, "kube-fixture: bearer token refused");
                ApiError::new(Reason::Unauthorized, "Unauthorized")
            })?;
        let query = parse_query(req.uri().query().unwrap_or(""));
        let rp = parse_path(&path)?;
        let verb = verb_for(req.method(), &rp, &query)?;

        // Selectors are parsed before authorization: a metadata.name field selector names the
        // object for RBAC, as in the API server.
        let rt = if rp.group == "authentication.k8s.io" && rp.resource == "tokenreviews" {
            None
        } else {
            let rt = self
                .store
                .resolve(&rp.group, &rp.version, &rp.resource)
                .ok_or_else(|| {
                    ApiError::new(
                        Reason::NotFound,
                        format!("the server could not find the requested resource ({path})"),
                    )
                })?;
            if rp.namespace.is_some() && !rt.namespaced {
                return Err(ApiError::new(
                    Reason::NotFound,
                    format!("the server could not find the requested resource ({path})"),
                ));
            }
            Some(rt)
        };
        let field_selector = match &rt {
            Some(rt) => FieldSelector::parse(query_str(&query, "fieldSelector"), rt.fields)?,
            None => FieldSelector::default(),
        };
        let label_selector = LabelSelector::parse(query_str(&query, "labelSelector"))?;

        let attrs = Attributes {
            verb: verb.to_string(),
            api_group: rp.group.clone(),
            resource: rp.resource.clone(),
            subresource: rp.subresource.clone(),
            namespace: rp.namespace.clone(),
            name: rp
                .name
                .clone()
                .or_else(|| field_selector.exact_name().map(str::to_string)),
        };
        let decision = rbac::authorize(&self.store, &who.user, &attrs);
        tracing::debug!(user = %who.user.name, verb, resource = %rp.resource, decision = %decision, "kube-fixture: authorization");
        if !decision.is_allowed() {
            return Err(rbac::forbidden(&who.user, &attrs));
        }
        if query.contains_key("dryRun") {
            return Err(ApiError::bad_request(
                "dryRun is not supported by the kube fixture",
            ));
        }

        let Some(rt) = &rt else {
            if verb != "create" {
                return Err(ApiError::new(
                    Reason::MethodNotAllowed,
                    format!("tokenreviews only support create, not {verb}"),
                ));
            }
            let body = read_body(req).await?;
            let review: TokenReview = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("unable to decode TokenReview: {e}")))?;
            let answered = self.tokens.review(&self.store, review)?;
            return Ok(json_response(StatusCode::CREATED, &to_json(&answered)?));
        };

        let filter = Filter {
            namespace: rp.namespace.clone(),
            labels: label_selector,
            fields: field_selector,
        };
        let ns = rp.namespace.as_deref();
        let name = rp.name.as_deref().unwrap_or_default();
        let target = match rp.subresource.as_deref() {
            None => Target::Main,
            Some("status") if rt.has_status => Target::Status,
            Some(other) => {
                return Err(ApiError::new(
                    Reason::NotFound,
                    format!("{} has no subresource {other:?} in the fixture", rt.plural),
                ));
            }
        };
        match verb {
            "get" => Ok(json_response(
                StatusCode::OK,
                &self.store.get_value(rt, ns, name)?,
            )),
            "list" => self.list(rt, &filter, &query),
            "watch" => self.watch(rt, filter, &query),
            "create" => {
                if rp.subresource.is_some() {
                    return Err(ApiError::new(
                        Reason::MethodNotAllowed,
                        "create on a subresource",
                    ));
                }
                let body = json_body(read_body(req).await?)?;
                let created = self.store.create_value(rt, ns, body, true)?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            "update" => {
                let body = json_body(read_body(req).await?)?;
                let updated = self.store.replace_value(rt, ns, name, body, target)?;
                Ok(json_response(StatusCode::OK, &updated))
            }
            "patch" => self.patch(req, rt, ns, name, target, &query).await,
            "delete" => {
                let body = read_body(req).await?;
                let preconditions = delete_preconditions(&body)?;
                let deleted = self.store.delete_value(rt, ns, name, &preconditions)?;
                Ok(json_response(StatusCode::OK, &deleted))
            }
            other => Err(ApiError::new(
                Reason::MethodNotAllowed,
                format!("the fixture does not implement {other} on {}", rt.plural),
            )),
        }
    }

    fn list(
        &self,
        rt: &TypeRef,
        filter: &Filter,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            return Err(ApiError::bad_request(
                "continue key is not valid: the fixture never issues continue tokens",
            ));
        }
        let (items, rv) = self.store.list_values(rt, filter);
        if let Some(requested) = query.get("resourceVersion").filter(|s| !s.is_empty()) {
            let requested: u64 = requested.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version {requested:?}"))
            })?;
            let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            if requested > rv {
                return Err(ApiError::new(
                    Reason::Timeout,
                    format!("Too large resource version: {requested}, current: {rv}"),
                ));
            }
            if exact && requested != 0 && requested != rv {
                return Err(ApiError::expired(requested, rv));
            }
        }
        let meta = ListMeta {
            resource_version: Some(rv.to_string()),
            ..ListMeta::default()
        };
        Ok(json_response(StatusCode::OK, &rt.encode_list(items, meta)?))
    }

    fn watch(
        &self,
        rt: &TypeRef,
        filter: Filter,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let from =
            match query.get("resourceVersion").map(String::as_str) {
                None | Some("") | Some("0") => WatchFrom::Now,
                Some(n) => WatchFrom::After(n.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {n:?}"))
                })?),
            };
        let timeout = match query.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(
                s.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
            )
            .min(MAX_WATCH_TIMEOUT),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        let bookmarks = query_flag(query, "allowWatchBookmarks");
        let send_initial_events = query_flag(query, "sendInitialEvents");
        if send_initial_events && !bookmarks {
            return Err(ApiError::invalid(
                "sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
        let body = match self.store.subscribe(rt, from) {
            Ok(subscription) => watch_stream::stream_body(
                subscription,
                WatchOptions {
                    resource: rt.clone(),
                    filter,
                    bookmarks,
                    send_initial_events: send_initial_events && from == WatchFrom::Now,
                    timeout,
                    bookmark_interval: self.bookmark_interval,
                },
                self.shutdown.clone(),
            ),
            // The API server answers a too-old version inside a 200 watch stream.
            Err(e) if e.reason == Reason::Expired => watch_stream::error_body(&e),
            Err(e) => return Err(e),
        };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("static response parts are valid"))
    }

    async fn patch(
        &self,
        req: Request<Incoming>,
        rt: &TypeRef,
        ns: Option<&str>,
        name: &str,
        target: Target,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let kind = PatchKind::from_content_type(&content_type)?;
        if kind == PatchKind::Apply && query_str(query, "fieldManager").is_empty() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let patch = kind.decode(&read_body(req).await?)?;
        let result = self.store.update_with(rt, ns, name, target, |current| {
            let mut next = current.clone();
            kind.apply(&mut next, &patch)?;
            Ok(next)
        });
        match result {
            Err(e) if e.reason == Reason::NotFound && kind == PatchKind::Apply => {
                // Server-side apply creates what does not exist.
                let mut body = patch.clone();
                if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), Value::String(name.to_string()));
                }
                let created = self.store.create_value(rt, ns, body, true)?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            Err(e) => Err(e),
            Ok(updated) => Ok(json_response(StatusCode::OK, &updated)),
        }
    }
}

fn verb_for(
    method: &Method,
    rp: &ResourcePath,
    query: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let named = rp.name.is_some();
    Ok(match (method.clone(), named) {
        (Method::GET, true) => "get",
        (Method::GET, false) if query_flag(query, "watch") => "watch",
        (Method::GET, false) => "list",
        (Method::POST, false) => "create",
        (Method::PUT, true) => "update",
        (Method::PATCH, true) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        (m, _) => {
            return Err(ApiError::new(
                Reason::MethodNotAllowed,
                format!("{m} is not supported on {}", rp.resource),
            ));
        }
    })
}

/// Resolves a path as `k8s.io/apiserver`'s request-info does.
fn parse_path(path: &str) -> Result<ResourcePath, ApiError> {
    let not_found = || {
        ApiError::new(
            Reason::NotFound,
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() > 16 {
        return Err(not_found());
    }
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let mut rest: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
    let mut namespace = None;
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() >= 3 {
        // namespaces/NS/RESOURCE...; but namespaces/NS/status is the Namespace's subresource.
        if !matches!(rest[2].as_str(), "status" | "finalize") {
            namespace = Some(rest[1].clone());
            rest.drain(..2);
        }
    }
    let mut it = rest.into_iter();
    let resource = it.next().filter(|s| !s.is_empty()).ok_or_else(not_found)?;
    let name = it.next().filter(|s| !s.is_empty());
    let subresource = it.next().filter(|s| !s.is_empty());
    if it.next().is_some() {
        return Err(not_found());
    }
    Ok(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource,
        name,
        subresource,
    })
}

fn bearer_token(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(64)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn query_str<'a>(query: &'a HashMap<String, String>, key: &str) -> &'a str {
    query.get(key).map(String::as_str).unwrap_or("")
}

fn query_flag(query: &HashMap<String, String>, key: &str) -> bool {
    matches!(query_str(query, key), "true" | "1")
}

/// Decodes `%XX` escapes and `+` (form encoding, as kube writes query strings).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    Reason::RequestEntityTooLarge,
                    format!("the request body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body failed: {e}"))
            }
        })
}

fn json_body(body: Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

fn delete_preconditions(body: &Bytes) -> Result<Preconditions, ApiError> {
    if body.is_empty() {
        return Ok(Preconditions::default());
    }
    let options = json_body(body.clone())?;
    let field = |name: &str| {
        options
            .pointer(&format!("/preconditions/{name}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Preconditions {
        uid: field("uid"),
        resource_version: field("resourceVersion"),
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::internal(e.to_string()))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .expect("static response parts are valid")
}

fn text_response(text: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync())
        .expect("static response parts are valid")
}

fn status_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_value(error.to_status()).unwrap_or_default();
    json_response(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_request_info() {
        let p = parse_path("/api/v1/namespaces/ns/pods/p/status").unwrap();
        assert_eq!(p.namespace.as_deref(), Some("ns"));
        assert_eq!(p.resource, "pods");
        assert_eq!(p.name.as_deref(), Some("p"));
        assert_eq!(p.subresource.as_deref(), Some("status"));
        let p = parse_path("/api/v1/namespaces/ns").unwrap();
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref()),
            ("namespaces", Some("ns"))
        );
        let p = parse_path("/api/v1/namespaces/ns/status").unwrap();
        assert_eq!(p.subresource.as_deref(), Some("status"));
        assert_eq!(p.namespace, None);
        let p = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((p.group.as_str(), p.namespace), ("discovery.k8s.io", None));
        let p = parse_path("/apis/authentication.k8s.io/v1/tokenreviews").unwrap();
        assert_eq!(p.resource, "tokenreviews");
        assert!(parse_path("/metrics").is_err());
        assert!(parse_path("/api/v1/namespaces/ns/pods/p/status/extra").is_err());
    }

    #[test]
    fn queries_are_form_decoded() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true&x=%zz");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert!(query_flag(&q, "watch"));
        assert_eq!(q["x"], "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
