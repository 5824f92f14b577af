//! Datasets: upload (streamed multipart), catalogue, mock rows, DP queries.

use axum::Json;
use axum::extract::{Multipart, State};
use http::StatusCode;
use veil_api_types::*;
use veil_core::{DatasetInfo, QueryOutcome};
use veil_datasets::Format;
use veil_dp::manifest::{ColumnType, format_date};
use veil_dp::mock::MockValue;
use veil_dp::{Cell, MechanismChoice, PrivacyUnit, QueryOptions};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::views;

/// Largest manifest accepted in an upload form.
const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

pub(crate) fn dataset_view(d: DatasetInfo) -> DatasetView {
    let DatasetInfo {
        record: r,
        manifest: m,
        show_size,
    } = d;
    let columns = m
        .columns
        .iter()
        .map(|c| ColumnView {
            name: c.name.clone(),
            ty: c.ty.name().to_string(),
            nullable: c.nullable,
            bounds: match &c.ty {
                ColumnType::Int { lo, hi } => Some(vec![(*lo).into(), (*hi).into()]),
                ColumnType::Float { lo, hi } => Some(vec![(*lo).into(), (*hi).into()]),
                ColumnType::Date { lo, hi } => {
                    Some(vec![format_date(*lo).into(), format_date(*hi).into()])
                }
                _ => None,
            },
            categories: match &c.ty {
                ColumnType::Category { categories } => Some(categories.clone()),
                _ => None,
            },
            description: c.description.clone(),
        })
        .collect();
    DatasetView {
        name: r.name,
        description: r.description,
        privacy_unit: match &m.unit {
            PrivacyUnit::Row => PrivacyUnitView {
                kind: "row".into(),
                column: None,
                max_rows: 1,
            },
            PrivacyUnit::Id { column, max_rows } => PrivacyUnitView {
                kind: "id".into(),
                column: Some(column.clone()),
                max_rows: *max_rows,
            },
        },
        columns,
        created_by: r.created_by,
        created_at: views::time(r.created_at),
        policy: r.policy,
        rows: show_size.then_some(r.rows),
        bytes_stored: show_size.then_some(r.bytes_stored),
        epsilon_cap: r.epsilon_cap.map(|e| e.as_f64()),
        delta_cap: r.delta_cap.map(|d| d.as_f64()),
        epsilon_spent: r.epsilon_spent.as_f64(),
        delta_spent: r.delta_spent.as_f64(),
    }
}

#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dataset catalogue: names, schemas, bounds, privacy units", body = Vec<DatasetView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:read-metadata`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<DatasetView>>> {
    Ok(Json(
        s.core
            .list_datasets(&p)
            .await?
            .into_iter()
            .map(dataset_view)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    responses(
        (status = 200, description = "Schema, bounds and privacy unit; the exact row count only for `datasets:manage`", body = DatasetView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:read-metadata`", body = ErrorBody),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<DatasetView>> {
    Ok(Json(dataset_view(s.core.get_dataset(&p, &name).await?)))
}

#[utoipa::path(put, path = "/api/v1/datasets/{name}", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name"), UploadParams),
    request_body(content = UploadForm, content_type = "multipart/form-data",
        description = "Two parts, in this order: `manifest` (TOML) and `file` (the data)"),
    responses(
        (status = 201, description = "Stored, encrypted", body = DatasetView),
        (status = 400, description = "`invalid_manifest` or `invalid_input`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:manage`", body = ErrorBody),
        (status = 409, description = "`dataset_exists`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`upload_rejected` (with the offending rows in `details`) or `upload_malformed`", body = ErrorBody),
    ))]
pub(crate) async fn upload(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<UploadParams>,
    mut form: Multipart,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    let format = match params.format.as_deref() {
        None => Format::Csv,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::invalid(format!("unknown format {f:?}: use csv or parquet"))
        })?,
    };
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid(format!("invalid multipart body: {}", e.body_text()))
    };
    let manifest_field =
        form.next_field().await.map_err(bad_form)?.ok_or_else(|| {
            ApiError::invalid("the form needs a `manifest` part, then a `file` part")
        })?;
    if manifest_field.name() != Some("manifest") {
        return Err(ApiError::invalid(
            "the first part must be `manifest` (TOML), then `file`",
        ));
    }
    let mut manifest = Vec::new();
    let mut manifest_field = manifest_field;
    while let Some(chunk) = manifest_field.chunk().await.map_err(bad_form)? {
        manifest.extend_from_slice(&chunk);
        if manifest.len() > MAX_MANIFEST_BYTES {
            return Err(ApiError::invalid("the manifest is larger than 1 MiB"));
        }
    }
    // The next part can only be read once this one is released.
    drop(manifest_field);
    let manifest =
        String::from_utf8(manifest).map_err(|_| ApiError::invalid("the manifest is not UTF-8"))?;
    let file = form
        .next_field()
        .await
        .map_err(bad_form)?
        .ok_or_else(|| ApiError::invalid("the form needs a `file` part after `manifest`"))?;
    if file.name() != Some("file") {
        return Err(ApiError::invalid("the second part must be `file`"));
    }
    let body = futures::stream::unfold(file, |mut f| async move {
        match f.chunk().await {
            Ok(Some(b)) => Some((Ok(b), f)),
            Ok(None) => None,
            Err(e) => Some((Err(e.body_text()), f)),
        }
    });
    let record = s
        .core
        .upload_dataset(&p, &name, &manifest, format, body)
        .await?;
    let info = s.core.get_dataset(&p, &record.name).await?;
    Ok((StatusCode::CREATED, Json(dataset_view(info))))
}

