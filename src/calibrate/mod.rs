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
//! `cache` directory each layer's statistics and inputs are stored and reused
//! by a later calibration whose prefix of compressed layers is the same
//! ([`crate::calib_cache`]). Long loops poll [`crate::runtime::interrupt`].

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, TensorId};
use serde::{Deserialize, Serialize};

use crate::calib_cache::{chain_next, layer_weights_hash, StatCache};
use crate::checkpoint::{Checkpoint, Manifest};
use crate::compute::kernels::CpuGemm;
use crate::model::packed::BitMask;
use crate::model::CompressedInfo;
use crate::runtime::interrupt;

use crate::compress::importance::{score_importance, ImportanceOptions};
use crate::compress::reservoir::{ActivationReservoir, DEFAULT_RESERVOIR_CAPACITY};
use crate::compress::{
    fasterprune, magnitude_prune, relative_output_error, wanda_prune, BitWidths, CompressResult,
    HessianAccumulator, NotPositiveDefinite, SparseGptOptions, SparsityPattern,
};
use crate::data::datasets::{calibration_windows, DatasetSpec, Split};
use crate::eval::default_seqlen;
use crate::model::layers::StopForward;
use crate::model::{DecoderLayer, Model};
use crate::runtime::memory::{locate, MemoryLimit, OutOfMemory, Stage};
use crate::runtime::progress::Progress;

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
    /// from what is there ([`crate::checkpoint`]). Default `None`.
    pub checkpoint: Option<PathBuf>,
    /// The caller's description of its policy, stored in the checkpoint so that a
    /// resume with a different policy is refused. Default empty.
    pub fingerprint: String,
    /// Store each layer's statistics (Hessians, reservoirs) and inputs here and
    /// reuse them when a later calibration reaches the same layer after the same
    /// compressed layers ([`crate::calib_cache`]). Default `None`.
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

/// How to compress one linear.
#[derive(Debug, Clone)]
pub enum Method {
    /// SparseGPT / GPTQ (pruning, quantization or both) with OBS updates.
    SparseGpt(SparseGptOptions),
    /// Smallest |W| per linear (or n:m).
    Magnitude(SparsityPattern),
    /// Wanda: |W_ij|·‖X_j‖ compared within each output row (or n:m).
    Wanda(SparsityPattern),
}

impl Method {
    /// `sparsegpt`, `gptq` (quantization only), `magnitude` or `wanda`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::SparseGpt(o) if !o.pattern.prunes() => "gptq",
            Method::SparseGpt(_) => "sparsegpt",
            Method::Magnitude(_) => "magnitude",
            Method::Wanda(_) => "wanda",
        }
    }
}

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
    /// ([`crate::report::bits_from_rle`] expands it); empty when not quantized.
    #[serde(default)]
    pub bits_rle: Vec<(u32, usize)>,
    /// The method's settings: pattern (mask structure), and for SparseGPT/GPTQ
    /// block size, damping, order and quantizer ([`crate::report::method_settings`]).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// The importance metric that chose this linear's widths and the range of its
    /// (mean-normalised) scores, when a policy recorded one
    /// ([`LayerWork::set_importance`]).
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

/// Where calibration time went, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Decoder-layer forward passes (Hessian passes and the passes that produce
    /// the next layer's inputs), Hessian updates excluded.
    pub forward: f64,
    /// Hessian accumulation (XᵀX updates).
    pub hessian: f64,
    /// Compression of the linears (OBS sweeps, masks, quantization).
    pub compress: f64,
    /// Wall time of each committed layer, from its first Hessian pass to its commit.
    pub per_layer: Vec<f64>,
}

impl Timings {
    fn add(&mut self, other: &Timings) {
        self.forward += other.forward;
        self.hessian += other.hessian;
        self.compress += other.compress;
    }
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

/// How a calibration's layers got their statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    /// Layers whose statistics were computed by a pass over the windows.
    pub computed: usize,
    /// Layers whose statistics were read from the cache.
    pub reused: usize,
    /// Commits that did not run the layer over the windows, because the next
    /// layer's statistics and inputs were in the cache (or it was the last layer).
    pub forwards_skipped: usize,
}

/// The state of a calibration: the inputs of the next decoder layer to process.
pub struct Calibration {
    /// The next layer's inputs; empty when they are only in the cache entry
    /// `inputs_at` (read when needed).
    inputs: Vec<Tensor>,
    inputs_at: Option<PathBuf>,
    cache: Option<StatCache>,
    /// The hash chain over the layers before `next` ([`crate::calib_cache`]).
    chain: u64,
    counts: Cell<CacheCounts>,
    next: usize,
    seqlen: usize,
    windows: usize,
    /// The settings it runs with.
    pub opts: CalibOptions,
    /// Reports of every linear compressed so far, in order.
    pub reports: Vec<LinearReport>,
    /// Where the time went.
    pub timings: Timings,
    /// Layers restored from the checkpoint rather than computed by this run.
    pub resumed_layers: usize,
    checkpoint: Option<Checkpoint>,
    /// Compressed weights restored from the checkpoint, not yet in the model.
    pending: Vec<(String, Tensor, CompressedInfo)>,
}

