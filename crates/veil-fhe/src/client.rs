//! What a user needs to run a published model on their own encrypted inputs, and nothing of
//! the compiler: the public client spec (how each feature is quantised to the integers that are
//! encrypted, how decrypted integers become scores and a label), what publishing that spec
//! discloses, and the compile report it carries. Built without the `compiler` feature, so a
//! client (the CLI, the Python package) does not compile an ONNX reader.
//!
//! With `backend::ClientKey`, this is all a user's machine needs: quantise (a feature may
//! become several encrypted inputs), encrypt seeded ciphertexts, decrypt a reply only if it
//! fits what was sent and the spec (`decrypt_reply`), add a score's partial sums
//! (`outputs_per_score`, each scaled back by its `output_shifts`) and read scores. By default a
//! reply holds one ciphertext per score and accumulators are sized to the legal input box;
//! partial sums and calibration-sized accumulators are the creator's choice, and
//! [`ClientSpec::disclosure`] says so.

use serde::{Deserialize, Serialize};

use crate::FheError;
use crate::model::Head;

/// How the client turns one feature into the integer(s) it encrypts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Quantiser {
    /// `clamp(round((x - lo) / step), 0, levels - 1)`.
    Uniform { lo: f64, step: f64, levels: u32 },
    /// The number of cut points `x` exceeds.
    Cuts { cuts: Vec<f64> },
    /// One encrypted input per chunk (of at most 15 sorted cuts): the number of the chunk's
    /// cut points `x` exceeds.
    CutChunks { chunks: Vec<Vec<f64>> },
}

impl Quantiser {
    /// The one integer of a single-input quantiser; for [`Quantiser::CutChunks`], the number
    /// of all its cuts `x` exceeds.
    pub fn apply(&self, x: f64) -> i64 {
        match self {
            Quantiser::Uniform { lo, step, levels } => {
                let max = f64::from(levels - 1);
                if x.is_nan() {
                    return 0;
                }
                ((x - lo) / step).round().clamp(0.0, max) as i64
            }
            Quantiser::Cuts { cuts } => exceeded(cuts, x),
            Quantiser::CutChunks { chunks } => chunks.iter().map(|c| exceeded(c, x)).sum(),
        }
    }

    /// Distinct values the feature is quantised to.
    pub fn levels(&self) -> u32 {
        let count = match self {
            Quantiser::Uniform { levels, .. } => return *levels,
            Quantiser::Cuts { cuts } => cuts.len(),
            Quantiser::CutChunks { chunks } => chunks.iter().map(Vec::len).sum(),
        };
        u32::try_from(count).map_or(u32::MAX, |c| c.saturating_add(1))
    }

    /// The integers each of this feature's encrypted inputs can take, inclusive: the legal
    /// input box, per input.
    pub fn input_ranges(&self) -> Vec<(i64, i64)> {
        let top = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            Quantiser::Uniform { levels, .. } => vec![(0, i64::from(*levels) - 1)],
            Quantiser::Cuts { cuts } => vec![(0, top(cuts.len()))],
            Quantiser::CutChunks { chunks } => chunks.iter().map(|c| (0, top(c.len()))).collect(),
        }
    }

    /// Encrypted inputs this feature becomes.
    pub fn inputs(&self) -> usize {
        match self {
            Quantiser::CutChunks { chunks } => chunks.len(),
            _ => 1,
        }
    }

    /// Appends this feature's encrypted inputs' integers.
    fn apply_into(&self, x: f64, out: &mut Vec<i64>) {
        match self {
            Quantiser::CutChunks { chunks } => out.extend(chunks.iter().map(|c| exceeded(c, x))),
            q => out.push(q.apply(x)),
        }
    }
}

fn exceeded(cuts: &[f64], x: f64) -> i64 {
    cuts.iter().filter(|c| x > **c).count() as i64
}

pub(crate) fn one() -> usize {
    1
}

/// Accumulators (values a bootstrap reads whole, or the cleared design's 8-bit sums) checked
/// by interval arithmetic over every legal input, not only the calibration rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCheck {
    pub accumulators: usize,
    /// How many can leave their range for some legal input unlike every calibration row: 0 for
    /// linear models, forests and networks sized to the input box, except a deeper network's
    /// accumulators fed by earlier bootstraps (always sized to the calibration rows). A wrapped
    /// accumulator gives a wrong score, never a wrong decryption.
    pub may_wrap: usize,
}

/// Quantises one sample's features (width checked) into the integers the client encrypts.
pub(crate) fn quantise(quantisers: &[Quantiser], x: &[f64]) -> Result<Vec<i64>, FheError> {
    if x.len() != quantisers.len() {
        return Err(FheError::Input(format!(
            "expected {} features, got {}",
            quantisers.len(),
            x.len()
        )));
    }
    let mut out = Vec::with_capacity(quantisers.iter().map(Quantiser::inputs).sum());
    for (q, v) in quantisers.iter().zip(x) {
        q.apply_into(*v, &mut out);
    }
    Ok(out)
}

/// Decrypted output integers back to scores: partial sums unshifted and added, then scaled.
pub(crate) fn scores(
    outputs: &[i64],
    output_scale: f64,
    per_score: usize,
    shifts: &[u32],
) -> Vec<f64> {
    let per_score = per_score.max(1);
    outputs
        .chunks(per_score)
        .enumerate()
        .map(|(k, c)| {
            let sum: f64 = c
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    let shift = shifts.get(k * per_score + i).copied().unwrap_or(0);
                    o as f64 / (shift.min(62) as f64).exp2()
                })
                .sum();
            sum / output_scale
        })
        .collect()
}

