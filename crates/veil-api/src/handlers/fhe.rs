//! Encrypted inference: the client specification of a published model, evaluation keys,
//! and runs on ciphertexts.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use http::StatusCode;
use veil_api_types::*;
use veil_core::FheSummary;
use veil_core::records::EvaluationKeyRecord;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::views;

pub(crate) fn info_view(s: &FheSummary) -> FheInfoView {
    let spec = &s.spec;
    FheInfoView {
        kind: spec.kind.clone(),
        pbs_per_sample: spec.pbs_per_sample,
        n_features: spec.n_features(),
        n_outputs: spec.output_bits.len(),
        input_bits: spec.input_bits.iter().copied().max().unwrap_or(0),
        input_levels: spec
            .quantisers
            .iter()
            .map(|q| q.levels())
            .max()
            .unwrap_or(0),
        label_agreement: spec.fidelity.label_agreement,
        mean_abs_error: spec.fidelity.mean_abs_error,
        calibration_rows: s.calibration_rows,
        log2_p_fail: spec.log2_p_fail,
        log2_p_fail_sample: spec.log2_p_fail_sample,
        outputs_per_score: spec.outputs_per_score,
        accumulators_may_wrap: spec.range_check.map(|r| [r.may_wrap, r.accumulators]),
    }
}

fn key_view(k: EvaluationKeyRecord, now: i64) -> EvaluationKeyView {
    EvaluationKeyView {
        expired: k.expires_at <= now,
        id: k.id,
        sha256: k.sha256,
        size_bytes: k.size_bytes,
        created_at: views::time(k.created_at),
        expires_at: views::time(k.expires_at),
    }
}

#[utoipa::path(get, path = "/api/v1/fhe/models/{name}", tag = "fhe",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), VersionParams),
    responses(
        (status = 200, description = "How to quantise and encrypt inputs and read outputs", body = FheModelView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `fhe:infer`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_fhe_request`: not published for encrypted inference", body = ErrorBody),
    ))]
pub(crate) async fn spec(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionParams>,
) -> ApiResult<Json<FheModelView>> {
    let (model, version, summary) = s.core.fhe_model(&p, &name, q.version).await?;
    Ok(Json(FheModelView {
        model,
        version,
        info: info_view(&summary),
        spec: serde_json::to_value(&summary.spec).map_err(ApiError::internal)?,
    }))
}

#[utoipa::path(get, path = "/api/v1/fhe/keys", tag = "fhe",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your evaluation keys on this node", body = Vec<EvaluationKeyView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `fhe:infer`", body = ErrorBody),
    ))]
pub(crate) async fn list_keys(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<EvaluationKeyView>>> {
    let now = s.core.now();
    Ok(Json(
        s.core
            .list_evaluation_keys(&p)
            .await?
            .into_iter()
            .map(|k| key_view(k, now))
            .collect(),
    ))
}

/// How long sending one evaluation key may take (256 MiB at 2.2 MB/s).
const KEY_UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

#[utoipa::path(post, path = "/api/v1/fhe/keys", tag = "fhe",
    security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A compressed TFHE evaluation key (`veil fhe keygen`)"),
    responses(
        (status = 201, description = "Stored with an id and an expiry", body = EvaluationKeyView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `fhe:infer`", body = ErrorBody),
        (status = 409, description = "`fhe_key_limit`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`malformed_ciphertext`: not a key for this node's parameters", body = ErrorBody),
        (status = 429, description = "`too_many_in_progress`: the caller is already sending a key", body = ErrorBody),
        (status = 503, description = "`busy`: the node is taking as many keys as it can at once", body = ErrorBody),
    ))]
pub(crate) async fn add_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    body: Body,
) -> ApiResult<(StatusCode, Json<EvaluationKeyView>)> {
    let limit = s.core.settings().fhe_key_limit_bytes;
    let _reserved = s.core.reserve_key_upload(&p)?;
    // The node takes few keys at once, so a sender must not hold a place for ever.
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::invalid(format!("the upload was interrupted: {e}")))?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::from(veil_core::CoreError::PayloadTooLarge {
                    limit,
                }));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(KEY_UPLOAD_DEADLINE, read)
        .await
        .map_err(|_| {
            ApiError::invalid(format!(
                "the key did not arrive within {} s; send it in one go",
                KEY_UPLOAD_DEADLINE.as_secs()
            ))
        })??;
    let k = s.core.add_evaluation_key(&p, buf.into()).await?;
    Ok((StatusCode::CREATED, Json(key_view(k, s.core.now()))))
}

#[utoipa::path(delete, path = "/api/v1/fhe/keys/{id}", tag = "fhe",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Evaluation key id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `fhe:infer`", body = ErrorBody),
        (status = 404, description = "`fhe_key_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn delete_key(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.core.delete_evaluation_key(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/fhe/models/{name}/infer", tag = "fhe",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    request_body = FheInferBody,
    responses(
        (status = 200, description = "Encrypted outputs, one per sample", body = FheInferResponse),
        (status = 400, description = "`invalid_input`: a sample is not base64", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `fhe:infer`", body = ErrorBody),
        (status = 404, description = "`model_not_found` or `fhe_key_not_found`", body = ErrorBody),
        (status = 408, description = "`timeout`: the computation ran past the node's limit", body = ErrorBody),
        (status = 410, description = "`fhe_key_expired`", body = ErrorBody),
        (status = 422, description = "`fhe_key_mismatch`, `malformed_ciphertext` or `invalid_fhe_request`", body = ErrorBody),
    ))]
pub(crate) async fn infer(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<FheInferBody>,
) -> ApiResult<Json<FheInferResponse>> {
    let samples = b
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            B64.decode(s)
                .map_err(|_| ApiError::invalid(format!("sample {} is not base64", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let core = s.core.clone();
    // The run continues (and is audited) even if the client disconnects.
    let run = detached(async move {
        core.fhe_infer(
            &p,
            veil_core::FheInferRequest {
                model: name,
                version: b.version,
                key_id: b.key_id,
                key_sha256: b.key_sha256,
                samples,
            },
        )
        .await
    })
    .await?;
    Ok(Json(FheInferResponse {
        model: run.model,
        version: run.version,
        outputs: run.outputs.iter().map(|o| B64.encode(o)).collect(),
        pbs: run.pbs,
        server_ms: run.elapsed.as_millis() as u64,
    }))
}

/// Runs a request to completion on its own task, so that a client that disconnects (dropping
/// the handler's future) cannot leave an encrypted run half done and unaudited.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = veil_core::Result<T>> + Send + 'static,
) -> ApiResult<T> {
    match tokio::spawn(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(veil_core::CoreError::Internal(format!("request task: {e}")).into()),
    }
}