impl Calibration {
    /// Samples the calibration windows (bit-identical to the reference sampler)
    /// and runs them through the embedding: the inputs of decoder layer 0.
    pub fn new(model: &Model, opts: CalibOptions) -> Result<Self> {
        if opts.nsamples == 0 {
            bail!("nsamples must be at least 1");
        }
        let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
        if seqlen > model.config.max_position_embeddings() {
            bail!(
                "calibration seqlen {seqlen} exceeds the model's max_position_embeddings {}",
                model.config.max_position_embeddings()
            );
        }
        let spec = DatasetSpec::parse(&opts.dataset, Split::Train)?;
        let windows = calibration_windows(
            &spec,
            model.tokenizer()?,
            model.named_bos(),
            opts.nsamples,
            seqlen,
            opts.seed,
        )
        .with_context(|| format!("sampling calibration windows from {}", opts.dataset))?;
        Self::from_windows(model, windows, opts)
    }

    /// Starts from given token windows (all of one length) instead of sampling
    /// them from `opts.dataset`.
    pub fn from_windows(model: &Model, windows: Vec<Vec<u32>>, opts: CalibOptions) -> Result<Self> {
        let seqlen = windows.first().map(Vec::len).unwrap_or(0);
        if windows.is_empty() || seqlen == 0 || windows.iter().any(|w| w.len() != seqlen) {
            bail!("calibration windows must be non-empty and of one length");
        }
        opts.gemm.check(model.device(), model.dtype())?;
        let vocab = model.config.vocab_size() as u32;
        if let Some(bad) = windows.iter().flatten().find(|&&t| t >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        if opts.cache.is_some() && opts.true_sequential {
            bail!(
                "a calibration cache does not support true_sequential (its statistics \
                 depend on the compression inside each layer); drop one of the two"
            );
        }
        if !opts.sequential && opts.true_sequential {
            bail!("true_sequential needs sequential calibration (sequential: false takes every layer's statistics from the dense model)");
        }
        let (checkpoint, restored) = match &opts.checkpoint {
            Some(dir) => {
                let manifest = Manifest::new(model, &opts, &windows)?;
                let (c, r) = Checkpoint::open(dir, manifest, model)?;
                (Some(c), r)
            }
            None => (None, None),
        };
        let (cache, chain) = match &opts.cache {
            Some(dir) => {
                let manifest = Manifest::new(model, &opts, &windows)?;
                let (c, chain) = StatCache::open(dir, &manifest, model)?;
                (Some(c), chain)
            }
            None => (None, 0),
        };
        if cache.is_some() && restored.is_some() {
            bail!("a calibration resumed from a checkpoint cannot use a statistics cache (the checkpoint holds no prefix hashes); use one of the two");
        }
        let mut me = Self {
            inputs: Vec::new(),
            inputs_at: None,
            cache,
            chain,
            counts: Cell::new(CacheCounts::default()),
            next: 0,
            seqlen,
            windows: windows.len(),
            opts,
            reports: Vec::new(),
            timings: Timings::default(),
            resumed_layers: 0,
            checkpoint,
            pending: Vec::new(),
        };
        if let Some(r) = restored {
            me.inputs = r.inputs;
            me.next = r.completed;
            me.resumed_layers = r.completed;
            me.reports = r.reports;
            me.timings.per_layer = r.per_layer;
            me.pending = r.weights;
            if !me.opts.quiet {
                eprintln!(
                    "resuming from the checkpoint in {}: layers 0..{} are done",
                    me.opts
                        .checkpoint
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    r.completed
                );
            }
            return Ok(me);
        }
        let batch = me.opts.windows_per_pass(seqlen);
        let limit = MemoryLimit(me.opts.memory_limit);
        let embed = |me: &mut Self| -> Result<()> {
            let bytes = (windows.len() * seqlen * model.hidden_size()) as u64
                * model.dtype().size_in_bytes() as u64;
            limit.check(|| "the inputs of layer 0".to_string(), 0, bytes)?;
            for chunk in windows.chunks(batch) {
                let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
                let ids = Tensor::from_vec(flat, (chunk.len(), seqlen), &Device::Cpu)?;
                me.inputs.push(model.embed_rows(&ids)?);
            }
            Ok(())
        };
        embed(&mut me).map_err(|e| locate(e, model.device(), Stage::Embedding, None, None))?;
        // The layers need no embeddings; the next evaluation loads them again.
        model.release_outer();
        Ok(me)
    }

    /// Puts the compressed weights restored from the checkpoint into the model
    /// (done by [`run`](Self::run); needed before [`next_layer`](Self::next_layer)
    /// when driving the layers by hand after a resume).
    pub fn restore(&mut self, model: &mut Model) -> Result<()> {
        for (name, w, info) in self.pending.drain(..) {
            model
                .weights_mut()
                .set_compressed(&name, w, info)
                .with_context(|| format!("restoring {name} from the checkpoint"))?;
        }
        Ok(())
    }

    /// Window length.
    pub fn seqlen(&self) -> usize {
        self.seqlen
    }
    /// Number of calibration windows.
    pub fn windows(&self) -> usize {
        self.windows
    }
    /// The decoder layer [`next_layer`](Self::next_layer) will yield.
    pub fn next_index(&self) -> usize {
        self.next
    }
    /// How many layers' statistics were computed, how many came from the cache,
    /// and how many forward passes a cache made unnecessary.
    pub fn cache_counts(&self) -> CacheCounts {
        self.counts.get()
    }
    fn count(&self, f: impl FnOnce(&mut CacheCounts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }
    /// The next layer's inputs, read from the cache if they are only there.
    fn current_inputs(&self, device: &Device) -> Result<Vec<Tensor>> {
        if !self.inputs.is_empty() {
            return Ok(self.inputs.clone());
        }
        match &self.inputs_at {
            Some(dir) => StatCache::inputs(dir, device),
            None => bail!("layer {} has no inputs (an earlier failure)", self.next),
        }
    }

    /// Brings the next decoder layer onto the device with its Hessians (all of
    /// them now, or group by group on demand under `true_sequential`); `None`
    /// after the last layer.
    pub fn next_layer(&self, model: &Model) -> Result<Option<LayerWork>> {
        if !self.pending.is_empty() {
            bail!(
                "the checkpoint's compressed layers 0..{} are not in the model yet: \
                 call Calibration::restore(&mut model) first",
                self.next
            );
        }
        if self.next >= model.num_layers() {
            return Ok(None);
        }
        let index = self.next;
        interrupt::check()?;
        let mut layer = model.layer(index)?;
        layer.set_cpu_gemm(self.opts.gemm);
        let mut cached = None;
        let mut cache_key = None;
        let mut dense_hash = None;
        if let Some(cache) = &self.cache {
            // Hashed afresh (not remembered from the last commit): the model
            // may have changed in between, and a stale hash would be a stale hit.
            let h = layer_weights_hash(&layer)?;
            dense_hash = Some(h);
            let key = cache.key(index, self.chain, h);
            cached = cache
                .load(&key, model.device())
                .with_context(|| format!("reading layer {index} from the calibration cache"))?;
            cache_key = Some(key);
        }
        let inputs = match (&cached, self.inputs.is_empty()) {
            // A hit needs the inputs only if a commit must run the layer.
            (Some(_), true) => Vec::new(),
            _ => self.current_inputs(model.device())?,
        };
        let mut work = LayerWork {
            index,
            layer,
            inputs,
            inputs_at: cached.as_ref().map(|c| c.dir.clone()),
            dense_hash,
            dense_outputs: None,
            sequential: self.opts.sequential,
            groups: model.sequential_groups(),
            accs: Vec::new(),
            reservoirs: Vec::new(),
            reservoir_capacity: self.opts.reservoir,
            seed: self.opts.seed,
            owner: HashMap::new(),
            accumulated: Vec::new(),
            compressed: Vec::new(),
            infos: HashMap::new(),
            importance: HashMap::new(),
            reports: Vec::new(),
            timings: Timings::default(),
            started: Instant::now(),
            limit: MemoryLimit(self.opts.memory_limit),
            device: model.device().clone(),
            gemm: self.opts.gemm,
        };
        work.accumulated = vec![false; work.groups.len()];
        if let Some(c) = cached {
            for (name, idx) in c.owner {
                let name = work.static_name(&name)?;
                work.owner.insert(name, idx);
            }
            work.accs = c.accs;
            work.reservoirs = c.reservoirs;
            work.accumulated.iter_mut().for_each(|a| *a = true);
            self.count(|c| c.reused += 1);
            return Ok(Some(work));
        }
        if !self.opts.true_sequential {
            // An out-of-memory error already names the stage and layer.
            work.accumulate(None).map_err(|e| {
                if e.is::<OutOfMemory>() {
                    e
                } else {
                    e.context(format!("collecting the Hessians of layer {index}"))
                }
            })?;
        }
        self.count(|c| c.computed += 1);
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            let owner: BTreeMap<String, usize> = work
                .owner
                .iter()
                .map(|(n, i)| (n.to_string(), *i))
                .collect();
            cache.store(key, &work.accs, &work.reservoirs, owner, &work.inputs)?;
        }
        Ok(Some(work))
    }

    /// Stores the layer's compressed weights in the model and runs the compressed
    /// layer over the windows: its outputs become the next layer's inputs.
    pub fn commit(&mut self, model: &mut Model, mut work: LayerWork) -> Result<()> {
        if work.index != self.next {
            bail!(
                "layer {} committed out of order: the calibration is at layer {}",
                work.index,
                self.next
            );
        }
        if !self.pending.is_empty() {
            bail!("call Calibration::restore(&mut model) before committing layers");
        }
        interrupt::check()?;
        // The statistics are spent (a cache entry already holds them): free them
        // before the forward pass allocates the next layer's inputs.
        work.accs = Vec::new();
        work.reservoirs = Vec::new();
        // The forward pass's temporaries come from the worker threads' heaps;
        // the sweeps' buffers freed into this one would otherwise stay resident.
        crate::runtime::alloc::trim();
        let k = work.index;
        let last = k + 1 == model.num_layers();
        let start = Instant::now();
        // The chain link after this layer, and whether the cache already holds
        // the next layer's statistics and inputs after exactly this prefix.
        let mut next_chain = None;
        let mut next_entry = None;
        if let Some(cache) = &self.cache {
            let h = match (self.opts.sequential, work.dense_hash) {
                (false, Some(h)) => h,
                _ => layer_weights_hash(&work.layer)?,
            };
            let chain = chain_next(self.chain, k, h);
            next_chain = Some(chain);
            if !last {
                let nh = layer_weights_hash(&model.layer(k + 1)?)?;
                next_entry = cache.find(&cache.key(k + 1, chain, nh));
            }
        }
        // Nothing reads the inputs after the last layer, nor inputs the cache
        // holds (unless a checkpoint must store them).
        let need_outputs = !last && (next_entry.is_none() || self.checkpoint.is_some());
        let outputs = if !need_outputs {
            None
        } else if let Some(o) = work.dense_outputs.take() {
            Some(o)
        } else {
            let inputs = match (&work.inputs_at, work.inputs.is_empty()) {
                (Some(dir), true) => StatCache::inputs(dir, model.device())?,
                _ => std::mem::take(&mut work.inputs),
            };
            let dense;
            let layer = if self.opts.sequential {
                &work.layer
            } else {
                // Layer k is still dense in the model: its weights go in below.
                dense = model.layer(k)?;
                &dense
            };
            let forward = || -> Result<Vec<Tensor>> {
                // The outputs are as large as the inputs, and both are held until the end.
                let in_use = tensors_bytes(&inputs) + work.accs_bytes();
                work.limit.check(
                    || format!("the outputs of layer {k}"),
                    in_use,
                    tensors_bytes(&inputs),
                )?;
                let mut outputs = Vec::with_capacity(inputs.len());
                for x in &inputs {
                    interrupt::check()?;
                    outputs.push(layer.forward(x)?);
                }
                // Device work is asynchronous: wait here, inside the mapping, so the
                // time is the forward's and a failure surfacing now names this layer.
                if let Some(x) = outputs.first() {
                    x.device().synchronize()?;
                }
                Ok(outputs)
            };
            Some(forward().map_err(|e| locate(e, &work.device, Stage::Forward, Some(k), None))?)
        };
        // Only now, with every fallible step behind, does the model change.
        let mut saved = Vec::new();
        for (linear, weight) in &work.compressed {
            let name = model.linear_weight_name(work.index, linear);
            match work.infos.get(linear) {
                Some(info) => {
                    model
                        .weights_mut()
                        .set_compressed(&name, weight.clone(), info.clone())?;
                    if self.checkpoint.is_some() {
                        saved.push((name, weight.clone(), info.clone()));
                    }
                }
                None => model.weights_mut().set(&name, weight.clone())?,
            }
        }
        match outputs {
            Some(o) => {
                self.inputs = o;
                self.inputs_at = None;
            }
            None => {
                self.inputs = Vec::new();
                self.inputs_at = next_entry;
                self.count(|c| c.forwards_skipped += 1);
            }
        }
        if let Some(c) = next_chain {
            self.chain = c;
        }
        self.timings.forward += start.elapsed().as_secs_f64();
        self.timings.add(&work.timings);
        let seconds = work.started.elapsed().as_secs_f64();
        if let Some(c) = &mut self.checkpoint {
            let last = work.index + 1 == model.num_layers();
            c.save_layer(
                work.index,
                &saved,
                &work.reports,
                seconds,
                (!last).then_some(self.inputs.as_slice()),
            )
            .with_context(|| {
                format!(
                    "writing layer {} to the checkpoint in {}",
                    work.index,
                    c.dir().display()
                )
            })?;
        }
        self.timings.per_layer.push(seconds);
        self.reports.extend(work.reports);
        self.next += 1;
        // The layer's temporaries are free now: give the pages back.
        crate::runtime::alloc::trim();
        Ok(())
    }

    /// Runs the remaining layers, calling `policy` on each before committing it.
    pub fn run(
        &mut self,
        model: &mut Model,
        mut policy: impl FnMut(&mut LayerWork) -> Result<()>,
    ) -> Result<()> {
        self.restore(model)?;
        let remaining = model.num_layers().saturating_sub(self.next);
        let mut progress = Progress::new("calibrate", remaining as u64, self.opts.quiet);
        while let Some(mut work) = self.next_layer(model)? {
            let index = work.index;
            let device = work.device.clone();
            policy(&mut work).map_err(|e| {
                match locate(e, &device, Stage::Compressing, Some(index), None) {
                    oom if oom.is::<OutOfMemory>() => oom,
                    e => e.context(format!("compressing layer {index}")),
                }
            })?;
            self.commit(model, work)?;
            progress.inc(1);
        }
        progress.finish();
        Ok(())
    }
}

/// One decoder layer during calibration: its resident weights, the Hessians of
/// its linears, and what has been compressed so far.
pub struct LayerWork {
    /// Decoder layer index.
    pub index: usize,
    layer: DecoderLayer,
    /// The layer's inputs; empty when its statistics came from the cache entry
    /// `inputs_at` (read only if a commit has to run the layer).
    inputs: Vec<Tensor>,
    inputs_at: Option<PathBuf>,
    /// Hash of the layer's dense linear weights (when a cache is in use).
    dense_hash: Option<u64>,
    /// The dense layer's outputs, kept by the statistics pass of a
    /// `sequential: false` calibration: the next layer's inputs.
    dense_outputs: Option<Vec<Tensor>>,
    sequential: bool,
    groups: Vec<Vec<&'static str>>,
    /// One accumulator per distinct linear input (q/k/v share one, as do gate/up).
    accs: Vec<HessianAccumulator>,
    /// A sample of the same inputs, parallel to `accs` (empty when disabled).
    reservoirs: Vec<ActivationReservoir>,
    reservoir_capacity: usize,
    seed: u64,
    owner: HashMap<&'static str, usize>,
    accumulated: Vec<bool>,
    compressed: Vec<(&'static str, Tensor)>,
    /// Mask and quantization grid of each compressed linear.
    infos: HashMap<&'static str, CompressedInfo>,
    importance: HashMap<&'static str, ImportanceNote>,
    timings: Timings,
    started: Instant,
    /// The host memory limit its large buffers are checked against.
    limit: MemoryLimit,
    /// Where the layer computes (named in out-of-memory errors).
    device: Device,
    /// Precision of the CPU's Hessian GEMMs.
    gemm: CpuGemm,
    /// Reports of the linears compressed in this layer.
    pub reports: Vec<LinearReport>,
}

impl LayerWork {
    /// Names of the layer's linears, in the reference's order.
    pub fn linears(&self) -> Vec<&'static str> {
        self.layer.linears().iter().map(|l| l.name).collect()
    }

