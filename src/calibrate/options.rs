//! Settings of a calibration run.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::compress::reservoir::DEFAULT_RESERVOIR_CAPACITY;
use crate::compute::kernels::CpuGemm;
use crate::options::Front;
use crate::runtime::memory::ByteSize;

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
    /// fc1/MLP activations above all) grow with it: at 2048 tokens an OPT-125M
    /// layer's are about 100 MiB, at 8 windows of 2048 tokens 0.8 GiB.
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

/// Tokens per forward pass when [`CalibOptions::batch`] is 0: enough rows
/// for the linears to split them among the threads at full rate
/// (`kernels::gemm_xwt`, 1024 rows per thread on 2 threads), few enough that
/// the pass's temporaries stay small next to the calibration activations.
/// OPT-125M-shaped, 16 × 512, 50% + 4 bits on the 2-vCPU Xeon (2026-12-06,
/// `prune_throughput`): forward passes 7.19–7.23 s against 8.26–8.30 s at 1024
/// tokens, the whole run 18.3–18.6 s against 19.4–19.6 s, peak RSS 245 MiB
/// against 225.
pub const AUTO_BATCH_TOKENS: usize = 2048;

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

crate::named_option_value!(
    CpuGemm,
    "a GEMM precision (\"f32\" or \"bf16\")",
    "f32|bf16"
);

crate::declare_options! {
    /// The options of a calibration: the options map of `calibrate(model,
    /// dataset, #{…})` and the calibration flags of `sparselab prune`.
    pub struct CalibrateSettings {
        /// Calibration windows, sampled as the reference samples them.
        nsamples: usize = CalibOptions::default().nsamples,
        /// Window length (default: the model's max_position_embeddings, at
        /// most 2048).
        seqlen: usize,
        /// Seed of the window sampler.
        seed: u64 = 0,
        /// Windows per forward pass; 0 takes as many as fill 2048 tokens (at
        /// least one).
        batch: usize = 0,
        /// GPTQ's order: each group of linears that read one input gets its
        /// Hessian only after the groups before it are compressed.
        true_sequential: bool = false,
        /// Token rows of each linear's input kept as a uniform sample for the
        /// activation-based importance metrics (`outlier`, `mi`); 0 keeps none.
        reservoir: usize = DEFAULT_RESERVOIR_CAPACITY,
        /// A directory where every committed layer is written, and from which
        /// an interrupted run with the same settings resumes.
        checkpoint: PathBuf,
        /// The policy's name, stored with `checkpoint` so that a resume under a
        /// different policy is refused (in a script, default: the script's file
        /// name). Only with `checkpoint`.
        fingerprint: String,
        /// A directory where each layer's statistics (Hessians, reservoirs and,
        /// where a sequential run can need them, inputs) are stored and reused
        /// by a later calibration that reaches the layer after the same
        /// compressed layers (docs/stats-format.md).
        cache: PathBuf,
        /// Each layer's statistics from the outputs of the compressed layers
        /// before it (the reference's protocol); false takes them all from the
        /// dense model, so that a sweep with a `cache` computes them once.
        sequential: bool = true,
        /// Host memory limit for the large buffers (bytes, or a size such as
        /// "8G"): a buffer that would pass it is an out-of-memory error naming
        /// the layer and linear, before it is allocated.
        memory_limit: ByteSize,
        /// Precision of the CPU GEMMs in the forward passes and Hessians:
        /// "f32", or "bf16" (bf16 inputs, f32 accumulation) on CPUs with
        /// AVX512-BF16.
        gemm: CpuGemm = CpuGemm::F32,
        /// No progress output (in a script, the default is the engine's
        /// `--quiet`).
        @short 'q' quiet: bool = false,
    }
}

impl CalibrateSettings {
    /// The calibration of `dataset` with these settings; `quiet` and
    /// `fingerprint` where the settings leave them open. Combinations that
    /// cannot act are refused, spelt for `front`.
    pub fn calib_options(
        &self,
        dataset: &str,
        quiet: bool,
        fingerprint: String,
        front: Front,
    ) -> Result<CalibOptions> {
        if self.fingerprint.is_some() && self.checkpoint.is_none() {
            bail!(
                "{} names the policy stored in a checkpoint, and no {} was given: add {} \
                 or drop {}",
                front.name("fingerprint"),
                front.name("checkpoint"),
                front.name("checkpoint"),
                front.name("fingerprint")
            );
        }
        Ok(CalibOptions {
            dataset: dataset.to_string(),
            nsamples: self.nsamples(),
            seqlen: self.seqlen,
            seed: self.seed(),
            batch: self.batch(),
            true_sequential: self.true_sequential(),
            reservoir: self.reservoir(),
            quiet: self.quiet.unwrap_or(quiet),
            checkpoint: self.checkpoint.clone(),
            fingerprint: self.fingerprint.clone().unwrap_or(fingerprint),
            cache: self.cache.clone(),
            sequential: self.sequential(),
            memory_limit: self.memory_limit.map(|m| m.0),
            gemm: self.gemm(),
        })
    }

    /// Every setting of `opts` as given (what `compression.json` records):
    /// `seqlen` and `batch` as the run resolved them.
    pub fn of(opts: &CalibOptions, seqlen: usize) -> Self {
        Self {
            nsamples: Some(opts.nsamples),
            seqlen: Some(seqlen),
            seed: Some(opts.seed),
            batch: Some(opts.windows_per_pass(seqlen)),
            true_sequential: Some(opts.true_sequential),
            reservoir: Some(opts.reservoir),
            checkpoint: opts.checkpoint.clone(),
            fingerprint: (!opts.fingerprint.is_empty()).then(|| opts.fingerprint.clone()),
            cache: opts.cache.clone(),
            sequential: Some(opts.sequential),
            memory_limit: opts.memory_limit.map(ByteSize),
            gemm: Some(opts.gemm),
            quiet: Some(opts.quiet),
        }
    }
}
