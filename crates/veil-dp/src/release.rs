//! Costing a plan and releasing its answer: OpenDP measurements calibrated to the plan's
//! sensitivities, their privacy maps summed into the charge, noise added with OpenDP's exact
//! samplers, and confidence intervals derived from the noise scales.
//!
//! OpenDP measurements are `!Send`, so everything here is synchronous and builds its
//! measurements on the calling thread; callers run it on a blocking pool.
//!
//! Budget split: every aggregate gets an equal share of ε (plus one share for choosing
//! unknown group keys, if any); an aggregate computed from several exact measures (AVG from
//! a sum and a count) splits its share equally between them. With δ > 0 and public keys the
//! Gaussian mechanism may be chosen; it is accounted in zCDP and the total converted to
//! (ε, δ) once, which is tighter than adding per-measure (ε, δ).

use std::collections::{BTreeMap, HashMap};

use opendp::accuracy::{discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy};
use opendp::combinators::ConcentratedMeasure;
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace, make_laplace_threshold, make_noisy_max};
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance, L2Distance, LInfDistance};
use opendp::utilities::fallible_binary_search;
use serde::Serialize;

use crate::exact::{ExactResult, KeyValue, Measure, candidates, measures, parts_of};
use crate::manifest::format_date;
use crate::plan::*;
use crate::sql::Refusal;

/// A noise scale this much larger than the closed form keeps OpenDP's rounded-up maps at or
/// below each share (the maps round up by an ulp or so).
const SAFETY: f64 = 1.0 + 1e-9;

/// Failures while costing or releasing. These are not the analyst's fault and carry no
/// private information (they depend only on the plan).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("differential privacy engine error: {0}")]
    Engine(String),
}

fn engine(e: opendp::error::Error) -> ReleaseError {
    ReleaseError::Engine(format!(
        "{:?}: {}",
        e.variant,
        e.message.unwrap_or_default()
    ))
}

fn refusal(e: opendp::error::Error) -> Refusal {
    Refusal(format!(
        "the privacy parameters cannot be met: {}",
        e.message.unwrap_or_else(|| format!("{:?}", e.variant))
    ))
}

/// How one exact measure is noised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Noise {
    /// Discrete Laplace, scale in the measure's integer units.
    Laplace(f64),
    /// Discrete Gaussian, σ in integer units.
    Gaussian(f64),
    /// Report-noisy-max over quantile scores (α = num/den).
    Quantile { scale: f64, num: u64, den: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    /// Index into the plan's measures.
    pub measure: usize,
    pub noise: Noise,
    pub epsilon: f64,
}

/// A plan with its noise calibrated and its exact privacy cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CostedPlan {
    pub plan: QueryPlan,
    pub(crate) measures: Vec<Measure>,
    /// Per aggregate, its parts (in the order of `exact::parts_of`).
    pub(crate) parts: Vec<Vec<Part>>,
    /// Key selection for unknown keys: (scale, threshold).
    pub(crate) selection: Option<(f64, i64)>,
    pub mechanism: Mechanism,
    /// What the query costs, from the OpenDP privacy maps; never more than asked.
    pub epsilon: f64,
    pub delta: f64,
}

impl CostedPlan {
    /// The exact measures the executor must compute, in order.
    pub fn measures(&self) -> &[Measure] {
        &self.measures
    }
}

type VecLaplace = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L1Distance<i64>,
    MaxDivergence,
    Vec<i64>,
>;
type VecGaussian = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<i64>,
>;

fn laplace_vec(scale: f64) -> opendp::error::Fallible<VecLaplace> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )
}

fn gaussian_vec(sigma: f64) -> opendp::error::Fallible<VecGaussian> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<f64>::default(),
        sigma,
        None,
    )
}

type NoisyMax<MO> =
    opendp::core::Measurement<VectorDomain<AtomDomain<u64>>, LInfDistance<u64>, MO, usize>;

fn quantile_pure(scale: f64) -> opendp::error::Fallible<NoisyMax<MaxDivergence>> {
    make_noisy_max(
        VectorDomain::new(AtomDomain::<u64>::default()),
        LInfDistance::<u64>::default(),
        MaxDivergence,
        scale,
        true,
    )
}

