//! From a float model and calibration rows to a quantised circuit, and back from the circuit's
//! integers to scores.
//!
//! The circuit shapes (measured on the breast-cancer data; see `veil bench fhe`):
//! - **Linear models** need no bootstrap. Features are quantised to `bits` (default 8) over
//!   their calibration range; the score is one leveled dot product on fresh ciphertexts, whose
//!   noise is so small that the output can hold ~24 bits. The client applies the link.
//! - **One-hidden-layer networks** use three bootstraps per hidden neuron. The neuron's
//!   accumulator is an exact 8-bit integer (weights scaled so the calibration range fills it);
//!   its low 4 bits are cleared exactly (multiply by 16 to expose them, one bootstrap removes
//!   the bit that lands on the padding position, a second reads the remaining 4 bits), and a
//!   third bootstrap maps the high 4 bits through requantisation, the activation and the
//!   output layer's weight at once. Output scores are sums of bootstrap outputs.
//! - **Tree ensembles** quantise each feature by the thresholds the trees use (exact when a
//!   feature has at most 15 distinct thresholds), spend one bootstrap per distinct comparison,
//!   and one per pair of sibling leaves (or lone leaf) to select the leaf value: the bootstrap
//!   reads `2·(agreements with the path) + last bit`.

use serde::{Deserialize, Serialize};

use crate::FheError;
use crate::circuit::{Circuit, LUT_BITS, LUT_SIZE, Op, ValueId};
use crate::model::{Dense, FloatModel, Forest, Head, Network};
use crate::noise::Params;

/// How the client turns one feature into the integer it encrypts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Quantiser {
    /// `clamp(round((x - lo) / step), 0, levels - 1)`.
    Uniform { lo: f64, step: f64, levels: u32 },
    /// The number of cut points `x` exceeds.
    Cuts { cuts: Vec<f64> },
}

impl Quantiser {
    pub fn apply(&self, x: f64) -> i64 {
        match self {
            Quantiser::Uniform { lo, step, levels } => {
                let max = f64::from(levels - 1);
                if x.is_nan() {
                    return 0;
                }
                ((x - lo) / step).round().clamp(0.0, max) as i64
            }
            Quantiser::Cuts { cuts } => cuts.iter().filter(|c| x > **c).count() as i64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileOptions {
    /// Input quantisation bits; `None` picks per model type (8 for linear models, the best of
    /// 2–6 on the calibration rows for networks, the trees' own thresholds for forests).
    pub bits: Option<u32>,
    pub params: Params,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            bits: None,
            params: Params::message_2_carry_2(),
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
    /// Split inference, for networks: the first layers under FHE, the rest in plaintext.
    #[serde(default)]
    pub split: Option<Split>,
}

/// Split inference: the node evaluates the first `layers` layers under FHE and returns the
/// encrypted hidden activations; the client decrypts them and sends them back to the node,
/// which evaluates `rest` in plaintext. The node therefore sees the hidden activations (a
/// lossy image of the input), which is what this mode gives up for fewer bootstraps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub layers: usize,
    pub circuit: Circuit,
    /// A decrypted output divided by this is the hidden activation.
    pub activation_scale: f64,
    pub rest: Network,
}

impl Split {
    /// The remaining layers on decrypted activations (integers as decrypted).
    pub fn finish(&self, activations: &[i64]) -> Result<Vec<f64>, FheError> {
        let n = self.circuit.outputs.len();
        if activations.len() != n {
            return Err(FheError::Input(format!(
                "expected {n} activations, got {}",
                activations.len()
            )));
        }
        let a: Vec<f64> = activations
            .iter()
            .map(|&v| v as f64 / self.activation_scale)
            .collect();
        Ok(self.rest.scores(&a))
    }

    pub fn spec(&self) -> SplitSpec {
        SplitSpec {
            layers: self.layers,
            output_bits: self.circuit.output_encodings(),
            pbs_per_sample: self.circuit.pbs_count(),
        }
    }
}

/// What a client needs for split inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    pub layers: usize,
    /// Encoding each hidden activation is decrypted at.
    pub output_bits: Vec<u32>,
    pub pbs_per_sample: usize,
}

impl CompiledModel {
    pub fn n_features(&self) -> usize {
        self.quantisers.len()
    }

    pub fn quantise(&self, x: &[f64]) -> Result<Vec<i64>, FheError> {
        quantise(&self.quantisers, x)
    }

    pub fn scores(&self, outputs: &[i64]) -> Vec<f64> {
        scores(outputs, self.output_scale)
    }

