//! Settings of a calibration run.

use std::path::PathBuf;

use crate::compress::reservoir::DEFAULT_RESERVOIR_CAPACITY;
use crate::compute::kernels::CpuGemm;

/// Settings of a calibration run.
#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// Calibration text (split defaults to `train`). Default `wikitext2`.
    pub dataset: String,
    /// Windows. Default 128.
    pub nsamples: usize,
    /// Window length; `None` = as evaluation (max_position_embeddings, ≤ 2048).
    pub seqlen: Option<usize>,
    /// Seed of the reference sampler. Default 0.
    pub seed: u64,
    /// Windows per forward pass; 0 (the default) takes as many as fill
    /// [`AUTO_BATCH_TOKENS`] tokens, at least one. A pass's temporaries (the
    /// fc1/MLP activations above all) grow with it: at 1024 tokens an OPT-125M
    /// layer's are about 50 MiB, at 8 windows of 2048 tokens 0.8 GiB.
    pub batch: usize,
    /// GPTQ's order: each group of linears that read one input gets its Hessian
    /// only after the groups before it are compressed. Default false.
    pub true_sequential: bool,
    /// Token rows of each linear's input kept as a uniform sample for the
    /// activation-based importance metrics (`outlier`, `mi`); 0 keeps none.
    /// Default 4096.
    pub reservoir: usize,
    /// No progress output.
    pub quiet: bool,
    /// Write each committed layer (and the next layer's inputs) here, and resume
    /// from what is there ([`super::checkpoint`]). Default `None`.
    pub checkpoint: Option<PathBuf>,
    /// The caller's description of its policy, stored in the checkpoint so that a
    /// resume with a different policy is refused. Default empty.
    pub fingerprint: String,
    /// Store each layer's statistics (Hessians, reservoirs; its inputs only
    /// where a sequential calibration can need them) here and reuse them when a
    /// later calibration reaches the same layer after the same compressed
    /// layers ([`super::cache`], `docs/stats-format.md`). Default `None`.
    pub cache: Option<PathBuf>,
    /// Each layer's statistics from the outputs of the already-compressed layers
    /// before it (true, the reference's protocol), or every layer's from the
    /// dense model in one pass (false: a sweep over policies then costs only the
    /// compression and the evaluation). Default true.
    pub sequential: bool,
    /// Host memory limit in bytes for the calibration's large buffers (the
    /// layer inputs and outputs, the Hessians, the OBS work matrices): a buffer
    /// that would pass it fails with an out-of-memory error naming the layer
    /// and linear ([`crate::runtime::memory::OutOfMemory`]) before it is allocated,
    /// instead of the process being killed. Model weights (memory-mapped) are
    /// not counted. Default `None`: no limit.
    pub memory_limit: Option<u64>,
    /// Precision of the CPU GEMMs in the forward passes and Hessians
    /// ([`CpuGemm`]): f32 (default) or bf16 on CPUs with AVX512-BF16.
    pub gemm: CpuGemm,
}

/// Tokens per forward pass when [`CalibOptions::batch`] is 0: enough rows for
/// the GEMMs to run at full rate (OPT-125M-shaped, 16 × 512 on 2 cores: the same
/// time as 2048), few enough that the pass's temporaries stay small next to
/// the calibration activations (peak of the Hessian pass 152 MiB against 197).
pub const AUTO_BATCH_TOKENS: usize = 1024;

impl CalibOptions {
    /// Windows per forward pass for windows of `seqlen` tokens: `batch`, or
    /// with `batch` 0 as many as fill [`AUTO_BATCH_TOKENS`] (at least one).
    pub fn windows_per_pass(&self, seqlen: usize) -> usize {
        match self.batch {
            0 => (AUTO_BATCH_TOKENS / seqlen.max(1)).max(1),
            b => b,
        }
    }
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            dataset: "wikitext2".to_string(),
            nsamples: 128,
            seqlen: None,
            seed: 0,
            batch: 0,
            true_sequential: false,
            reservoir: DEFAULT_RESERVOIR_CAPACITY,
            quiet: false,
            checkpoint: None,
            fingerprint: String::new(),
            cache: None,
            sequential: true,
            memory_limit: None,
            gemm: CpuGemm::F32,
        }
    }
}
