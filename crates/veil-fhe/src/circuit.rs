//! The integer circuit every compiled model becomes, and the clear simulator that runs it.
//!
//! A circuit is a list of operations in topological order; the value an operation produces is
//! named by its index. Every value is an integer modulo `2^p` held in one LWE ciphertext whose
//! phase is `v · 2^(64-p)`: `p` is the value's *encoding*. The simulator computes the same
//! integers with the same wrap-around, so an encrypted run decrypts to exactly the simulator's
//! outputs as long as no read fails, which the noise check in [`Circuit::check_noise`] bounds.
//!
//! The operations are the only things the TFHE backend can do cheaply and exactly:
//! - [`Op::Input`]: a quantised feature the client encrypted at encoding `p`.
//! - [`Op::Linear`]: `Σ cᵢ·vᵢ + bias mod 2^p`, leveled (microseconds). A term held at encoding
//!   `q ≥ p` is re-encoded for free by multiplying its ciphertext by `2^(q-p)`, which keeps only
//!   its low `p` bits. This is how a bootstrap reads the low bits of a wide accumulator.
//! - [`Op::Narrow`]: reinterpret a value that is a multiple of `2^s` at encoding `p - s`
//!   (same ciphertext, value divided by `2^s`).
//! - [`Op::Lut`]: one programmable bootstrap (tens of milliseconds). Its input is read at
//!   encoding [`LUT_BITS`] (5): for `v < 16` it yields `table[v]`, for
//!   `16 ≤ v < 32` the negacyclic `-table[v - 16]`, at any output encoding.

use serde::{Deserialize, Serialize};

use crate::FheError;
use crate::noise::Params;

pub type ValueId = usize;

/// Boxes a bootstrap reads without the padding bit (message and carry bits of the set).
pub const LUT_SIZE: usize = 16;
/// Encoding a bootstrap input is read at.
pub const LUT_BITS: u32 = 5;
/// Widest encoding a value may use.
pub const MAX_BITS: u32 = 48;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input {
        feature: usize,
        p: u32,
    },
    Linear {
        terms: Vec<(ValueId, i64)>,
        bias: i64,
        p: u32,
    },
    Narrow {
        input: ValueId,
        shift: u32,
    },
    Lut {
        input: ValueId,
        table: Vec<i64>,
        p: u32,
    },
}

/// What the noise analysis found.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseReport {
    /// Variance of every value (absolute, on the torus).
    pub var: Vec<f64>,
    /// log2 of the largest failure probability of any one read (a bootstrap's input or an
    /// output's decryption).
    pub worst_read: f64,
    /// log2 of a bound on the probability that any read of one sample fails (the union bound
    /// over all its reads).
    pub per_sample: f64,
    /// Reads per sample.
    pub reads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub ops: Vec<Op>,
    pub outputs: Vec<ValueId>,
    /// Number of input features the client encrypts (one `Input` op each).
    pub n_inputs: usize,
}

/// Reduces `v` modulo `2^p` into the signed range `[-2^(p-1), 2^(p-1))`.
pub fn wrap_signed(v: i128, p: u32) -> i64 {
    let m = 1i128 << p;
    let r = v.rem_euclid(m);
    (if r >= m / 2 { r - m } else { r }) as i64
}

/// The range of a value held at encoding `q` read at encoding `p ≤ q` (its low `p` bits).
fn narrowed(range: (i128, i128), q: u32, p: u32) -> (i128, i128) {
    let half = 1i128 << (p - 1);
    if q == p || (range.0 >= -half && range.1 < half) {
        range
    } else {
        (-half, half - 1)
    }
}

/// What one bootstrap computes for an input value (any integer; only its low 5 bits matter).
pub fn lut_apply(table: &[i64], v: i64, p_out: u32) -> i64 {
    let idx = v.rem_euclid(2 * LUT_SIZE as i64) as usize;
    let out = if idx < LUT_SIZE {
        table[idx] as i128
    } else {
        -(table[idx - LUT_SIZE] as i128)
    };
    wrap_signed(out, p_out)
}

