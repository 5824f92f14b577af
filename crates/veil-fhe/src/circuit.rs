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

    /// Variance of every value and the worst failure probability (log2) of any bootstrap read
    /// or output decryption.
    pub fn noise(&self, params: &Params) -> (Vec<f64>, f64) {
        let enc = self.encodings();
        let mut var: Vec<f64> = Vec::with_capacity(self.ops.len());
        let mut worst = f64::NEG_INFINITY;
        for op in &self.ops {
            let v = match op {
                Op::Input { .. } => params.var_fresh,
                Op::Linear { terms, p, .. } => terms
                    .iter()
                    .map(|(id, c)| {
                        // The ciphertext is multiplied by c·2^(q-p); noise is absolute on the torus.
                        let m = *c as f64 * 2f64.powi((enc[*id] - p) as i32);
                        m * m * var[*id]
                    })
                    .sum(),
                Op::Narrow { input, .. } => var[*input],
                Op::Lut { input, .. } => {
                    worst = worst.max(params.log2_p_fail_pbs(var[*input]));
                    params.var_pbs
                }
            };
            var.push(v);
        }
        for &o in &self.outputs {
            worst = worst.max(params.log2_p_fail_output(var[o], enc[o]));
        }
        (var, worst)
    }

    pub fn check_noise(&self, params: &Params) -> Result<f64, FheError> {
        let (_, worst) = self.noise(params);
        if worst > params.max_log2_p_fail {
            return Err(FheError::Unsupported(format!(
                "the circuit's noise budget does not hold: a read fails with probability 2^{worst:.1} (limit 2^{})",
                params.max_log2_p_fail
            )));
        }
        Ok(worst)
    }
}