fn quantile_zcdp(scale: f64) -> opendp::error::Fallible<NoisyMax<ZeroConcentratedDivergence>> {
    make_noisy_max(
        VectorDomain::new(AtomDomain::<u64>::default()),
        LInfDistance::<u64>::default(),
        ZeroConcentratedDivergence,
        scale,
        true,
    )
}

type Threshold = opendp::core::Measurement<
    MapDomain<AtomDomain<String>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<String, i64>,
>;

fn threshold(scale: f64, t: i64) -> opendp::error::Fallible<Threshold> {
    make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
        MapDomain::new(
            AtomDomain::<String>::default(),
            AtomDomain::<i64>::default(),
        ),
        L0PInfDistance::<1, _>(AbsoluteDistance::<i64>::default()),
        scale,
        t,
        None,
    )
}

/// α of a quantile as a fraction num/den (den = 10 000), as OpenDP's score uses it.
fn alpha_fraction(q: f64) -> (u64, u64) {
    let den = 10_000u64;
    let num = ((q * den as f64).round() as u64).clamp(1, den - 1);
    (num, den)
}

/// Largest ρ whose (ε, δ) conversion stays within `epsilon` at `delta`. (ε(ρ) ≥ ρ, so ρ
/// lies below ε.)
fn rho_for(epsilon: f64, delta: f64) -> Result<f64, Refusal> {
    fallible_binary_search(
        |r: &f64| Ok(ZeroConcentratedDivergence::convert(*r)?.epsilon(delta)? <= epsilon),
        (0.0, epsilon),
    )
    .map_err(refusal)
}

/// Most exact cells one query may compute: groups × the summed width of its measures (a
/// quantile's histogram is up to `MAX_QUANTILE_CANDIDATES` wide). Each cell is an integer held
/// in memory, noised or scored; 8 M cells are 64 MiB and a few seconds of one core.
pub const MAX_CELLS: usize = 8_000_000;
/// Most values one answer may release (groups × outputs): about 100 bytes each in JSON.
pub const MAX_RELEASED_VALUES: usize = 250_000;

/// Refuses, before anything is charged or read, a query whose work or answer size is too
/// large. Both checks depend on the plan and the manifest only. A text column's values are not
/// public (it can only be the single key), so its groups are counted as
/// `MAX_KEYS_PER_COLUMN`: an assumption, not a bound, since the rows hold as many distinct
/// values as they hold; the threshold release shows only the frequent ones.
fn bound_work(plan: &QueryPlan, measures: &[Measure]) -> Result<(), Refusal> {
    let groups = plan
        .public_key_count()
        .unwrap_or(crate::sql::MAX_KEYS_PER_COLUMN);
    let width: usize = measures.iter().map(Measure::width).sum();
    let cells = groups.saturating_mul(width.max(1));
    if cells > MAX_CELLS {
        return Err(Refusal(format!(
            "the query would compute {cells} cells ({groups} groups × {width} per group; quantiles count \
             as their number of candidate values), above the limit of {MAX_CELLS}: group by fewer or \
             coarser keys, or ask for fewer quantiles"
        )));
    }
    let values = groups.saturating_mul(plan.outputs.len().max(1));
    if values > MAX_RELEASED_VALUES {
        return Err(Refusal(format!(
            "the answer would hold {values} values ({groups} groups × {} columns), above the limit of \
             {MAX_RELEASED_VALUES}: group by fewer or coarser keys, or select fewer columns",
            plan.outputs.len()
        )));
    }
    Ok(())
}

