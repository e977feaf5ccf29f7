//! API errors as the real API server reports them: a `metav1.Status` body whose `code` is the
//! HTTP status and whose `reason` is the machine-readable `StatusReason`.
//!
//! Reference: API conventions, "Response Status Kind"
//! (<https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#response-status-kind>)
//! and the `StatusReason` constants of `k8s.io/apimachinery/pkg/apis/meta/v1`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

/// The `reason` of a failed request, mirroring the API server's `metav1.StatusReason`.
///
/// `Display` gives a short snake_case label (usable as a metric label); [`Reason::as_status_reason`]
/// gives the exact wire value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 400: the request was malformed (bad selector, bad body, mismatched namespace).
    BadRequest,
    /// 401: no bearer token, or one the fixture does not know.
    Unauthorized,
    /// 403: authenticated, but RBAC allows no such request.
    Forbidden,
    /// 404: no such object, or a path the fixture does not serve.
    NotFound,
    /// 405: the resource exists but does not support the verb.
    MethodNotAllowed,
    /// 409: the object already exists (create).
    AlreadyExists,
    /// 409: optimistic concurrency failed (stale resourceVersion or precondition).
    Conflict,
    /// 410: the requested resourceVersion is older than the retained history.
    Expired,
    /// 413: the request body is larger than the fixture accepts.
    RequestEntityTooLarge,
    /// 415: a patch or body content type the fixture does not understand.
    UnsupportedMediaType,
    /// 422: the object is structurally valid JSON but not a valid object of its kind.
    Invalid,
    /// 429: a bound (concurrent watches, stored objects) was reached.
    TooManyRequests,
    /// 500: the fixture itself failed.
    InternalError,
    /// 504: e.g. a list at a resourceVersion newer than the store ("Too large resource
    /// version").
    Timeout,
}

impl Reason {
    /// The HTTP status code the API server uses for this reason.
    pub fn code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Expired => 410,
            Reason::RequestEntityTooLarge => 413,
            Reason::UnsupportedMediaType => 415,
            Reason::Invalid => 422,
            Reason::TooManyRequests => 429,
            Reason::InternalError => 500,
            Reason::Timeout => 504,
        }
    }

    /// The `reason` string on the wire (`metav1.StatusReason`).
    pub fn as_status_reason(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::NotFound => "NotFound",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Expired => "Expired",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::Invalid => "Invalid",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalError => "InternalError",
            Reason::Timeout => "Timeout",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::BadRequest => "bad_request",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::AlreadyExists => "already_exists",
            Reason::Conflict => "conflict",
            Reason::Expired => "expired",
            Reason::RequestEntityTooLarge => "request_entity_too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::Invalid => "invalid",
            Reason::TooManyRequests => "too_many_requests",
            Reason::InternalError => "internal_error",
            Reason::Timeout => "timeout",
        })
    }
}

/// A failed API request: what the fixture answers instead of an object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    /// Why it failed.
    pub reason: Reason,
    /// The human message, worded like the API server's where our code might show it.
    pub message: String,
    /// `details.name`, `details.group`, `details.kind` when the error is about one object.
    pub details: Option<Box<ErrorDetails>>,
}

/// The object an [`ApiError`] is about (`metav1.StatusDetails`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetails {
    /// The object's name (may be empty for collection requests).
    pub name: String,
    /// The API group ("" for the core group).
    pub group: String,
    /// The resource, in the plural form the API server uses here (e.g. `pods`), or the
    /// Kind for `422 Invalid`.
    pub kind: String,
    /// The field errors of a `422 Invalid` (`details.causes`).
    pub causes: Vec<FieldError>,
}

/// What is wrong with one field (the API server's `field.ErrorType`); `Display` is a
/// snake_case label, [`FieldErrorKind::cause_type`] the wire `CauseType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    /// `Invalid value`.
    Invalid,
    /// `Invalid value` for a value of the wrong JSON type.
    TypeInvalid,
    /// `Required value`.
    Required,
    /// `Unsupported value` (not in the enum).
    NotSupported,
    /// `Too many` (more items than `maxItems`).
    TooMany,
    /// `Too long` (longer than `maxLength`).
    TooLong,
    /// `Forbidden`.
    Forbidden,
}

impl FieldErrorKind {
    /// The `metav1.CauseType` on the wire.
    pub fn cause_type(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
        }
    }
}

