//! From a float model and calibration rows to a quantised circuit, and back from the circuit's
//! integers to scores.
//!
//! The circuit shapes (measured on the breast-cancer data; see `veil-bench fhe`):
//! - **Linear models** need no bootstrap. Features are quantised to `bits` (default 8) over
//!   their calibration range; the score is one leveled dot product on fresh ciphertexts, whose
//!   noise is so small that the output can hold ~24 bits. The client applies the link.
//! - **One-hidden-layer networks** have two designs, and the compiler takes the cheaper one
//!   that stays as faithful (the negacyclic one with rounded and with refined integer weights).
//!   *Negacyclic* ([`negacyclic`]): one bootstrap per hidden neuron and score reads a signed
//!   5-bit accumulator whole; the activation is split into an affine part, carried at full
//!   input precision by a leveled output, and an antiperiodic part the bootstrap computes
//!   (exact for ReLU); a neuron whose integer weights all round to zero is folded into the
//!   affine part. The 30-neuron breast-cancer MLP at 4-bit inputs: 13 bootstraps, test accuracy
//!   0.982 like the float model. *Cleared*: three bootstraps per hidden neuron. The neuron's
//!   accumulator is an exact 8-bit integer (weights scaled so the calibration range fills it);
//!   its low 4 bits are cleared exactly (multiply by 16 to expose them, one bootstrap removes
//!   the bit that lands on the padding position, a second reads the remaining 4 bits), and a
//!   third maps the high 4 bits through requantisation, the activation and the output layer's
//!   weight at once; it wins on the calibration rows at default widths for the 30-neuron MLP.
//! - **Accumulator ranges.** By default ([`Accumulators::InputBox`]) an accumulator fed by
//!   inputs is sized to its range over every legal input, so none wraps; sized to the
//!   calibration rows instead ([`Accumulators::Calibration`], the figures above) the integer
//!   weights are finer, but an input unlike every calibration row may wrap ([`RangeCheck`]).
//! - **Deeper networks** take the negacyclic design only: a later layer's accumulator adds one
//!   bootstrap per earlier unit feeding it (see [`negacyclic`]). The breast-cancer 16-8 MLP:
//!   21 bootstraps, 0.965 against 0.974 float.
//! - **Output precision.** Every bootstrap output carries the same noise, so a ciphertext that
//!   sums `n` of them decrypts at about `10 - ½·log2 n` bits: 30 summed neurons leave 7 bits,
//!   too coarse for the 30-neuron breast-cancer MLP (0.921 against 0.982 float), and small
//!   leaf values of a forest round to nothing (the digits forest: 0.822 against 0.850). If the
//!   creator allows it ([`Outputs::PartialSums`]; by default a reply holds one ciphertext per
//!   score, so data users learn only the scores), a score may come back as several partial
//!   sums ([`OUTPUT_CAPS`]), which the client adds after decrypting: 0.978 for that MLP with
//!   two, 0.854 for the forest with three. The compiler takes the cheapest candidate within [`LABEL_TOLERANCE`] of the best
//!   agreement with the float model on the calibration rows, and of those the one whose
//!   scores are closest to the float model's.
//! - **Tree ensembles** quantise each feature by the thresholds the trees use (exactly, or
//!   with `--bits` snapped onto a grid as Concrete ML does, see `TreeGrid`). A bootstrap
//!   tells 16 ranks apart, so a feature with more than 15 distinct thresholds is encrypted as
//!   several inputs, one per chunk of 15. Trees spend one bootstrap per distinct comparison,
//!   and one per pair of sibling leaves (or lone leaf) to select the leaf value: the bootstrap
//!   reads `2·(agreements with the path) + last bit`.

use serde::{Deserialize, Serialize};

use crate::FheError;
use crate::circuit::{Circuit, LUT_BITS, LUT_SIZE, Op, ValueId};
use crate::client::{ClientSpec, Fidelity, Quantiser, RangeCheck, one, quantise, scores};
use crate::model::{Dense, FloatModel, Forest, Head, Network};
use crate::noise::Params;

mod negacyclic;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileOptions {
    /// Input quantisation bits; `None` picks per model type (8 for linear models, the best of
    /// 2–6 on the calibration rows for networks, the trees' own thresholds for forests). For
    /// forests, `Some(b)` snaps the thresholds onto a `2^b`-level grid as Concrete ML does.
    pub bits: Option<u32>,
    pub params: Params,
    /// Per feature, the range to quantise over, declared by the creator (public knowledge,
    /// such as a measurement's physical range) instead of the calibration rows' range rounded
    /// outward. Published in the client spec as given.
    #[serde(default)]
    pub ranges: Option<Vec<(f64, f64)>>,
    /// How networks size their accumulators (see [`Accumulators`]).
    #[serde(default)]
    pub accumulators: Accumulators,
    /// What a reply carries per score (see [`Outputs`]).
    #[serde(default)]
    pub outputs: Outputs,
}

/// What the client gets back per score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outputs {
    /// One ciphertext per score: the client learns the scores and nothing finer. The default.
    #[default]
    Scores,
    /// A score may come back as several partial sums (groups of hidden units or trees, and a
    /// network's affine part at a finer scale), which the client adds: more accuracy where one
    /// ciphertext would decrypt too coarsely, but data users see those parts (the disclosure
    /// says so).
    PartialSums,
}

/// How a network's accumulators are sized. A bootstrap reads an accumulator modulo its range,
/// so a value outside it wraps and that sample gets a wrong score (never a wrong decryption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulators {
    /// Sized to the whole legal input box (every input at any of its levels): no legal input
    /// wraps the accumulators that inputs alone feed. The default.
    #[default]
    InputBox,
    /// Sized to the calibration rows (widened 2%): finer integer weights, so fewer bootstraps
    /// or more accuracy on inputs like those rows, but a legal input unlike all of them may wrap
    /// (the compile report counts the accumulators that can).
    Calibration,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            bits: None,
            params: Params::message_2_carry_2(),
            ranges: None,
            accumulators: Accumulators::InputBox,
            outputs: Outputs::Scores,
        }
    }
}

/// A model ready for encrypted inference: the circuit, how to quantise inputs, how to read
/// outputs. Serialisable: the node stores it next to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledModel {
    pub circuit: Circuit,
    pub quantisers: Vec<Quantiser>,
    /// Score `k` is `output_k as f64 / output_scale`.
    pub output_scale: f64,
    pub head: Head,
    pub kind: String,
    pub params: Params,
    /// Worst per-read failure probability (log2) the noise analysis found.
    pub log2_p_fail: f64,
    /// A bound on the probability (log2) that any read of one sample fails (the union bound
    /// over its bootstraps and output decryptions). `None` for circuits compiled before it was
    /// computed.
    #[serde(default)]
    pub log2_p_fail_sample: Option<f64>,
    /// The accumulators checked over the whole legal input box. `None` for circuits compiled
    /// before the check existed.
    #[serde(default)]
    pub range_check: Option<RangeCheck>,
    /// Output ciphertexts per score: score `k` is the sum of outputs
    /// `k·outputs_per_score ..` over the next `outputs_per_score`, divided by `output_scale`.
    #[serde(default = "one")]
    pub outputs_per_score: usize,
    /// Per output ciphertext, how many bits finer than `output_scale` it is held: output `i`
    /// counts `output_i / 2^shift_i`. Empty means all zero (circuits stored before shifts).
    #[serde(default)]
    pub output_shifts: Vec<u32>,
}