/// Calibrates noise for `plan` and computes what it costs.
pub fn cost(plan: QueryPlan) -> Result<CostedPlan, Refusal> {
    let o = plan.options;
    let k = i64::from(plan.unit.rows_per_unit());
    let measures = measures(&plan);
    bound_work(&plan, &measures)?;
    let unknown = plan.has_unknown_keys();
    let shares = plan.aggregates.len() + usize::from(unknown);
    let eps_share = o.epsilon / shares as f64;

    let mechanism = match o.mechanism {
        MechanismChoice::Laplace => Mechanism::Laplace,
        MechanismChoice::Gaussian if unknown => {
            return Err(Refusal(
                "grouping by a text column uses the Laplace threshold mechanism; drop --mechanism gaussian".into(),
            ));
        }
        MechanismChoice::Gaussian => Mechanism::Gaussian,
        MechanismChoice::Auto if o.delta == 0.0 || unknown => Mechanism::Laplace,
        MechanismChoice::Auto => {
            // Compare the noise of one typical measure: Laplace std √2·Δ/ε_part versus
            // Gaussian σ = Δ/√(2ρ_part), with the same share structure. If the zCDP
            // conversion cannot be computed (extreme parameters), Laplace is the answer.
            let parts: usize = plan
                .aggregates
                .iter()
                .map(|a| parts_of(&a.kind).len())
                .sum();
            let eps_part = o.epsilon / parts as f64;
            match rho_for(o.epsilon, o.delta) {
                Ok(rho)
                    if 1.0 / (2.0 * rho / parts as f64).sqrt()
                        < std::f64::consts::SQRT_2 / eps_part =>
                {
                    Mechanism::Gaussian
                }
                _ => Mechanism::Laplace,
            }
        }
    };
    let rho_share = match mechanism {
        Mechanism::Gaussian => rho_for(o.epsilon, o.delta)? / plan.aggregates.len() as f64,
        Mechanism::Laplace => 0.0,
    };

    let index = |m: &Measure| measures.iter().position(|x| x == m).unwrap_or(0);
    let mut parts = Vec::with_capacity(plan.aggregates.len());
    let mut eps_pure = 0.0;
    let mut rho_total = 0.0;
    for a in &plan.aggregates {
        let ms = parts_of(&a.kind);
        let n = ms.len() as f64;
        let mut out = Vec::with_capacity(ms.len());
        for m in ms {
            let sens = k.saturating_mul(m.per_row_sensitivity());
            let part = match (&a.kind, mechanism) {
                (AggKind::Quantile(_, _, q), Mechanism::Laplace) => {
                    let (num, den) = alpha_fraction(*q);
                    let d_in = (k as u64).saturating_mul(num.max(den - num));
                    // Non-monotonic scores: ε = 2·d_in/scale.
                    let scale = 2.0 * d_in as f64 / (eps_share / n) * SAFETY;
                    let eps = quantile_pure(scale)
                        .and_then(|m| m.map(&d_in))
                        .map_err(refusal)?;
                    eps_pure += eps;
                    Part {
                        measure: index(&m),
                        noise: Noise::Quantile { scale, num, den },
                        epsilon: eps,
                    }
                }
                (AggKind::Quantile(_, _, q), Mechanism::Gaussian) => {
                    let (num, den) = alpha_fraction(*q);
                    let d_in = (k as u64).saturating_mul(num.max(den - num));
                    // ρ = (2·d_in/scale)²/8.
                    let scale = 2.0 * d_in as f64 / (8.0 * rho_share / n).sqrt() * SAFETY;
                    let rho = quantile_zcdp(scale)
                        .and_then(|m| m.map(&d_in))
                        .map_err(refusal)?;
                    rho_total += rho;
                    Part {
                        measure: index(&m),
                        noise: Noise::Quantile { scale, num, den },
                        epsilon: 0.0,
                    }
                }
                (_, Mechanism::Laplace) => {
                    let scale = sens as f64 / (eps_share / n) * SAFETY;
                    let eps = laplace_vec(scale)
                        .and_then(|m| m.map(&sens))
                        .map_err(refusal)?;
                    eps_pure += eps;
                    Part {
                        measure: index(&m),
                        noise: Noise::Laplace(scale),
                        epsilon: eps,
                    }
                }
                (_, Mechanism::Gaussian) => {
                    let sigma = sens as f64 / (2.0 * rho_share / n).sqrt() * SAFETY;
                    let rho = gaussian_vec(sigma)
                        .and_then(|m| m.map(&(sens as f64)))
                        .map_err(refusal)?;
                    rho_total += rho;
                    Part {
                        measure: index(&m),
                        noise: Noise::Gaussian(sigma),
                        epsilon: 0.0,
                    }
                }
            };
            out.push(part);
        }
        parts.push(out);
    }

    let mut delta = 0.0;
    let selection = if unknown {
        let scale = k as f64 / eps_share * SAFETY;
        let d_in = (u32::try_from(k).unwrap_or(u32::MAX), k, k);
        let t = fallible_binary_search(
            |t: &i64| Ok(threshold(scale, *t)?.map(&d_in)?.1 <= o.delta),
            opendp::utilities::Above(k),
        )
        .map_err(refusal)?;
        let (eps, del) = threshold(scale, t)
            .and_then(|m| m.map(&d_in))
            .map_err(refusal)?;
        eps_pure += eps;
        delta += del;
        Some((scale, t))
    } else {
        None
    };
    let mut epsilon = eps_pure;
    if mechanism == Mechanism::Gaussian {
        epsilon += ZeroConcentratedDivergence::convert(rho_total)
            .and_then(|p| p.epsilon(o.delta))
            .map_err(refusal)?;
        delta += o.delta;
    }
    // Guard: the charge can never exceed the request (beyond float noise in the last digits).
    if epsilon > o.epsilon * (1.0 + 1e-6) || delta > o.delta * (1.0 + 1e-6) + 1e-300 {
        return Err(Refusal(format!(
            "internal accounting check failed: cost ({epsilon}, {delta}) exceeds the request"
        )));
    }
    Ok(CostedPlan {
        plan,
        measures,
        parts,
        selection,
        mechanism,
        epsilon: epsilon.min(o.epsilon),
        delta: delta.min(o.delta),
    })
}

