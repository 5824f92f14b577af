//! Differentially private model-validation metrics.
//!
//! Classification: the model's predictions over the private rows form a confusion matrix
//! (true class × predicted class, over the label column's declared categories plus an
//! "(other)" column for predictions outside them). The whole matrix is released once with
//! discrete Laplace noise, and accuracy, precision, recall and F1 are computed from the noisy
//! matrix: post-processing, free of further privacy cost. One row is one cell, so a privacy
//! unit with k rows changes the matrix by at most k in L1.
//!
//! Regression: clipped error sums (|e|, e²), the row count, and for R² the label's sum and
//! sum of squares, each released with its share of ε; predictions and labels are clipped to
//! the label's declared bounds, which bounds every contribution.
//!
//! Intervals come from a parametric bootstrap: the released values minus simulated noise of
//! the (public) scale, pushed through the same formulas. That too is post-processing.

use rand::Rng;
use serde::Serialize;

use crate::exact::FixedPoint;
use crate::manifest::PrivacyUnit;
use crate::sql::Refusal;

/// Most classes a confusion matrix may have (it has classes × (classes + 1) cells).
pub const MAX_CLASSES: usize = 100;
const BOOTSTRAP_DRAWS: usize = 2_000;
const SAFETY: f64 = 1.0 + 1e-9;

#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// The label column's categories, in declaration order.
    Classification { classes: Vec<String> },
    /// The label column's declared bounds.
    Regression { lo: f64, hi: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Accuracy,
    Precision,
    Recall,
    F1,
    Confusion,
    Mae,
    Rmse,
    R2,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "accuracy" => Metric::Accuracy,
            "precision" => Metric::Precision,
            "recall" => Metric::Recall,
            "f1" => Metric::F1,
            "confusion" => Metric::Confusion,
            "mae" => Metric::Mae,
            "rmse" => Metric::Rmse,
            "r2" => Metric::R2,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
            Metric::Confusion => "confusion",
            Metric::Mae => "mae",
            Metric::Rmse => "rmse",
            Metric::R2 => "r2",
        }
    }

    fn for_classification(self) -> bool {
        matches!(
            self,
            Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::F1 | Metric::Confusion
        )
    }
}

/// The exact sums a regression release needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Sum {
    AbsError,
    SqError,
    Count,
    Label,
    LabelSq,
}

/// A validation with its noise calibrated and its exact cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CostedValidation {
    pub task: Task,
    pub metrics: Vec<Metric>,
    pub confidence: f64,
    /// Classification: scale of the matrix noise. Regression: one scale per needed sum.
    scales: Vec<f64>,
    sums: Vec<Sum>,
    fixed: FixedPoint,
    fixed_sq: FixedPoint,
    pub epsilon: f64,
}