impl CompiledModel {
    pub fn n_features(&self) -> usize {
        self.quantisers.len()
    }

    pub fn quantise(&self, x: &[f64]) -> Result<Vec<i64>, FheError> {
        quantise(&self.quantisers, x)
    }

    pub fn scores(&self, outputs: &[i64]) -> Vec<f64> {
        scores(
            outputs,
            self.output_scale,
            self.outputs_per_score,
            &self.output_shifts,
        )
    }

    /// Runs the quantised circuit in the clear: what an encrypted run decrypts to.
    pub fn simulate(&self, x: &[f64]) -> Result<Vec<i64>, FheError> {
        Ok(self.circuit.simulate(&self.quantise(x)?))
    }

    pub fn label(&self, outputs: &[i64]) -> Option<String> {
        self.head.label(&self.scores(outputs))
    }
}

impl CompiledModel {
    pub fn client_spec(&self, fidelity: Fidelity) -> ClientSpec {
        ClientSpec {
            kind: self.kind.clone(),
            quantisers: self.quantisers.clone(),
            input_bits: self.circuit.input_encodings(),
            output_bits: self.circuit.output_encodings(),
            output_scale: self.output_scale,
            head: self.head.clone(),
            outputs_per_score: self.outputs_per_score,
            output_shifts: self.output_shifts.clone(),
            pbs_per_sample: self.circuit.pbs_count(),
            log2_p_fail: self.log2_p_fail,
            log2_p_fail_sample: self.log2_p_fail_sample,
            range_check: self.range_check,
            fidelity,
        }
    }
}

pub fn fidelity(
    model: &FloatModel,
    compiled: &CompiledModel,
    rows: &[Vec<f64>],
) -> Result<Fidelity, FheError> {
    Ok(fidelity_and_error(model, compiled, rows)?.0)
}

/// [`fidelity`], and the mean absolute difference between the float and the circuit's scores
/// over every score of every row: a finer measure than label agreement, which a few rows near
/// a decision boundary decide.
fn fidelity_and_error(
    model: &FloatModel,
    compiled: &CompiledModel,
    rows: &[Vec<f64>],
) -> Result<(Fidelity, f64), FheError> {
    let mut agree = 0usize;
    let mut abs = 0.0;
    let mut n_scores = 0usize;
    for r in rows {
        let f = model.scores(r);
        let q = compiled.scores(&compiled.simulate(r)?);
        abs += f.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>();
        n_scores += f.len();
        if model.head() != &Head::Regression {
            agree += usize::from(model.head().label(&f) == model.head().label(&q));
        }
    }
    let n = rows.len().max(1) as f64;
    let error = abs / n_scores.max(1) as f64;
    let fidelity = match model.head() {
        Head::Regression => Fidelity {
            rows: rows.len(),
            label_agreement: None,
            mean_abs_error: Some(error),
        },
        _ => Fidelity {
            rows: rows.len(),
            label_agreement: Some(agree as f64 / n),
            mean_abs_error: None,
        },
    };
    Ok((fidelity, error))
}

/// Compiles `model`, calibrating quantisation on `calibration` rows (the model creator's data).
pub fn compile(
    model: &FloatModel,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
) -> Result<CompiledModel, FheError> {
    let n = model.n_features();
    if calibration.is_empty() {
        return Err(FheError::Input(
            "calibration data is needed to choose the quantisation".into(),
        ));
    }
    if let Some(r) = calibration.iter().find(|r| r.len() != n) {
        return Err(FheError::Input(format!(
            "calibration rows must have {n} features, one has {}",
            r.len()
        )));
    }
    if calibration.iter().flatten().any(|v| !v.is_finite()) {
        return Err(FheError::Input(
            "calibration data contains a missing or non-finite value".into(),
        ));
    }
    if let Some(r) = &opts.ranges
        && (r.len() != n
            || r.iter()
                .any(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo < hi)))
    {
        return Err(FheError::Input(format!(
            "declared ranges need {n} finite pairs with low < high"
        )));
    }
    if let Some(b) = opts.bits
        && !(2..=12).contains(&b)
    {
        return Err(FheError::Input(format!(
            "--bits must be between 2 and 12, not {b}"
        )));
    }
    let compiled = match model {
        FloatModel::Network(net) if net.layers.len() == 1 => linear(net, calibration, opts)?,
        FloatModel::Network(net) => {
            // Both designs (the cleared one for one hidden layer only: its 8-bit accumulator
            // cannot be fed by bootstrap outputs within the noise bound), every input width
            // from 2 to 6 bits unless told (a fixed accumulator width makes finer inputs mean
            // coarser integer weights), every output split: the cheapest faithful candidate
            // wins.
            let widths = opts.bits.map_or(2..=6, |b| b..=b);
            let cleared = net.layers.len() == 2;
            let caps = output_caps(opts);
            let candidates = widths.flat_map(|bits| {
                let o = CompileOptions {
                    bits: Some(bits),
                    ..opts.clone()
                };
                let mut c = vec![];
                for refine in [false, true] {
                    c.extend(negacyclic::negacyclic_network(
                        net,
                        calibration,
                        &o,
                        caps,
                        refine,
                    ));
                }
                if cleared {
                    c.extend(
                        caps.iter()
                            .map(|&cap| one_hidden_layer(net, calibration, &o, cap)),
                    );
                }
                c
            });
            most_faithful(model, calibration, candidates)?
        }
        FloatModel::Forest(f) => {
            // With `--bits`, the forest to compile (and to match) is the snapped one.
            let f = match opts.bits {
                Some(bits) => snap_forest(f, calibration, bits, opts.ranges.as_deref()),
                None => f.clone(),
            };
            let reference = FloatModel::Forest(f.clone());
            most_faithful(
                &reference,
                calibration,
                output_caps(opts).iter().map(|&cap| forest(&f, opts, cap)),
            )?
        }
    };
    if compiled.outputs_per_score > crate::backend::MAX_OUTPUTS_PER_SCORE {
        return Err(FheError::Unsupported(format!(
            "a score would come back as {} partial sums; clients accept at most {}",
            compiled.outputs_per_score,
            crate::backend::MAX_OUTPUTS_PER_SCORE
        )));
    }
    if compiled.circuit.outputs.len() != compiled.head.n_scores() * compiled.outputs_per_score {
        return Err(FheError::Circuit(
            "the outputs do not match the scores".into(),
        ));
    }
    compiled.circuit.validate()?;
    let noise = compiled.circuit.check_noise(&opts.params)?;
    let range_check = compiled
        .range_check
        .unwrap_or_else(|| box_range_check(&compiled.circuit, &compiled.quantisers));

    Ok(CompiledModel {
        log2_p_fail: noise.worst_read,
        log2_p_fail_sample: Some(noise.per_sample),
        range_check: Some(range_check),
        ..compiled
    })
}

