//! The numerical core of compression: Hessians, the OBS sweep (SparseGPT/GPTQ),
//! the min-max quantizer, magnitude and Wanda pruning, error statistics, and
//! mixed precision: activation reservoirs, channel importance and bit
//! allocation; the method dispatch ([`Method`]) with its damping retry.
//!
//! Everything here works on one weight matrix `W` (`[rows, columns]`, as
//! `nn.Linear.weight` stores it) and, where needed, the Hessian of its inputs
//! (`[columns, columns]`). It knows nothing about models: the caller hooks the
//! linears, feeds [`HessianAccumulator`] and hands the result to
//! [`sparsegpt::fasterprune`], [`magnitude::magnitude_prune`] or
//! [`wanda::wanda_prune`].
//!
//! The numerics follow the reference Python implementations (IST-DASLab
//! `sparsegpt`/`gptq`, locuslab `wanda`) step by step, in f32 as they run, so that
//! figures are comparable with published ones; `tests/reference/sparsegpt_ref.py`
//! is an independent numpy port that the integration tests compare against.

pub mod allocation;
pub mod channel_error;
pub mod hessian;
pub mod importance;
pub mod magnitude;
pub mod method;
pub mod owl;
pub mod pattern;
pub mod quant;
pub mod reservoir;
pub mod rules;
pub mod sparsegpt;
pub mod stats;
pub mod wanda;

mod matrix;

pub use allocation::{
    allocate_bits, group_channels, split_per_linear, AllocMethod, AllocOptions, GroupMethod,
};
pub use channel_error::{
    allocate_min_error, channel_errors, ChannelErrorOptions, ErrorCurves, ErrorWeight,
    MinErrorAllocation,
};
pub use hessian::HessianAccumulator;
pub use importance::{
    importance_note, normalize_mean1, score_importance, score_range, ImportanceOptions, Metric,
};
pub use magnitude::magnitude_prune;
pub use method::{compress_weight, Method};
pub use pattern::SparsityPattern;
pub use quant::{BitWidths, QuantGrid, QuantizerConfig};
pub use reservoir::{ActivationReservoir, DEFAULT_RESERVOIR_CAPACITY};
pub use sparsegpt::{fasterprune, NotPositiveDefinite, QuantOptions, SparseGptOptions};
pub use stats::relative_output_error;
pub use wanda::wanda_prune;

use candle_core::Tensor;

/// What a compression call did to one weight matrix.
#[derive(Debug, Clone)]
pub struct CompressStats {
    /// Fraction of the weights that the pruning mask removed (0 when nothing was
    /// pruned). Quantization may round further weights to zero; those are not
    /// counted here.
    pub sparsity: f64,
    /// For an n:m pattern, whether every group of `m` consecutive columns in every
    /// row of the returned weight holds at most `m − n` non-zeros; `None` when no
    /// n:m pattern was requested.
    pub nm_valid: Option<bool>,
    /// Mean bit width over the input columns when the weight was quantized;
    /// `None` when it kept its floating-point values.
    pub avg_bits: Option<f64>,
    /// The OBS loss as the reference reports it (`torch.sum(Losses)`: half the
    /// sum over rows and columns of `(w − q)² / d²`); `None` for methods without
    /// a Hessian-based update (magnitude, Wanda).
    pub loss: Option<f64>,
    /// Columns whose Hessian diagonal was zero (never activated); their weights
    /// are set to zero as the reference does.
    pub dead_columns: usize,
    /// Wall-clock seconds spent in the call.
    pub seconds: f64,
    /// The pruning mask, `u8` `[rows, columns]` on the weight's device, 1 where a
    /// weight was pruned.
    pub mask: Tensor,
    /// The quantization grid (scales and zeros per row, group and width), when
    /// the weight was quantized.
    pub grid: Option<QuantGrid>,
}

/// A compressed weight and what was done to it.
#[derive(Debug, Clone)]
pub struct CompressResult {
    /// The new weight, with the input's shape, dtype and device.
    pub weight: Tensor,
    /// Statistics of the call.
    pub stats: CompressStats,
}
