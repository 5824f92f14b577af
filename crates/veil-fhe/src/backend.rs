//! The TFHE-rs backend: keys, encryption with the circuit's encodings, and encrypted
//! evaluation of a [`Circuit`]. Everything TFHE-specific lives in this file, behind the small
//! surface [`ClientKey`], [`EvaluationKey`], [`Evaluator`], so another FHE library could replace
//! it without touching the compiler or the simulator.
//!
//! Shortint's vetted `PARAM_MESSAGE_2_CARRY_2_KS_PBS` (2^-128) keys are used as they are; only
//! the encodings are ours. Inputs are encrypted under the big (GLWE-as-LWE) key like shortint's
//! own fresh ciphertexts, with phase `v·2^(64-p)`, and sent as one seeded list per sample (every
//! mask is regenerated from one 128-bit seed, so an input costs 8 bytes on the wire instead of
//! 16 KiB).
//! Bootstraps go through `ServerKey::apply_lookup_table_assign` with accumulators we fill
//! ourselves, which sets both the number of boxes and the output encoding. Outputs go back with
//! every coefficient rounded to its top 32 bits (8 KiB instead of 16 KiB each) when the
//! circuit's noise analysis allows it ([`Params::var_output_rounding`]); outputs of circuits
//! compiled before that check existed may need all 64 bits and are sent whole.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tfhe::conformance::ParameterSetConformant;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_add_scalar_mul_assign;
use tfhe::core_crypto::prelude::{
    CiphertextModulus, ContiguousEntityContainer, LweCiphertextCount, LweCiphertextOwned, LweSize,
    PlaintextList, SeededLweCiphertextList, decrypt_lwe_ciphertext,
    generate_programmable_bootstrap_glwe_lut, new_seeder, par_encrypt_seeded_lwe_ciphertext_list,
};
use tfhe::shortint::ciphertext::{Degree, NoiseLevel};
use tfhe::shortint::parameters::{
    ClassicPBSParameters, PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::shortint::server_key::LookupTableOwned;
use tfhe::shortint::{AtomicPatternKind, Ciphertext, PBSOrder};

use crate::FheError;
use crate::circuit::{Circuit, LUT_SIZE, Op, wrap_signed};
use crate::noise::{OUTPUT_KEPT_BITS, Params};

/// Most output ciphertexts (partial sums) per score a client accepts.
pub const MAX_OUTPUTS_PER_SCORE: usize = 64;
/// Most scores (classes) per sample a client accepts.
pub const MAX_SCORES: usize = 1_000;

/// Parameters of every key and ciphertext, for callers that report sizes.
pub const PARAMETER_SET: &str = "PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128";

fn params() -> ClassicPBSParameters {
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128
}

/// Coefficients (mask and body) of every input and output ciphertext.
pub fn ciphertext_coefficients() -> usize {
    lwe_size().0
}

fn lwe_size() -> LweSize {
    let p = params();
    LweSize(p.glwe_dimension.0 * p.polynomial_size.0 + 1)
}

fn bincode_err(e: impl std::fmt::Display) -> FheError {
    FheError::Malformed(e.to_string())
}

/// The secret key. Never leaves the client; `Debug` does not print it.
pub struct ClientKey {
    key: tfhe::shortint::ClientKey,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

/// The compressed server (evaluation) key, as sent to a node.
#[derive(Clone)]
pub struct EvaluationKey {
    pub bytes: Vec<u8>,
}

macro_rules! opaque_debug {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($name)
            }
        }
    )*};
}

opaque_debug!(
    EvaluationKey => "EvaluationKey(..)",
    EncryptedInputs => "EncryptedInputs(..)",
    EncryptedOutputs => "EncryptedOutputs(..)",
    Prepared => "Prepared(..)",
    Evaluator => "Evaluator(..)",
    RunControl<'_> => "RunControl(..)",
);

