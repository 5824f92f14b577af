//! Exact measures: the integer quantities the executor computes from private rows, and the
//! container it hands them over in.
//!
//! [`ExactResult`] is write-only outside this crate: the executor can add values, but nothing
//! outside `veil-dp` can read them back. The only way to get numbers out is
//! [`crate::release()`], which adds noise. That is what keeps unnoised aggregates from ever
//! reaching the HTTP layer.

use std::collections::BTreeMap;

use crate::manifest::Day;
use crate::plan::{AggKind, Bounds, QueryPlan};

/// Largest number of rows a dataset may hold; with per-row fixed-point values bounded by
/// [`MAX_FIXED`], no sum can overflow `i64`.
pub const MAX_ROWS: u64 = 1 << 32;
/// Largest absolute per-row fixed-point value of a sum.
pub const MAX_FIXED: f64 = 2_147_483_647.0;
/// Largest absolute per-row fixed-point value whose square is summed.
pub const MAX_FIXED_SQUARED_BASE: f64 = 46_340.0;
/// Most candidates a quantile chooses from.
pub const MAX_QUANTILE_CANDIDATES: usize = 1_024;

/// Fixed-point scaling: a value `x` is stored as `round(x · 10^exp)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedPoint {
    pub exp: i32,
}

impl FixedPoint {
    /// The finest scale with `max|x| · 10^exp <= limit` (at most 10^6), or 10^0 for integers
    /// when it fits.
    pub fn for_bounds(b: Bounds, limit: f64) -> Self {
        let maxabs = b.lo.abs().max(b.hi.abs()).max(1e-12);
        let mut exp = (limit / maxabs).log10().floor() as i32;
        exp = exp.min(6);
        if b.integer {
            exp = exp.min(0);
        }
        Self { exp }
    }

    pub fn factor(self) -> f64 {
        10f64.powi(self.exp)
    }

    /// The fixed-point image of `x`, as the executor computes it.
    pub fn apply(self, x: f64) -> i64 {
        (x * self.factor()).round() as i64
    }
}

/// One exact integer quantity per group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// Rows (after filtering and contribution bounding).
    Rows,
    /// Rows where the column is not null.
    NonNull(String),
    /// Σ fixed(clamp(col)).
    Sum {
        column: String,
        fixed: FixedPoint,
        /// Clamping bounds, bit patterns of f64 so the measure is hashable.
        lo_bits: u64,
        hi_bits: u64,
    },
    /// Σ fixed(clamp(col))².
    SumSquares {
        column: String,
        fixed: FixedPoint,
        lo_bits: u64,
        hi_bits: u64,
    },
    /// Counts per candidate bucket: bucket j holds clamp(col) in [c_j, c_{j+1}).
    Histogram {
        column: String,
        candidates: usize,
        lo_bits: u64,
        hi_bits: u64,
    },
}

impl Measure {
    pub fn sum(column: &str, b: Bounds) -> Self {
        Measure::Sum {
            column: column.into(),
            fixed: FixedPoint::for_bounds(b, MAX_FIXED),
            lo_bits: b.lo.to_bits(),
            hi_bits: b.hi.to_bits(),
        }
    }

    pub fn sum_squares(column: &str, b: Bounds) -> Self {
        Measure::SumSquares {
            column: column.into(),
            fixed: FixedPoint::for_bounds(b, MAX_FIXED_SQUARED_BASE),
            lo_bits: b.lo.to_bits(),
            hi_bits: b.hi.to_bits(),
        }
    }

    pub fn histogram(column: &str, b: Bounds) -> Self {
        let span = b.hi - b.lo;
        let candidates = if b.integer && span < MAX_QUANTILE_CANDIDATES as f64 {
            span as usize + 1
        } else {
            MAX_QUANTILE_CANDIDATES
        };
        Measure::Histogram {
            column: column.into(),
            candidates,
            lo_bits: b.lo.to_bits(),
            hi_bits: b.hi.to_bits(),
        }
    }

    /// Clamping bounds of a numeric measure.
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match self {
            Measure::Sum {
                lo_bits, hi_bits, ..
            }
            | Measure::SumSquares {
                lo_bits, hi_bits, ..
            }
            | Measure::Histogram {
                lo_bits, hi_bits, ..
            } => Some((f64::from_bits(*lo_bits), f64::from_bits(*hi_bits))),
            _ => None,
        }
    }

    /// How many integers per group this measure yields.
    pub fn width(&self) -> usize {
        match self {
            Measure::Histogram { candidates, .. } => *candidates,
            _ => 1,
        }
    }

    /// The largest change one row can make to one group's value (L∞ per row, in the
    /// measure's integer units).
    pub fn per_row_sensitivity(&self) -> i64 {
        match self {
            Measure::Rows | Measure::NonNull(_) | Measure::Histogram { .. } => 1,
            Measure::Sum { fixed, .. } => {
                let (lo, hi) = self.bounds().unwrap_or((0.0, 0.0));
                fixed.apply(lo).abs().max(fixed.apply(hi).abs())
            }
            Measure::SumSquares { fixed, .. } => {
                let (lo, hi) = self.bounds().unwrap_or((0.0, 0.0));
                let m = fixed.apply(lo).abs().max(fixed.apply(hi).abs());
                m * m
            }
        }
    }
}