/// Parses metric names and checks they fit the task.
pub fn parse_metrics(names: &[String], task: &Task) -> Result<Vec<Metric>, Refusal> {
    let mut out = Vec::new();
    for n in names {
        let m = Metric::parse(n).ok_or_else(|| {
            Refusal(format!(
                "unknown metric {n:?}: use accuracy, precision, recall, f1, confusion (classification) or mae, rmse, r2 (regression)"
            ))
        })?;
        let classification = matches!(task, Task::Classification { .. });
        if m.for_classification() != classification {
            return Err(Refusal(format!(
                "{} is a {} metric, but this is a {} task",
                m.name(),
                if m.for_classification() {
                    "classification"
                } else {
                    "regression"
                },
                if classification {
                    "classification"
                } else {
                    "regression"
                }
            )));
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(Refusal("ask for at least one metric".into()));
    }
    Ok(out)
}

fn refusal(e: opendp::error::Error) -> Refusal {
    Refusal(format!(
        "the privacy parameters cannot be met: {}",
        e.message.unwrap_or_else(|| format!("{:?}", e.variant))
    ))
}

/// OpenDP's discrete Laplace mechanism of `scale` on vectors of integers: the one mechanism
/// validations release through.
type IntegerLaplace = opendp::core::Measurement<
    opendp::domains::VectorDomain<opendp::domains::AtomDomain<i64>>,
    opendp::metrics::L1Distance<i64>,
    opendp::measures::MaxDivergence,
    Vec<i64>,
>;

fn integer_laplace(scale: f64) -> opendp::error::Fallible<IntegerLaplace> {
    opendp::measurements::make_laplace(
        opendp::domains::VectorDomain::new(opendp::domains::AtomDomain::<i64>::default()),
        opendp::metrics::L1Distance::<i64>::default(),
        scale,
        None,
    )
}

fn laplace_scalar_map(scale: f64, sens: i64) -> Result<f64, Refusal> {
    integer_laplace(scale)
        .and_then(|m| m.map(&sens))
        .map_err(refusal)
}

/// Calibrates the noise of a validation and computes its cost.
pub fn cost_validation(
    task: Task,
    metrics: Vec<Metric>,
    epsilon: f64,
    confidence: f64,
    unit: &PrivacyUnit,
) -> Result<CostedValidation, Refusal> {
    // Callers check these first and answer a 400; a refusal here is the second lock.
    crate::plan::check_epsilon_and_confidence(epsilon, confidence).map_err(|e| Refusal(e.0))?;
    let k = i64::from(unit.rows_per_unit());
    let bounds = match &task {
        Task::Classification { classes } => {
            if classes.len() < 2 || classes.len() > MAX_CLASSES {
                return Err(Refusal(format!(
                    "a classification label needs 2 to {MAX_CLASSES} declared categories"
                )));
            }
            None
        }
        Task::Regression { lo, hi } => Some((*lo, *hi)),
    };
    let (lo, hi) = bounds.unwrap_or((0.0, 1.0));
    let range = (hi - lo).abs().max(1e-12);
    let maxabs = lo.abs().max(hi.abs());
    let bound = |m: f64| crate::plan::Bounds {
        lo: -m,
        hi: m,
        integer: false,
    };
    let fixed = FixedPoint::for_bounds(bound(range.max(maxabs)), crate::exact::MAX_FIXED);
    let fixed_sq = FixedPoint::for_bounds(
        bound(range.max(maxabs)),
        crate::exact::MAX_FIXED_SQUARED_BASE,
    );
    let (sums, scales, spent) = match &task {
        Task::Classification { .. } => {
            let scale = k as f64 / epsilon * SAFETY;
            let eps = laplace_scalar_map(scale, k)?;
            (Vec::new(), vec![scale], eps)
        }
        Task::Regression { .. } => {
            let mut sums = vec![Sum::Count];
            for m in &metrics {
                match m {
                    Metric::Mae => sums.push(Sum::AbsError),
                    Metric::Rmse => sums.push(Sum::SqError),
                    Metric::R2 => sums.extend([Sum::SqError, Sum::Label, Sum::LabelSq]),
                    _ => {}
                }
            }
            sums.sort();
            sums.dedup();
            let share = epsilon / sums.len() as f64;
            let mut scales = Vec::new();
            let mut spent = 0.0;
            for s in &sums {
                let per_row = match s {
                    Sum::Count => 1,
                    Sum::AbsError => fixed.apply(range),
                    Sum::Label => fixed.apply(maxabs),
                    Sum::SqError => fixed_sq.apply(range).pow(2),
                    Sum::LabelSq => fixed_sq.apply(maxabs).pow(2),
                };
                let sens = k.saturating_mul(per_row.max(1));
                let scale = sens as f64 / share * SAFETY;
                spent += laplace_scalar_map(scale, sens)?;
                scales.push(scale);
            }
            (sums, scales, spent)
        }
    };
    if spent > epsilon * (1.0 + 1e-6) {
        return Err(Refusal("internal accounting check failed".into()));
    }
    Ok(CostedValidation {
        task,
        metrics,
        confidence,
        scales,
        sums,
        fixed,
        fixed_sq,
        epsilon: spent.min(epsilon),
    })
}

/// The chance that a validation's rows bound ([`ReleasedValidation::rows_at_most`]) is below
/// the number of rows the run scored, because the noise fell that far.
pub const ROWS_BOUND_MISS: f64 = 1e-9;

/// How far the sum of `terms` independent discrete Laplace noises of `scale` can fall below
/// zero, except with probability [`ROWS_BOUND_MISS`]. A Chernoff bound with the noise's exact
/// moment generating function (a discrete Laplace variable is the difference of two
/// geometric ones): P(S ≤ −t) ≤ M(λ)^terms · e^(−λt) for every 0 < λ < 1/scale, so any λ on
/// the grid gives a valid t and the smallest is kept.
fn noise_margin(terms: usize, scale: f64) -> f64 {
    let log_miss = -ROWS_BOUND_MISS.ln();
    let inv = 1.0 / scale;
    // 1 − q, 1 − q·e^λ and 1 − q·e^−λ with q = e^(−1/scale), kept accurate for large scales.
    let one_minus_q = -(-inv).exp_m1();
    (1..64)
        .map(|i| {
            let lambda = inv * f64::from(i) / 64.0;
            let log_mgf = 2.0 * one_minus_q.ln()
                - (-(lambda - inv).exp_m1()).ln()
                - (-(-lambda - inv).exp_m1()).ln();
            (terms as f64 * log_mgf + log_miss) / lambda
        })
        .filter(|t| t.is_finite())
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
        .ceil()
}

impl CostedValidation {
    /// The noise on the release's total of rows: how many noise terms it sums, and their
    /// scale (classification: every cell of the matrix; regression: the released count).
    fn row_total_noise(&self) -> (usize, f64) {
        match &self.task {
            Task::Classification { classes } => {
                (classes.len() * (classes.len() + 1), self.scales[0])
            }
            Task::Regression { .. } => {
                let count = self.sums.iter().position(|s| *s == Sum::Count).unwrap_or(0);
                (1, self.scales[count])
            }
        }
    }

    /// Rows added to a release's noisy total so that the sum bounds the true number of rows
    /// except with probability [`ROWS_BOUND_MISS`]. Public: it depends on ε and the task only.
    pub fn rows_margin(&self) -> f64 {
        let (terms, scale) = self.row_total_noise();
        noise_margin(terms, scale)
    }

    /// For a run that ended without a release (a bug): a bound on `rows` drawn exactly as a
    /// release's [`ReleasedValidation::rows_at_most`] would be, so that when such a run ends
    /// does not tell more than a release would.
    pub fn noisy_rows_at_most(&self, rows: u64) -> Result<f64, crate::ReleaseError> {
        let (terms, scale) = self.row_total_noise();
        let mut values = vec![0i64; terms.max(1)];
        values[0] = i64::try_from(rows).unwrap_or(i64::MAX);
        let noisy = discrete_laplace(values, scale)?;
        Ok(noisy.iter().map(|x| *x as f64).sum::<f64>() + self.rows_margin())
    }
}

fn engine_error(e: opendp::error::Error) -> crate::ReleaseError {
    crate::ReleaseError::Engine(format!(
        "{:?}: {}",
        e.variant,
        e.message.unwrap_or_default()
    ))
}

/// Discrete Laplace noise of `scale` on each value (OpenDP).
fn discrete_laplace(values: Vec<i64>, scale: f64) -> Result<Vec<i64>, crate::ReleaseError> {
    integer_laplace(scale)
        .and_then(|m| m.invoke(&values))
        .map_err(engine_error)
}

/// Exact validation results, filled row by row by the executor; readable only here. Its
/// `Debug` shows no count or sum.
#[derive(Clone)]
pub struct ExactValidation {
    /// Classification: row-major `classes × (classes + 1)`.
    cells: Vec<i64>,
    classes: usize,
    sums: Vec<(Sum, i64)>,
    lo: f64,
    hi: f64,
    fixed: FixedPoint,
    fixed_sq: FixedPoint,
}

impl std::fmt::Debug for ExactValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactValidation")
            .field("classes", &self.classes)
            .field("sums", &self.sums.len())
            .finish_non_exhaustive()
    }
}

