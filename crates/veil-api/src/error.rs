//! API errors: the one table from core errors to wire codes, and the error response shape.
//!
//! Internal failures are logged here with their detail and sent as a generic `internal`
//! error: nothing about the database, file paths or private data reaches a client.

use axum::Json;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use veil_api_types::{ErrorBody, ErrorCode, ErrorDetail};
use veil_core::CoreError;
use veil_core::error::{Conflict, NotFound};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
            details: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// Logs `detail` and hides it from the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "the node failed to handle this request; the operator can find details in its log",
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::Unauthenticated => ErrorCode::Unauthenticated,
            CoreError::InvalidCredentials => ErrorCode::InvalidCredentials,
            CoreError::RateLimited { .. } => ErrorCode::RateLimited,
            CoreError::TooManyInProgress { .. } => ErrorCode::TooManyInProgress,
            CoreError::PasswordChangeRequired => ErrorCode::PasswordChangeRequired,
            CoreError::Forbidden(_) => ErrorCode::Forbidden,
            CoreError::PrivilegeEscalation { .. } => ErrorCode::PrivilegeEscalation,
            CoreError::NotFound(NotFound::User) => ErrorCode::UserNotFound,
            CoreError::NotFound(NotFound::Role) => ErrorCode::RoleNotFound,
            CoreError::NotFound(NotFound::Token) => ErrorCode::TokenNotFound,
            CoreError::NotFound(NotFound::Dataset) => ErrorCode::DatasetNotFound,
            CoreError::NotFound(NotFound::Model) => ErrorCode::ModelNotFound,
            CoreError::NotFound(NotFound::Request) => ErrorCode::RequestNotFound,
            CoreError::NotFound(NotFound::SigningKey) => ErrorCode::KeyNotFound,
            CoreError::Conflict(Conflict::SigningKeyExists) => ErrorCode::KeyExists,
            CoreError::Conflict(Conflict::RequestNotPending(_)) => ErrorCode::RequestNotPending,
            CoreError::Conflict(Conflict::ModelNameTaken(_)) => ErrorCode::ModelNameTaken,
            CoreError::InvalidModel(_) => ErrorCode::InvalidModel,
            CoreError::SignatureRequired => ErrorCode::SignatureRequired,
            CoreError::BadSignature(_) => ErrorCode::BadSignature,
            CoreError::InvalidValidation(_) => ErrorCode::InvalidValidation,
            CoreError::DatasetUnavailable => ErrorCode::DatasetUnavailable,
            CoreError::Busy => ErrorCode::Busy,
            CoreError::Conflict(Conflict::DatasetExists) => ErrorCode::DatasetExists,
            CoreError::InvalidManifest(_) => ErrorCode::InvalidManifest,
            CoreError::UploadRejected { .. } => ErrorCode::UploadRejected,
            CoreError::UploadMalformed(_) => ErrorCode::UploadMalformed,
            CoreError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            CoreError::InvalidParameters(_) => ErrorCode::InvalidParameters,
            CoreError::QueryRefused(_) => ErrorCode::QueryRefused,
            CoreError::QueryFailed => ErrorCode::QueryFailed,
            CoreError::Conflict(Conflict::UserExists) => ErrorCode::UserExists,
            CoreError::Conflict(Conflict::RoleExists) => ErrorCode::RoleExists,
            CoreError::Conflict(Conflict::TokenNameTaken) => ErrorCode::TokenNameTaken,
            CoreError::Conflict(Conflict::RoleInUse) => ErrorCode::RoleInUse,
            CoreError::Conflict(Conflict::PresetRole) => ErrorCode::PresetRole,
            CoreError::Conflict(Conflict::LastOwner) => ErrorCode::LastOwner,
            CoreError::Conflict(Conflict::SelfAction(_)) => ErrorCode::CannotModifySelf,
            CoreError::WeakPassword(_) => ErrorCode::WeakPassword,
            CoreError::InvalidInput(_) => ErrorCode::InvalidInput,
            CoreError::NoBudget | CoreError::BudgetExhausted { .. } => ErrorCode::BudgetExhausted,
            CoreError::NotFound(NotFound::EvaluationKey) => ErrorCode::FheKeyNotFound,
            CoreError::FheKeyExpired(_) => ErrorCode::FheKeyExpired,
            CoreError::FheKeyMismatch(_) => ErrorCode::FheKeyMismatch,
            CoreError::MalformedCiphertext(_) => ErrorCode::MalformedCiphertext,
            CoreError::InvalidFheRequest(_) => ErrorCode::InvalidFheRequest,
            CoreError::FheDisclosureUnconfirmed { .. } => ErrorCode::FheDisclosureUnconfirmed,
            CoreError::Conflict(Conflict::TooManyFheKeys(_)) => ErrorCode::FheKeyLimit,
            CoreError::FheTimedOut(_) => ErrorCode::Timeout,
            CoreError::Internal(detail) => return ApiError::internal(detail),
        };
        let retry_after_secs = match &e {
            CoreError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            CoreError::TooManyInProgress { .. } => Some(1),
            CoreError::Busy => Some(2),
            _ => None,
        };
        let details = match &e {
            CoreError::UploadRejected { violations, count } => Some(serde_json::json!({
                "problems": count,
                "rows": violations.iter().map(|v| serde_json::json!({
                    "row": v.row, "column": v.column, "reason": v.reason,
                })).collect::<Vec<_>>(),
            })),
            CoreError::FheDisclosureUnconfirmed { digest, disclosure } => Some(serde_json::json!({
                "digest": digest,
                "disclosure": disclosure,
            })),
            _ => None,
        };
        Self {
            code,
            message: e.to_string(),
            retry_after_secs,
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
                retry_after_secs: self.retry_after_secs,
                details: self.details,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Gives the timeout layer's bare 408 the standard error body.
pub(crate) async fn timeout_body(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::REQUEST_TIMEOUT
        && !resp.headers().contains_key(http::header::CONTENT_TYPE)
    {
        return ApiError::new(
            ErrorCode::Timeout,
            "the request took longer than this node allows",
        )
        .into_response();
    }
    resp
}

/// Asks an HTTP/1 client to drop the connection after an error answer to a request that
/// carried a body.
///
/// Handlers that stream their body (model and dataset uploads) may answer `forbidden` or
/// `payload_too_large` before reading it; hyper then closes the connection to discard the
/// unread bytes. Without `Connection: close` the client has already put that connection back in
/// its pool, and its next request on it fails with a broken pipe.
pub(crate) async fn close_after_error_with_body(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let http1 = req.version() <= http::Version::HTTP_11;
    let mut resp = next.run(req).await;
    if has_body && http1 && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

pub type ApiResult<T> = Result<T, ApiError>;