/// What a client needs to use a compiled model: how to quantise and encrypt inputs, how to
/// read decrypted outputs. Public, and not only ranges: [`ClientSpec::disclosure`] lists all it
/// reveals (rounded feature ranges, a forest's exact thresholds, the architecture, calibration
/// statistics), which the creator confirms before publishing.
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
    /// Output ciphertexts per score: score `k` is the sum of outputs `k·outputs_per_score ..`
    /// over the next `outputs_per_score`, divided by `output_scale`.
    #[serde(default = "one")]
    pub outputs_per_score: usize,
    /// Per output ciphertext, how many bits finer than `output_scale` it is held: output `i`
    /// counts `output_i / 2^shift_i`. Empty means all zero.
    #[serde(default)]
    pub output_shifts: Vec<u32>,
    pub pbs_per_sample: usize,
    /// Worst failure probability (log2) of any one read.
    pub log2_p_fail: f64,
    /// Failure probability (log2) of a whole sample: any of its reads (a union bound).
    #[serde(default)]
    pub log2_p_fail_sample: Option<f64>,
    /// The accumulators checked over the legal input box.
    #[serde(default)]
    pub range_check: Option<RangeCheck>,
    /// The circuit against the float model on the calibration rows.
    pub fidelity: Fidelity,
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
        scores(
            outputs,
            self.output_scale,
            self.outputs_per_score,
            &self.output_shifts,
        )
    }

    pub fn label(&self, outputs: &[i64]) -> Option<String> {
        self.head.label(&self.scores(outputs))
    }
}

/// Everything a model's public client spec reveals, item by item, for its creator to read and
/// confirm before the model is published: anyone allowed to run encrypted inference receives
/// the spec. Built from the spec itself, so it cannot list less than is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disclosure {
    /// The circuit's shape, e.g. `network 1×30 relu` (layer widths, tree count).
    pub architecture: String,
    /// Per input feature, what its quantiser publishes.
    pub features: Vec<FeatureDisclosure>,
    /// The score names (class labels).
    pub classes: Vec<String>,
    /// Encrypted inputs per sample and their encodings (bits).
    pub input_bits: Vec<u32>,
    /// Output ciphertexts per sample, their encodings, and how many make one score.
    pub output_bits: Vec<u32>,
    pub outputs_per_score: usize,
    /// The factor from output integers to scores: a bound on the model's weights or leaves.
    pub output_scale: f64,
    pub pbs_per_sample: usize,
    /// Statistics of the creator's calibration rows: how many, and how the circuit agrees
    /// with the float model on them.
    pub calibration_rows: usize,
    pub fidelity: Fidelity,
    /// What a data user learns by running the model, beyond the spec (the circuit-privacy
    /// level), in words.
    pub data_users_learn: Vec<String>,
}

/// What one feature's quantiser publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureDisclosure {
    /// A range (the calibration range rounded outward by the compiler) and level count.
    Range { lo: f64, hi: f64, levels: u32 },
    /// Every threshold the model's trees compare the feature with, exactly: scikit-learn puts
    /// each halfway between two training values.
    Thresholds { values: Vec<f64> },
}

impl ClientSpec {
    /// What publishing this spec reveals (see [`Disclosure`]).
    pub fn disclosure(&self, calibration_rows: usize) -> Disclosure {
        let features = self
            .quantisers
            .iter()
            .map(|q| match q {
                Quantiser::Uniform { lo, step, levels } => FeatureDisclosure::Range {
                    lo: *lo,
                    hi: lo + step * f64::from(levels.saturating_sub(1)),
                    levels: *levels,
                },
                Quantiser::Cuts { cuts } => FeatureDisclosure::Thresholds {
                    values: cuts.clone(),
                },
                Quantiser::CutChunks { chunks } => FeatureDisclosure::Thresholds {
                    values: chunks.iter().flatten().copied().collect(),
                },
            })
            .collect();
        let mut learn = vec![
            "each sample's scores at the circuit's precision, on inputs of their choosing (any integers the inputs' encodings hold, not only the quantiser's levels)".to_string(),
        ];
        if self.outputs_per_score > 1 {
            learn.push(format!(
                "each score as {} partial sums (groups of hidden units or trees, and for networks the affine part separately), not only their total",
                self.outputs_per_score
            ));
        }
        if let Some(r) = self.range_check
            && r.may_wrap > 0
        {
            learn.push(format!(
                "that {} of the circuit's {} accumulators were sized to the calibration rows: a legal input unlike all of them may get a wrong score",
                r.may_wrap, r.accumulators
            ));
        }
        learn.push(
            "no circuit privacy: a data user can recover the quantised model's integer weights, from replies on inputs of their choosing and, for outputs computed without a bootstrap (a linear model's scores, a network's affine part), from a single reply, through the ciphertext's mask and noise, which are known functions of their own inputs'; publishing makes the quantised model queryable, not secret (the node rate-limits and audits encrypted predictions)".into(),
        );
        Disclosure {
            architecture: self.kind.clone(),
            features,
            classes: self.head.classes(),
            input_bits: self.input_bits.clone(),
            output_bits: self.output_bits.clone(),
            outputs_per_score: self.outputs_per_score,
            output_scale: self.output_scale,
            pbs_per_sample: self.pbs_per_sample,
            calibration_rows,
            fidelity: self.fidelity.clone(),
            data_users_learn: learn,
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