impl ClientKey {
    /// Generates a fresh key (a few seconds).
    pub fn generate() -> Self {
        Self {
            key: tfhe::shortint::ClientKey::new(params()),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, FheError> {
        bincode::serialize(&self.key).map_err(bincode_err)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let key: tfhe::shortint::ClientKey = bincode::deserialize(bytes).map_err(bincode_err)?;
        let p = key.parameters();
        if p.message_modulus() != params().message_modulus
            || p.lwe_dimension() != params().lwe_dimension
        {
            return Err(FheError::Malformed(
                "the client key uses parameters this version does not".into(),
            ));
        }
        Ok(Self { key })
    }

    /// The compressed evaluation key the node needs (tens of seconds of work on two cores).
    pub fn evaluation_key(&self) -> Result<EvaluationKey, FheError> {
        let k = tfhe::shortint::CompressedServerKey::new(&self.key);
        Ok(EvaluationKey {
            bytes: bincode::serialize(&k).map_err(bincode_err)?,
        })
    }

    /// Encrypts one sample's quantised inputs at the circuit's input encodings
    /// ([`Circuit::input_encodings`], also in a model's [`crate::ClientSpec`]).
    pub fn encrypt(&self, enc: &[u32], quantised: &[i64]) -> Result<EncryptedInputs, FheError> {
        if enc.iter().any(|&p| p == 0 || p > crate::circuit::MAX_BITS) {
            return Err(FheError::Input("input encodings out of range".into()));
        }
        if quantised.len() != enc.len() {
            return Err(FheError::Input(format!(
                "expected {} features, got {}",
                enc.len(),
                quantised.len()
            )));
        }
        if quantised.is_empty() {
            return Err(FheError::Input("there is nothing to encrypt".into()));
        }
        let (sk, noise) = self.key.encryption_key_and_noise();
        let mut seeder = new_seeder();
        let plaintexts: Vec<u64> = quantised
            .iter()
            .zip(enc)
            .map(|(&v, &p)| encode(v, p))
            .collect();
        let mut list = SeededLweCiphertextList::new(
            0u64,
            lwe_size(),
            LweCiphertextCount(plaintexts.len()),
            seeder.seed().into(),
            CiphertextModulus::new_native(),
        );
        par_encrypt_seeded_lwe_ciphertext_list(
            &sk,
            &mut list,
            &PlaintextList::from_container(plaintexts),
            noise,
            seeder.as_mut(),
        );
        Ok(EncryptedInputs { list })
    }

    /// Decrypts a node's reply to `samples` samples against the model's public spec, refusing
    /// anything beyond what that spec can ask: exactly one set of outputs per sample sent,
    /// exactly the spec's outputs per set, and a spec whose outputs are its scores' (at most
    /// [`MAX_OUTPUTS_PER_SCORE`] partial sums each, each at most [`crate::circuit::MAX_BITS`]
    /// wide). What is decrypted stays on the client: nothing here is ever sent back, so a node
    /// that returns crafted ciphertexts learns nothing from their decryption.
    pub fn decrypt_reply(
        &self,
        spec: &crate::ClientSpec,
        samples: usize,
        reply: &[EncryptedOutputs],
    ) -> Result<Vec<Vec<i64>>, FheError> {
        let per_score = spec.outputs_per_score;
        if per_score == 0
            || per_score > MAX_OUTPUTS_PER_SCORE
            || spec.head.n_scores() > MAX_SCORES
            || spec.output_bits.len() != spec.head.n_scores() * per_score
        {
            return Err(FheError::Malformed(format!(
                "the model's spec asks for {} outputs for {} scores; a spec asks for 1 to {MAX_OUTPUTS_PER_SCORE} per score",
                spec.output_bits.len(),
                spec.head.n_scores()
            )));
        }
        if reply.len() != samples {
            return Err(FheError::Malformed(format!(
                "the node answered {} samples for the {samples} sent",
                reply.len()
            )));
        }
        reply
            .iter()
            .map(|out| self.decrypt(&spec.output_bits, out))
            .collect()
    }

    /// Decrypts one sample's outputs read at the circuit's output encodings.
    pub fn decrypt(&self, enc: &[u32], out: &EncryptedOutputs) -> Result<Vec<i64>, FheError> {
        if enc.iter().any(|&p| p == 0 || p > crate::circuit::MAX_BITS) {
            return Err(FheError::Input("output encodings out of range".into()));
        }
        if out.cts.len() != enc.len() {
            return Err(FheError::Malformed(format!(
                "expected {} outputs, got {}",
                enc.len(),
                out.cts.len()
            )));
        }
        let sk = self.key.encryption_key();
        out.cts
            .iter()
            .zip(enc)
            .map(|(ct, &p)| Ok(decode(decrypt_lwe_ciphertext(&sk, &ct.expand()?).0, p)))
            .collect()
    }
}

fn encode(v: i64, p: u32) -> u64 {
    (v as u64).wrapping_shl(64 - p)
}

fn decode(phase: u64, p: u32) -> i64 {
    let rounded = phase.wrapping_add(1u64 << (63 - p)) >> (64 - p);
    wrap_signed(i128::from(rounded), p)
}

/// One sample's encrypted inputs: a seeded list (bodies plus one seed for every mask).
#[derive(Clone, Serialize, Deserialize)]
pub struct EncryptedInputs {
    list: SeededLweCiphertextList<Vec<u64>>,
}

impl EncryptedInputs {
    pub fn len(&self) -> usize {
        self.list.lwe_ciphertext_count().0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_bytes(&self) -> Result<Vec<u8>, FheError> {
        bincode::serialize(self).map_err(bincode_err)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let s: Self = bincode::options()
            .with_limit(bytes.len() as u64 + 64)
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .deserialize(bytes)
            .map_err(bincode_err)?;
        if s.list.lwe_size() != lwe_size()
            || s.list.ciphertext_modulus() != CiphertextModulus::new_native()
            || s.is_empty()
        {
            return Err(FheError::Malformed(
                "an input ciphertext was not made with this node's parameters".into(),
            ));
        }
        Ok(s)
    }
}

/// One output ciphertext as sent: every coefficient (mask, then body) rounded to its top
/// [`OUTPUT_KEPT_BITS`] bits, or whole when the circuit's noise analysis needs all 64.
#[derive(Clone, Serialize, Deserialize)]
enum OutputCiphertext {
    Rounded(Vec<u32>),
    Whole(LweCiphertextOwned<u64>),
}

impl OutputCiphertext {
    fn new(ct: LweCiphertextOwned<u64>, round: bool) -> Self {
        if !round {
            return Self::Whole(ct);
        }
        let shift = 64 - OUTPUT_KEPT_BITS;
        Self::Rounded(
            ct.as_ref()
                .iter()
                .map(|c| (c.wrapping_add(1u64 << (shift - 1)) >> shift) as u32)
                .collect(),
        )
    }

    fn len(&self) -> usize {
        match self {
            Self::Rounded(c) => c.len(),
            Self::Whole(ct) => ct.lwe_size().0,
        }
    }

    fn expand(&self) -> Result<LweCiphertextOwned<u64>, FheError> {
        if self.len() != lwe_size().0 {
            return Err(FheError::Malformed(
                "an output ciphertext has the wrong size".into(),
            ));
        }
        Ok(match self {
            Self::Rounded(c) => LweCiphertextOwned::from_container(
                c.iter()
                    .map(|&v| u64::from(v) << (64 - OUTPUT_KEPT_BITS))
                    .collect(),
                CiphertextModulus::new_native(),
            ),
            Self::Whole(ct) => ct.clone(),
        })
    }
}

/// One sample's encrypted outputs.
#[derive(Clone, Serialize, Deserialize)]
pub struct EncryptedOutputs {
    cts: Vec<OutputCiphertext>,
}

impl EncryptedOutputs {
    pub fn len(&self) -> usize {
        self.cts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cts.is_empty()
    }
    pub fn to_bytes(&self) -> Result<Vec<u8>, FheError> {
        bincode::serialize(self).map_err(bincode_err)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let s: Self = bincode::options()
            .with_limit(bytes.len() as u64 + 64)
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .deserialize(bytes)
            .map_err(bincode_err)?;
        if s.cts.iter().any(|c| c.len() != lwe_size().0) {
            return Err(FheError::Malformed(
                "an output ciphertext has the wrong size".into(),
            ));
        }
        Ok(s)
    }
}

use bincode::Options;

/// A circuit ready to run: its lookup tables filled once.
pub struct Prepared {
    circuit: Circuit,
    luts: Vec<Option<LookupTableOwned>>,
    /// Bootstrap depth of every op; bootstraps of equal depth run in parallel.
    level: Vec<usize>,
    /// Per output: whether its noise budget allows sending it rounded.
    round_output: Vec<bool>,
}

impl Prepared {
    pub fn new(circuit: Circuit) -> Result<Self, FheError> {
        circuit.validate()?;
        let p = params();
        let mut level = vec![0usize; circuit.ops.len()];
        let mut luts = Vec::with_capacity(circuit.ops.len());
        for (i, op) in circuit.ops.iter().enumerate() {
            level[i] = match op {
                Op::Input { .. } => 0,
                Op::Linear { terms, .. } => {
                    terms.iter().map(|(id, _)| level[*id]).max().unwrap_or(0)
                }
                Op::Narrow { input, .. } => level[*input],
                Op::Lut { input, .. } => level[*input] + 1,
            };
            luts.push(match op {
                Op::Lut {
                    table, p: p_out, ..
                } => {
                    let delta = 1u64 << (64 - p_out);
                    let mask = (1u64 << p_out) - 1;
                    let acc = generate_programmable_bootstrap_glwe_lut(
                        p.polynomial_size,
                        p.glwe_dimension.to_glwe_size(),
                        LUT_SIZE,
                        p.ciphertext_modulus,
                        delta,
                        |x: u64| (table[x as usize % LUT_SIZE] as u64) & mask,
                    );
                    Some(LookupTableOwned {
                        acc,
                        degree: Degree::new(15),
                    })
                }
                _ => None,
            });
        }
        let noise = Params::message_2_carry_2();
        let var = circuit.noise(&noise).var;
        let enc = circuit.encodings();
        let round_output = circuit
            .outputs
            .iter()
            .map(|&o| noise.log2_p_fail_output(var[o], enc[o]) <= noise.max_log2_p_fail)
            .collect();
        Ok(Self {
            circuit,
            luts,
            level,
            round_output,
        })
    }

    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }
}

/// Holds a decompressed server key.
pub struct Evaluator {
    key: tfhe::shortint::ServerKey,
}

/// Limits and hooks of one encrypted run.
pub struct RunControl<'a> {
    pub deadline: Option<Instant>,
    /// Called with (bootstraps done, bootstraps in all).
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
}

impl Evaluator {
    /// Decompresses an evaluation key; `max_bytes` bounds what is parsed.
    pub fn new(key: &EvaluationKey, max_bytes: u64) -> Result<Self, FheError> {
        if key.bytes.len() as u64 > max_bytes {
            return Err(FheError::Malformed(format!(
                "the evaluation key is larger than {max_bytes} bytes"
            )));
        }
        let compressed: tfhe::shortint::CompressedServerKey = bincode::options()
            .with_limit(max_bytes)
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .deserialize(&key.bytes)
            .map_err(bincode_err)?;
        // The key's dimensions decide how much decompression allocates: check them against
        // our parameter set before expanding anything.
        let expected = tfhe::shortint::parameters::AtomicPatternParameters::from(params());
        if !compressed.compressed_ap_server_key.is_conformant(&expected)
            || compressed.message_modulus != params().message_modulus
            || compressed.carry_modulus != params().carry_modulus
        {
            return Err(FheError::Malformed(
                "the evaluation key was made with other parameters".into(),
            ));
        }
        let sk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compressed.decompress()))
            .map_err(|_| FheError::Malformed("the evaluation key does not decompress".into()))?;
        let p = params();
        if sk.message_modulus != p.message_modulus
            || sk.carry_modulus != p.carry_modulus
            || sk.ciphertext_lwe_dimension().0 != lwe_size().0 - 1
        {
            return Err(FheError::Malformed(
                "the evaluation key was made with other parameters".into(),
            ));
        }
        Ok(Self { key: sk })
    }

    /// Evaluates the circuit on a batch of samples, parallel over bootstraps and samples, in the
    /// calling rayon pool. Output: per sample, its encrypted outputs.
    pub fn run(
        &self,
        prepared: &Prepared,
        batch: Vec<EncryptedInputs>,
        ctl: &RunControl<'_>,
    ) -> Result<Vec<EncryptedOutputs>, FheError> {
        let c = &prepared.circuit;
        let enc = c.encodings();
        let n_in = c.n_inputs;
        for s in &batch {
            if s.len() != n_in {
                return Err(FheError::Input(format!(
                    "expected {n_in} encrypted inputs, got {}",
                    s.len()
                )));
            }
        }
        let total = c.pbs_count() * batch.len();
        let done = AtomicUsize::new(0);
        let late = AtomicBool::new(false);
        let p = params();
        // vals[sample][op]
        let mut vals: Vec<Vec<Option<LweCiphertextOwned<u64>>>> = batch
            .into_par_iter()
            .map(|s| {
                let mut v: Vec<Option<LweCiphertextOwned<u64>>> = vec![None; c.ops.len()];
                // Expanding a seeded mask is most of a linear model's work: spread it over
                // the pool too, not only across samples.
                let mut by_feature: Vec<Option<LweCiphertextOwned<u64>>> = s
                    .list
                    .par_decompress_into_lwe_ciphertext_list()
                    .iter()
                    .map(|ct| {
                        Some(LweCiphertextOwned::from_container(
                            ct.as_ref().to_vec(),
                            ct.ciphertext_modulus(),
                        ))
                    })
                    .collect();
                for (i, op) in c.ops.iter().enumerate() {
                    if let Op::Input { feature, .. } = op {
                        v[i] = by_feature[*feature].take();
                    }
                }
                v
            })
            .collect();
        let max_level = prepared.level.iter().copied().max().unwrap_or(0);
        for lvl in 0..=max_level {
            // Leveled operations whose inputs are ready at this depth (cheap).
            vals.par_iter_mut().for_each(|v| {
                for (i, op) in c.ops.iter().enumerate() {
                    if prepared.level[i] != lvl {
                        continue;
                    }
                    match op {
                        Op::Linear { terms, bias, p: po } => {
                            let mut out = LweCiphertextOwned::new(
                                0u64,
                                lwe_size(),
                                CiphertextModulus::new_native(),
                            );
                            for (id, coef) in terms {
                                let m = (*coef as u64).wrapping_shl(enc[*id] - po);
                                if let Some(ct) = &v[*id] {
                                    slice_wrapping_add_scalar_mul_assign(
                                        out.as_mut(),
                                        ct.as_ref(),
                                        m,
                                    );
                                }
                            }
                            let body = out.get_mut_body();
                            *body.data = body.data.wrapping_add(encode(*bias, *po));
                            v[i] = Some(out);
                        }
                        Op::Narrow { input, .. } => v[i] = v[*input].clone(),
                        _ => {}
                    }
                }
            });
            // Bootstraps one level deeper, all samples and ops at once.
            let jobs: Vec<(usize, usize)> = (0..vals.len())
                .flat_map(|s| {
                    c.ops
                        .iter()
                        .enumerate()
                        .filter(move |(i, op)| {
                            matches!(op, Op::Lut { .. }) && prepared.level[*i] == lvl + 1
                        })
                        .map(move |(i, _)| (s, i))
                })
                .collect();
            if jobs.is_empty() {
                continue;
            }
            if ctl.deadline.is_some_and(|d| Instant::now() > d) {
                return Err(FheError::TimedOut);
            }
            let results: Vec<(usize, usize, LweCiphertextOwned<u64>)> = jobs
                .par_iter()
                .filter_map(|&(s, i)| {
                    if late.load(Ordering::Relaxed) {
                        return None;
                    }
                    if ctl.deadline.is_some_and(|d| Instant::now() > d) {
                        late.store(true, Ordering::Relaxed);
                        return None;
                    }
                    let Op::Lut { input, .. } = &c.ops[i] else {
                        return None;
                    };
                    let lut = prepared.luts[i].as_ref()?;
                    let ct = vals[s][*input].clone()?;
                    let mut sct = Ciphertext::new(
                        ct,
                        Degree::new(15),
                        NoiseLevel::NOMINAL,
                        p.message_modulus,
                        p.carry_modulus,
                        AtomicPatternKind::Standard(PBSOrder::KeyswitchBootstrap),
                    );
                    self.key.apply_lookup_table_assign(&mut sct, lut);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    (ctl.progress)(n, total);
                    Some((s, i, sct.ct))
                })
                .collect();
            if late.load(Ordering::Relaxed) {
                return Err(FheError::TimedOut);
            }
            for (s, i, ct) in results {
                vals[s][i] = Some(ct);
            }
        }
        vals.into_iter()
            .map(|v| {
                let cts = c
                    .outputs
                    .iter()
                    .zip(&prepared.round_output)
                    .map(|(&o, &round)| {
                        v[o].clone()
                            .map(|ct| OutputCiphertext::new(ct, round))
                            .ok_or_else(|| FheError::Circuit("an output was not computed".into()))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(EncryptedOutputs { cts })
            })
            .collect()
    }
}
