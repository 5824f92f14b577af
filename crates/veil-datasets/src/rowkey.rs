//! `veil_row_key(c1, …, cn)`: a keyed pseudo-random number per row, from the row's content.
//!
//! Bounding a privacy unit's contribution keeps at most `max_rows` of its rows. Which ones
//! must depend on that unit's rows alone: if it depended on the file's order or on how rows
//! fall into batches, adding or removing *another* person could change which rows of this
//! unit count. Ordering a unit's rows by this key (then by their content, to break the
//! one-in-2^64 ties) makes the kept rows a function of the unit's own rows and of a key drawn
//! fresh for each query, so the analyst can neither predict nor steer the choice.
//!
//! The key lives in the function, never in SQL text, plans or logs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt64Array};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use veil_crypto::prf::Prf;

/// The function's SQL name.
pub(crate) const NAME: &str = "veil_row_key";

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowKeyFn {
    prf: Prf,
    signature: Signature,
}

/// The function under `prf`'s key.
pub(crate) fn udf_with(prf: Prf) -> ScalarUDF {
    ScalarUDF::from(RowKeyFn {
        prf,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// Appends row `i` of `a` to `out` in an injective encoding: a tag byte for null or not,
/// then fixed-width big-endian values, or a length prefix for text.
fn encode(a: &dyn Array, i: usize, out: &mut Vec<u8>) -> Result<()> {
    if a.is_null(i) {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    match a.data_type() {
        DataType::Int64 => out.extend(a.as_primitive::<Int64Type>().value(i).to_be_bytes()),
        DataType::Float64 => out.extend(
            a.as_primitive::<Float64Type>()
                .value(i)
                .to_bits()
                .to_be_bytes(),
        ),
        DataType::Date32 => out.extend(a.as_primitive::<Date32Type>().value(i).to_be_bytes()),
        DataType::Boolean => out.push(u8::from(a.as_boolean().value(i))),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let s = match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().value(i),
                DataType::LargeUtf8 => a.as_string::<i64>().value(i),
                _ => a.as_string_view().value(i),
            };
            out.extend(u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend(s.as_bytes());
        }
        other => {
            return Err(DataFusionError::Plan(format!(
                "{NAME}: unsupported column type {other}"
            )));
        }
    }
    Ok(())
}

impl ScalarUDFImpl for RowKeyFn {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|c| c.to_array(rows))
            .collect::<Result<_>>()?;
        let mut buf = Vec::with_capacity(64);
        let mut keys = Vec::with_capacity(rows);
        for i in 0..rows {
            buf.clear();
            for c in &columns {
                encode(c.as_ref(), i, &mut buf)?;
            }
            keys.push(self.prf.eval(&buf));
        }
        Ok(ColumnarValue::Array(Arc::new(UInt64Array::from(keys))))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn row(cols: &[ArrayRef], i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cols {
            encode(c.as_ref(), i, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn the_encoding_is_injective_across_columns_and_nulls() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("ab"),
            Some("a"),
            None,
            Some(""),
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("c"),
            Some("bc"),
            Some(""),
            None,
        ]));
        let cols = [a, b];
        let encoded: Vec<Vec<u8>> = (0..4).map(|i| row(&cols, i)).collect();
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(encoded[i], encoded[j], "rows {i} and {j}");
            }
        }
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(0), None]));
        assert_ne!(
            row(std::slice::from_ref(&n), 0),
            row(std::slice::from_ref(&n), 1)
        );
    }
}