impl std::fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FieldErrorKind::Invalid => "invalid",
            FieldErrorKind::TypeInvalid => "type_invalid",
            FieldErrorKind::Required => "required",
            FieldErrorKind::NotSupported => "not_supported",
            FieldErrorKind::TooMany => "too_many",
            FieldErrorKind::TooLong => "too_long",
            FieldErrorKind::Forbidden => "forbidden",
        })
    }
}

/// One field error of a `422 Invalid`, as `field.Error`: `field` is the path
/// (`spec.dnsNameTemplates[0]`), `detail` the body (`Too many: 17: must have at most 16
/// items`); the API server's message is `field: detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path.
    pub field: String,
    /// What is wrong.
    pub kind: FieldErrorKind,
    /// The message without the path.
    pub detail: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

impl ApiError {
    /// An error with a message and no object details.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches the object the error is about.
    pub fn with_details(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.details = Some(Box::new(ErrorDetails {
            name: name.to_string(),
            group: group.to_string(),
            kind: plural.to_string(),
            causes: Vec::new(),
        }));
        self
    }

    /// `422 Invalid` for an object with field errors, worded as
    /// `Kind.group "name" is invalid: [field: detail, ...]` with the errors as
    /// `details.causes`.
    pub fn invalid_object(group: &str, kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let listed = match causes.as_slice() {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        Self {
            reason: Reason::Invalid,
            message: format!("{qualified_kind} \"{name}\" is invalid: {listed}"),
            details: Some(Box::new(ErrorDetails {
                name: name.to_string(),
                group: group.to_string(),
                kind: kind.to_string(),
                causes,
            })),
        }
    }

    /// `404 NotFound` for one object, worded as `pods "x" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            Reason::NotFound,
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// `409 AlreadyExists`, worded as `pods "x" already exists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            Reason::AlreadyExists,
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// `409 Conflict` for a stale resourceVersion, worded as the API server words it.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// `410 Expired` for a resourceVersion older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            Reason::Expired,
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    /// `422 Invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Reason::Invalid, message)
    }

    /// `500 InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::InternalError, message)
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        self.reason.code()
    }

    /// The `metav1.Status` body the API server would send.
    pub fn to_status(&self) -> Status {
        Status {
            code: Some(i32::from(self.code())),
            details: self.details.as_ref().map(|d| StatusDetails {
                name: Some(d.name.clone()).filter(|s| !s.is_empty()),
                group: Some(d.group.clone()).filter(|s| !s.is_empty()),
                kind: Some(d.kind.clone()).filter(|s| !s.is_empty()),
                causes: Some(
                    d.causes
                        .iter()
                        .map(|c| StatusCause {
                            field: Some(c.field.clone()),
                            message: Some(c.detail.clone()),
                            reason: Some(c.kind.cause_type().to_string()),
                        })
                        .collect::<Vec<_>>(),
                )
                .filter(|c| !c.is_empty()),
                ..Default::default()
            }),
            message: Some(self.message.clone()),
            reason: Some(self.reason.as_status_reason().to_string()),
            status: Some("Failure".to_string()),
            ..Default::default()
        }
    }
}

/// `pods` for the core group, `endpointslices.discovery.k8s.io` otherwise, as in the API
/// server's messages.
pub(crate) fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_status_matches_the_api_server_shape() {
        let status = ApiError::conflict("", "secrets", "ca").to_status();
        assert_eq!(status.code, Some(409));
        assert_eq!(status.reason.as_deref(), Some("Conflict"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        let details = status.details.expect("details");
        assert_eq!(details.name.as_deref(), Some("ca"));
        assert_eq!(details.kind.as_deref(), Some("secrets"));
        assert_eq!(details.group, None);
        let json = serde_json::to_value(ApiError::conflict("", "secrets", "ca").to_status())
            .expect("serialize");
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["apiVersion"], "v1");
    }

    #[test]
    fn reasons_have_snake_case_labels_and_wire_names() {
        assert_eq!(Reason::AlreadyExists.to_string(), "already_exists");
        assert_eq!(Reason::AlreadyExists.as_status_reason(), "AlreadyExists");
        assert_eq!(Reason::Expired.code(), 410);
        assert_eq!(
            ApiError::not_found("discovery.k8s.io", "endpointslices", "x").message,
            "endpointslices.discovery.k8s.io \"x\" not found"
        );
    }
}