/// The legal input box of a circuit: every encrypted input at any of its quantised levels.
fn input_box(quantisers: &[Quantiser]) -> Vec<(i64, i64)> {
    quantisers
        .iter()
        .flat_map(Quantiser::input_ranges)
        .collect()
}

/// [`RangeCheck`] for circuits whose accumulators a bootstrap reads whole.
fn box_range_check(circuit: &Circuit, quantisers: &[Quantiser]) -> RangeCheck {
    let accumulators = circuit
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Lut { input, .. } => Some(*input),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    RangeCheck {
        accumulators,
        may_wrap: circuit
            .accumulators_out_of_range(&input_box(quantisers))
            .len(),
    }
}

/// Agreement with the float model (share of calibration labels) a cheaper candidate may give
/// up against the most faithful one.
const LABEL_TOLERANCE: f64 = 0.005;

/// Picks among compiled candidates: of those whose agreement with the float model on the
/// calibration rows is within [`LABEL_TOLERANCE`] of the best (for regressors, within 1% of
/// the best mean absolute error), the ones with the fewest bootstraps; of these the one whose
/// scores are closest to the float model's (label agreement alone is decided by the few rows
/// that lie near a boundary), and on a tie the one with more output ciphertexts, which costs
/// only bytes. Fails with the first candidate's error if none compiles.
fn most_faithful(
    model: &FloatModel,
    calibration: &[Vec<f64>],
    candidates: impl IntoIterator<Item = Result<CompiledModel, FheError>>,
) -> Result<CompiledModel, FheError> {
    // (agreement or −MAE, score error, candidate)
    let mut scored: Vec<(f64, f64, CompiledModel)> = vec![];
    let mut first_err = None;
    for c in candidates {
        match c {
            Ok(c) => {
                let (f, error) = fidelity_and_error(model, &c, calibration)?;
                let score = f.label_agreement.unwrap_or(-error);
                scored.push((score, error, c));
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let best = scored
        .iter()
        .map(|(s, _, _)| *s)
        .fold(f64::NEG_INFINITY, f64::max);
    let floor = if model.head() == &Head::Regression {
        best - 0.01 * best.abs()
    } else {
        best - LABEL_TOLERANCE
    };
    let mut pick: Option<(f64, CompiledModel)> = None;
    for (s, error, c) in scored {
        if s < floor {
            continue;
        }
        let better = pick.as_ref().is_none_or(|(pe, pc)| {
            let (pbs, picked_pbs) = (c.circuit.pbs_count(), pc.circuit.pbs_count());
            pbs < picked_pbs
                || (pbs == picked_pbs
                    && (error < *pe
                        || (error == *pe && c.circuit.outputs.len() > pc.circuit.outputs.len())))
        });
        if better {
            pick = Some((error, c));
        }
    }
    match (pick, first_err) {
        (Some((_, c)), _) => Ok(c),
        (None, Some(e)) => Err(e),
        (None, None) => Err(FheError::Unsupported(
            "the model cannot be quantised".into(),
        )),
    }
}

/// Most bootstrap outputs one output ciphertext may sum, tried in turn: everything in one
/// sum, then partial sums of at most 64, 32 and 16 (which still decrypt at 7, 7 and 8 bits).
const OUTPUT_CAPS: [usize; 4] = [usize::MAX, 64, 32, 16];

/// The output caps a compile may try: everything in one sum only, unless partial sums may be
/// revealed ([`Outputs`]).
fn output_caps(opts: &CompileOptions) -> &'static [usize] {
    match opts.outputs {
        Outputs::Scores => &OUTPUT_CAPS[..1],
        Outputs::PartialSums => &OUTPUT_CAPS,
    }
}

/// How the bootstrap outputs of a circuit's units (hidden neurons, trees) become output
/// ciphertexts: per score, one partial sum per group of units.
struct OutputPlan {
    /// Group of every unit.
    group_of: Vec<usize>,
    /// Encoding of each group's partial sum.
    po: Vec<u32>,
    /// Output integers per unit of score, shared by every score so they stay comparable.
    scale: f64,
}

/// The widest encoding (4 to 30 bits) at which an output summing `terms` bootstrap outputs
/// still decrypts within the failure bound.
fn widest_output(terms: usize, params: &Params) -> Option<u32> {
    let var = terms as f64 * params.var_pbs;
    (4..=30)
        .rev()
        .find(|&p| params.log2_p_fail_output(var, p) <= params.max_log2_p_fail)
}

/// `luts[u]`: bootstrap outputs unit `u` adds to a score; `worst[k][u]`: the largest
/// |contribution| of unit `u` to score `k`; `base[k]`: score `k`'s constant (added to group 0).
/// Units are packed in order into groups of at most `cap` bootstrap outputs (a unit larger than
/// `cap` gets a group of its own); each group's partial sum gets the widest encoding its noise
/// allows.
fn plan_outputs(
    luts: &[usize],
    worst: &[Vec<f64>],
    base: &[f64],
    cap: usize,
    params: &Params,
) -> Result<OutputPlan, FheError> {
    let widest = |terms: usize| widest_output(terms, params);
    let mut group_of = Vec::with_capacity(luts.len());
    let mut counts: Vec<usize> = vec![];
    for &n in luts {
        match counts.last_mut() {
            Some(c) if c.saturating_add(n) <= cap => *c += n,
            _ => counts.push(n),
        }
        group_of.push(counts.len() - 1);
    }
    if counts.is_empty() {
        counts.push(0);
    }
    let mut units = vec![0usize; counts.len()];
    for &g in &group_of {
        units[g] += 1;
    }
    let too_many = || {
        FheError::Unsupported(
            "too many bootstrap outputs in one score for the output's noise budget".into(),
        )
    };
    let po = counts
        .iter()
        .map(|&c| widest(c.max(1)))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(too_many)?;
    let mut scale = f64::INFINITY;
    for (k, w) in worst.iter().enumerate() {
        for (g, &p) in po.iter().enumerate() {
            let mut sum: f64 = w
                .iter()
                .zip(&group_of)
                .filter(|(_, gg)| **gg == g)
                .map(|(v, _)| v.abs())
                .sum();
            // Each unit's table entries are rounded, by at most ½ each, and so is the constant.
            let mut slack = 0.5 * units[g] as f64;
            if g == 0 {
                sum += base.get(k).map_or(0.0, |b| b.abs());
                slack += 0.5;
            }
            let room = (1u64 << (p - 1)) as f64 - 1.0 - slack;
            if room <= 0.0 {
                return Err(too_many());
            }
            scale = scale.min(room / sum.max(1e-12));
        }
    }
    if !scale.is_finite() {
        scale = 1.0;
    }
    Ok(OutputPlan {
        group_of,
        po,
        scale,
    })
}

/// The range of calibration column `i` as the client spec publishes it: the smallest and
/// largest calibration values, which are single people's values, widened strictly outward to a
/// grid of two significant digits of the range's width (`[6.981, 28.11]` becomes `[6, 29]`,
/// `[18, 97]` becomes `[17, 98]`). It costs at most two tenths of the range on each side and
/// publishes no calibration value.
fn column_range(calibration: &[Vec<f64>], i: usize, declared: Option<&[(f64, f64)]>) -> (f64, f64) {
    if let Some(r) = declared.and_then(|d| d.get(i)) {
        return *r;
    }
    let (lo, hi) = calibration
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
            (l.min(r[i]), h.max(r[i]))
        });
    public_range(lo, hi)
}