impl Circuit {
    /// Encoding of every value.
    pub fn encodings(&self) -> Vec<u32> {
        let mut enc = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            let p = match op {
                Op::Input { p, .. } | Op::Linear { p, .. } | Op::Lut { p, .. } => *p,
                Op::Narrow { input, shift } => enc[*input] - shift,
            };
            enc.push(p);
        }
        enc
    }

    /// Encoding the client encrypts each input feature at.
    pub fn input_encodings(&self) -> Vec<u32> {
        let mut out = vec![0; self.n_inputs];
        for op in &self.ops {
            if let Op::Input { feature, p } = op {
                out[*feature] = *p;
            }
        }
        out
    }

    pub fn output_encodings(&self) -> Vec<u32> {
        let enc = self.encodings();
        self.outputs.iter().map(|&o| enc[o]).collect()
    }

    pub fn pbs_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Lut { .. }))
            .count()
    }

    /// Checks the structure: references point backwards, encodings fit, tables are whole,
    /// every input feature is encrypted exactly once. A circuit from storage is re-validated
    /// before it runs, so a corrupted one is an error, never a panic.
    pub fn validate(&self) -> Result<(), FheError> {
        let bad = |m: String| Err(FheError::Circuit(m));
        let mut enc: Vec<u32> = Vec::with_capacity(self.ops.len());
        let mut seen = vec![false; self.n_inputs];
        for (i, op) in self.ops.iter().enumerate() {
            let refs_ok = |id: &ValueId| *id < i;
            let p = match op {
                Op::Input { feature, p } => {
                    if *feature >= self.n_inputs || seen[*feature] {
                        return bad(format!(
                            "op {i}: input feature {feature} is out of range or repeated"
                        ));
                    }
                    seen[*feature] = true;
                    *p
                }
                Op::Linear { terms, p, .. } => {
                    for (id, _) in terms {
                        if !refs_ok(id) {
                            return bad(format!("op {i}: refers to a later value"));
                        }
                        if enc[*id] < *p {
                            return bad(format!(
                                "op {i}: term at encoding {} is narrower than {p}",
                                enc[*id]
                            ));
                        }
                    }
                    *p
                }
                Op::Narrow { input, shift } => {
                    if !refs_ok(input) || enc[*input] <= *shift {
                        return bad(format!("op {i}: bad narrow"));
                    }
                    enc[*input] - shift
                }
                Op::Lut { input, table, p } => {
                    if !refs_ok(input) || table.len() != LUT_SIZE {
                        return bad(format!("op {i}: bad lookup table"));
                    }
                    if enc[*input] != LUT_BITS {
                        return bad(format!(
                            "op {i}: bootstrap input encoding {} is not {LUT_BITS}",
                            enc[*input]
                        ));
                    }
                    *p
                }
            };
            if p == 0 || p > MAX_BITS {
                return bad(format!("op {i}: encoding {p} out of range"));
            }
            enc.push(p);
        }
        if seen.iter().any(|s| !s) {
            return bad("some input features are never encrypted".into());
        }
        if self.outputs.is_empty() || self.outputs.iter().any(|&o| o >= self.ops.len()) {
            return bad("bad outputs".into());
        }
        Ok(())
    }

    /// Runs the circuit on quantised inputs, in integers, with the encrypted run's wrap-around.
    pub fn simulate(&self, inputs: &[i64]) -> Vec<i64> {
        let enc = self.encodings();
        let mut vals: Vec<i64> = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            let v = match op {
                Op::Input { feature, p } => wrap_signed(inputs[*feature] as i128, *p),
                Op::Linear { terms, bias, p } => {
                    let s: i128 = terms
                        .iter()
                        .map(|(id, c)| *c as i128 * vals[*id] as i128)
                        .sum();
                    wrap_signed(s + *bias as i128, *p)
                }
                Op::Narrow { input, shift } => {
                    // The value is a multiple of 2^shift by construction; the ciphertext is
                    // reinterpreted, which the arithmetic shift mirrors exactly.
                    wrap_signed((vals[*input] >> shift) as i128, enc[*input] - shift)
                }
                Op::Lut { input, table, p } => lut_apply(table, vals[*input], *p),
            };
            vals.push(v);
        }
        self.outputs.iter().map(|&o| vals[o]).collect()
    }

    /// The range of every value (unwrapped) when each input takes any value in `inputs`
    /// (inclusive, per encrypted input): interval arithmetic over the ops, with every table
    /// entry a bootstrap can return. Callers compare a value's range with what its reader
    /// needs (a bootstrap reads `[−16, 16)`, an output its encoding).
    pub fn ranges(&self, inputs: &[(i64, i64)]) -> Vec<(i128, i128)> {
        let enc = self.encodings();
        let mut r: Vec<(i128, i128)> = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            let range = match op {
                Op::Input { feature, .. } => inputs
                    .get(*feature)
                    .map_or((0, 0), |(lo, hi)| (i128::from(*lo), i128::from(*hi))),
                Op::Linear { terms, bias, p } => {
                    let (mut lo, mut hi) = (i128::from(*bias), i128::from(*bias));
                    for (id, c) in terms {
                        // A term re-encoded to a narrower encoding keeps only its low `p`
                        // bits: its range is then the whole encoding unless it already fits.
                        let (tl, th) = narrowed(r[*id], enc[*id], *p);
                        let c = i128::from(*c);
                        let (a, b) = (c.saturating_mul(tl), c.saturating_mul(th));
                        lo = lo.saturating_add(a.min(b));
                        hi = hi.saturating_add(a.max(b));
                    }
                    (lo, hi)
                }
                Op::Narrow { input, shift } => {
                    let (lo, hi) = r[*input];
                    (lo >> shift, hi >> shift)
                }
                Op::Lut { table, .. } => {
                    // Either half of the table, negated or not.
                    let m = table
                        .iter()
                        .map(|t| i128::from(*t).abs())
                        .max()
                        .unwrap_or(0);
                    (-m, m)
                }
            };
            r.push(range);
        }
        r
    }

    /// Accumulators that can leave `[−16, 16)` for some input in `inputs` (see
    /// [`Circuit::ranges`]), with their ranges. An accumulator here is a bootstrap's input
    /// computed by a sum of inputs and bootstrap outputs, which the bootstrap reads whole as a
    /// signed 5-bit value; the cleared design's deliberately modular reads (a wide value's low
    /// bits) are not accumulators and are checked by that design itself. Outside its range an
    /// accumulator wraps: the circuit still decrypts to its clear simulation, but that no
    /// longer computes the quantised model.
    pub fn accumulators_out_of_range(&self, inputs: &[(i64, i64)]) -> Vec<(ValueId, (i128, i128))> {
        let ranges = self.ranges(inputs);
        let half = LUT_SIZE as i128;
        let mut out: Vec<(ValueId, (i128, i128))> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Lut { input, .. } => Some(*input),
                _ => None,
            })
            .filter(|id| match &self.ops[*id] {
                Op::Linear { terms, .. } => terms
                    .iter()
                    .all(|(t, _)| matches!(self.ops[*t], Op::Input { .. } | Op::Lut { .. })),
                Op::Input { .. } => true,
                _ => false,
            })
            .filter(|id| {
                let (lo, hi) = ranges[*id];
                lo < -half || hi >= half
            })
            .map(|id| (id, ranges[id]))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The noise of every value, and the failure probabilities of the reads.
    ///
    /// A value's noise is tracked as a combination of independent sources (a fresh input or
    /// a bootstrap output, each with its own variance), so a source reached by several paths
    /// (the same ciphertext used twice in a sum, or two sums sharing a term) counts with its
    /// coefficients added before squaring: `x + x` has variance `4·var(x)`, not `2·var(x)`.
    pub fn noise(&self, params: &Params) -> NoiseReport {
        use std::collections::BTreeMap;
        let enc = self.encodings();
        // Per value: source id → coefficient of that source's noise in the value's noise.
        let mut sources: Vec<BTreeMap<ValueId, f64>> = Vec::with_capacity(self.ops.len());
        let mut source_var: Vec<f64> = vec![0.0; self.ops.len()];
        let mut var: Vec<f64> = Vec::with_capacity(self.ops.len());
        let mut reads: Vec<f64> = Vec::new();
        let variance = |m: &BTreeMap<ValueId, f64>, source_var: &[f64]| -> f64 {
            m.iter().map(|(s, c)| c * c * source_var[*s]).sum()
        };
        for (i, op) in self.ops.iter().enumerate() {
            let m = match op {
                Op::Input { .. } => {
                    source_var[i] = params.var_fresh;
                    BTreeMap::from([(i, 1.0)])
                }
                Op::Linear { terms, p, .. } => {
                    let mut m = BTreeMap::new();
                    for (id, c) in terms {
                        // The ciphertext is multiplied by c·2^(q-p); noise is absolute on the torus.
                        let k = *c as f64 * 2f64.powi((enc[*id] - p) as i32);
                        for (s, w) in &sources[*id] {
                            *m.entry(*s).or_insert(0.0) += k * w;
                        }
                    }
                    m
                }
                Op::Narrow { input, .. } => sources[*input].clone(),
                Op::Lut { input, .. } => {
                    reads.push(params.log2_p_fail_pbs(var[*input]));
                    source_var[i] = params.var_pbs;
                    BTreeMap::from([(i, 1.0)])
                }
            };
            var.push(variance(&m, &source_var));
            sources.push(m);
        }
        for &o in &self.outputs {
            reads.push(params.log2_p_fail_output(var[o], enc[o]));
        }
        let worst_read = reads.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A sample fails if any of its reads does: at most the sum of their probabilities.
        let per_sample = if worst_read.is_finite() {
            worst_read
                + reads
                    .iter()
                    .map(|l| (l - worst_read).exp2())
                    .sum::<f64>()
                    .log2()
        } else {
            worst_read
        };
        NoiseReport {
            var,
            worst_read,
            per_sample,
            reads: reads.len(),
        }
    }

    /// Checks every read against the failure bound; returns the noise report.
    pub fn check_noise(&self, params: &Params) -> Result<NoiseReport, FheError> {
        let report = self.noise(params);
        let worst = report.worst_read;
        if worst > params.max_log2_p_fail {
            return Err(FheError::Unsupported(format!(
                "the circuit's noise budget does not hold: a read fails with probability 2^{worst:.1} (limit 2^{})",
                params.max_log2_p_fail
            )));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::message_2_carry_2()
    }

    /// One fresh input, and a sum of `terms` (value, coefficient) pairs over it at `p`.
    fn sum_of(terms: Vec<(ValueId, i64)>) -> Circuit {
        Circuit {
            ops: vec![
                Op::Input { feature: 0, p: 8 },
                Op::Linear {
                    terms,
                    bias: 0,
                    p: 8,
                },
            ],
            outputs: vec![1],
            n_inputs: 1,
        }
    }

    #[test]
    fn a_ciphertext_used_twice_counts_with_its_coefficients_added() {
        let p = params();
        let twice = sum_of(vec![(0, 1), (0, 1)]).noise(&p).var[1];
        let doubled = sum_of(vec![(0, 2)]).noise(&p).var[1];
        assert!((twice - 4.0 * p.var_fresh).abs() < 1e-30 * p.var_fresh.max(1.0));
        assert_eq!(twice, doubled);
        // Opposite coefficients cancel: the noise is gone, not doubled.
        assert_eq!(sum_of(vec![(0, 1), (0, -1)]).noise(&p).var[1], 0.0);
    }

    #[test]
    fn shared_sources_are_merged_across_sums() {
        // y = x + z; out = y + x: x's noise enters twice.
        let c = Circuit {
            ops: vec![
                Op::Input { feature: 0, p: 8 },
                Op::Input { feature: 1, p: 8 },
                Op::Linear {
                    terms: vec![(0, 1), (1, 1)],
                    bias: 0,
                    p: 8,
                },
                Op::Linear {
                    terms: vec![(2, 1), (0, 1)],
                    bias: 0,
                    p: 8,
                },
            ],
            outputs: vec![3],
            n_inputs: 2,
        };
        let p = params();
        let var = c.noise(&p).var[3];
        assert!((var - 5.0 * p.var_fresh).abs() <= 1e-9 * p.var_fresh);
    }

    /// Eight bootstrap outputs summed into one bootstrap read pass the bound; the same eight
    /// with one counted twice (coefficient 2, as a forest path with a repeated comparison
    /// makes) do not, although term by term they look alike.
    #[test]
    fn a_repeated_bootstrap_output_can_break_the_bound_it_seemed_to_meet() {
        let p = params();
        let build = |terms: Vec<(ValueId, i64)>| {
            let mut ops = vec![Op::Input { feature: 0, p: 5 }];
            for _ in 0..8 {
                ops.push(Op::Lut {
                    input: 0,
                    table: vec![0; LUT_SIZE],
                    p: 5,
                });
            }
            ops.push(Op::Linear {
                terms,
                bias: 0,
                p: 5,
            });
            ops.push(Op::Lut {
                input: 9,
                table: vec![0; LUT_SIZE],
                p: 5,
            });
            Circuit {
                ops,
                outputs: vec![10],
                n_inputs: 1,
            }
        };
        let distinct: Vec<(ValueId, i64)> = (1..=8).map(|id| (id, 2)).collect();
        let mut repeated = distinct.clone();
        repeated[7] = (1, 2);
        let a = build(distinct).noise(&p);
        let b = build(repeated).noise(&p);
        assert!(b.var[9] > a.var[9], "{} vs {}", b.var[9], a.var[9]);
        assert!(b.worst_read > a.worst_read);
    }

    #[test]
    fn a_sample_fails_if_any_of_its_reads_does() {
        let p = params();
        let c = Circuit {
            ops: vec![
                Op::Input { feature: 0, p: 5 },
                Op::Lut {
                    input: 0,
                    table: vec![0; LUT_SIZE],
                    p: 5,
                },
                Op::Lut {
                    input: 0,
                    table: vec![0; LUT_SIZE],
                    p: 5,
                },
            ],
            outputs: vec![1, 2],
            n_inputs: 1,
        };
        let r = c.noise(&p);
        // Two bootstrap reads of the same fresh input, two output reads of equal noise.
        assert_eq!(r.reads, 4);
        assert!(r.per_sample > r.worst_read);
        assert!(r.per_sample <= r.worst_read + 2.0 + 1e-9);
    }
}