    /// Runs the quantised circuit in the clear: what an encrypted run decrypts to.
    pub fn simulate(&self, x: &[f64]) -> Result<Vec<i64>, FheError> {
        Ok(self.circuit.simulate(&self.quantise(x)?))
    }

    pub fn label(&self, outputs: &[i64]) -> Option<String> {
        self.head.label(&self.scores(outputs))
    }
}

/// Quantises one sample's features (width checked).
fn quantise(quantisers: &[Quantiser], x: &[f64]) -> Result<Vec<i64>, FheError> {
    if x.len() != quantisers.len() {
        return Err(FheError::Input(format!(
            "expected {} features, got {}",
            quantisers.len(),
            x.len()
        )));
    }
    Ok(quantisers.iter().zip(x).map(|(q, v)| q.apply(*v)).collect())
}

/// Decrypted output integers back to scores.
fn scores(outputs: &[i64], output_scale: f64) -> Vec<f64> {
    outputs.iter().map(|&o| o as f64 / output_scale).collect()
}

/// What a client needs to use a compiled model: how to quantise and encrypt inputs, how to
/// read decrypted outputs. Public: it holds no weights, only per-feature quantisation ranges
/// (taken from the creator's calibration data) and the circuit's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSpec {
    pub kind: String,
    pub quantisers: Vec<Quantiser>,
    /// Encoding (bits) each input feature is encrypted at.
    pub input_bits: Vec<u32>,
    /// Encoding each output is decrypted at.
    pub output_bits: Vec<u32>,
    pub output_scale: f64,
    pub head: Head,
    pub pbs_per_sample: usize,
    pub log2_p_fail: f64,
    /// The circuit against the float model on the calibration rows.
    pub fidelity: Fidelity,
    /// Present when the model supports split inference.
    #[serde(default)]
    pub split: Option<SplitSpec>,
}

impl ClientSpec {
    pub fn n_features(&self) -> usize {
        self.quantisers.len()
    }

    pub fn quantise(&self, x: &[f64]) -> Result<Vec<i64>, FheError> {
        if x.iter().any(|v| !v.is_finite()) {
            return Err(FheError::Input("inputs must be finite numbers".into()));
        }
        quantise(&self.quantisers, x)
    }

    pub fn scores(&self, outputs: &[i64]) -> Vec<f64> {
        scores(outputs, self.output_scale)
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
            pbs_per_sample: self.circuit.pbs_count(),
            log2_p_fail: self.log2_p_fail,
            fidelity,
            split: self.split.as_ref().map(Split::spec),
        }
    }
}

/// How well the quantised circuit matches the float model on calibration rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    pub rows: usize,
    /// Classifiers: share of rows where the circuit's label equals the float model's.
    pub label_agreement: Option<f64>,
    /// Regressors: mean absolute difference of the scores.
    pub mean_abs_error: Option<f64>,
}

pub fn fidelity(
    model: &FloatModel,
    compiled: &CompiledModel,
    rows: &[Vec<f64>],
) -> Result<Fidelity, FheError> {
    let mut agree = 0usize;
    let mut abs = 0.0;
    for r in rows {
        let f = model.scores(r);
        let q = compiled.scores(&compiled.simulate(r)?);
        match model.head() {
            Head::Regression => abs += (f[0] - q[0]).abs(),
            h => agree += usize::from(h.label(&f) == h.label(&q)),
        }
    }
    let n = rows.len().max(1) as f64;
    Ok(match model.head() {
        Head::Regression => Fidelity {
            rows: rows.len(),
            label_agreement: None,
            mean_abs_error: Some(abs / n),
        },
        _ => Fidelity {
            rows: rows.len(),
            label_agreement: Some(agree as f64 / n),
            mean_abs_error: None,
        },
    })
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
    if let Some(b) = opts.bits
        && !(2..=12).contains(&b)
    {
        return Err(FheError::Input(format!(
            "--bits must be between 2 and 12, not {b}"
        )));
    }
    let compiled = match model {
        FloatModel::Network(net) if net.layers.len() == 1 => linear(net, calibration, opts)?,
        FloatModel::Network(net) if net.layers.len() == 2 => match opts.bits {
            Some(_) => one_hidden_layer(net, calibration, opts)?,
            // The accumulator holds 8 exact bits, so finer inputs mean coarser integer
            // weights: pick the input width that best matches the float model on the
            // calibration rows.
            None => {
                let mut best: Option<(f64, CompiledModel)> = None;
                for bits in 2..=6 {
                    let o = CompileOptions {
                        bits: Some(bits),
                        ..opts.clone()
                    };
                    let Ok(c) = one_hidden_layer(net, calibration, &o) else {
                        continue;
                    };
                    let f = fidelity(model, &c, calibration)?;
                    let score = f
                        .label_agreement
                        .unwrap_or_else(|| -f.mean_abs_error.unwrap_or(f64::INFINITY));
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        best = Some((score, c));
                    }
                }
                best.map(|(_, c)| c).ok_or_else(|| {
                    FheError::Unsupported("the network cannot be quantised".into())
                })?
            }
        },
        FloatModel::Network(net) => {
            return Err(FheError::Unsupported(format!(
                "networks with {} hidden layers are not supported yet; one hidden layer is",
                net.layers.len() - 1
            )));
        }
        FloatModel::Forest(f) => forest(f, calibration, opts)?,
    };
    compiled.circuit.validate()?;
    let mut log2_p_fail = compiled.circuit.check_noise(&opts.params)?;
    if let Some(split) = &compiled.split {
        split.circuit.validate()?;
        log2_p_fail = log2_p_fail.max(split.circuit.check_noise(&opts.params)?);
    }
    Ok(CompiledModel {
        log2_p_fail,
        ..compiled
    })
}

