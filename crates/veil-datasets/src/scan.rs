//! Row scans for model validation: feature matrices and labels, streamed in batches, with
//! the privacy unit's row bound applied exactly as for queries.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use futures::{Stream, StreamExt};
use veil_crypto::WrappedKey;
use veil_dp::{ColumnType, Manifest};

use crate::query::quote;
use crate::{ExecError, Storage};

/// One batch of rows: features row-major, and the label of each row.
#[derive(Debug, Clone)]
pub struct ScanBatch {
    pub rows: usize,
    pub features: Vec<f32>,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub enum Labels {
    Text(Vec<String>),
    Numbers(Vec<f64>),
}

pub type ScanStream = Pin<Box<dyn Stream<Item = Result<ScanBatch, ExecError>> + Send>>;

fn to_matrix(batch: &RecordBatch, n_features: usize) -> Result<(Vec<f32>, Labels), ExecError> {
    let rows = batch.num_rows();
    let mut features = vec![0f32; rows * n_features];
    for j in 0..n_features {
        let col =
            cast(batch.column(j), &DataType::Float32).map_err(|e| ExecError(e.to_string()))?;
        let col = col.as_primitive::<Float32Type>();
        for (i, v) in col.values().iter().enumerate() {
            features[i * n_features + j] = *v;
        }
    }
    let label = batch.column(n_features);
    let labels = match label.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let s = cast(label, &DataType::Utf8).map_err(|e| ExecError(e.to_string()))?;
            Labels::Text(
                s.as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect(),
            )
        }
        DataType::Boolean => Labels::Text(
            label
                .as_boolean()
                .iter()
                .map(|b| b.unwrap_or(false).to_string())
                .collect(),
        ),
        _ => {
            let f = cast(label, &DataType::Float64).map_err(|e| ExecError(e.to_string()))?;
            Labels::Numbers(f.as_primitive::<Float64Type>().values().to_vec())
        }
    };
    Ok((features, labels))
}

impl Storage {
    /// Streams `features` (in that order) and `label` from a dataset. The columns must be
    /// non-nullable (checked by the caller against the manifest).
    pub async fn scan(
        &self,
        file_id: &str,
        wrapped_key: &WrappedKey,
        manifest: &Manifest,
        features: &[String],
        label: &str,
    ) -> Result<ScanStream, ExecError> {
        let numeric = |c: &str| match manifest.column(c).map(|c| &c.ty) {
            Some(ColumnType::Date { .. }) => format!("CAST({} AS INT)", quote(c)),
            Some(ColumnType::Bool) => format!("CAST({} AS INT)", quote(c)),
            _ => quote(c),
        };
        let mut cols: Vec<String> = features.iter().map(|f| numeric(f)).collect();
        cols.push(quote(label));
        let select = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} AS c{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut read: Vec<String> = features.to_vec();
        read.push(label.to_string());
        read.sort_unstable();
        read.dedup();
        let sql = format!(
            "SELECT {select} FROM ({})",
            crate::query::bounded_rows(&manifest.unit, "", &read)
        );
        let ctx = self.session(file_id, wrapped_key, manifest).await?;
        let stream = ctx
            .sql(&sql)
            .await
            .map_err(|e| ExecError(e.to_string()))?
            .execute_stream()
            .await
            .map_err(|e| ExecError(e.to_string()))?;
        let n = features.len();
        let ctx = Arc::new(ctx);
        Ok(Box::pin(stream.map(move |b| {
            // Keep the session alive for as long as the stream.
            let _ = &ctx;
            let b = b.map_err(|e| ExecError(e.to_string()))?;
            let (features, labels) = to_matrix(&b, n)?;
            Ok(ScanBatch {
                rows: b.num_rows(),
                features,
                labels,
            })
        })))
    }
}