#[utoipa::path(delete, path = "/api/v1/datasets/{name}", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    responses(
        (status = 204, description = "Deleted: its key is destroyed and its file removed"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:manage`", body = ErrorBody),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.core.delete_dataset(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/v1/datasets/{name}", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    request_body = DatasetUpdateRequest,
    responses(
        (status = 200, description = "The updated dataset", body = DatasetView),
        (status = 400, description = "`invalid_input`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:manage`", body = ErrorBody),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn update(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<DatasetUpdateRequest>,
) -> ApiResult<Json<DatasetView>> {
    s.core
        .update_dataset(
            &p,
            &name,
            req.epsilon_cap,
            req.delta_cap,
            req.policy.as_deref(),
        )
        .await?;
    Ok(Json(dataset_view(s.core.get_dataset(&p, &name).await?)))
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}/mock", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name"), MockParams),
    responses(
        (status = 200, description = "Synthetic rows drawn from the declared schema only", body = MockView),
        (status = 400, description = "`invalid_input`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `datasets:mock`", body = ErrorBody),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn mock(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<MockParams>,
) -> ApiResult<Json<MockView>> {
    let m = s.core.mock_dataset(&p, &name, q.rows.unwrap_or(10)).await?;
    Ok(Json(MockView {
        synthetic: true,
        columns: m.columns,
        rows: m
            .rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| match v {
                        MockValue::Int(i) => i.into(),
                        MockValue::Float(f) => f.into(),
                        MockValue::Text(t) => t.into(),
                        MockValue::Bool(b) => b.into(),
                        MockValue::Null => serde_json::Value::Null,
                    })
                    .collect()
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/datasets/{name}/query", tag = "datasets",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Dataset name")),
    request_body = QueryRequest,
    responses(
        (status = 200, description = "Noisy answers with confidence intervals, the mechanism and its scale, the charge and the budget left", body = QueryResponse),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `queries:run`) or `budget_exhausted` (nothing was computed)", body = ErrorBody),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody),
        (status = 400, description = "`invalid_parameters`: ε, δ or the confidence level out of range (nothing was charged)", body = ErrorBody),
        (status = 422, description = "`query_refused`: outside the DP subset, with the reason", body = ErrorBody),
        (status = 500, description = "`query_failed`: the cost was charged; the one fixed failure after a charge, whatever happened", body = ErrorBody),
        (status = 503, description = "`dataset_unavailable`: the dataset's data is not on this node (nothing was charged)", body = ErrorBody),
    ))]
pub(crate) async fn query(
    State(s): State<AppState>,
    Caller(p): Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<QueryRequest>,
) -> ApiResult<Json<QueryResponse>> {
    let mechanism = match req.mechanism.as_deref() {
        None | Some("auto") => MechanismChoice::Auto,
        Some("laplace") => MechanismChoice::Laplace,
        Some("gaussian") => MechanismChoice::Gaussian,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown mechanism {other:?}: use auto, laplace or gaussian"
            )));
        }
    };
    let options = QueryOptions {
        epsilon: req.epsilon,
        delta: req.delta,
        confidence: req.confidence.unwrap_or(0.95),
        mechanism,
    };
    // The request id (the client's `x-request-id`, or one the node made) is kept with the
    // query's record, so a client that lost the answer finds it among its requests.
    let client_ref = request_id.and_then(|r| r.0.header_value().to_str().ok().map(str::to_string));
    let QueryOutcome {
        released,
        receipt,
        request_id,
    } = s
        .core
        .query(&p, &name, &req.sql, options, client_ref)
        .await?;
    Ok(Json(QueryResponse {
        request_id,
        columns: released
            .columns()
            .iter()
            .map(|c| ResultColumnView {
                name: c.name.clone(),
                kind: c.kind.to_string(),
                expression: c.expression.clone(),
                mechanism: c.mechanism.clone(),
                noise_scales: c.noise_scales.clone(),
                epsilon: c.epsilon,
            })
            .collect(),
        rows: released
            .rows()
            .iter()
            .map(|row| {
                row.iter()
                    .map(|c| match c {
                        Cell::Key { value } => CellView::Key {
                            value: value.clone(),
                        },
                        Cell::Value {
                            value,
                            low,
                            high,
                            rank_error,
                        } => CellView::Value {
                            value: *value,
                            low: *low,
                            high: *high,
                            rank_error: *rank_error,
                        },
                    })
                    .collect()
            })
            .collect(),
        // What was charged (the privacy maps' sum, rounded up to whole units).
        epsilon_spent: receipt.epsilon.as_f64(),
        delta_spent: receipt.delta.as_f64(),
        confidence: released.confidence(),
        mechanism: released.mechanism().to_string(),
        notes: released.notes().to_vec(),
        budgets: receipt.budgets.into_iter().map(views::budget).collect(),
    }))
}