fn uniform_quantisers(calibration: &[Vec<f64>], levels: u32) -> Vec<Quantiser> {
    let n = calibration[0].len();
    (0..n)
        .map(|i| {
            let (lo, hi) = calibration
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
                    (l.min(r[i]), h.max(r[i]))
                });
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
            Quantiser::Cuts { .. } => (0.0, 1.0),
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
    let qs = uniform_quantisers(calibration, levels);
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
        if circuit.noise(&opts.params).1 <= opts.params.max_log2_p_fail {
            return Ok(CompiledModel {
                circuit,
                quantisers: qs,
                output_scale: k,
                head: net.head.clone(),
                kind: "linear".into(),
                params: opts.params,
                log2_p_fail: 0.0,
                split: None,
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
) -> Result<CompiledModel, FheError> {
    let bits = opts.bits.unwrap_or(4);
    if bits > 6 {
        return Err(FheError::Input("networks take at most 6 input bits".into()));
    }
    let levels = 1u32 << bits;
    let qs = uniform_quantisers(calibration, levels);
    let l1 = fold_quantisers(&net.layers[0], &qs);
    let l2 = &net.layers[1];
    let act = net.activations[0];
    let h = l1.n_out();
    let k_out = l2.n_out();
    let qrows: Vec<Vec<f64>> = calibration
        .iter()
        .map(|r| qs.iter().zip(r).map(|(q, v)| q.apply(*v) as f64).collect())
        .collect();

    // Per neuron: the affine map from the float pre-activation to the 8-bit accumulator,
    // calibrated so the observed range (widened by 2%) fills [0, 256).
    let acc_max = f64::from((1u32 << ACC_BITS) - 1);
    let mut scale = Vec::with_capacity(h);
    for j in 0..h {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for r in &qrows {
            let v: f64 = l1.w[j].iter().zip(r).map(|(w, x)| w * x).sum::<f64>() + l1.b[j];
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let pad = 0.02 * (hi - lo);
        let (lo, hi) = (lo - pad, hi + pad);
        let k = if hi - lo > 1e-9 {
            acc_max / (hi - lo)
        } else {
            1.0
        };
        scale.push((k, lo));
    }

    // Output encoding: widest whose sum of `h` bootstrap outputs per score still decrypts.
    let var_out = h as f64 * opts.params.var_pbs;
    let po = (4..=30)
        .rev()
        .find(|&p| Params::log2_p_fail(var_out, p) <= opts.params.max_log2_p_fail)
        .unwrap_or(4);
    // Activation value at the centre of each 16-wide accumulator box.
    let acts: Vec<Vec<f64>> = (0..h)
        .map(|j| {
            let (k, lo) = scale[j];
            (0..LUT_SIZE)
                .map(|hi| act.apply(((hi as f64) * 16.0 + 7.5) / k + lo))
                .collect()
        })
        .collect();
    let worst = (0..k_out)
        .map(|o| {
            (0..h)
                .map(|j| {
                    acts[j]
                        .iter()
                        .map(|a| (a * l2.w[o][j]).abs())
                        .fold(0.0, f64::max)
                })
                .sum::<f64>()
                + l2.b[o].abs()
        })
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let so = ((1u64 << (po - 1)) as f64 - 1.0 - 0.5 * (h as f64 + 1.0)) / worst;
    if so <= 0.0 {
        return Err(FheError::Unsupported(format!(
            "{h} hidden neurons are too many for the output's noise budget"
        )));
    }

    // Split inference: each neuron's quantised activation, as wide as a bootstrap output
    // still decrypts exactly.
    let pa = (4..=30)
        .rev()
        .find(|&p| Params::log2_p_fail(opts.params.var_pbs, p) <= opts.params.max_log2_p_fail)
        .unwrap_or(4);
    let act_max = acts
        .iter()
        .flatten()
        .fold(0.0f64, |m, a| m.max(a.abs()))
        .max(1e-12);
    let sa = ((1u64 << (pa - 1)) as f64 - 1.0) / act_max;
    let mut split_act: Vec<(usize, Vec<i64>)> = Vec::with_capacity(h);

    let p_acc = ACC_BITS + 1;
    // Ops of the output layer (left out of the split circuit).
    let mut output_side: std::collections::HashSet<ValueId> = Default::default();
    let mut ops = vec![];
    let ins = inputs(&mut ops, l1.n_in(), p_acc);
    let mut contributions: Vec<Vec<ValueId>> = vec![vec![]; k_out];
    for j in 0..h {
        let (k, lo) = scale[j];
        let terms = l1.w[j]
            .iter()
            .zip(&ins)
            .map(|(w, &id)| (id, (w * k).round() as i64))
            .collect();
        ops.push(Op::Linear {
            terms,
            bias: ((l1.b[j] - lo) * k).round() as i64,
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
        let high = ops.len() - 1;
        split_act.push((
            high,
            acts[j].iter().map(|a| (a * sa).round() as i64).collect(),
        ));
        for (o, w_out) in l2.w.iter().enumerate() {
            let table = acts[j]
                .iter()
                .map(|a| (a * w_out[j] * so).round() as i64)
                .collect();
            ops.push(Op::Lut {
                input: high,
                table,
                p: po,
            });
            contributions[o].push(ops.len() - 1);
            output_side.insert(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    for (o, ids) in contributions.into_iter().enumerate() {
        ops.push(Op::Linear {
            terms: ids.into_iter().map(|id| (id, 1)).collect(),
            bias: (l2.b[o] * so).round() as i64,
            p: po,
        });
        outputs.push(ops.len() - 1);
        output_side.insert(ops.len() - 1);
    }
    // The split circuit: the same ops up to each neuron's `high`, then one activation lookup.
    let mut split_ops: Vec<Op> = Vec::new();
    let mut remap: Vec<ValueId> = vec![usize::MAX; ops.len()];
    let mut split_outputs = vec![];
    let highs: std::collections::HashMap<ValueId, &Vec<i64>> =
        split_act.iter().map(|(i, t)| (*i, t)).collect();
    for (i, op) in ops.iter().enumerate() {
        if output_side.contains(&i) {
            continue;
        }
        let op = match op.clone() {
            Op::Linear { terms, bias, p } => Op::Linear {
                terms: terms.into_iter().map(|(id, c)| (remap[id], c)).collect(),
                bias,
                p,
            },
            Op::Narrow { input, shift } => Op::Narrow {
                input: remap[input],
                shift,
            },
            Op::Lut { input, table, p } => Op::Lut {
                input: remap[input],
                table,
                p,
            },
            input @ Op::Input { .. } => input,
        };
        split_ops.push(op);
        remap[i] = split_ops.len() - 1;
        if let Some(table) = highs.get(&i) {
            split_ops.push(Op::Lut {
                input: remap[i],
                table: (*table).clone(),
                p: pa,
            });
            split_outputs.push(split_ops.len() - 1);
        }
    }
    let split = Split {
        layers: 1,
        circuit: Circuit {
            ops: split_ops,
            outputs: split_outputs,
            n_inputs: l1.n_in(),
        },
        activation_scale: sa,
        rest: Network {
            layers: vec![l2.clone()],
            activations: vec![],
            head: net.head.clone(),
        },
    };
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
        split: Some(split),
    })
}

/// Most distinct thresholds per feature a bootstrap can tell apart.
const MAX_CUTS: usize = LUT_SIZE - 1;

fn forest(
    f: &Forest,
    calibration: &[Vec<f64>],
    opts: &CompileOptions,
) -> Result<CompiledModel, FheError> {
    let max_cuts = opts
        .bits
        .map_or(MAX_CUTS, |b| ((1usize << b.min(4)) - 1).min(MAX_CUTS));
    // Cut points per feature: the thresholds the trees use, thinned to `max_cuts` by keeping
    // the ones that split the calibration data most evenly.
    let mut cuts: Vec<Vec<f64>> = vec![vec![]; f.n_features];
    for t in &f.trees {
        for (i, leaf) in t.leaf.iter().enumerate() {
            if leaf.is_none() {
                cuts[t.feature[i]].push(t.threshold[i]);
            }
        }
    }
    for (feat, c) in cuts.iter_mut().enumerate() {
        c.sort_by(f64::total_cmp);
        c.dedup();
        if c.len() > max_cuts {
            let mut col: Vec<f64> = calibration.iter().map(|r| r[feat]).collect();
            col.sort_by(f64::total_cmp);
            let kept: Vec<f64> = (1..=max_cuts)
                .map(|k| {
                    let target = col[(k * (col.len() - 1)) / (max_cuts + 1)];
                    *c.iter()
                        .min_by(|a, b| (**a - target).abs().total_cmp(&(**b - target).abs()))
                        .unwrap_or(&target)
                })
                .collect();
            *c = kept;
            c.dedup();
        }
    }
    let qs: Vec<Quantiser> = cuts
        .iter()
        .map(|c| Quantiser::Cuts { cuts: c.clone() })
        .collect();
    // x > thr  ⇔  rank(x) ≥ (number of cuts ≤ thr) when thr is a cut; otherwise approximated by
    // the nearest cut.
    let rank_of = |feat: usize, thr: f64| -> i64 {
        let c = &cuts[feat];
        let idx = c
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 - thr).abs().total_cmp(&(b.1 - thr).abs()))
            .map_or(0, |(i, _)| i);
        idx as i64 + 1
    };

    let n_scores = f.head.n_scores();
    let mut ops = vec![];
    let ins = inputs(&mut ops, f.n_features, LUT_BITS);
    let mut bits: std::collections::HashMap<(usize, i64), ValueId> = Default::default();
    // Per tree: comparison bit of every internal node.
    let mut node_bits: Vec<Vec<Option<ValueId>>> = vec![];
    for t in &f.trees {
        let mut nb = vec![None; t.leaf.len()];
        for (i, slot) in nb.iter_mut().enumerate() {
            if t.leaf[i].is_none() {
                let key = (t.feature[i], rank_of(t.feature[i], t.threshold[i]));
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

    // Leaf groups: (agreement terms, bias, table of (z, leaf index)).
    struct Group {
        terms: Vec<(ValueId, i64)>,
        bias: i64,
        hits: Vec<(i64, usize, usize)>, // (z, tree, leaf node)
    }
    let mut groups: Vec<Group> = vec![];
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
                    groups.push(Group {
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
                            groups.push(Group {
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

    // Output encoding and scale: worst case |Σ leaves + base| must fit.
    let per_score_groups = groups.len();
    let var_out = per_score_groups as f64 * opts.params.var_pbs;
    let po = (4..=30)
        .rev()
        .find(|&p| Params::log2_p_fail(var_out, p) <= opts.params.max_log2_p_fail)
        .unwrap_or(4);
    let worst = (0..n_scores)
        .map(|k| {
            f.trees
                .iter()
                .map(|t| {
                    t.leaf
                        .iter()
                        .flatten()
                        .map(|v| v[k].abs())
                        .fold(0.0, f64::max)
                })
                .sum::<f64>()
                + (f.base[k] + constant[k]).abs()
        })
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let so = ((1u64 << (po - 1)) as f64 - 1.0 - 0.5 * (f.trees.len() as f64 + 1.0)) / worst;
    if so <= 0.0 {
        return Err(FheError::Unsupported(
            "too many leaves for the output's noise budget".into(),
        ));
    }
    let mut per_score: Vec<Vec<ValueId>> = vec![vec![]; n_scores];
    for g in &groups {
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
                p: po,
            });
            ids.push(ops.len() - 1);
        }
    }
    let mut outputs = vec![];
    for (k, ids) in per_score.into_iter().enumerate() {
        let bias = ((f.base[k] + constant[k]) * so).round() as i64;
        ops.push(Op::Linear {
            terms: ids.into_iter().map(|id| (id, 1)).collect(),
            bias,
            p: po,
        });
        outputs.push(ops.len() - 1);
    }
    Ok(CompiledModel {
        circuit: Circuit {
            ops,
            outputs,
            n_inputs: f.n_features,
        },
        quantisers: qs,
        output_scale: so,
        head: f.head.clone(),
        kind: format!("forest of {} trees", f.trees.len()),
        params: opts.params,
        log2_p_fail: 0.0,
        split: None,
    })
}