/// `[lo, hi]` widened outward to multiples of a power of ten a tenth to a hundredth of its
/// width (see [`column_range`]).
pub(crate) fn public_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return (lo, hi);
    }
    let width = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    let grid = 10f64.powi(width.log10().floor() as i32 - 1);
    // Grid points print as written (no 6.000000000000001): rounded to the grid's decimals.
    let tidy = |x: f64| {
        let digits = (-(grid.log10().floor()) as i32).max(0);
        let f = 10f64.powi(digits);
        (x * f).round() / f
    };
    // Strictly outward: an extreme that is already on the grid (an integer feature, say)
    // moves a step out, so a published bound is never a calibration value.
    let mut down = tidy((lo / grid).floor() * grid);
    if down >= lo {
        down = tidy(down - grid);
    }
    let mut up = tidy((hi / grid).ceil() * grid);
    if up <= hi {
        up = tidy(up + grid);
    }
    if up > down {
        (down, up)
    } else {
        (down, down + grid)
    }
}

fn uniform_quantisers(
    calibration: &[Vec<f64>],
    levels: u32,
    declared: Option<&[(f64, f64)]>,
) -> Vec<Quantiser> {
    let n = calibration[0].len();
    (0..n)
        .map(|i| {
            let (lo, hi) = column_range(calibration, i, declared);
            let step = if hi > lo {
                (hi - lo) / f64::from(levels - 1)
            } else {
                1.0
            };
            Quantiser::Uniform { lo, step, levels }
        })
        .collect()
}

/// Rewrites `dense` so it reads quantised inputs: `W·(lo + step·q) + b = (W·step)·q + (b + W·lo)`.
fn fold_quantisers(dense: &Dense, qs: &[Quantiser]) -> Dense {
    let (los, steps): (Vec<f64>, Vec<f64>) = qs
        .iter()
        .map(|q| match q {
            Quantiser::Uniform { lo, step, .. } => (*lo, *step),
            Quantiser::Cuts { .. } | Quantiser::CutChunks { .. } => (0.0, 1.0),
        })
        .unzip();
    Dense {
        w: dense
            .w
            .iter()
            .map(|r| r.iter().zip(&steps).map(|(w, s)| w * s).collect())
            .collect(),
        b: dense
            .w
            .iter()
            .zip(&dense.b)
            .map(|(r, b)| b + r.iter().zip(&los).map(|(w, l)| w * l).sum::<f64>())
            .collect(),
    }
}

/// A network's first layer on uniformly quantised inputs: the quantisers (`levels` each), the
/// layer rewritten to read their integers, and the calibration rows as those integers.
fn quantised_first_layer(
    net: &Network,
    calibration: &[Vec<f64>],
    levels: u32,
    declared: Option<&[(f64, f64)]>,
) -> (Vec<Quantiser>, Dense, Vec<Vec<f64>>) {
    let qs = uniform_quantisers(calibration, levels, declared);
    let l1 = fold_quantisers(&net.layers[0], &qs);
    let qrows = calibration
        .iter()
        .map(|r| qs.iter().zip(r).map(|(q, v)| q.apply(*v) as f64).collect())
        .collect();
    (qs, l1, qrows)
}

fn inputs(c: &mut Vec<Op>, n: usize, p: u32) -> Vec<ValueId> {
    (0..n)
        .map(|feature| {
            c.push(Op::Input { feature, p });
            c.len() - 1
        })
        .collect()
}

fn linear(
    net: &Network,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
) -> Result<CompiledModel, FheError> {
    let bits = opts.bits.unwrap_or(8);
    let levels = 1u32 << bits;
    let qs = uniform_quantisers(calibration, levels, opts.ranges.as_deref());
    let d = fold_quantisers(&net.layers[0], &qs);
    let xmax = f64::from(levels - 1);
    // Worst case |score| over all quantised inputs, per output; one scale for all outputs
    // keeps argmax comparable.
    let worst =
        d.w.iter()
            .zip(&d.b)
            .map(|(r, b)| r.iter().map(|w| w.abs() * xmax).sum::<f64>() + b.abs())
            .fold(0.0f64, f64::max)
            .max(1e-12);
    // The widest output encoding whose noise still holds.
    for p in (8..=40).rev() {
        let k = ((1u64 << (p - 1)) as f64 - 1.0 - 0.5 * (d.n_in() as f64 + 1.0) * xmax) / worst;
        if k <= 0.0 {
            continue;
        }
        let mut ops = vec![];
        let ins = inputs(&mut ops, d.n_in(), p);
        let mut outputs = vec![];
        for (r, b) in d.w.iter().zip(&d.b) {
            let terms = r
                .iter()
                .zip(&ins)
                .map(|(w, &id)| (id, (w * k).round() as i64))
                .collect();
            ops.push(Op::Linear {
                terms,
                bias: (b * k).round() as i64,
                p,
            });
            outputs.push(ops.len() - 1);
        }
        let circuit = Circuit {
            ops,
            outputs,
            n_inputs: d.n_in(),
        };
        if circuit.noise(&opts.params).worst_read <= opts.params.max_log2_p_fail {
            return Ok(CompiledModel {
                circuit,
                quantisers: qs,
                output_scale: k,
                head: net.head.clone(),
                kind: "linear".into(),
                params: opts.params,
                log2_p_fail: 0.0,
                log2_p_fail_sample: None,
                range_check: None,
                outputs_per_score: 1,
                output_shifts: vec![],
            });
        }
    }
    Err(FheError::Unsupported(
        "the linear model's weights are too large for the noise budget".into(),
    ))
}

/// Accumulator bits of a hidden neuron (exact), and the bits cleared before its activation.
const ACC_BITS: u32 = 8;
const CLEARED_BITS: u32 = ACC_BITS - (LUT_BITS - 1);

