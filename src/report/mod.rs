//! What a compression run did: one record per compressed linear
//! ([`LinearReport`], with its [`ImportanceNote`]), the run's context
//! ([`RunInfo`]), the end-of-run [`summary`], and the fields of
//! `compression.json` that name the program. The file itself is written from a
//! calibration by [`crate::calibrate::compression_report`].
//!
//! The records are plain data: this module depends on nothing else in the
//! crate, so that the compression methods, the calibration and the front ends
//! can all use it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod summary;

pub use summary::{RunIntent, Summary, TARGET_TOLERANCE};

/// What compressing one linear did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearReport {
    /// Decoder layer.
    pub layer: usize,
    /// Linear within the layer (`self_attn.q_proj`, `fc1`, …).
    pub linear: String,
    /// Method name.
    pub method: String,
    /// Output rows.
    pub rows: usize,
    /// Input columns (channels).
    pub columns: usize,
    /// Fraction of weights the mask removed.
    pub sparsity: f64,
    /// For n:m patterns, whether every group satisfies it.
    pub nm_valid: Option<bool>,
    /// Mean bits per input channel, when quantized.
    pub avg_bits: Option<f64>,
    /// Input channels per bit width `(bits, channels)`, ascending; empty when
    /// the linear kept float weights.
    pub bits_histogram: Vec<(u32, usize)>,
    /// Bits of every input channel, run-length encoded as `(bits, run)` pairs
    /// ([`bits_from_rle`] expands it); empty when not quantized.
    #[serde(default)]
    pub bits_rle: Vec<(u32, usize)>,
    /// The method's settings: pattern (mask structure), and for SparseGPT/GPTQ
    /// block size, damping, order and quantizer ([`crate::compress::method::method_settings`]).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// The importance metric that chose this linear's widths and the range of its
    /// (mean-normalised) scores, when a policy recorded one
    /// ([`crate::calibrate::LayerWork::set_importance`]).
    pub importance: Option<ImportanceNote>,
    /// The OBS loss as the reference prints it (SparseGPT/GPTQ only).
    pub loss: Option<f64>,
    /// ‖WX − ŴX‖² / ‖WX‖² on the calibration inputs (through the Hessian).
    pub rel_error: f64,
    /// Input channels never activated by the calibration data.
    pub dead_columns: usize,
    /// The damping that succeeded (SparseGPT/GPTQ), after any retries.
    pub percdamp: Option<f64>,
    /// Seconds spent compressing this linear.
    pub seconds: f64,
}

/// Which importance metric a policy used for a linear, and its score range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportanceNote {
    /// Metric name (`magnitude`, `wanda`, `mi`, …).
    pub metric: String,
    /// Smallest score.
    pub min: f64,
    /// Largest score.
    pub max: f64,
}

/// The `format` field of `compression.json`.
pub const REPORT_FORMAT: &str = "sparselab-compression-report";

/// sparselab's version (`CARGO_PKG_VERSION`).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The git revision this build came from, or `unknown` (built outside a git
/// checkout, or without git).
pub fn git_revision() -> &'static str {
    option_env!("SPARSELAB_GIT_REV").unwrap_or("unknown")
}

/// Run-length encoding of a sequence of bit widths: `(bits, run)` pairs.
pub fn bits_rle(bits: impl IntoIterator<Item = u32>) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = Vec::new();
    for b in bits {
        match out.last_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// Expands [`bits_rle`] back to one width per channel.
pub fn bits_from_rle(rle: &[(u32, usize)]) -> Vec<u32> {
    rle.iter()
        .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
        .collect()
}

/// What the caller knows about a run that the calibration does not: the
/// script, its `--set` values, the command line, the wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunInfo {
    /// The script's text, when a script drove the run.
    pub script: Option<String>,
    /// The script's path.
    pub script_path: Option<String>,
    /// `--set key=value` overrides (any JSON).
    pub set: Option<Value>,
    /// The command line.
    pub command: Option<String>,
    /// Wall time of the whole run, in seconds.
    pub wall_seconds: Option<f64>,
    /// Anything else worth keeping (perplexities, …).
    pub extra: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips() {
        let bits = vec![4, 4, 4, 2, 8, 8, 4];
        let rle = bits_rle(bits.iter().copied());
        assert_eq!(rle, vec![(4, 3), (2, 1), (8, 2), (4, 1)]);
        assert_eq!(bits_from_rle(&rle), bits);
        assert!(bits_rle(std::iter::empty()).is_empty());
    }
}
