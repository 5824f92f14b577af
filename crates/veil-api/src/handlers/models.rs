//! Signing keys, the model registry, validation runs, and requests.

use axum::Json;
use axum::extract::{Multipart, State};
use http::StatusCode;
use veil_api_types::*;
use veil_core::records::{RequestRecord, RequestStatus, SigningKeyRecord};
use veil_core::{ModelInfo, ValidationRequest};
use veil_ml::{ClassLabels, ModelKind};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::views;

/// Largest signature part accepted.
const MAX_SIGNATURE_BYTES: usize = 1024;
/// Largest `fhe` options part accepted.
const MAX_FHE_OPTIONS_BYTES: usize = 1024;

fn key_view(k: SigningKeyRecord) -> SigningKeyView {
    SigningKeyView {
        public_key: veil_crypto::signing::PublicKey::from_bytes(&k.public_key)
            .map(|p| p.to_pem())
            .unwrap_or_default(),
        active: k.revoked_at.is_none(),
        id: k.id,
        name: k.name,
        fingerprint: k.fingerprint,
        created_at: views::time(k.created_at),
        revoked_at: k.revoked_at.map(views::time),
    }
}

fn io(i: &veil_ml::IoInfo) -> IoView {
    IoView {
        name: i.name.clone(),
        dtype: i.dtype.clone(),
        shape: i.shape.clone(),
    }
}

pub(crate) fn model_view(m: ModelInfo) -> ModelView {
    let ModelInfo {
        record: r,
        summary: s,
        signer,
    } = m;
    let (kind, classes) = match &s.kind {
        ModelKind::Classifier { classes, .. } => (
            "classifier",
            classes.as_ref().map(|c| match c {
                ClassLabels::Ints(v) => v.iter().map(|x| x.to_string()).collect(),
                ClassLabels::Strings(v) => v.clone(),
            }),
        ),
        ModelKind::ScoreClassifier { classes, .. } => (
            "score_classifier",
            Some((0..*classes).map(|i| i.to_string()).collect()),
        ),
        ModelKind::Regressor { .. } => ("regressor", None),
    };
    ModelView {
        name: r.name,
        version: r.version,
        owner: r.owner_email,
        sha256: r.sha256,
        size_bytes: r.size_bytes,
        created_at: views::time(r.created_at),
        signed_by: signer,
        private: r.private,
        kind: kind.into(),
        n_features: s.n_features,
        input: io(&s.input),
        outputs: s.outputs.iter().map(io).collect(),
        operators: s.operators,
        producer: s.producer,
        opset: s.opset,
        classes,
        fhe: r
            .fhe
            .as_ref()
            .and_then(|f| serde_json::from_str::<veil_core::FheSummary>(&f.summary).ok())
            .map(|f| super::fhe::info_view(&f)),
    }
}

pub(crate) fn request_view(r: RequestRecord) -> RequestView {
    RequestView {
        id: r.id,
        kind: r.kind,
        requester: r.requester,
        target: r.target,
        dataset: r.dataset,
        parameters: serde_json::from_str(&r.parameters).unwrap_or(serde_json::Value::Null),
        epsilon: r.epsilon.as_f64(),
        delta: r.delta.as_f64(),
        status: r.status.as_str().into(),
        reason: r.reason,
        result: r.result.and_then(|s| serde_json::from_str(&s).ok()),
        reviewer: r.reviewer,
        created_at: views::time(r.created_at),
        updated_at: views::time(r.updated_at),
    }
}

#[utoipa::path(get, path = "/api/v1/me/keys", tag = "models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your signing keys", body = Vec<SigningKeyView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
    ))]
pub(crate) async fn list_keys(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<SigningKeyView>>> {
    Ok(Json(
        s.core
            .list_signing_keys(&p)
            .await?
            .into_iter()
            .map(key_view)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/me/keys", tag = "models",
    security(("bearer" = [])),
    request_body = AddKeyRequest,
    responses(
        (status = 201, description = "Registered", body = SigningKeyView),
        (status = 400, description = "`invalid_input`: not an Ed25519 public key, or a bad name", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
        (status = 409, description = "`key_exists`", body = ErrorBody),
    ))]
pub(crate) async fn add_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<AddKeyRequest>,
) -> ApiResult<(StatusCode, Json<SigningKeyView>)> {
    let k = s
        .core
        .add_signing_key(&p, &req.name, &req.public_key)
        .await?;
    Ok((StatusCode::CREATED, Json(key_view(k))))
}

#[utoipa::path(delete, path = "/api/v1/me/keys/{id}", tag = "models",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn revoke_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    s.core.revoke_signing_key(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every version of every model", body = Vec<ModelView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `models:read`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<ModelView>>> {
    Ok(Json(
        s.core
            .list_models(&p)
            .await?
            .into_iter()
            .map(model_view)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), VersionParams),
    responses(
        (status = 200, description = "Inputs, outputs, operators, size, owner, signer", body = ModelView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `models:read`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionParams>,
) -> ApiResult<Json<ModelView>> {
    Ok(Json(model_view(
        s.core.get_model(&p, &name, q.version).await?,
    )))
}

#[utoipa::path(put, path = "/api/v1/models/{name}", tag = "models",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    request_body(content = ModelUploadForm, content_type = "multipart/form-data",
        description = "Parts: `onnx` (the model), optional `signature`; to publish for encrypted inference, `fhe` (JSON options) and `calibration` (CSV)"),
    responses(
        (status = 201, description = "Checked and stored (encrypted) as the next version", body = ModelView),
        (status = 400, description = "`invalid_input`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `models:manage`", body = ErrorBody),
        (status = 409, description = "`model_name_taken`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_model` (also: cannot be compiled for encrypted inference), `signature_required` or `bad_signature`", body = ErrorBody),
    ))]
