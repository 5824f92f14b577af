//! Veil's encrypted-inference engine: ONNX models compiled to exact quantised TFHE circuits.
//!
//! Pipeline: `read_onnx` turns the graph into plain maths ([`FloatModel`]); `compile`
//! quantises it on the creator's calibration rows into a [`Circuit`] of leveled operations and
//! programmable bootstraps, proves its noise budget ([`noise`]) and returns a
//! `CompiledModel`; [`Circuit::simulate`] runs that circuit in integers; the [`backend`]
//! runs it on TFHE-rs ciphertexts and decrypts to exactly the simulator's integers.
//!
//! The user's side ([`client`]: the public spec, quantising inputs, reading scores) and the
//! backend need no ONNX reader; the `compiler` feature adds the reader and the compiler (the
//! node's side), so a client-only build does not compile tract.
//!
//! No IO, no threads of its own: the caller supplies the rayon pool the backend runs in.

pub mod backend;
pub mod circuit;
pub mod client;
#[cfg(feature = "compiler")]
pub mod compile;
pub mod model;
pub mod noise;
#[cfg(feature = "compiler")]
mod onnx;

pub use circuit::{Circuit, Op};
pub use client::{ClientSpec, Disclosure, FeatureDisclosure, Fidelity, Quantiser, RangeCheck};
#[cfg(feature = "compiler")]
pub use compile::{Accumulators, CompileOptions, CompiledModel, Outputs, compile, fidelity};
pub use model::{FloatModel, Head};
pub use noise::Params;
#[cfg(feature = "compiler")]
pub use onnx::read_onnx;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FheError {
    /// Not a readable ONNX model.
    #[error("not a valid ONNX model: {0}")]
    Corrupt(String),
    /// A valid model (or option) encrypted inference cannot handle.
    #[error("{0}")]
    Unsupported(String),
    /// Inputs of the wrong shape or value.
    #[error("{0}")]
    Input(String),
    /// A key or ciphertext that does not parse or does not fit the parameters.
    #[error("malformed key or ciphertext: {0}")]
    Malformed(String),
    /// A stored circuit that fails validation.
    #[error("invalid circuit: {0}")]
    Circuit(String),
    #[error("the encrypted computation ran past its time limit")]
    TimedOut,
}