    /// The current weight of a linear (compressed if it has been).
    pub fn weight(&mut self, linear: &str) -> Result<Tensor> {
        Ok(self.layer.linear_mut(linear)?.weight().clone())
    }

    /// The input Hessian of a linear (accumulated now if `true_sequential`
    /// deferred it).
    pub fn hessian(&mut self, linear: &str) -> Result<&HessianAccumulator> {
        let name = self.static_name(linear)?;
        let group = self
            .groups
            .iter()
            .position(|g| g.contains(&name))
            .with_context(|| format!("linear {linear} is in no sequential group"))?;
        if !self.accumulated[group] {
            self.accumulate(Some(group))?;
        }
        let idx = self.owner[name];
        Ok(&self.accs[idx])
    }

    fn static_name(&self, linear: &str) -> Result<&'static str> {
        let names = self.linears();
        names
            .iter()
            .find(|n| **n == linear)
            .copied()
            .with_context(|| {
                format!(
                    "no linear `{linear}` in layer {}; linears: {}",
                    self.index,
                    names.join(", ")
                )
            })
    }

    /// Runs the layer over every window, accumulating the Hessians of one
    /// sequential group (`Some`) or of every linear (`None`).
    fn accumulate(&mut self, group: Option<usize>) -> Result<()> {
        let (device, index) = (self.device.clone(), self.index);
        self.accumulate_inner(group)
            .map_err(|e| locate(e, &device, Stage::Hessians, Some(index), None))
    }