// ---------------------------------------------------------------------------------------
// The released answer.

/// One released cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cell {
    /// A group key (public: from the manifest, or selected by a thresholded release).
    Key { value: Option<String> },
    /// A noisy aggregate with its confidence interval.
    Value {
        value: f64,
        low: Option<f64>,
        high: Option<f64>,
        /// For quantiles: the released value's rank is within this many rows of the target
        /// rank with the stated confidence (value intervals would need more budget).
        rank_error: Option<f64>,
    },
}

/// How one output column was produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// `key` or `aggregate`.
    pub kind: &'static str,
    /// e.g. `AVG(income)`.
    pub expression: Option<String>,
    pub mechanism: Option<String>,
    /// Noise scale(s) in the output's units, one per exact measure.
    pub noise_scales: Vec<f64>,
    pub epsilon: Option<f64>,
}

/// A differentially private answer. Only this crate can build one: holding a `Released`
/// means its numbers came through a privacy mechanism.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Released {
    columns: Vec<ColumnInfo>,
    rows: Vec<Vec<Cell>>,
    epsilon: f64,
    delta: f64,
    confidence: f64,
    mechanism: &'static str,
    notes: Vec<String>,
}

impl Released {
    pub fn columns(&self) -> &[ColumnInfo] {
        &self.columns
    }
    pub fn rows(&self) -> &[Vec<Cell>] {
        &self.rows
    }
    /// The privacy cost, exactly what was charged.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    pub fn delta(&self) -> f64 {
        self.delta
    }
    pub fn confidence(&self) -> f64 {
        self.confidence
    }
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// Every public key combination, in manifest order (NULL last for nullable keys).
fn public_combinations(keys: &[GroupKey]) -> Vec<Vec<KeyValue>> {
    let mut combos: Vec<Vec<KeyValue>> = vec![Vec::new()];
    for k in keys {
        let mut values: Vec<KeyValue> = match &k.keys {
            KeySet::Categories(c) => c.iter().cloned().map(KeyValue::Str).collect(),
            KeySet::Bool => vec![KeyValue::Bool(false), KeyValue::Bool(true)],
            KeySet::IntRange { lo, hi } => (*lo..=*hi).map(KeyValue::Int).collect(),
            KeySet::Dates { starts, .. } => starts.iter().copied().map(KeyValue::Date).collect(),
            KeySet::Unknown => Vec::new(),
        };
        if k.nullable {
            values.push(KeyValue::Null);
        }
        combos = combos
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push(v.clone());
                    c
                })
            })
            .collect();
    }
    combos
}

fn key_text(v: &KeyValue, key: &GroupKey) -> Option<String> {
    match v {
        KeyValue::Str(s) => Some(s.clone()),
        KeyValue::Int(i) => Some(i.to_string()),
        KeyValue::Bool(b) => Some(b.to_string()),
        KeyValue::Date(d) => {
            let full = format_date(*d);
            Some(match &key.keys {
                KeySet::Dates {
                    unit: DateUnit::Year,
                    ..
                } => full[..4].to_string(),
                KeySet::Dates {
                    unit: DateUnit::Month,
                    ..
                } => full[..7].to_string(),
                _ => full,
            })
        }
        KeyValue::Null => None,
    }
}