/// The candidate values of a histogram measure: `candidates` evenly spaced points from
/// `lo` to `hi` inclusive.
pub fn candidates(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![lo];
    }
    let w = (hi - lo) / (n - 1) as f64;
    (0..n).map(|j| lo + w * j as f64).collect()
}

/// A group key value as the executor reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    Str(String),
    Int(i64),
    Bool(bool),
    /// First day of the date bucket.
    Date(Day),
    Null,
}

/// The exact measures a plan needs, in a fixed order.
pub fn measures(plan: &QueryPlan) -> Vec<Measure> {
    let mut out: Vec<Measure> = Vec::new();
    let mut add = |m: Measure| {
        if !out.contains(&m) {
            out.push(m);
        }
    };
    if plan.has_unknown_keys() {
        add(Measure::Rows);
    }
    for a in &plan.aggregates {
        for m in parts_of(&a.kind) {
            add(m);
        }
    }
    out
}

/// The measures one aggregate is computed from; each is released with its own noise.
pub(crate) fn parts_of(kind: &AggKind) -> Vec<Measure> {
    let count_of = |c: &str, nullable_hint: bool| {
        if nullable_hint {
            Measure::NonNull(c.into())
        } else {
            Measure::Rows
        }
    };
    match kind {
        AggKind::CountRows => vec![Measure::Rows],
        AggKind::CountColumn(c) => vec![Measure::NonNull(c.clone())],
        AggKind::Sum(c, b) => vec![Measure::sum(c, *b)],
        // Averages and variances count non-null values of their column; NonNull of a
        // non-nullable column equals Rows, and the executor computes it the same way.
        AggKind::Avg(c, b) => vec![Measure::sum(c, *b), count_of(c, true)],
        AggKind::Variance(c, b) | AggKind::Stddev(c, b) => vec![
            Measure::sum(c, *b),
            Measure::sum_squares(c, *b),
            count_of(c, true),
        ],
        AggKind::Quantile(c, b, _) => vec![Measure::histogram(c, *b)],
    }
}

/// Exact per-group results, filled by the executor. Readable only inside this crate; its
/// `Debug` shows the shape (groups, measures), never a key or a value, so no log or panic
/// message can carry an un-noised figure.
#[derive(Clone, Default)]
pub struct ExactResult {
    pub(crate) groups: BTreeMap<Vec<KeyValue>, Vec<Vec<i64>>>,
    pub(crate) measures: Vec<Measure>,
}

impl std::fmt::Debug for ExactResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactResult")
            .field("groups", &self.groups.len())
            .field("measures", &self.measures.len())
            .finish_non_exhaustive()
    }
}

impl ExactResult {
    /// An empty result for `measures` (from [`measures()`]).
    pub fn new(measures: Vec<Measure>) -> Self {
        Self {
            groups: BTreeMap::new(),
            measures,
        }
    }

    /// Adds `value` to measure `measure`'s slot `slot` (0 for scalars, the bucket for
    /// histograms) in group `key`. Out-of-range indices are ignored: they cannot come from a
    /// correct executor and must not panic on a node.
    pub fn add(&mut self, key: Vec<KeyValue>, measure: usize, slot: usize, value: i64) {
        let Some(m) = self.measures.get(measure) else {
            return;
        };
        let width = m.width();
        if slot >= width {
            return;
        }
        let n = self.measures.len();
        let widths: Vec<usize> = self.measures.iter().map(Measure::width).collect();
        let entry = self
            .groups
            .entry(key)
            .or_insert_with(|| (0..n).map(|i| vec![0; widths[i]]).collect());
        entry[measure][slot] = entry[measure][slot].saturating_add(value);
    }

    pub fn measure_list(&self) -> &[Measure] {
        &self.measures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_results_do_not_print_their_keys_or_values() {
        let mut exact = ExactResult::new(vec![Measure::Rows]);
        exact.add(
            vec![KeyValue::Str("oncology-ward-7".into())],
            0,
            0,
            987_654_321,
        );
        let shown = format!("{exact:?}");
        assert!(
            !shown.contains("987654321") && !shown.contains("oncology"),
            "{shown}"
        );
        assert!(shown.contains("groups: 1"), "{shown}");
    }
}
