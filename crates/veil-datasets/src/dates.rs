//! `veil_month_start(d)` and `veil_year_start(d)`: the first day of a date's month or year.
//!
//! DataFusion's `date_trunc` turns a date into a nanosecond timestamp first, which exists only
//! from 1677 to 2262, while a manifest may declare any date from year 1 to 9999 (a
//! `9999-12-31` "valid until" sentinel is common). A query grouping such a column by month
//! would fail after its charge, and whether it failed would tell whether a selected row held
//! such a date. These functions work on the day number itself, through the same
//! [`veil_dp::manifest::month_start`] / [`veil_dp::manifest::year_start`] that list the
//! bucket keys, so the executor and the planner agree on every allowed date.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Date32Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// SQL names of the two functions.
pub(crate) const MONTH_START: &str = "veil_month_start";
pub(crate) const YEAR_START: &str = "veil_year_start";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unit {
    Month,
    Year,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BucketStart {
    unit: Unit,
    signature: Signature,
}

/// The registered functions.
pub(crate) fn udfs() -> [ScalarUDF; 2] {
    [Unit::Month, Unit::Year].map(|unit| {
        ScalarUDF::from(BucketStart {
            unit,
            signature: Signature::exact(vec![DataType::Date32], Volatility::Immutable),
        })
    })
}

impl BucketStart {
    fn start(&self, day: i32) -> i32 {
        match self.unit {
            Unit::Month => veil_dp::manifest::month_start(day),
            Unit::Year => veil_dp::manifest::year_start(day),
        }
    }
}

impl ScalarUDFImpl for BucketStart {
    fn name(&self) -> &str {
        match self.unit {
            Unit::Month => MONTH_START,
            Unit::Year => YEAR_START,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match args.args.as_slice() {
            [ColumnarValue::Array(a)] if a.data_type() == &DataType::Date32 => {
                let out: Arc<dyn Array> = Arc::new(
                    a.as_primitive::<Date32Type>()
                        .unary::<_, Date32Type>(|d| self.start(d)),
                );
                Ok(ColumnarValue::Array(out))
            }
            [ColumnarValue::Scalar(ScalarValue::Date32(d))] => Ok(ColumnarValue::Scalar(
                ScalarValue::Date32(d.map(|d| self.start(d))),
            )),
            [ColumnarValue::Scalar(ScalarValue::Null)] => {
                Ok(ColumnarValue::Scalar(ScalarValue::Date32(None)))
            }
            _ => Err(DataFusionError::Plan(format!(
                "{} takes one DATE",
                self.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Date32Array;
    use datafusion::prelude::SessionContext;
    use veil_dp::manifest::{format_date, parse_date};

    use super::*;

    #[tokio::test]
    async fn buckets_cover_years_one_to_9999_where_date_trunc_cannot() {
        let ctx = SessionContext::new();
        for f in udfs() {
            ctx.register_udf(f);
        }
        let days: Vec<i32> = [
            "0001-01-01",
            "0001-03-15",
            "1677-09-20",
            "1970-01-01",
            "2000-02-29",
            "2262-04-12",
            "9999-12-31",
        ]
        .iter()
        .map(|d| parse_date(d).expect("date"))
        .collect();
        let batch = arrow::array::RecordBatch::try_from_iter([(
            "d",
            Arc::new(Date32Array::from(days.clone())) as Arc<dyn Array>,
        )])
        .expect("batch");
        ctx.register_batch("t", batch).expect("register");
        let out = ctx
            .sql("SELECT veil_month_start(d) AS m, veil_year_start(d) AS y FROM t")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let m = out[0].column(0).as_primitive::<Date32Type>();
        let y = out[0].column(1).as_primitive::<Date32Type>();
        let shown: Vec<(String, String)> = (0..days.len())
            .map(|i| (format_date(m.value(i)), format_date(y.value(i))))
            .collect();
        assert_eq!(
            shown,
            [
                ("0001-01-01", "0001-01-01"),
                ("0001-03-01", "0001-01-01"),
                ("1677-09-01", "1677-01-01"),
                ("1970-01-01", "1970-01-01"),
                ("2000-02-01", "2000-01-01"),
                ("2262-04-01", "2262-01-01"),
                ("9999-12-01", "9999-01-01"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