pub(crate) async fn upload(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    mut form: Multipart,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    let limit = s.core.settings().model_limit_bytes;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid(format!("invalid multipart body: {}", e.body_text()))
    };
    let mut onnx = None;
    let mut signature = None;
    let mut fhe = None;
    let mut calibration = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let (max, slot) = match field.name() {
            Some("onnx") => (limit, &mut onnx),
            Some("signature") => (MAX_SIGNATURE_BYTES, &mut signature),
            Some("fhe") => (MAX_FHE_OPTIONS_BYTES, &mut fhe),
            Some("calibration") => (limit, &mut calibration),
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected form part {other:?}: send `onnx` and optionally `signature`, `fhe` and `calibration`"
                )));
            }
        };
        let mut buf = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            buf.extend_from_slice(&chunk);
            if buf.len() > max {
                return Err(ApiError::from(veil_core::CoreError::PayloadTooLarge {
                    limit: max as u64,
                }));
            }
        }
        *slot = Some(buf);
    }
    let onnx = onnx.ok_or_else(|| ApiError::invalid("the form needs an `onnx` part"))?;
    let fhe = match (fhe, calibration) {
        (None, None) => None,
        (Some(opts), Some(calibration_csv)) => {
            let opts: FhePublishOptions = serde_json::from_slice(&opts)
                .map_err(|e| ApiError::invalid(format!("invalid `fhe` options: {e}")))?;

            Some(veil_core::FhePublish {
                bits: opts.bits,
                calibration_csv,
                confirm: opts.confirm,
                ranges: opts
                    .ranges
                    .map(|r| r.into_iter().map(|[lo, hi]| (lo, hi)).collect()),
                accumulators: opts.accumulators,
                outputs: opts.outputs,
            })
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "publishing for encrypted inference needs a `calibration` part (CSV)",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "a `calibration` part is only used with the `fhe` part",
            ));
        }
    };
    let m = s.core.upload_model(&p, &name, onnx, signature, fhe).await?;
    Ok((StatusCode::CREATED, Json(model_view(m))))
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), VersionParams),
    responses(
        (status = 204, description = "Deleted (one version, or all)"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `models:manage` (and to own the model)", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionParams>,
) -> ApiResult<StatusCode> {
    s.core.delete_model(&p, &name, q.version).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/models/{name}/validate", tag = "models",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    request_body = ValidateRequestBody,
    responses(
        (status = 200, description = "The request: done with DP metrics, failed with a reason, or pending review", body = RequestView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `models:validate`", body = ErrorBody),
        (status = 404, description = "`model_not_found` or `dataset_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_validation`", body = ErrorBody),
    ))]
pub(crate) async fn validate(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<ValidateRequestBody>,
) -> ApiResult<Json<RequestView>> {
    let req = ValidationRequest {
        model: name,
        version: b.version,
        dataset: b.dataset,
        features: b.features,
        label: b.label,
        metrics: b.metrics,
        epsilon: b.epsilon,
        confidence: b.confidence,
    };
    // The core runs the charged part on its own task, so a client that disconnects cannot
    // cut it short.
    let r = s.core.validate(&p, &req).await?;
    Ok(Json(request_view(r)))
}

#[utoipa::path(get, path = "/api/v1/requests", tag = "requests",
    security(("bearer" = [])),
    params(RequestsQuery),
    responses(
        (status = 200, description = "Your requests (all requests for reviewers), newest first", body = Vec<RequestView>),
        (status = 400, description = "`invalid_input`: unknown status", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
    ))]
pub(crate) async fn list_requests(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiQuery(q): ApiQuery<RequestsQuery>,
) -> ApiResult<Json<Vec<RequestView>>> {
    let status = match q.status.as_deref() {
        None => None,
        Some(x) => Some(RequestStatus::parse(x).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown status {x:?}: use pending, approved, denied, running, done or failed"
            ))
        })?),
    };
    if let Some(k) = q.kind.as_deref()
        && k != "validation"
        && k != "query"
    {
        return Err(ApiError::invalid(format!(
            "unknown kind {k:?}: use validation or query"
        )));
    }
    Ok(Json(
        s.core
            .list_requests(&p, status, q.kind.as_deref())
            .await?
            .into_iter()
            .map(request_view)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/requests/{id}", tag = "requests",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    responses(
        (status = 200, description = "The request, with its result once done", body = RequestView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
        (status = 404, description = "`request_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show_request(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<RequestView>> {
    Ok(Json(request_view(s.core.get_request(&p, id).await?)))
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/approve", tag = "requests",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    responses(
        (status = 200, description = "Approved and run: done, or failed with a reason", body = RequestView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `requests:review`", body = ErrorBody),
        (status = 404, description = "`request_not_found`", body = ErrorBody),
        (status = 409, description = "`request_not_pending`", body = ErrorBody),
    ))]
pub(crate) async fn approve(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<RequestView>> {
    Ok(Json(request_view(s.core.approve_request(&p, id).await?)))
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/deny", tag = "requests",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    request_body = DenyRequestBody,
    responses(
        (status = 200, description = "Denied", body = RequestView),
        (status = 400, description = "`invalid_input`: a reason is required", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `requests:review`", body = ErrorBody),
        (status = 404, description = "`request_not_found`", body = ErrorBody),
        (status = 409, description = "`request_not_pending`", body = ErrorBody),
    ))]
pub(crate) async fn deny(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<DenyRequestBody>,
) -> ApiResult<Json<RequestView>> {
    Ok(Json(request_view(
        s.core.deny_request(&p, id, &b.reason).await?,
    )))
}
