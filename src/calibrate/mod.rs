//! Sequential calibration: the layer-by-layer loop of SparseGPT/GPTQ.
//!
//! The inputs of decoder layer 0 are captured for every calibration window. Then,
//! for each layer in order, the layer runs over all windows while each linear's
//! input Hessian accumulates; the caller compresses the linears it chooses
//! ([`LayerWork::compress`]); and the compressed layer runs again to produce the
//! inputs of the next layer ([`Calibration::commit`]). Only one decoder layer is
//! resident on the device at a time, and each layer's Hessians come from the
//! outputs of the already-compressed layers before it.
//!
//! With `sequential: false` every layer's statistics come from the dense model
//! instead (the next layer's inputs are the dense layer's outputs), and with a
//! `cache` directory each layer's statistics (and, where a sequential
//! calibration can need them, its inputs) are stored and reused by a later
//! calibration whose prefix of compressed layers is the same ([`cache`]). Long loops poll [`crate::runtime::interrupt`].

pub mod cache;
mod calibration;
pub mod checkpoint;
mod commit;
mod json;
mod layer;
mod options;
mod policy;
mod stats;

pub use calibration::{CacheCounts, Calibration, Timings};
pub use json::{compression_report, run_report, write_report};
pub use layer::LayerWork;
pub use options::{CalibOptions, CalibrateSettings, AUTO_BATCH_TOKENS};
pub use policy::{compress_uniform, score_dense, uniform_policy, LayerFilter, LinearScores};

use candle_core::Tensor;

/// Bytes of a list of tensors.
fn tensors_bytes(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum()
}