    /// Bytes held by the layer's Hessians and input samples.
    fn accs_bytes(&self) -> u64 {
        let h: u64 = self.accs.iter().map(|a| hessian_bytes(a.columns())).sum();
        let r: u64 = self
            .reservoirs
            .iter()
            .map(|r| (r.capacity() * r.columns() * std::mem::size_of::<f32>()) as u64)
            .sum();
        h + r
    }

    fn accumulate_inner(&mut self, group: Option<usize>) -> Result<()> {
        let inputs_bytes = tensors_bytes(&self.inputs);
        let mut accs_bytes = self.accs_bytes();
        let limit = self.limit;
        let wanted: Vec<&'static str> = match group {
            Some(g) => self.groups[g].clone(),
            None => self.groups.iter().flatten().copied().collect(),
        };
        let device = self.inputs[0].device().clone();
        let accs = &mut self.accs;
        let reservoirs = &mut self.reservoirs;
        let (capacity, seed, layer) = (self.reservoir_capacity, self.seed, self.index as u64);
        let owner = &mut self.owner;
        let gemm = self.gemm;
        let start = Instant::now();
        let mut hessian_seconds = 0f64;
        // Under `sequential: false` the same pass runs to the end: its outputs
        // are the next layer's (dense) inputs.
        let keep_outputs = !self.sequential && group.is_none();
        let mut outputs = Vec::new();
        for x in &self.inputs {
            interrupt::check()?;
            // Linears fed the very same tensor share one accumulator, fed once.
            let mut last: Option<(TensorId, usize)> = None;
            let mut seen = 0;
            let mut hook = |name: &str, inp: &Tensor| -> Result<()> {
                if seen == wanted.len() {
                    if keep_outputs {
                        return Ok(());
                    }
                    // Every wanted input is in: what the layer computes next is unread.
                    return Err(StopForward.into());
                }
                let Some(name) = wanted.iter().find(|n| **n == name).copied() else {
                    return Ok(());
                };
                seen += 1;
                let idx = match (owner.get(name), last) {
                    (Some(&i), _) => i,
                    (None, Some((id, i))) if id == inp.id() => {
                        owner.insert(name, i);
                        i
                    }
                    (None, _) => {
                        let columns = inp.dim(inp.rank() - 1)?;
                        let bytes = hessian_bytes(columns)
                            + (capacity * columns * std::mem::size_of::<f32>()) as u64;
                        limit.check(
                            || {
                                let sample = if capacity > 0 {
                                    " and input sample"
                                } else {
                                    ""
                                };
                                format!("the Hessian{sample} of {name} ({columns} columns)")
                            },
                            inputs_bytes + accs_bytes,
                            bytes,
                        )?;
                        accs_bytes += bytes;
                        let mut acc = HessianAccumulator::new(columns, &device)?;
                        acc.set_cpu_gemm(gemm);
                        accs.push(acc);
                        if capacity > 0 {
                            // Seeded per layer and input, so runs are repeatable.
                            let s = seed ^ (layer << 32) ^ accs.len() as u64;
                            reservoirs.push(ActivationReservoir::new(capacity, columns, s)?);
                        }
                        owner.insert(name, accs.len() - 1);
                        accs.len() - 1
                    }
                };
                if !matches!(last, Some((id, _)) if id == inp.id()) {
                    // Device work is asynchronous: without waiting at both ends the
                    // forward pass's time would be billed to the Hessian (a no-op on CPU).
                    inp.device().synchronize()?;
                    let t = Instant::now();
                    accs[idx].add_batch(inp)?;
                    if let Some(r) = reservoirs.get_mut(idx) {
                        r.add_batch(inp)?;
                    }
                    inp.device().synchronize()?;
                    hessian_seconds += t.elapsed().as_secs_f64();
                }
                last = Some((inp.id(), idx));
                if seen == wanted.len() && !keep_outputs {
                    return Err(StopForward.into());
                }
                Ok(())
            };
            match self.layer.forward_with_hook(x, Some(&mut hook)) {
                Err(e) if e.downcast_ref::<StopForward>().is_none() => return Err(e),
                Ok(y) if keep_outputs => outputs.push(y),
                _ => {}
            }
        }
        if keep_outputs {
            self.dense_outputs = Some(outputs);
        }
        self.timings.hessian += hessian_seconds;
        self.timings.forward += start.elapsed().as_secs_f64() - hessian_seconds;
        match group {
            Some(g) => self.accumulated[g] = true,
            None => self.accumulated.iter_mut().for_each(|a| *a = true),
        }
        Ok(())
    }

    /// The sample of a linear's inputs kept for activation-based metrics (`None`
    /// when the calibration keeps no reservoir).
    pub fn reservoir(&mut self, linear: &str) -> Result<Option<&ActivationReservoir>> {
        let name = self.static_name(linear)?;
        self.hessian(name)?;
        let idx = self.owner[name];
        Ok(self.reservoirs.get(idx))
    }

    /// One importance score per input channel of `linear` (see
    /// [`score_importance`] for the metrics), from its current weight, its
    /// Hessian and its input sample.
    pub fn score(
        &mut self,
        linear: &str,
        metric: &str,
        opts: &ImportanceOptions,
    ) -> Result<Vec<f32>> {
        let w = self.weight(linear)?;
        let samples = match self.reservoir(linear)? {
            Some(r) => Some(r.samples()?),
            None => None,
        };
        let acc = self.hessian(linear)?;
        score_importance(metric, &w, acc, samples.as_ref(), opts)
            .with_context(|| format!("importance `{metric}` of layer {} {linear}", self.index))
    }

    /// Records the importance metric and score range that chose `linear`'s bit
    /// widths; it goes into that linear's report when it is compressed.
    pub fn set_importance(&mut self, linear: &str, note: ImportanceNote) -> Result<()> {
        let name = self.static_name(linear)?;
        self.importance.insert(name, note);
        Ok(())
    }

    /// Compresses one linear with `method`, keeps the result in the resident layer
    /// (so later Hessians under `true_sequential` see it) and reports it.
    ///
    /// A damped Hessian that is not positive definite is retried with ten times
    /// the damping, up to three times; each retry is reported on stderr.
    pub fn compress(&mut self, linear: &str, method: &Method) -> Result<LinearReport> {
        let device = self.device.clone();
        let index = self.index;
        self.compress_inner(linear, method)
            .map_err(|e| locate(e, &device, Stage::Compressing, Some(index), Some(linear)))
    }

    fn compress_inner(&mut self, linear: &str, method: &Method) -> Result<LinearReport> {
        let name = self.static_name(linear)?;
        interrupt::check()?;
        if self.compressed.iter().any(|(n, _)| *n == name) {
            bail!("layer {} {linear} is already compressed", self.index);
        }
        let start = Instant::now();
        let w = self.weight(name)?;
        let layer = self.index;
        let acc = self.hessian(name)?.clone();
        let (rows, columns) = w.dims2()?;
        self.limit.check(
            || format!("the OBS work matrices of {name} ({rows}×{columns})"),
            tensors_bytes(&self.inputs) + self.accs_bytes(),
            obs_bytes(rows, columns),
        )?;
        // A sweep with large work matrices first hands the heaps' free pages
        // back: they are in pieces the matrices would not fit into, so the heap
        // would grow past them. Only large ones: a trim before every linear
        // would make the next ones fault their buffers in again.
        if obs_bytes(rows, columns) >= TRIM_BEFORE_OBS_BYTES {
            crate::runtime::alloc::trim();
        }
        let mut percdamp_used = None;
        let result: CompressResult = match method {
            Method::SparseGpt(opts) => {
                let mut opts = opts.clone();
                let mut attempt = 0;
                loop {
                    match fasterprune(&w, acc.hessian(), &opts) {
                        Ok(r) => {
                            percdamp_used = Some(opts.percdamp);
                            break r;
                        }
                        Err(e)
                            if e.downcast_ref::<NotPositiveDefinite>().is_some() && attempt < 3 =>
                        {
                            let next = opts.percdamp.max(1e-8) * 10.0;
                            eprintln!(
                                "warning: layer {layer} {linear}: damped Hessian not positive definite \
                                 at percdamp {}; retrying with {next}",
                                opts.percdamp
                            );
                            opts.percdamp = next;
                            attempt += 1;
                        }
                        Err(e) => {
                            return Err(e.context(format!(
                                "layer {layer} {linear}: SparseGPT failed (percdamp {})",
                                opts.percdamp
                            )))
                        }
                    }
                }
            }
            Method::Magnitude(p) => magnitude_prune(&w, p)?,
            Method::Wanda(p) => wanda_prune(&w, acc.scaler_row(), p)?,
        };
        let rel_error = relative_output_error(&w, &result.weight, acc.hessian())?;
        self.layer
            .linear_mut(name)?
            .set_weight(result.weight.clone())?;
        self.compressed.push((name, result.weight.clone()));
        self.infos.insert(
            name,
            CompressedInfo {
                mask: BitMask::from_tensor(&result.stats.mask)?,
                grid: result.stats.grid.clone(),
            },
        );
        let s = &result.stats;
        let (bits_histogram, bits_rle) = match method {
            Method::SparseGpt(SparseGptOptions { quant: Some(q), .. }) => (
                bits_histogram(&q.bits, columns),
                crate::report::bits_rle((0..columns).map(|j| q.bits.column(j))),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let report = LinearReport {
            layer,
            linear: name.to_string(),
            method: method.name().to_string(),
            rows,
            columns,
            sparsity: s.sparsity,
            nm_valid: s.nm_valid,
            avg_bits: s.avg_bits,
            bits_histogram,
            bits_rle,
            settings: crate::report::method_settings(method),
            importance: self.importance.remove(name),
            loss: s.loss,
            rel_error,
            dead_columns: s.dead_columns,
            percdamp: percdamp_used,
            seconds: start.elapsed().as_secs_f64(),
        };
        self.timings.compress += report.seconds;
        self.reports.push(report.clone());
        Ok(report)
    }
}

/// Bytes of a list of tensors.
fn tensors_bytes(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum()
}

/// Bytes of one Hessian accumulator (f32 `columns²` plus its row scaler).
fn hessian_bytes(columns: usize) -> u64 {
    ((columns * columns + columns) * std::mem::size_of::<f32>()) as u64
}

/// OBS work matrices from this size on are preceded by a heap trim.
const TRIM_BEFORE_OBS_BYTES: u64 = 32 << 20;

/// Bytes the OBS sweep of a `rows × columns` weight holds at its peak: two
/// `columns²` matrices (the damped Hessian factored in place and one
/// triangular inverse; see `upper_cholesky_of_inverse`) and three
/// `rows × columns` ones (the weight, the result and the losses/masks), in f32.
fn obs_bytes(rows: usize, columns: usize) -> u64 {
    ((2 * columns * columns + 3 * rows * columns) * std::mem::size_of::<f32>()) as u64
}

/// Channels per width of a bit assignment over `columns` input channels.
fn bits_histogram(bits: &BitWidths, columns: usize) -> Vec<(u32, usize)> {
    let mut hist = std::collections::BTreeMap::new();
    for j in 0..columns {
        *hist.entry(bits.column(j)).or_insert(0usize) += 1;
    }
    hist.into_iter().collect()
}

/// Which layers and linears a uniform policy touches (the reference's
/// `--minlayer`, `--maxlayer` and `--prune_only`).
#[derive(Debug, Clone, Default)]
pub struct LayerFilter {
    /// First layer compressed (inclusive).
    pub min_layer: Option<usize>,
    /// Layers from here on are left as they are (exclusive bound).
    pub max_layer: Option<usize>,
    /// Only linears whose name contains this.
    pub only: Option<String>,
}

impl LayerFilter {
    /// Whether `linear` of layer `index` is to be compressed.
    pub fn accepts(&self, index: usize, linear: &str) -> bool {
        self.min_layer.is_none_or(|m| index >= m)
            && self.max_layer.is_none_or(|m| index < m)
            && self.only.as_deref().is_none_or(|o| linear.contains(o))
    }
}

/// The standard pipeline's policy: every accepted linear of every layer with
/// one method, in the reference's order.
pub fn uniform_policy(
    method: Method,
    filter: LayerFilter,
) -> impl FnMut(&mut LayerWork) -> Result<()> {
    move |work: &mut LayerWork| {
        for linear in work.linears() {
            if filter.accepts(work.index, linear) {
                work.compress(linear, &method)?;
            }
        }
        Ok(())
    }
}

/// One linear's importance scores.
#[derive(Debug, Clone)]
pub struct LinearScores {
    /// Decoder layer.
    pub layer: usize,
    /// Linear within the layer.
    pub linear: &'static str,
    /// One score per input channel.
    pub scores: Vec<f32>,
}

/// Scores every linear of every layer on the dense model: a calibration pass
/// that compresses nothing (so every layer sees dense activations). This is the
/// first pass of a model-wide allocation, which needs all scores before any
/// linear is compressed.
pub fn score_dense(
    model: &mut Model,
    opts: CalibOptions,
    metric: &str,
    iopts: &ImportanceOptions,
) -> Result<Vec<LinearScores>> {
    let mut calib = Calibration::new(model, opts)?;
    let mut out = Vec::new();
    calib.run(model, |work| {
        for linear in work.linears() {
            let scores = work.score(linear, metric, iopts)?;
            out.push(LinearScores {
                layer: work.index,
                linear,
                scores,
            });
        }
        Ok(())
    })?;
    Ok(out)
}
