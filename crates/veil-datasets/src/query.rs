//! Query execution: the plan's exact measures, rendered as DataFusion SQL over the encrypted
//! file, read back into an [`ExactResult`].
//!
//! The SQL is generated here from the validated plan, never from the analyst's text, so it
//! contains only quoted manifest column names and typed literals. Each query gets a fresh
//! DataFusion runtime: no caches of decrypted metadata or statistics outlive it, and the
//! file's key is handed over through an `EncryptionFactory` rather than table options (which
//! are printed in plans and debug output).

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Int64Type};
use async_trait::async_trait;
use datafusion::config::{EncryptionFactoryOptions, TableParquetOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use veil_crypto::DataKey;
use veil_dp::exact::{ExactResult, KeyValue, Measure, measures as plan_measures};
use veil_dp::plan::{DateUnit, Filter, GroupKey, KeySet, Literal};
use veil_dp::{CostedPlan, PrivacyUnit};

/// The table name inside the per-query session.
const TABLE: &str = "data";

#[derive(Debug, thiserror::Error)]
#[error("query execution failed: {0}")]
pub struct ExecError(pub String);

/// Gives DataFusion the file's decryption key, and nothing to anyone who prints it.
struct Keys {
    key: DataKey,
    aad: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

#[async_trait]
impl EncryptionFactory for Keys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &arrow::datatypes::SchemaRef,
        _path: &datafusion::object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileEncryptionProperties>>> {
        // Queries never write.
        Ok(None)
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _path: &datafusion::object_store::path::Path,
    ) -> datafusion::error::Result<Option<Arc<FileDecryptionProperties>>> {
        FileDecryptionProperties::builder(self.key.expose().to_vec())
            .with_aad_prefix(self.aad.clone())
            .build()
            .map(Some)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

pub(crate) fn quote(col: &str) -> String {
    // Column names are manifest identifiers ([a-z][a-z0-9_]*), so this quoting is exact.
    format!("\"{col}\"")
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => {
            let s = format!("{f}");
            if s.contains('.') || s.contains('e') {
                s
            } else {
                format!("{s}.0")
            }
        }
        Literal::Str(s) => format!("'{}'", s.replace('\'', "''")),
        Literal::Date(d) => format!("CAST('{}' AS DATE)", veil_dp::manifest::format_date(*d)),
        Literal::Bool(b) => {
            if *b {
                "TRUE".into()
            } else {
                "FALSE".into()
            }
        }
    }
}

/// Renders a filter flat: an n-ary AND or OR is one parenthesised list and a leaf carries no
/// parentheses of its own (comparisons, IN, IS and BETWEEN bind tighter than AND and OR), so
/// the text nests only as deep as the filter's AND/OR depth, which the planner bounds.
fn filter_sql(f: &Filter) -> String {
    let join = |xs: &[Filter], op: &str| {
        if xs.is_empty() {
            // Never built by the planner; the neutral element keeps the SQL valid.
            return if op == " AND " { "TRUE" } else { "FALSE" }.to_string();
        }
        format!(
            "({})",
            xs.iter().map(filter_sql).collect::<Vec<_>>().join(op)
        )
    };
    match f {
        Filter::And(xs) => join(xs, " AND "),
        Filter::Or(xs) => join(xs, " OR "),
        Filter::Cmp { column, op, value } => {
            format!("{} {} {}", quote(column), op.sql(), literal(value))
        }
        Filter::In {
            column,
            values,
            negated,
        } => format!(
            "{} {}IN ({})",
            quote(column),
            if *negated { "NOT " } else { "" },
            values.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        // Parenthesised: its own AND must not read as the list's.
        Filter::Between {
            column,
            low,
            high,
            negated,
        } => format!(
            "({} {}BETWEEN {} AND {})",
            quote(column),
            if *negated { "NOT " } else { "" },
            literal(low),
            literal(high)
        ),
        Filter::IsNull { column, negated } => format!(
            "{} IS {}NULL",
            quote(column),
            if *negated { "NOT " } else { "" }
        ),
        Filter::IsBool { column, value } => format!(
            "{} = {}",
            quote(column),
            if *value { "TRUE" } else { "FALSE" }
        ),
    }
}

/// A date bucket's first day, computed on the day number (see [`crate::dates`]).
fn key_sql(k: &GroupKey) -> String {
    match &k.keys {
        KeySet::Dates { unit, .. } => match unit {
            DateUnit::Day => quote(&k.column),
            DateUnit::Month => format!("{}({})", crate::dates::MONTH_START, quote(&k.column)),
            DateUnit::Year => format!("{}({})", crate::dates::YEAR_START, quote(&k.column)),
        },
        _ => quote(&k.column),
    }
}

fn num(x: f64) -> String {
    let s = format!("{x}");
    if s.contains('.') || s.contains('e') || s.contains("inf") {
        s
    } else {
        format!("{s}.0")
    }
}

/// SQL for the fixed-point image of a clamped column, `round(clamp(col) · 10^exp)`, through
/// the fused [`crate::fixed`] function.
fn fixed_sql(column: &str, lo: f64, hi: f64, exp: i32) -> String {
    format!(
        "{}({}, {}, {}, {})",
        crate::fixed::NAME,
        quote(column),
        num(lo),
        num(hi),
        num(10f64.powi(exp))
    )
}

/// The rows the measures are computed over: filtered, and bounded per privacy unit.
fn base_sql(plan: &veil_dp::QueryPlan) -> String {
    let filter = plan
        .filter
        .as_ref()
        .map(|f| format!(" WHERE {}", filter_sql(f)))
        .unwrap_or_default();
    bounded_rows(&plan.unit, &filter, &plan.columns_read())
}

/// `SELECT *` over the table's rows (after `filter`, a `WHERE` clause or empty), keeping at
/// most `max_rows` rows per privacy unit. Every read of private rows (queries and model
/// scans) goes through this.
///
/// Which rows of a unit are kept is a function of that unit's own rows only: they are ranked
/// by the keyed row key of the columns the read uses (`columns`; rows equal on all of them
/// are interchangeable for it), then by those columns, under a key fresh for each session
/// (see [`crate::rowkey`]). So one unit moves every measure by at most `max_rows` rows, and
/// no other unit's presence changes which of its rows count.
pub(crate) fn bounded_rows(unit: &PrivacyUnit, filter: &str, columns: &[String]) -> String {
    match unit {
        PrivacyUnit::Row => format!("SELECT * FROM {TABLE}{filter}"),
        PrivacyUnit::Id { column, max_rows } => {
            let order = if columns.is_empty() {
                // The read uses no column: every row is the same to it.
                String::new()
            } else {
                let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
                format!(
                    " ORDER BY {}({}), {}",
                    crate::rowkey::NAME,
                    cols.join(", "),
                    cols.join(", ")
                )
            };
            format!(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {}{order}) AS __veil_rn FROM {TABLE}{filter}) WHERE __veil_rn <= {max_rows}",
                quote(column)
            )
        }
    }
}

fn numeric_sql(m: &veil_dp::Manifest, col: &str) -> String {
    match m.column(col).map(|c| &c.ty) {
        Some(veil_dp::ColumnType::Date { .. }) => format!("CAST({} AS INT)", quote(col)),
        _ => quote(col),
    }
}

/// Renders the scalar-measure query and one query per histogram measure.
fn render(
    plan: &veil_dp::QueryPlan,
    manifest: &veil_dp::Manifest,
    measures: &[Measure],
) -> (String, Vec<(usize, String)>) {
    let base = base_sql(plan);
    let keys: Vec<String> = plan
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} AS k{i}", key_sql(k)))
        .collect();
    let group_by = if plan.keys.is_empty() {
        String::new()
    } else {
        format!(
            " GROUP BY {}",
            (0..plan.keys.len())
                .map(|i| format!("k{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut selects = keys.clone();
    let mut histograms = Vec::new();
    for (i, m) in measures.iter().enumerate() {
        match m {
            Measure::Rows => selects.push(format!("COUNT(*) AS m{i}")),
            Measure::NonNull(c) => selects.push(format!("COUNT({}) AS m{i}", quote(c))),
            Measure::Sum { column, fixed, .. } => {
                let (lo, hi) = m.bounds().unwrap_or((0.0, 0.0));
                let expr = fixed_sql(column, lo, hi, fixed.exp);
                selects.push(format!("SUM({expr}) AS m{i}"));
            }
            Measure::SumSquares { column, fixed, .. } => {
                let (lo, hi) = m.bounds().unwrap_or((0.0, 0.0));
                let expr = fixed_sql(column, lo, hi, fixed.exp);
                selects.push(format!("SUM({expr} * {expr}) AS m{i}"));
            }
            Measure::Histogram {
                column, candidates, ..
            } => {
                let (lo, hi) = m.bounds().unwrap_or((0.0, 0.0));
                let width = if *candidates > 1 {
                    (hi - lo) / (*candidates - 1) as f64
                } else {
                    1.0
                };
                let value = format!(
                    "LEAST(GREATEST(CAST({} AS DOUBLE), {}), {})",
                    numeric_sql(manifest, column),
                    num(lo),
                    num(hi)
                );
                let bucket = format!(
                    "CAST(ROUND(({value} - {}) / {}) AS BIGINT)",
                    num(lo),
                    num(width)
                );
                let mut sel = keys.clone();
                sel.push(format!("{bucket} AS b"));
                sel.push("COUNT(*) AS n".into());
                let mut gb: Vec<String> = (0..plan.keys.len()).map(|i| format!("k{i}")).collect();
                gb.push("b".into());
                histograms.push((
                    i,
                    format!(
                        "SELECT {} FROM ({base}) WHERE {} IS NOT NULL GROUP BY {}",
                        sel.join(", "),
                        quote(column),
                        gb.join(", ")
                    ),
                ));
            }
        }
    }
    let scalar = if selects.len() > keys.len() {
        format!("SELECT {} FROM ({base}){group_by}", selects.join(", "))
    } else {
        String::new()
    };
    (scalar, histograms)
}

fn key_value(col: &dyn Array, row: usize) -> Result<KeyValue, ExecError> {
    if col.is_null(row) {
        return Ok(KeyValue::Null);
    }
    Ok(match col.data_type() {
        DataType::Utf8 => KeyValue::Str(col.as_string::<i32>().value(row).to_string()),
        DataType::Utf8View => KeyValue::Str(col.as_string_view().value(row).to_string()),
        DataType::LargeUtf8 => KeyValue::Str(col.as_string::<i64>().value(row).to_string()),
        DataType::Int64 => KeyValue::Int(col.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => KeyValue::Bool(col.as_boolean().value(row)),
        DataType::Date32 => KeyValue::Date(col.as_primitive::<Date32Type>().value(row)),
        other => return Err(ExecError(format!("unexpected key type {other}"))),
    })
}

fn int_value(col: &dyn Array, row: usize) -> Result<i64, ExecError> {
    if col.is_null(row) {
        return Ok(0);
    }
    match col.data_type() {
        DataType::Int64 => Ok(col.as_primitive::<Int64Type>().value(row)),
        other => Err(ExecError(format!("unexpected measure type {other}"))),
    }
}

/// A dataset file as the executor needs it.
#[derive(Debug)]
pub struct FileRef {
    pub path: std::path::PathBuf,
    /// The file's data key and AAD prefix; `None` only for [`execute_unencrypted`].
    pub key: Option<(DataKey, String)>,
}

/// A fresh DataFusion session over one dataset file (encrypted unless `file.key` is `None`),
/// registered as `data`.
pub(crate) async fn session(
    file: FileRef,
    manifest: &veil_dp::Manifest,
    threads: usize,
    row_key: veil_crypto::prf::Prf,
) -> Result<SessionContext, ExecError> {
    let err = |e: datafusion::error::DataFusionError| ExecError(e.to_string());
    let runtime = RuntimeEnvBuilder::new()
        .with_object_list_cache_limit(0)
        .with_file_statistics_cache_limit(0)
        .build_arc()
        .map_err(err)?;
    let mut options = TableParquetOptions::default();
    if let Some((key, aad)) = file.key {
        runtime.register_parquet_encryption_factory(
            "veil",
            Arc::new(Keys {
                key,
                aad: aad.into_bytes(),
            }),
        );
        options.crypto.factory_id = Some("veil".into());
    }
    let config = SessionConfig::new()
        .with_target_partitions(threads.max(1))
        .with_collect_statistics(false);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udf(crate::fixed::udf());
    for f in crate::dates::udfs() {
        ctx.register_udf(f);
    }
    // A fresh key per session (so per query or scan) outside tests.
    ctx.register_udf(crate::rowkey::udf_with(row_key));
    let listing = ListingOptions::new(Arc::new(ParquetFormat::new().with_options(options)))
        .with_file_extension(".parquet");
    let url = ListingTableUrl::parse(file.path.to_string_lossy()).map_err(err)?;
    let schema = crate::schema::query_schema(manifest);
    let table = ListingTable::try_new(
        ListingTableConfig::new(url)
            .with_listing_options(listing)
            .with_schema(schema),
    )
    .map_err(err)?;
    ctx.register_table(TABLE, Arc::new(table)).map_err(err)?;
    Ok(ctx)
}

/// A query whose SQL has been rendered, parsed and planned (logically and physically)
/// against its file, without reading a row. What is left to fail after this is the node
/// itself (a file removed mid-run, a full disk), never a property of the rows.
pub struct PreparedQuery {
    /// Keeps the session (its runtime, keys and functions) alive with the plans.
    _ctx: SessionContext,
    scalar: Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    histograms: Vec<(usize, Arc<dyn datafusion::physical_plan::ExecutionPlan>)>,
    measures: Vec<Measure>,
    nkeys: usize,
    task: Arc<datafusion::execution::TaskContext>,
    /// The runtime the rows are read on.
    executor: tokio::runtime::Handle,
}

impl std::fmt::Debug for PreparedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedQuery")
            .field("measures", &self.measures.len())
            .field("histograms", &self.histograms.len())
            .finish_non_exhaustive()
    }
}

/// Renders and plans `costed`'s measures in a session from [`session`].
pub(crate) async fn prepare(
    ctx: SessionContext,
    manifest: &veil_dp::Manifest,
    costed: &CostedPlan,
    executor: tokio::runtime::Handle,
) -> Result<PreparedQuery, ExecError> {
    let err = |e: datafusion::error::DataFusionError| ExecError(e.to_string());
    let measures = plan_measures(&costed.plan);
    let (scalar, histograms) = render(&costed.plan, manifest, &measures);
    let scalar = if scalar.is_empty() {
        None
    } else {
        Some(
            ctx.sql(&scalar)
                .await
                .map_err(err)?
                .create_physical_plan()
                .await
                .map_err(err)?,
        )
    };
    let mut planned = Vec::with_capacity(histograms.len());
    for (mi, sql) in histograms {
        let plan = ctx
            .sql(&sql)
            .await
            .map_err(err)?
            .create_physical_plan()
            .await
            .map_err(err)?;
        planned.push((mi, plan));
    }
    Ok(PreparedQuery {
        task: ctx.task_ctx(),
        _ctx: ctx,
        scalar,
        histograms: planned,
        measures,
        nkeys: costed.plan.keys.len(),
        executor,
    })
}

impl PreparedQuery {
    /// Reads the rows and computes the exact measures, on the query runtime.
    pub async fn run(self) -> Result<ExactResult, ExecError> {
        let executor = self.executor.clone();
        executor
            .spawn(self.run_here())
            .await
            .map_err(|e| ExecError(format!("the query task ended abnormally: {e}")))?
    }

    async fn run_here(self) -> Result<ExactResult, ExecError> {
        let err = |e: datafusion::error::DataFusionError| ExecError(e.to_string());
        let nkeys = self.nkeys;
        let mut exact = ExactResult::new(self.measures.clone());
        if let Some(plan) = self.scalar {
            let batches = datafusion::physical_plan::collect(plan, self.task.clone())
                .await
                .map_err(err)?;
            for b in &batches {
                read_scalar(b, nkeys, &self.measures, &mut exact)?;
            }
        }
        for (mi, plan) in self.histograms {
            let batches = datafusion::physical_plan::collect(plan, self.task.clone())
                .await
                .map_err(err)?;
            for b in &batches {
                for row in 0..b.num_rows() {
                    let key = (0..nkeys)
                        .map(|k| key_value(b.column(k).as_ref(), row))
                        .collect::<Result<Vec<_>, _>>()?;
                    let bucket = int_value(b.column(nkeys).as_ref(), row)?;
                    let n = int_value(b.column(nkeys + 1).as_ref(), row)?;
                    exact.add(key, mi, usize::try_from(bucket).unwrap_or(usize::MAX), n);
                }
            }
        }
        Ok(exact)
    }
}

/// The executor over an unencrypted Parquet file with the manifest's stored schema. Nodes
/// never hold such files; the datasets benchmark uses this to tell the cost of the DP rewrite
/// from the cost of decryption (only its build, with the `bench` feature, has it).
#[cfg(feature = "bench")]
pub async fn execute_unencrypted(
    path: &std::path::Path,
    manifest: &veil_dp::Manifest,
    costed: &CostedPlan,
) -> Result<ExactResult, ExecError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let file = FileRef {
        path: path.to_path_buf(),
        key: None,
    };
    let ctx = session(file, manifest, threads, veil_crypto::prf::Prf::random()).await?;
    prepare(ctx, manifest, costed, tokio::runtime::Handle::current())
        .await?
        .run()
        .await
}

fn read_scalar(
    b: &RecordBatch,
    nkeys: usize,
    measures: &[Measure],
    exact: &mut ExactResult,
) -> Result<(), ExecError> {
    let scalar_idx: Vec<usize> = measures
        .iter()
        .enumerate()
        .filter(|(_, m)| !matches!(m, Measure::Histogram { .. }))
        .map(|(i, _)| i)
        .collect();
    for row in 0..b.num_rows() {
        let key = (0..nkeys)
            .map(|k| key_value(b.column(k).as_ref(), row))
            .collect::<Result<Vec<_>, _>>()?;
        for (pos, mi) in scalar_idx.iter().enumerate() {
            let v = int_value(b.column(nkeys + pos).as_ref(), row)?;
            exact.add(key.clone(), *mi, 0, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_and_typed() {
        assert_eq!(literal(&Literal::Str("O'Brien".into())), "'O''Brien'");
        assert_eq!(literal(&Literal::Float(20000.0)), "20000.0");
        assert_eq!(literal(&Literal::Int(-3)), "-3");
        assert_eq!(literal(&Literal::Date(0)), "CAST('1970-01-01' AS DATE)");
    }

    #[test]
    fn fixed_point_sql_passes_bounds_and_factor_as_double_literals() {
        assert_eq!(
            fixed_sql("age", 0.0, 120.0, 0),
            "veil_fixed(\"age\", 0.0, 120.0, 1.0)"
        );
        assert_eq!(
            fixed_sql("income", 0.0, 5e5, 3),
            "veil_fixed(\"income\", 0.0, 500000.0, 1000.0)"
        );
    }
}