fn one_hidden_layer(
    net: &Network,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
    cap: usize,
) -> Result<CompiledModel, FheError> {
    let bits = opts.bits.unwrap_or(4);
    if bits > 6 {
        return Err(FheError::Input("networks take at most 6 input bits".into()));
    }
    let (qs, l1, qrows) =
        quantised_first_layer(net, calibration, 1u32 << bits, opts.ranges.as_deref());
    let l2 = &net.layers[1];
    let act = net.activations[0];
    let h = l1.n_out();
    let k_out = l2.n_out();

    let mut scale = Vec::with_capacity(h);
    let mut integer = Vec::with_capacity(h);
    let mut may_wrap = 0;
    for j in 0..h {
        let fitted = fit_accumulator(&l1.w[j], l1.b[j], bits, &qrows, opts.accumulators)?;
        may_wrap += usize::from(fitted.may_wrap);
        scale.push((fitted.k, fitted.lo));
        integer.push((fitted.weights, fitted.bias));
    }

    // Activation value at the centre of each 16-wide accumulator box.
    let acts: Vec<Vec<f64>> = (0..h)
        .map(|j| {
            let (k, lo) = scale[j];
            (0..LUT_SIZE)
                .map(|hi| act.apply(((hi as f64) * 16.0 + 7.5) / k + lo))
                .collect()
        })
        .collect();
    // One bootstrap per neuron and score, each adding at most max |activation · weight|.
    let worst: Vec<Vec<f64>> =
        l2.w.iter()
            .map(|w_out| {
                (0..h)
                    .map(|j| {
                        acts[j]
                            .iter()
                            .map(|a| (a * w_out[j]).abs())
                            .fold(0.0, f64::max)
                    })
                    .collect()
            })
            .collect();
    let plan = plan_outputs(&vec![1; h], &worst, &l2.b, cap, &opts.params)?;
    let so = plan.scale;
    let groups = plan.po.len();

    let p_acc = ACC_BITS + 1;
    let mut ops = vec![];
    let ins = inputs(&mut ops, l1.n_in(), p_acc);
    let mut contributions: Vec<Vec<Vec<ValueId>>> = vec![vec![vec![]; groups]; k_out];
    for (j, (weights, bias)) in integer.into_iter().enumerate() {
        let high = push_cleared_high(&mut ops, &ins, weights, bias, p_acc);
        for (o, w_out) in l2.w.iter().enumerate() {
            let table = acts[j]
                .iter()
                .map(|a| (a * w_out[j] * so).round() as i64)
                .collect();
            let g = plan.group_of[j];
            ops.push(Op::Lut {
                input: high,
                table,
                p: plan.po[g],
            });
            contributions[o][g].push(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    for (o, per_group) in contributions.into_iter().enumerate() {
        for (g, ids) in per_group.into_iter().enumerate() {
            ops.push(Op::Linear {
                terms: ids.into_iter().map(|id| (id, 1)).collect(),
                bias: if g == 0 {
                    (l2.b[o] * so).round() as i64
                } else {
                    0
                },
                p: plan.po[g],
            });
            outputs.push(ops.len() - 1);
        }
    }
    Ok(CompiledModel {
        circuit: Circuit {
            ops,
            outputs,
            n_inputs: l1.n_in(),
        },
        quantisers: qs,
        output_scale: so,
        head: net.head.clone(),
        kind: format!("network 1×{h} {act:?}").to_lowercase(),
        params: opts.params,
        log2_p_fail: 0.0,
        log2_p_fail_sample: None,
        range_check: Some(RangeCheck {
            accumulators: h,
            may_wrap,
        }),
        outputs_per_score: groups,
        output_shifts: vec![],
    })
}

/// Most distinct thresholds per feature a bootstrap can tell apart.
const MAX_CUTS: usize = LUT_SIZE - 1;
/// A hidden neuron's 8-bit accumulator: the integer weights and bias mapping quantised inputs
/// into `[0, 256)`, and the float scale `k` and offset `lo` it stands for.
struct FittedAccumulator {
    k: f64,
    lo: f64,
    weights: Vec<i64>,
    bias: i64,
    /// Fitted to the calibration rows only: some legal input may leave the range.
    may_wrap: bool,
}

/// The affine map from a neuron's float pre-activation (`w·x + b`) to its 8-bit accumulator,
/// so that its range (over the input box, or the calibration rows: `accumulators`) fills
/// [0, 256); the clearing gadget ([`push_cleared_high`]) is exact only there. Rounding the
/// integer weights can push the range's ends out, which a slightly smaller scale pulls back.
fn fit_accumulator(
    w: &[f64],
    b: f64,
    bits: u32,
    qrows: &[Vec<f64>],
    accumulators: Accumulators,
) -> Result<FittedAccumulator, FheError> {
    let acc_max = f64::from((1u32 << ACC_BITS) - 1);
    let acc_range = 0..=i64::from(1u32 << ACC_BITS) - 1;
    let xmax = f64::from((1u32 << bits) - 1);
    let xmax_int = i64::from((1u32 << bits) - 1);
    let (lo, hi) = match accumulators {
        Accumulators::InputBox => (
            b + w.iter().map(|w| (w * xmax).min(0.0)).sum::<f64>(),
            b + w.iter().map(|w| (w * xmax).max(0.0)).sum::<f64>(),
        ),
        Accumulators::Calibration => {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for r in qrows {
                let v: f64 = w.iter().zip(r).map(|(w, x)| w * x).sum::<f64>() + b;
                lo = lo.min(v);
                hi = hi.max(v);
            }
            let pad = 0.02 * (hi - lo);
            (lo - pad, hi + pad)
        }
    };
    let mut k = if hi - lo > 1e-9 {
        acc_max / (hi - lo)
    } else {
        1.0
    };
    for _ in 0..50 {
        let weights: Vec<i64> = w.iter().map(|w| (w * k).round() as i64).collect();
        let bias = ((b - lo) * k).round() as i64;
        let box_lo = bias + weights.iter().map(|w| (*w).min(0) * xmax_int).sum::<i64>();
        let box_hi = bias + weights.iter().map(|w| (*w).max(0) * xmax_int).sum::<i64>();
        let on_box = acc_range.contains(&box_lo) && acc_range.contains(&box_hi);
        let fits = match accumulators {
            Accumulators::InputBox => on_box,
            Accumulators::Calibration => qrows.iter().all(|r| {
                let acc = r
                    .iter()
                    .zip(&weights)
                    .map(|(v, w)| *v as i64 * w)
                    .sum::<i64>();
                acc_range.contains(&(acc + bias))
            }),
        };
        if fits {
            return Ok(FittedAccumulator {
                k,
                lo,
                weights,
                bias,
                may_wrap: !on_box,
            });
        }
        k *= 0.98;
    }
    Err(FheError::Unsupported(
        "a hidden neuron's range over the input box does not fit an 8-bit accumulator".into(),
    ))
}

/// The cleared design's gadget for one neuron: its exact 8-bit accumulator, the low 4 bits
/// cleared with two bootstraps, and the high 4 bits narrowed to a lookup input. Returns the
/// high bits' value.
fn push_cleared_high(
    ops: &mut Vec<Op>,
    ins: &[ValueId],
    weights: Vec<i64>,
    bias: i64,
    p_acc: u32,
) -> ValueId {
    let terms = ins.iter().copied().zip(weights).collect();
    ops.push(Op::Linear {
        terms,
        bias,
        p: p_acc,
    });
    let acc = ops.len() - 1;
    // t = acc mod 32: the cleared bits plus the bit above them, on the padding position.
    ops.push(Op::Linear {
        terms: vec![(acc, 1)],
        bias: 0,
        p: LUT_BITS,
    });
    let t = ops.len() - 1;
    // ±8 by that top bit; t + s - 8 is the low 4 bits whatever it was.
    ops.push(Op::Lut {
        input: t,
        table: vec![8; LUT_SIZE],
        p: LUT_BITS,
    });
    let s = ops.len() - 1;
    ops.push(Op::Linear {
        terms: vec![(t, 1), (s, 1)],
        bias: -8,
        p: LUT_BITS,
    });
    let low = ops.len() - 1;
    ops.push(Op::Lut {
        input: low,
        table: (0..LUT_SIZE as i64).collect(),
        p: p_acc,
    });
    let low_wide = ops.len() - 1;
    ops.push(Op::Linear {
        terms: vec![(acc, 1), (low_wide, -1)],
        bias: 0,
        p: p_acc,
    });
    let cleared = ops.len() - 1;
    ops.push(Op::Narrow {
        input: cleared,
        shift: CLEARED_BITS,
    });
    ops.len() - 1
}

/// `f` with every threshold snapped onto its feature's [`TreeGrid`].
fn snap_forest(
    f: &Forest,
    calibration: &[Vec<f64>],
    bits: u32,
    declared: Option<&[(f64, f64)]>,
) -> Forest {
    let grids: Vec<Option<TreeGrid>> = (0..f.n_features)
        .map(|feat| {
            let (lo, hi) = column_range(calibration, feat, declared);
            TreeGrid::new(lo, hi, bits)
        })
        .collect();
    let mut f = f.clone();
    for t in &mut f.trees {
        for (i, thr) in t.threshold.iter_mut().enumerate() {
            if t.leaf[i].is_none()
                && let Some(Some(g)) = grids.get(t.feature[i])
            {
                *thr = g.cut(*thr);
            }
        }
    }
    f
}

/// Concrete ML's tree quantisation, for `--bits` on forests: a feature's thresholds are
/// snapped onto a uniform `2^bits`-level grid over its calibration range, and the node
/// compares grid levels, `q(x) > q(threshold)`. Fewer distinct thresholds, so fewer
/// bootstraps; the model changes a little. (At 6 bits, Concrete's default, the breast-cancer
/// forest's test accuracy moves from 0.934 to 0.943 in floats and 0.947 in the circuit, whose
/// rounding of leaf values settles one near-tie the right way, as Concrete's does: its higher
/// figure is this snapping, not exactness.)
struct TreeGrid {
    scale: f64,
    zero_point: f64,
    top: f64,
}

impl TreeGrid {
    /// The grid over `[lo, hi]`, the feature's calibration range; `None` (exact thresholds)
    /// when that range is empty.
    fn new(lo: f64, hi: f64, bits: u32) -> Option<Self> {
        let levels = f64::from(1u32 << bits.min(16));
        let scale = (hi - lo) / (levels - 1.0);
        if !(scale > 0.0 && scale.is_finite()) {
            return None;
        }
        Some(Self {
            scale,
            zero_point: (-lo / scale).round_ties_even(),
            top: levels - 1.0,
        })
    }

    fn level(&self, x: f64) -> f64 {
        (x / self.scale + self.zero_point)
            .round_ties_even()
            .clamp(0.0, self.top)
    }

    /// The cut equivalent to `level(x) > level(threshold)`: the boundary above that level
    /// (never crossed for the top level).
    fn cut(&self, threshold: f64) -> f64 {
        let l = self.level(threshold);
        if l >= self.top {
            f64::MAX
        } else {
            (l + 0.5 - self.zero_point) * self.scale
        }
    }
}

/// How a forest's features are encrypted: per feature, the thresholds the trees use, exactly,
/// in chunks of 15 (one encrypted input each).
struct ForestInputs {
    cuts: Vec<Vec<f64>>,
    quantisers: Vec<Quantiser>,
    /// First encrypted input of every feature.
    first_input: Vec<usize>,
    n_inputs: usize,
}

impl ForestInputs {
    fn new(f: &Forest) -> Self {
        let mut thresholds: Vec<Vec<f64>> = vec![vec![]; f.n_features];
        for t in &f.trees {
            for (i, leaf) in t.leaf.iter().enumerate() {
                if leaf.is_none() {
                    thresholds[t.feature[i]].push(t.threshold[i]);
                }
            }
        }
        for c in thresholds.iter_mut() {
            c.sort_by(f64::total_cmp);
            c.dedup();
        }
        let cuts = thresholds;
        let mut quantisers: Vec<Quantiser> = Vec::with_capacity(f.n_features);
        let mut first_input = Vec::with_capacity(f.n_features);
        let mut n_inputs = 0;
        for c in &cuts {
            first_input.push(n_inputs);
            let chunks: Vec<Vec<f64>> = c.chunks(MAX_CUTS).map(<[f64]>::to_vec).collect();
            if chunks.len() > 1 {
                n_inputs += chunks.len();
                quantisers.push(Quantiser::CutChunks { chunks });
            } else {
                n_inputs += 1;
                quantisers.push(Quantiser::Cuts { cuts: c.clone() });
            }
        }
        Self {
            cuts,
            quantisers,
            first_input,
            n_inputs,
        }
    }

    /// x > cut  ⇔  rank(x) ≥ i + 1 within the chunk holding cut i. Returns (encrypted input,
    /// rank).
    fn rank_of(&self, feat: usize, thr: f64) -> (usize, i64) {
        let idx = self.cuts[feat].partition_point(|c| *c < thr);
        (
            self.first_input[feat] + idx / MAX_CUTS,
            (idx % MAX_CUTS) as i64 + 1,
        )
    }
}

/// One bootstrap per distinct comparison (encrypted input, rank), shared by every tree that
/// makes it. Returns, per tree, the comparison bit of every internal node.
fn comparison_bits(
    f: &Forest,
    encoded: &ForestInputs,
    ins: &[ValueId],
    ops: &mut Vec<Op>,
) -> Vec<Vec<Option<ValueId>>> {
    let mut bits: std::collections::HashMap<(usize, i64), ValueId> = Default::default();
    let mut node_bits: Vec<Vec<Option<ValueId>>> = vec![];
    for t in &f.trees {
        let mut nb = vec![None; t.leaf.len()];
        for (i, slot) in nb.iter_mut().enumerate() {
            if t.leaf[i].is_none() {
                let key = encoded.rank_of(t.feature[i], t.threshold[i]);
                let id = *bits.entry(key).or_insert_with(|| {
                    let table = (0..LUT_SIZE as i64)
                        .map(|v| i64::from(v >= key.1))
                        .collect();
                    ops.push(Op::Lut {
                        input: ins[key.0],
                        table,
                        p: LUT_BITS,
                    });
                    ops.len() - 1
                });
                *slot = Some(id);
            }
        }
        node_bits.push(nb);
    }
    node_bits
}

/// A bootstrap that selects a leaf: it reads `z`, the sum of `terms` plus `bias`, and each hit
/// `(z, tree, leaf node)` says which leaf that value of `z` selects.
struct LeafGroup {
    terms: Vec<(ValueId, i64)>,
    bias: i64,
    hits: Vec<(i64, usize, usize)>,
}

/// Every tree's leaf groups (one per pair of sibling leaves, or lone leaf), and the sum of the
/// trees that are a single leaf (a constant per score).
fn leaf_groups(
    f: &Forest,
    node_bits: &[Vec<Option<ValueId>>],
) -> Result<(Vec<LeafGroup>, Vec<f64>), FheError> {
    let n_scores = f.head.n_scores();
    let mut groups: Vec<LeafGroup> = vec![];
    let mut constant = vec![0.0; n_scores];
    for (ti, t) in f.trees.iter().enumerate() {
        if let Some(v) = &t.leaf[0] {
            constant.iter_mut().zip(v).for_each(|(c, v)| *c += v);
            continue;
        }
        // Paths: (node, [(ancestor, went_right)]).
        let mut stack = vec![(0usize, Vec::<(usize, bool)>::new())];
        while let Some((i, path)) = stack.pop() {
            if t.leaf[i].is_some() {
                continue;
            }
            let (l, r) = (t.left[i], t.right[i]);
            let agree_terms = |path: &[(usize, bool)], scale: i64| -> (Vec<(ValueId, i64)>, i64) {
                let mut terms = vec![];
                let mut bias = 0;
                for &(a, right) in path {
                    let b = node_bits[ti][a].unwrap_or(0);
                    if right {
                        terms.push((b, scale));
                    } else {
                        terms.push((b, -scale));
                        bias += scale;
                    }
                }
                (terms, bias)
            };
            let d = path.len() as i64;
            match (t.leaf[l].is_some(), t.leaf[r].is_some()) {
                (true, true) => {
                    // z = 2·agreements + bit: 2d selects the left leaf, 2d+1 the right one.
                    let (mut terms, bias) = agree_terms(&path, 2);
                    terms.push((node_bits[ti][i].unwrap_or(0), 1));
                    if 2 * d + 1 >= LUT_SIZE as i64 {
                        return Err(FheError::Unsupported(
                            "trees deeper than 8 are not supported".into(),
                        ));
                    }
                    groups.push(LeafGroup {
                        terms,
                        bias,
                        hits: vec![(2 * d, ti, l), (2 * d + 1, ti, r)],
                    });
                }
                (ll, rl) => {
                    let mut full = path.clone();
                    for (child, right, is_leaf) in [(l, false, ll), (r, true, rl)] {
                        full.push((i, right));
                        if is_leaf {
                            let (terms, bias) = agree_terms(&full, 1);
                            if d + 1 >= LUT_SIZE as i64 {
                                return Err(FheError::Unsupported(
                                    "trees deeper than 15 are not supported".into(),
                                ));
                            }
                            groups.push(LeafGroup {
                                terms,
                                bias,
                                hits: vec![(d + 1, ti, child)],
                            });
                        } else {
                            stack.push((child, full.clone()));
                        }
                        full.pop();
                    }
                    continue;
                }
            }
        }
        // Internal nodes below pairs were handled; push children of non-pair nodes above.
    }

    Ok((groups, constant))
}

fn forest(f: &Forest, opts: &CompileOptions, cap: usize) -> Result<CompiledModel, FheError> {
    let encoded = ForestInputs::new(f);
    let n_scores = f.head.n_scores();
    let mut ops = vec![];
    let ins = inputs(&mut ops, encoded.n_inputs, LUT_BITS);
    let node_bits = comparison_bits(f, &encoded, &ins, &mut ops);
    let (groups, constant) = leaf_groups(f, &node_bits)?;

    // Units are trees: exactly one leaf group per tree is hit, so a tree adds at most its
    // largest |leaf value| to a score, through as many bootstraps as it has leaf groups.
    let mut luts = vec![0usize; f.trees.len()];
    for g in &groups {
        if let Some(&(_, ti, _)) = g.hits.first() {
            luts[ti] += 1;
        }
    }
    let worst: Vec<Vec<f64>> = (0..n_scores)
        .map(|k| {
            f.trees
                .iter()
                .map(|t| {
                    if t.leaf[0].is_some() {
                        return 0.0; // a lone leaf is part of the constant
                    }
                    t.leaf
                        .iter()
                        .flatten()
                        .map(|v| v[k].abs())
                        .fold(0.0, f64::max)
                })
                .collect()
        })
        .collect();
    let base: Vec<f64> = (0..n_scores).map(|k| f.base[k] + constant[k]).collect();
    let plan = plan_outputs(&luts, &worst, &base, cap, &opts.params)?;
    let so = plan.scale;
    let n_groups = plan.po.len();
    let mut per_score: Vec<Vec<Vec<ValueId>>> = vec![vec![vec![]; n_groups]; n_scores];
    for g in &groups {
        let out_group = g.hits.first().map_or(0, |&(_, ti, _)| plan.group_of[ti]);
        ops.push(Op::Linear {
            terms: g.terms.clone(),
            bias: g.bias,
            p: LUT_BITS,
        });
        let z = ops.len() - 1;
        for (k, ids) in per_score.iter_mut().enumerate() {
            let mut table = vec![0i64; LUT_SIZE];
            for &(zv, ti, leaf) in &g.hits {
                let v = f.trees[ti].leaf[leaf].as_ref().map_or(0.0, |v| v[k]);
                table[zv as usize] = (v * so).round() as i64;
            }
            if table.iter().all(|v| *v == 0) {
                continue;
            }
            ops.push(Op::Lut {
                input: z,
                table,
                p: plan.po[out_group],
            });
            ids[out_group].push(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    for (k, per_group) in per_score.into_iter().enumerate() {
        for (g, ids) in per_group.into_iter().enumerate() {
            ops.push(Op::Linear {
                terms: ids.into_iter().map(|id| (id, 1)).collect(),
                bias: if g == 0 {
                    (base[k] * so).round() as i64
                } else {
                    0
                },
                p: plan.po[g],
            });
            outputs.push(ops.len() - 1);
        }
    }
    Ok(CompiledModel {
        circuit: Circuit {
            ops,
            outputs,
            n_inputs: encoded.n_inputs,
        },
        quantisers: encoded.quantisers,
        output_scale: so,
        head: f.head.clone(),
        kind: format!("forest of {} trees", f.trees.len()),
        params: opts.params,
        log2_p_fail: 0.0,
        log2_p_fail_sample: None,
        range_check: None,
        outputs_per_score: n_groups,
        output_shifts: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ranges_are_rounded_outward_to_two_significant_digits_of_the_width() {
        assert_eq!(public_range(6.981, 28.11), (6.0, 29.0));
        assert_eq!(public_range(0.05263, 0.1634), (0.05, 0.17));
        assert_eq!(public_range(143.5, 2501.0), (100.0, 2600.0));
        // Extremes on the grid move a step out: no published bound is a calibration value.
        assert_eq!(public_range(-3.7, 3.7), (-3.8, 3.8));
        assert_eq!(public_range(18.0, 97.0), (17.0, 98.0));
        assert_eq!(public_range(0.0, 17.0), (-1.0, 18.0));
        // A constant column gets a range around it, not its exact value at both ends.
        let (lo, hi) = public_range(12.34, 12.34);
        assert!(lo <= 12.34 && hi >= 12.34 && hi > lo);
    }

    #[test]
    fn quantisers_count_their_levels() {
        let uniform = Quantiser::Uniform {
            lo: 0.0,
            step: 1.0,
            levels: 32,
        };
        assert_eq!(uniform.levels(), 32);
        let cuts = Quantiser::Cuts {
            cuts: vec![0.5, 1.5, 2.5],
        };
        assert_eq!(cuts.levels(), 4);
        let chunks = Quantiser::CutChunks {
            chunks: vec![vec![0.5; 15], vec![2.5; 4]],
        };
        assert_eq!(chunks.levels(), 20);
    }

    /// Every partial sum, at its worst, fits its encoding with the rounding slack, and splitting
    /// buys output bits.
    #[test]
    fn output_plans_fit_their_encodings() {
        let params = Params::message_2_carry_2();
        let units = 30;
        let worst = vec![
            (0..units)
                .map(|u| 0.1 + u as f64 / 10.0)
                .collect::<Vec<_>>(),
        ];
        let base = [2.5];
        let whole =
            plan_outputs(&vec![1; units], &worst, &base, usize::MAX, &params).expect("plan");
        assert_eq!(whole.po.len(), 1);
        assert_eq!(
            whole.po[0], 7,
            "30 summed bootstrap outputs decrypt at 7 bits"
        );
        let split = plan_outputs(&vec![1; units], &worst, &base, 16, &params).expect("plan");
        assert_eq!(split.po.len(), 2);
        assert!(split.po.iter().all(|&p| p >= 8));
        for plan in [&whole, &split] {
            for (g, &p) in plan.po.iter().enumerate() {
                let members: Vec<usize> = (0..units).filter(|&u| plan.group_of[u] == g).collect();
                let extreme = members.iter().map(|&u| worst[0][u]).sum::<f64>()
                    + if g == 0 { base[0] } else { 0.0 };
                let rounding = 0.5 * (members.len() + usize::from(g == 0)) as f64;
                assert!(
                    extreme * plan.scale + rounding <= ((1u64 << (p - 1)) - 1) as f64,
                    "group {g} overflows"
                );
                let terms = members.len() as f64 * params.var_pbs;
                assert!(params.log2_p_fail_output(terms, p) <= params.max_log2_p_fail);
            }
        }
        assert!(
            split.scale > 3.0 * whole.scale,
            "{} vs {}",
            split.scale,
            whole.scale
        );
    }

    /// A feature with 40 thresholds is encrypted as three inputs (15 + 15 + 10 ranks) and
    /// every comparison stays exact: each extra threshold passed raises the score.
    #[test]
    fn features_with_many_thresholds_are_split_across_inputs() {
        use crate::model::{Forest, Tree};
        let stump = |feature: usize, threshold: f64| Tree {
            feature: vec![feature, 0, 0],
            threshold: vec![threshold, 0.0, 0.0],
            left: vec![1, 0, 0],
            right: vec![2, 0, 0],
            leaf: vec![None, Some(vec![0.0]), Some(vec![1.0])],
        };
        let mut trees: Vec<Tree> = (0..40).map(|i| stump(0, i as f64 + 0.5)).collect();
        trees.extend([stump(1, 0.5), stump(1, 1.5)]);
        let model = FloatModel::Forest(Forest {
            trees,
            base: vec![0.0],
            n_features: 2,
            head: Head::Regression,
        });
        let calibration: Vec<Vec<f64>> = (0..=40)
            .flat_map(|a| (0..=2).map(move |b| vec![f64::from(a), f64::from(b)]))
            .collect();
        let c = compile(&model, &calibration, &CompileOptions::default()).expect("compile");
        assert!(
            matches!(&c.quantisers[0], Quantiser::CutChunks { chunks } if chunks.len() == 3),
            "{:?}",
            c.quantisers[0]
        );
        assert!(matches!(c.quantisers[1], Quantiser::Cuts { .. }));
        assert_eq!(c.circuit.n_inputs, 4);
        assert_eq!(
            c.quantise(&[20.0, 1.0]).expect("quantise"),
            vec![15, 5, 0, 1]
        );
        let score = |a: f64, b: f64| c.scores(&c.simulate(&[a, b]).expect("simulate"))[0];
        for a in 0..40 {
            let (a, next) = (f64::from(a), f64::from(a + 1));
            assert!(score(next, 0.0) > score(a, 0.0), "threshold {a}.5 lost");
            assert!(score(a, 2.0) > score(a, 1.0) && score(a, 1.0) > score(a, 0.0));
        }
    }

    /// `--bits 6` on the breast-cancer forest: thresholds snapped like Concrete ML's (fewer
    /// comparisons), and the circuit compiles the snapped forest faithfully.
    #[test]
    fn forests_snapped_to_a_grid_compile_faithfully() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let bytes = std::fs::read(dir.join("models/breast_cancer_rf.onnx")).expect("model");
        let model = crate::read_onnx(&bytes, 10_000).expect("read");
        let FloatModel::Forest(f) = &model else {
            panic!("a forest")
        };
        let text = std::fs::read_to_string(dir.join("data/breast_cancer_train.csv")).expect("csv");
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(1)
            .map(|l| {
                let v: Vec<&str> = l.split(',').collect();
                v[..v.len() - 1]
                    .iter()
                    .map(|x| x.parse().expect("number"))
                    .collect()
            })
            .collect();
        let snapped = FloatModel::Forest(snap_forest(f, &rows, 6, None));
        let changed = rows
            .iter()
            .filter(|r| {
                model.head().label(&model.scores(r)) != snapped.head().label(&snapped.scores(r))
            })
            .count();
        assert!(changed > 0, "snapping to 64 levels moves some decisions");
        let opts = CompileOptions {
            bits: Some(6),
            ..CompileOptions::default()
        };
        let grid = compile(&model, &rows, &opts).expect("compile");
        let exact = compile(&model, &rows, &CompileOptions::default()).expect("compile");
        assert!(grid.circuit.pbs_count() < exact.circuit.pbs_count());
        let agree = fidelity(&snapped, &grid, &rows).expect("fidelity");
        assert!(
            agree.label_agreement.is_some_and(|a| a >= 0.99),
            "{agree:?}"
        );
    }

    #[test]
    fn partial_sums_add_into_scores() {
        assert_eq!(scores(&[3, 4, -2, 6], 2.0, 2, &[]), vec![3.5, 2.0]);
        assert_eq!(scores(&[3, 4], 2.0, 1, &[]), vec![1.5, 2.0]);
        // A partial sum held 2 bits finer counts a quarter per unit.
        assert_eq!(
            scores(&[3, 8, -2, 24], 2.0, 2, &[0, 2, 0, 2]),
            vec![2.5, 2.0]
        );
        // A spec stored before partial sums existed reads as one output per score.
        let spec = r#"{"kind":"linear","quantisers":[],"input_bits":[],"output_bits":[30],
            "output_scale":1.0,"head":{"type":"regression"},"pbs_per_sample":0,
            "log2_p_fail":-200.0,"fidelity":{"rows":1,"label_agreement":null,"mean_abs_error":0.0}}"#;
        let spec: ClientSpec = serde_json::from_str(spec).expect("old spec");
        assert_eq!(spec.outputs_per_score, 1);
        assert!(spec.output_shifts.is_empty());
    }
}
