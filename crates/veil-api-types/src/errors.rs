//! Error codes: the one table from failure kinds to stable snake_case codes and HTTP statuses.
//!
//! Clients match on `code`, never on `message` (which is for people and may change). Codes are
//! never reused for a different meaning; a retired code stays reserved.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $status:literal, $doc:literal), )+) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )+
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )+ }
            }

            /// The HTTP status this code is sent with.
            pub const fn status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )+ }
            }

            pub const fn description(self) -> &'static str {
                match self { $( ErrorCode::$variant => $doc, )+ }
            }

            pub fn parse(code: &str) -> Option<Self> {
                match code { $( $code => Some(ErrorCode::$variant), )+ _ => None }
            }
        }
    };
}

error_codes! {
    Unauthenticated => ("unauthenticated", 401, "The bearer token is missing, malformed, unknown, expired or revoked."),
    InvalidCredentials => ("invalid_credentials", 401, "Wrong email or password."),
    RateLimited => ("rate_limited", 429, "Too many failed logins, or more encrypted samples than the node allows a user per window; retry after the time given."),
    TooManyInProgress => ("too_many_in_progress", 429, "The caller already has as many queries (or other operations of the kind) running as the node allows; retry when one ends."),
    PasswordChangeRequired => ("password_change_required", 403, "The account still has its one-time password; change it first."),
    Forbidden => ("forbidden", 403, "The caller's role lacks the permission this endpoint needs."),
    PrivilegeEscalation => ("privilege_escalation", 403, "The request would grant permissions the caller does not hold."),
    BudgetExhausted => ("budget_exhausted", 403, "The privacy budget cannot pay for this request; nothing was computed."),
    NotFound => ("not_found", 404, "No such endpoint."),
    UserNotFound => ("user_not_found", 404, "No such user."),
    DatasetNotFound => ("dataset_not_found", 404, "No such dataset."),
    ModelNotFound => ("model_not_found", 404, "No such model (or model version)."),
    RequestNotFound => ("request_not_found", 404, "No such request (or not yours)."),
    KeyNotFound => ("key_not_found", 404, "No such active signing key of yours."),
    FheKeyNotFound => ("fhe_key_not_found", 404, "No such evaluation key of yours."),
    FheKeyExpired => ("fhe_key_expired", 410, "The evaluation key has expired; upload it again."),
    RoleNotFound => ("role_not_found", 404, "No such role."),
    TokenNotFound => ("token_not_found", 404, "No such active token of yours."),
    MethodNotAllowed => ("method_not_allowed", 405, "The endpoint does not accept this HTTP method."),
    UserExists => ("user_exists", 409, "A user with this email already exists."),
    RoleExists => ("role_exists", 409, "A role with this name already exists."),
    DatasetExists => ("dataset_exists", 409, "A dataset with this name already exists."),
    KeyExists => ("key_exists", 409, "The key is already registered, or you have an active key with this name."),
    RequestNotPending => ("request_not_pending", 409, "Only pending requests can be approved or denied."),
    ModelNameTaken => ("model_name_taken", 409, "The model name belongs to another user."),
    TokenNameTaken => ("token_name_taken", 409, "You already have an active token with this name."),
    RoleInUse => ("role_in_use", 409, "The role is still assigned to users."),
    PresetRole => ("preset_role", 409, "Preset roles cannot be created, changed or deleted."),
    LastOwner => ("last_owner", 409, "The change would leave the node without an enabled owner."),
    CannotModifySelf => ("cannot_modify_self", 409, "Users cannot act on themselves: disable or change the role of their own account, or approve their own request."),
    InvalidInput => ("invalid_input", 400, "A field is missing, has the wrong type, or fails validation."),
    MalformedJson => ("malformed_json", 400, "The body is not valid JSON."),
    UnsupportedMediaType => ("unsupported_media_type", 415, "The body must be sent as application/json."),
    PayloadTooLarge => ("payload_too_large", 413, "The body exceeds the node's size limit."),
    WeakPassword => ("weak_password", 422, "The new password does not meet the password policy."),
    InvalidManifest => ("invalid_manifest", 400, "The dataset schema manifest is invalid."),
    UploadRejected => ("upload_rejected", 422, "Rows break the manifest; `details` lists the first ones. Nothing was stored."),
    UploadMalformed => ("upload_malformed", 422, "The file cannot be read as the declared format or its columns do not match the manifest."),
    InvalidParameters => ("invalid_parameters", 400, "ε, δ or the confidence level is outside the accepted range (ε from 1e-6 to 1e6, δ 0 or from 1e-15 below 1, confidence between 0.5 and 1). Nothing was charged."),
    QueryRefused => ("query_refused", 422, "The query is outside the supported DP subset, or its privacy parameters cannot be met. Nothing was charged."),
    QueryFailed => ("query_failed", 500, "The query failed after its privacy cost was charged."),
    InvalidModel => ("invalid_model", 422, "The model is not valid ONNX, or uses an operator or shape this node does not run."),
    SignatureRequired => ("signature_required", 422, "This node requires uploads signed by a key registered to the uploader."),
    BadSignature => ("bad_signature", 422, "The signature is malformed or does not verify with the uploader's keys."),
    InvalidValidation => ("invalid_validation", 422, "The validation request does not fit the model or the dataset."),
    FheKeyMismatch => ("fhe_key_mismatch", 422, "The ciphertexts were not made for the evaluation key named (fingerprints differ)."),
    MalformedCiphertext => ("malformed_ciphertext", 422, "A ciphertext or evaluation key does not parse or was made with other parameters."),
    FheDisclosureUnconfirmed => ("fhe_disclosure_unconfirmed", 409, "Publishing for encrypted inference needs the creator's confirmation of what the client spec reveals: `details` holds the disclosure and the digest to send back as `confirm`. Nothing was stored."),
    InvalidFheRequest => ("invalid_fhe_request", 422, "The model is not published for encrypted inference, or the inputs do not fit it."),
    FheKeyLimit => ("fhe_key_limit", 409, "You hold the most evaluation keys a user may; delete one first."),
    Timeout => ("timeout", 408, "The request took longer than the node allows."),
    Busy => ("busy", 503, "The node is overloaded and could not take the request; nothing changed. Retry after the time given."),
    DatasetUnavailable => ("dataset_unavailable", 503, "The dataset's data is not on this node (or not readable by it). Nothing was charged."),
    Internal => ("internal", 500, "The node failed; details are in its log, not in this response."),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error response: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code to match on.
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// Seconds to wait before retrying (`rate_limited` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Structured detail for some codes (`upload_rejected`: the offending rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert!(
                c.as_str()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c} is not snake_case"
            );
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!((400..600).contains(&c.status()));
        }
    }
}