/// Sentinel for a NULL text key inside the thresholded map (cannot occur in real text,
/// which never contains NUL).
const NULL_TEXT_KEY: &str = "\u{0}null";

fn accuracy(noise: Noise, alpha: f64) -> Result<f64, ReleaseError> {
    let a = match noise {
        Noise::Laplace(s) => discrete_laplacian_scale_to_accuracy(s, alpha).map_err(engine)?,
        // OpenDP sums the discrete Gaussian's density term by term, about 40·σ terms, counted
        // in an i32: slow for large σ, and an overflow past 5·10^7. There the discrete
        // Gaussian's quantiles are the continuous one's to within one unit.
        Noise::Gaussian(s) if s > LARGE_GAUSSIAN => {
            (s * normal_quantile(1.0 - alpha / 2.0)).ceil() + 1.0
        }
        Noise::Gaussian(s) => discrete_gaussian_scale_to_accuracy(s, alpha).map_err(engine)?,
        Noise::Quantile { .. } => return Ok(f64::NAN),
    };
    // For a scale so small that the noise is zero with probability above 1 − α, OpenDP's
    // formula gives −∞ (a logarithm of zero): the half-width is then 0.
    Ok(if a.is_nan() || a < 0.0 { 0.0 } else { a })
}

/// Above this scale, Gaussian intervals come from the continuous quantile (see [`accuracy`]).
const LARGE_GAUSSIAN: f64 = 100.0;

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2·10⁻⁹ on (0, 1)).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Adds the plan's noise to `exact` and builds the answer.
pub fn release(costed: &CostedPlan, exact: ExactResult) -> Result<Released, ReleaseError> {
    if exact.measures != costed.measures {
        return Err(ReleaseError::Engine(
            "exact results do not match the plan".into(),
        ));
    }
    let plan = &costed.plan;
    let alpha = 1.0 - plan.options.confidence;
    let mut notes = Vec::new();

    // Which groups are released, and the thresholded counts if keys were unknown.
    let groups: Vec<Vec<KeyValue>> = match costed.selection {
        None => public_combinations(&plan.keys),
        Some((scale, t)) => {
            let counts: HashMap<String, i64> = exact
                .groups
                .iter()
                .map(|(k, v)| {
                    let key = match k.first() {
                        Some(KeyValue::Str(s)) => s.clone(),
                        _ => NULL_TEXT_KEY.to_string(),
                    };
                    (key, v[0][0])
                })
                .collect();
            let kept = threshold(scale, t)
                .and_then(|m| m.invoke(&counts))
                .map_err(engine)?;
            let mut kept: Vec<(String, i64)> = kept.into_iter().collect();
            kept.sort();
            notes.push(format!(
                "groups of {} were selected by a threshold on noisy counts (threshold {t}); groups with few rows are not shown",
                plan.keys[0].column
            ));
            kept.into_iter()
                .map(|(k, _)| {
                    vec![if k == NULL_TEXT_KEY {
                        KeyValue::Null
                    } else {
                        KeyValue::Str(k)
                    }]
                })
                .collect()
        }
    };
    let zero: Vec<Vec<i64>> = costed.measures.iter().map(|m| vec![0; m.width()]).collect();
    let exact_of = |g: &Vec<KeyValue>| exact.groups.get(g).unwrap_or(&zero);

    // Noise every scalar part as one vector over the released groups; quantiles per group.
    let mut noisy: Vec<Vec<Vec<f64>>> = Vec::with_capacity(costed.parts.len());
    for parts in &costed.parts {
        let mut per_part = Vec::with_capacity(parts.len());
        for p in parts {
            let m = &costed.measures[p.measure];
            let values: Vec<f64> = match p.noise {
                Noise::Laplace(scale) => {
                    let v: Vec<i64> = groups.iter().map(|g| exact_of(g)[p.measure][0]).collect();
                    laplace_vec(scale)
                        .and_then(|mm| mm.invoke(&v))
                        .map_err(engine)?
                        .into_iter()
                        .map(|x| x as f64)
                        .collect()
                }
                Noise::Gaussian(sigma) => {
                    let v: Vec<i64> = groups.iter().map(|g| exact_of(g)[p.measure][0]).collect();
                    gaussian_vec(sigma)
                        .and_then(|mm| mm.invoke(&v))
                        .map_err(engine)?
                        .into_iter()
                        .map(|x| x as f64)
                        .collect()
                }
                Noise::Quantile { scale, num, den } => {
                    let (lo, hi) = m.bounds().unwrap_or((0.0, 0.0));
                    let cands = candidates(lo, hi, m.width());
                    let mut out = Vec::with_capacity(groups.len());
                    for g in &groups {
                        let hist = &exact_of(g)[p.measure];
                        let scores = quantile_scores(hist, num, den);
                        let idx = match costed.mechanism {
                            Mechanism::Laplace => {
                                quantile_pure(scale).and_then(|mm| mm.invoke(&scores))
                            }
                            Mechanism::Gaussian => {
                                quantile_zcdp(scale).and_then(|mm| mm.invoke(&scores))
                            }
                        }
                        .map_err(engine)?;
                        out.push(cands.get(idx).copied().unwrap_or(lo));
                    }
                    out
                }
            };
            per_part.push(values);
        }
        noisy.push(per_part);
    }

    // Assemble rows.
    let mut rows = Vec::with_capacity(groups.len());
    for (gi, g) in groups.iter().enumerate() {
        let mut row = Vec::with_capacity(plan.outputs.len());
        for (_, out) in &plan.outputs {
            row.push(match out {
                Output::Key(i) => Cell::Key {
                    value: key_text(&g[*i], &plan.keys[*i]),
                },
                Output::Aggregate(a) => {
                    let agg = &plan.aggregates[*a];
                    let parts = &costed.parts[*a];
                    let vals: Vec<f64> = noisy[*a].iter().map(|v| v[gi]).collect();
                    aggregate_cell(agg, parts, &costed.measures, &vals, alpha)?
                }
            });
        }
        rows.push(row);
    }

    // Post-processing on released values only.
    if !plan.order_by.is_empty() {
        rows.sort_by(|a, b| {
            for (idx, desc) in &plan.order_by {
                let ord = cmp_cells(&a[*idx], &b[*idx]);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    if let Some(limit) = plan.limit {
        rows.truncate(limit);
    }

    let columns = plan
        .outputs
        .iter()
        .map(|(name, out)| match out {
            Output::Key(_) => ColumnInfo {
                name: name.clone(),
                kind: "key",
                expression: None,
                mechanism: None,
                noise_scales: Vec::new(),
                epsilon: None,
            },
            Output::Aggregate(a) => {
                let agg = &plan.aggregates[*a];
                let parts = &costed.parts[*a];
                ColumnInfo {
                    name: name.clone(),
                    kind: "aggregate",
                    expression: Some(describe(&agg.kind)),
                    mechanism: Some(match parts.first().map(|p| p.noise) {
                        Some(Noise::Quantile { .. }) => match costed.mechanism {
                            Mechanism::Laplace => "report_noisy_max (exponential mechanism)".into(),
                            Mechanism::Gaussian => "report_noisy_max (Gumbel, zCDP)".into(),
                        },
                        _ => costed.mechanism.name().into(),
                    }),
                    noise_scales: parts
                        .iter()
                        .map(|p| {
                            let unit = unit_factor(&costed.measures[p.measure]);
                            match p.noise {
                                Noise::Laplace(s) | Noise::Gaussian(s) => s / unit,
                                Noise::Quantile { scale, den, .. } => scale / den as f64,
                            }
                        })
                        .collect(),
                    epsilon: (costed.mechanism == Mechanism::Laplace)
                        .then(|| parts.iter().map(|p| p.epsilon).sum()),
                }
            }
        })
        .collect();
    Ok(Released {
        columns,
        rows,
        epsilon: costed.epsilon,
        delta: costed.delta,
        confidence: plan.options.confidence,
        mechanism: costed.mechanism.name(),
        notes,
    })
}

/// OpenDP's quantile score from bucket counts: |(den − num)·lt − num·gt| per candidate,
/// where lt/gt count values in buckets below/above the candidate's bucket.
pub(crate) fn quantile_scores(hist: &[i64], num: u64, den: u64) -> Vec<u64> {
    let counts: Vec<u64> = hist
        .iter()
        .map(|c| u64::try_from(*c).unwrap_or(0))
        .collect();
    let total: u64 = counts.iter().sum();
    let mut lt = 0u64;
    let mut out = Vec::with_capacity(counts.len());
    for c in &counts {
        let gt = total - lt - c;
        out.push(((den - num).saturating_mul(lt)).abs_diff(num.saturating_mul(gt)));
        lt += c;
    }
    out
}

fn unit_factor(m: &Measure) -> f64 {
    match m {
        Measure::Sum { fixed, .. } => fixed.factor(),
        Measure::SumSquares { fixed, .. } => fixed.factor() * fixed.factor(),
        _ => 1.0,
    }
}

fn describe(k: &AggKind) -> String {
    match k {
        AggKind::CountRows => "COUNT(*)".into(),
        AggKind::CountColumn(c) => format!("COUNT({c})"),
        AggKind::Sum(c, _) => format!("SUM({c})"),
        AggKind::Avg(c, _) => format!("AVG({c})"),
        AggKind::Variance(c, _) => format!("VARIANCE({c})"),
        AggKind::Stddev(c, _) => format!("STDDEV({c})"),
        AggKind::Quantile(c, _, q) => format!("QUANTILE({c}, {q})"),
    }
}

fn cmp_cells(a: &Cell, b: &Cell) -> std::cmp::Ordering {
    match (a, b) {
        (Cell::Value { value: x, .. }, Cell::Value { value: y, .. }) => x.total_cmp(y),
        (Cell::Key { value: x }, Cell::Key { value: y }) => {
            match (
                x.as_deref().and_then(|s| s.parse::<f64>().ok()),
                y.as_deref().and_then(|s| s.parse::<f64>().ok()),
            ) {
                (Some(p), Some(q)) => p.total_cmp(&q),
                _ => x.cmp(y),
            }
        }
        _ => std::cmp::Ordering::Equal,
    }
}

/// Turns an aggregate's noisy measures into its value and interval (post-processing only).
fn aggregate_cell(
    agg: &Aggregate,
    parts: &[Part],
    measures: &[Measure],
    vals: &[f64],
    alpha: f64,
) -> Result<Cell, ReleaseError> {
    let scaled = |i: usize| vals[i] / unit_factor(&measures[parts[i].measure]);
    let acc = |i: usize, a: f64| -> Result<f64, ReleaseError> {
        Ok(accuracy(parts[i].noise, a)? / unit_factor(&measures[parts[i].measure]))
    };
    let cell = |value: f64, low: f64, high: f64| Cell::Value {
        value,
        low: Some(low),
        high: Some(high),
        rank_error: None,
    };
    Ok(match &agg.kind {
        AggKind::CountRows | AggKind::CountColumn(_) | AggKind::Sum(..) => {
            // Unbiased: no clamping of the released value.
            let (v, a) = (scaled(0), acc(0, alpha)?);
            cell(v, v - a, v + a)
        }
        AggKind::Avg(_, b) => {
            let (s, c) = (scaled(0), scaled(1));
            let (a_s, a_c) = (acc(0, alpha / 2.0)?, acc(1, alpha / 2.0)?);
            let value = if c >= 1.0 {
                (s / c).clamp(b.lo, b.hi)
            } else {
                (b.lo + b.hi) / 2.0
            };
            let (lo, hi) = if c - a_c >= 1.0 {
                let cands = [
                    (s - a_s) / (c - a_c),
                    (s - a_s) / (c + a_c),
                    (s + a_s) / (c - a_c),
                    (s + a_s) / (c + a_c),
                ];
                (
                    cands
                        .iter()
                        .copied()
                        .fold(f64::INFINITY, f64::min)
                        .max(b.lo),
                    cands
                        .iter()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max)
                        .min(b.hi),
                )
            } else {
                (b.lo, b.hi)
            };
            cell(value, lo, hi)
        }
        AggKind::Variance(_, b) | AggKind::Stddev(_, b) => {
            let (s, q, c) = (scaled(0), scaled(1), scaled(2));
            let a3 = alpha / 3.0;
            let (a_s, a_q, a_c) = (acc(0, a3)?, acc(1, a3)?, acc(2, a3)?);
            let max_var = (b.hi - b.lo).powi(2) / 4.0;
            let var_of = |q: f64, s2: f64, c: f64| {
                ((q - s2 / c) / (c - 1.0)).clamp(0.0, max_var * c / (c - 1.0).max(1.0))
            };
            let value = if c > 2.0 {
                var_of(q, s * s, c)
            } else {
                max_var / 2.0
            };
            let (lo, hi) = if c - a_c > 2.0 {
                let (s_lo, s_hi) = (s - a_s, s + a_s);
                let s2_min = if s_lo <= 0.0 && s_hi >= 0.0 {
                    0.0
                } else {
                    s_lo.powi(2).min(s_hi.powi(2))
                };
                let s2_max = s_lo.powi(2).max(s_hi.powi(2));
                let (c_lo, c_hi) = (c - a_c, c + a_c);
                let n_min = (q - a_q) - s2_max / c_lo;
                let n_max = (q + a_q) - s2_min / c_hi;
                let v_min = if n_min >= 0.0 {
                    n_min / (c_hi - 1.0)
                } else {
                    n_min / (c_lo - 1.0)
                };
                let v_max = if n_max >= 0.0 {
                    n_max / (c_lo - 1.0)
                } else {
                    n_max / (c_hi - 1.0)
                };
                (
                    v_min.max(0.0),
                    v_max.clamp(0.0, max_var * c_lo / (c_lo - 1.0)),
                )
            } else {
                (0.0, max_var * 2.0)
            };
            if matches!(agg.kind, AggKind::Stddev(..)) {
                cell(value.sqrt(), lo.sqrt(), hi.sqrt())
            } else {
                cell(value, lo, hi)
            }
        }
        AggKind::Quantile(..) => {
            let Noise::Quantile { scale, den, .. } = parts[0].noise else {
                return Err(ReleaseError::Engine(
                    "quantile without a quantile mechanism".into(),
                ));
            };
            let m = measures[parts[0].measure].width() as f64;
            // P(score gap > t) <= m·exp(-t/scale) for exponential/Gumbel noise; scores count
            // rows times den.
            let rank_error = scale * (m / alpha).ln() / den as f64;
            Cell::Value {
                value: vals[0],
                low: None,
                high: None,
                rank_error: Some(rank_error),
            }
        }
    })
}

/// Sorted map helper used by tests: released rows keyed by their first key cell.
#[doc(hidden)]
pub fn by_first_key(r: &Released) -> BTreeMap<Option<String>, Vec<Cell>> {
    r.rows
        .iter()
        .map(|row| match row.first() {
            Some(Cell::Key { value }) => (value.clone(), row.clone()),
            _ => (None, row.clone()),
        })
        .collect()
}

#[cfg(test)]
mod interval_tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.975, 1.959_963_985),
            (0.995, 2.575_829_304),
            (0.5, 0.0),
            (0.01, -2.326_347_874),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-8,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    /// Interval half-widths at extreme scales: finite, non-negative, and computed at once
    /// (OpenDP's own sum would overflow or take seconds).
    #[test]
    fn half_widths_at_extreme_noise_scales_are_finite() {
        for s in [1e-9, 1e-3, 1.0, 99.0, 101.0, 1e6, 1e12] {
            for noise in [Noise::Laplace(s), Noise::Gaussian(s)] {
                let a = accuracy(noise, 0.05).expect("accuracy");
                assert!(a.is_finite() && a >= 0.0, "{noise:?}: {a}");
            }
        }
        let big = accuracy(Noise::Gaussian(1e6), 0.05).expect("accuracy");
        assert!((big / 1e6 - 1.96).abs() < 0.01, "{big}");
        // Either side of the switch to the continuous quantile agrees.
        let (below, above) = (
            accuracy(Noise::Gaussian(LARGE_GAUSSIAN), 0.05).expect("a"),
            accuracy(Noise::Gaussian(LARGE_GAUSSIAN + 1e-9), 0.05).expect("b"),
        );
        assert!((below - above).abs() <= 2.0, "{below} vs {above}");
    }
}