impl ExactValidation {
    pub fn new(c: &CostedValidation) -> Self {
        let (classes, lo, hi) = match &c.task {
            Task::Classification { classes } => (classes.len(), 0.0, 1.0),
            Task::Regression { lo, hi } => (0, *lo, *hi),
        };
        Self {
            cells: vec![0; classes * (classes + 1)],
            classes,
            sums: c.sums.iter().map(|s| (*s, 0)).collect(),
            lo,
            hi,
            fixed: c.fixed,
            fixed_sq: c.fixed_sq,
        }
    }

    /// One classified row: its true class index and the predicted one (`None` for a
    /// prediction outside the declared classes).
    pub fn add_classified(&mut self, truth: usize, predicted: Option<usize>) {
        if truth >= self.classes {
            return;
        }
        let col = predicted
            .filter(|p| *p < self.classes)
            .unwrap_or(self.classes);
        let i = truth * (self.classes + 1) + col;
        self.cells[i] = self.cells[i].saturating_add(1);
    }

    /// Merges another partial result (from a parallel worker).
    pub fn merge(&mut self, other: &ExactValidation) {
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            *a = a.saturating_add(*b);
        }
        for ((_, a), (_, b)) in self.sums.iter_mut().zip(&other.sums) {
            *a = a.saturating_add(*b);
        }
    }

    /// One regression row. Both values are clipped to the label's bounds first, so every
    /// contribution is bounded whatever the model outputs (NaN counts as the lower bound).
    pub fn add_regressed(&mut self, truth: f64, predicted: f64) {
        let clip = |x: f64| {
            if x.is_nan() {
                self.lo
            } else {
                x.clamp(self.lo, self.hi)
            }
        };
        let (y, p) = (clip(truth), clip(predicted));
        let e = (y - p).abs();
        for (s, v) in &mut self.sums {
            let add = match s {
                Sum::Count => 1,
                Sum::AbsError => self.fixed.apply(e),
                Sum::SqError => self.fixed_sq.apply(e).pow(2),
                Sum::Label => self.fixed.apply(y),
                Sum::LabelSq => self.fixed_sq.apply(y).pow(2),
            };
            *v = v.saturating_add(add);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    pub name: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoisyConfusion {
    /// Row labels: the true classes.
    pub classes: Vec<String>,
    /// Column labels: the predicted classes, then `(other)`.
    pub predicted: Vec<String>,
    pub cells: Vec<Vec<f64>>,
}

/// Released validation metrics. Only this crate builds one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleasedValidation {
    metrics: Vec<MetricValue>,
    confusion: Option<NoisyConfusion>,
    /// The noisy total of rows plus [`CostedValidation::rows_margin`]: post-processing of the
    /// release, so anything derived from it (how long the run is padded to) is too.
    #[serde(skip)]
    rows_at_most: f64,
    epsilon: f64,
    mechanism: &'static str,
    noise_scales: Vec<f64>,
    confidence: f64,
}

impl ReleasedValidation {
    pub fn metrics(&self) -> &[MetricValue] {
        &self.metrics
    }
    pub fn confusion(&self) -> Option<&NoisyConfusion> {
        self.confusion.as_ref()
    }
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }
    pub fn noise_scales(&self) -> &[f64] {
        &self.noise_scales
    }
    pub fn confidence(&self) -> f64 {
        self.confidence
    }
    /// A bound on the rows the run scored that holds except with probability
    /// [`ROWS_BOUND_MISS`], computed from the release alone.
    pub fn rows_at_most(&self) -> f64 {
        self.rows_at_most
    }
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Continuous Laplace noise for the bootstrap (post-processing only; never released).
fn laplace(rng: &mut impl Rng, scale: f64) -> f64 {
    let u: f64 = rng.random_range(-0.5..0.5);
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

/// Classification metrics from a (noisy) matrix, counts clamped at zero. Macro averages over
/// the true classes.
fn class_metrics(cells: &[f64], c: usize) -> [f64; 4] {
    let at = |t: usize, p: usize| cells[t * (c + 1) + p].max(0.0);
    let total: f64 = (0..c)
        .flat_map(|t| (0..=c).map(move |p| (t, p)))
        .map(|(t, p)| at(t, p))
        .sum();
    let correct: f64 = (0..c).map(|i| at(i, i)).sum();
    let accuracy = if total > 0.0 { correct / total } else { 0.0 };
    let (mut p_sum, mut r_sum, mut f_sum) = (0.0, 0.0, 0.0);
    for i in 0..c {
        let tp = at(i, i);
        let predicted: f64 = (0..c).map(|t| at(t, i)).sum();
        let actual: f64 = (0..=c).map(|p| at(i, p)).sum();
        let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
        let recall = if actual > 0.0 { tp / actual } else { 0.0 };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        p_sum += precision;
        r_sum += recall;
        f_sum += f1;
    }
    let n = c as f64;
    [accuracy, p_sum / n, r_sum / n, f_sum / n].map(|x| x.clamp(0.0, 1.0))
}

fn regression_metrics(sums: &[(Sum, f64)], fixed: FixedPoint, fixed_sq: FixedPoint) -> [f64; 3] {
    let get = |s: Sum| {
        sums.iter()
            .find(|(x, _)| *x == s)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let n = get(Sum::Count).max(1.0);
    let f = fixed.factor();
    let f2 = fixed_sq.factor() * fixed_sq.factor();
    let mae = (get(Sum::AbsError) / f / n).max(0.0);
    let mse = (get(Sum::SqError) / f2 / n).max(0.0);
    let sy = get(Sum::Label) / f;
    let syy = get(Sum::LabelSq) / f2;
    let sst = syy - sy * sy / n;
    let r2 = if sst > 0.0 {
        1.0 - mse * n / sst
    } else {
        f64::NAN
    };
    [mae, mse.sqrt(), r2.min(1.0)]
}

/// Adds the noise and derives the metrics.
pub fn release_validation(
    c: &CostedValidation,
    exact: ExactValidation,
    rng: &mut impl Rng,
) -> Result<ReleasedValidation, crate::ReleaseError> {
    let noisy = discrete_laplace;
    let mut noisy_rows = 0.0;
    let alpha = 1.0 - c.confidence;
    let mut metrics = Vec::new();
    let mut confusion = None;
    let noise_scales;
    match &c.task {
        Task::Classification { classes } => {
            let k = classes.len();
            let scale = c.scales[0];
            let released: Vec<f64> = noisy(exact.cells, scale)?
                .into_iter()
                .map(|x| x as f64)
                .collect();
            noisy_rows = released.iter().sum();
            let point = class_metrics(&released, k);
            let mut draws: [Vec<f64>; 4] = Default::default();
            // Intervals are only needed for the metrics asked for (the matrix has none).
            let bootstrap = c.metrics.iter().any(|m| *m != Metric::Confusion);
            for _ in 0..if bootstrap { BOOTSTRAP_DRAWS } else { 0 } {
                let sim: Vec<f64> = released.iter().map(|x| x - laplace(rng, scale)).collect();
                for (d, v) in draws.iter_mut().zip(class_metrics(&sim, k)) {
                    d.push(v);
                }
            }
            for (i, m) in [
                Metric::Accuracy,
                Metric::Precision,
                Metric::Recall,
                Metric::F1,
            ]
            .into_iter()
            .enumerate()
            {
                if c.metrics.contains(&m) {
                    metrics.push(MetricValue {
                        name: m.name().into(),
                        value: point[i],
                        low: percentile(draws[i].clone(), alpha / 2.0),
                        high: percentile(draws[i].clone(), 1.0 - alpha / 2.0),
                    });
                }
            }
            if c.metrics.contains(&Metric::Confusion) {
                let mut predicted = classes.clone();
                predicted.push("(other)".into());
                confusion = Some(NoisyConfusion {
                    classes: classes.clone(),
                    predicted,
                    cells: released.chunks(k + 1).map(<[f64]>::to_vec).collect(),
                });
            }
            noise_scales = vec![scale];
        }
        Task::Regression { .. } => {
            let mut released = Vec::new();
            for ((s, v), scale) in exact.sums.iter().zip(&c.scales) {
                let value = noisy(vec![*v], *scale)?[0] as f64;
                if *s == Sum::Count {
                    noisy_rows = value;
                }
                released.push((*s, value));
            }
            let point = regression_metrics(&released, c.fixed, c.fixed_sq);
            let mut draws: [Vec<f64>; 3] = Default::default();
            for _ in 0..BOOTSTRAP_DRAWS {
                let sim: Vec<(Sum, f64)> = released
                    .iter()
                    .zip(&c.scales)
                    .map(|((s, v), scale)| (*s, v - laplace(rng, *scale)))
                    .collect();
                for (d, v) in draws
                    .iter_mut()
                    .zip(regression_metrics(&sim, c.fixed, c.fixed_sq))
                {
                    d.push(v);
                }
            }
            for (i, m) in [Metric::Mae, Metric::Rmse, Metric::R2]
                .into_iter()
                .enumerate()
            {
                if c.metrics.contains(&m) {
                    metrics.push(MetricValue {
                        name: m.name().into(),
                        value: point[i],
                        low: percentile(draws[i].clone(), alpha / 2.0),
                        high: percentile(draws[i].clone(), 1.0 - alpha / 2.0),
                    });
                }
            }
            noise_scales = c
                .sums
                .iter()
                .zip(&c.scales)
                .map(|(s, scale)| match s {
                    Sum::Count => *scale,
                    Sum::AbsError | Sum::Label => scale / c.fixed.factor(),
                    Sum::SqError | Sum::LabelSq => {
                        scale / (c.fixed_sq.factor() * c.fixed_sq.factor())
                    }
                })
                .collect();
        }
    }
    Ok(ReleasedValidation {
        metrics,
        confusion,
        rows_at_most: noisy_rows + c.rows_margin(),
        epsilon: c.epsilon,
        mechanism: "discrete_laplace",
        noise_scales,
        confidence: c.confidence,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn binary() -> Task {
        Task::Classification {
            classes: vec!["malignant".into(), "benign".into()],
        }
    }

    #[test]
    fn metrics_must_fit_the_task() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_metrics(&names(&["accuracy", "f1", "confusion"]), &binary()).is_ok());
        let e = parse_metrics(&names(&["rmse"]), &binary()).expect_err("regression metric");
        assert!(e.0.contains("regression metric"), "{e}");
        assert!(parse_metrics(&names(&["auc"]), &binary()).is_err());
    }

    #[test]
    fn a_generous_epsilon_recovers_the_confusion_matrix_and_its_metrics() {
        let c = cost_validation(
            binary(),
            vec![Metric::Accuracy, Metric::F1, Metric::Confusion],
            10.0,
            0.95,
            &PrivacyUnit::Row,
        )
        .expect("cost");
        assert!(c.epsilon <= 10.0 && c.epsilon > 9.99);
        let mut e = ExactValidation::new(&c);
        // 900 correct, 100 wrong, 5 predictions outside the classes.
        for i in 0..1005 {
            let truth = i % 2;
            let pred = if i < 900 {
                Some(truth)
            } else if i < 1000 {
                Some(1 - truth)
            } else {
                None
            };
            e.add_classified(truth, pred);
        }
        let r =
            release_validation(&c, e, &mut rand::rngs::StdRng::seed_from_u64(1)).expect("release");
        let acc = &r.metrics()[0];
        assert_eq!(acc.name, "accuracy");
        let truth = 900.0 / 1005.0;
        assert!((acc.value - truth).abs() < 0.01, "{acc:?}");
        assert!(acc.low <= truth && truth <= acc.high, "{acc:?}");
        let m = r.confusion().expect("confusion");
        assert_eq!(m.predicted.last().map(String::as_str), Some("(other)"));
        assert!((m.cells[0][2] - 3.0).abs() < 5.0, "{:?}", m.cells);
    }

    #[test]
    fn the_noise_margin_is_a_tail_bound_and_not_a_wild_one() {
        // One discrete Laplace term of scale 1: P(X ≤ −t) = q^t / (1 + q), q = e^−1, is
        // 1e-9 at t ≈ 20.4; the Chernoff bound must sit above that, and not far above.
        let one = noise_margin(1, 1.0);
        assert!((21.0..=30.0).contains(&one), "{one}");
        // Sums of many terms: never below the exact tail of their sum's standard deviation
        // at 6σ, never beyond 30σ; and noise of a negligible scale needs no margin.
        for (terms, scale) in [(6, 2.0), (110, 10.0), (10_100, 1e4)] {
            let sd = (terms as f64 * 2.0).sqrt() * scale;
            let m = noise_margin(terms, scale);
            assert!(
                m > 6.0 * sd && m < 30.0 * sd,
                "{terms} × {scale}: {m} vs σ {sd}"
            );
        }
        assert!(noise_margin(6, 1e-9) <= 1.0);
    }

    #[test]
    fn the_released_rows_bound_holds_and_is_drawn_alike_without_a_release() {
        let c = cost_validation(
            binary(),
            vec![Metric::Accuracy],
            0.5,
            0.95,
            &PrivacyUnit::Row,
        )
        .expect("cost");
        let margin = c.rows_margin();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut released, mut failed) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let mut e = ExactValidation::new(&c);
            for i in 0..1_000 {
                e.add_classified(i % 2, Some(i % 2));
            }
            let r = release_validation(&c, e, &mut rng).expect("release");
            released.push(r.rows_at_most());
            failed.push(c.noisy_rows_at_most(1_000).expect("noisy rows"));
        }
        for bounds in [&released, &failed] {
            assert!(
                bounds
                    .iter()
                    .all(|b| *b >= 1_000.0 && *b < 1_000.0 + 2.0 * margin),
                "{bounds:?}"
            );
        }
        // Same distribution either way: means within a few standard errors (σ of the sum of
        // six terms of scale 2 is about 7).
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean(&released) - mean(&failed)).abs() < 3.0);
    }

    #[test]
    fn regression_sums_are_clipped_and_released() {
        let task = Task::Regression { lo: 0.0, hi: 100.0 };
        let c = cost_validation(
            task,
            vec![Metric::Mae, Metric::Rmse, Metric::R2],
            20.0,
            0.95,
            &PrivacyUnit::Row,
        )
        .expect("cost");
        let mut e = ExactValidation::new(&c);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..5_000 {
            let y: f64 = rng.random_range(0.0..100.0);
            e.add_regressed(y, y + 2.0);
        }
        // A wild prediction is clipped to the bounds: it cannot move a sum by more than the
        // bounded contribution.
        e.add_regressed(50.0, 1e12);
        e.add_regressed(50.0, f64::NAN);
        let r = release_validation(&c, e, &mut rng).expect("release");
        let get = |n: &str| {
            r.metrics()
                .iter()
                .find(|m| m.name == n)
                .expect("metric")
                .clone()
        };
        assert!((get("mae").value - 2.0).abs() < 0.5, "{:?}", get("mae"));
        assert!((get("rmse").value - 2.0).abs() < 2.0, "{:?}", get("rmse"));
        assert!(get("r2").value > 0.9, "{:?}", get("r2"));
    }
}
