//! `veil_fixed(x, lo, hi, factor)`: the fixed-point image `round(clamp(x, lo, hi) · factor)`
//! of a column, as one scalar function.
//!
//! The same value could be written in SQL (`CAST(ROUND(LEAST(GREATEST(x, lo), hi) * f) AS
//! BIGINT)`), but DataFusion would evaluate that as five kernels, each materialising a column;
//! this does it in one pass per batch. It is the executor's only path from a private value to
//! the integers that sums are taken over, so it must match [`veil_dp::exact::FixedPoint::apply`]
//! on clamped values exactly (a test checks).

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

/// The function's SQL name.
pub(crate) const NAME: &str = "veil_fixed";

/// The registered function.
pub(crate) fn udf() -> ScalarUDF {
    ScalarUDF::from(FixedPointFn {
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Float64; 4]),
                TypeSignature::Exact(vec![
                    DataType::Int64,
                    DataType::Float64,
                    DataType::Float64,
                    DataType::Float64,
                ]),
            ],
            Volatility::Immutable,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FixedPointFn {
    signature: Signature,
}

/// The constant arguments, checked.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    factor: f64,
}

/// `y.round() as i64` (halves away from zero) for `|y| < 2^62`, without `f64::round`, which
/// is a library call per value on baseline x86-64: truncate (one instruction), then step by
/// the exactly computed fraction.
#[inline]
fn round_to_i64(y: f64) -> i64 {
    let t = y as i64;
    let frac = y - t as f64;
    t + i64::from(frac >= 0.5) - i64::from(frac <= -0.5)
}

impl Scale {
    fn float(self, x: f64) -> i64 {
        // `max`/`min` rather than `clamp`: they never panic, and a NaN (which validation
        // keeps out of stored files) becomes `lo`.
        round_to_i64(x.max(self.lo).min(self.hi) * self.factor)
    }

    fn int(self, x: i64) -> i64 {
        let clamped = x.clamp(self.lo as i64, self.hi as i64);
        if self.factor == 1.0 {
            clamped
        } else {
            round_to_i64(clamped as f64 * self.factor)
        }
    }
}

fn constant(v: &ColumnarValue, what: &str) -> Result<f64> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Float64(Some(x))) if x.is_finite() => Ok(*x),
        _ => Err(DataFusionError::Plan(format!(
            "{NAME}: {what} must be a finite DOUBLE literal"
        ))),
    }
}

impl ScalarUDFImpl for FixedPointFn {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [x, lo, hi, factor] = args.args.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "{NAME} takes (value, lo, hi, factor)"
            )));
        };
        let scale = Scale {
            lo: constant(lo, "lo")?,
            hi: constant(hi, "hi")?,
            factor: constant(factor, "factor")?,
        };
        if scale.lo > scale.hi || scale.factor <= 0.0 {
            return Err(DataFusionError::Plan(format!(
                "{NAME}: needs lo <= hi and a positive factor"
            )));
        }
        match x {
            ColumnarValue::Array(a) => {
                let out: Arc<dyn Array> = match a.data_type() {
                    DataType::Float64 => Arc::new(
                        a.as_primitive::<Float64Type>()
                            .unary::<_, Int64Type>(|v| scale.float(v)),
                    ),
                    DataType::Int64 => Arc::new(
                        a.as_primitive::<Int64Type>()
                            .unary::<_, Int64Type>(|v| scale.int(v)),
                    ),
                    other => {
                        return Err(DataFusionError::Plan(format!(
                            "{NAME}: unsupported value type {other}"
                        )));
                    }
                };
                Ok(ColumnarValue::Array(out))
            }
            ColumnarValue::Scalar(s) => Ok(ColumnarValue::Scalar(ScalarValue::Int64(match s {
                ScalarValue::Float64(v) => v.map(|v| scale.float(v)),
                ScalarValue::Int64(v) => v.map(|v| scale.int(v)),
                ScalarValue::Null => None,
                other => {
                    return Err(DataFusionError::Plan(format!(
                        "{NAME}: unsupported value type {}",
                        other.data_type()
                    )));
                }
            }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_dp::exact::FixedPoint;

    #[test]
    fn rounding_matches_f64_round_including_halves() {
        let mut xs = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4503599627370495.5,
            -4503599627370495.5,
            4503599627370497.0,
            2147483647.4999998,
            -2147483648.5,
            1e15 + 0.5,
        ];
        // A deterministic spread of values and halves across magnitudes.
        let mut v = 0.37f64;
        for i in 0..200_000 {
            v = (v * 3.7 + 0.123).fract();
            let mag = 10f64.powi(i % 16 - 3);
            xs.push((v - 0.5) * mag);
            xs.push(((v * mag).floor() + 0.5) * if i % 2 == 0 { 1.0 } else { -1.0 });
        }
        for x in xs {
            assert_eq!(round_to_i64(x), x.round() as i64, "{x:?}");
        }
    }

    #[test]
    fn matches_the_release_side_fixed_point_image() {
        let (lo, hi) = (-12.5, 480.25);
        for exp in [-2, 0, 1, 3, 6] {
            let fixed = FixedPoint { exp };
            let scale = Scale {
                lo,
                hi,
                factor: fixed.factor(),
            };
            for i in 0..2_000 {
                let x = -40.0 + i as f64 * 0.2537;
                assert_eq!(
                    scale.float(x),
                    fixed.apply(x.max(lo).min(hi)),
                    "{x} at 10^{exp}"
                );
            }
        }
        let ints = Scale {
            lo: 0.0,
            hi: 120.0,
            factor: 1.0,
        };
        assert_eq!(
            [-5, 0, 37, 120, 999].map(|x| ints.int(x)),
            [0, 0, 37, 120, 120]
        );
        assert_eq!(
            Scale {
                factor: 0.1,
                ..ints
            }
            .int(37),
            4
        );
        assert_eq!(
            Scale {
                factor: 1e3,
                ..ints
            }
            .float(f64::NAN),
            0
        );
    }
}
