//! The state of a calibration and its layer loop: the windows through the
//! embedding, each layer's statistics (computed, or read from the cache),
//! the caller's policy, and the commit ([`commit`](super::commit)).

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::cache::{layer_weights_hash, StatCache, StoreOptions};
use super::checkpoint::{Checkpoint, Manifest};
use super::{CalibOptions, LayerWork};
use crate::data::datasets::{calibration_windows, DatasetSpec, Split};
use crate::eval::default_seqlen;
use crate::model::{CompressedInfo, Model};
use crate::report::LinearReport;
use crate::runtime::interrupt;
use crate::runtime::memory::{locate, MemoryLimit, OutOfMemory, Stage};
use crate::runtime::progress::Progress;

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
    pub(super) fn add(&mut self, other: &Timings) {
        self.forward += other.forward;
        self.hessian += other.hessian;
        self.compress += other.compress;
    }
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
    pub(super) inputs: Vec<Tensor>,
    pub(super) inputs_at: Option<PathBuf>,
    pub(super) cache: Option<StatCache>,
    /// The hash chain over the layers before `next` ([`super::cache`]).
    pub(super) chain: u64,
    pub(super) counts: Cell<CacheCounts>,
    pub(super) next: usize,
    pub(super) seqlen: usize,
    pub(super) windows: usize,
    /// The settings it runs with.
    pub opts: CalibOptions,
    /// Reports of every linear compressed so far, in order.
    pub reports: Vec<LinearReport>,
    /// Where the time went.
    pub timings: Timings,
    /// Layers restored from the checkpoint rather than computed by this run.
    pub resumed_layers: usize,
    pub(super) checkpoint: Option<Checkpoint>,
    /// Compressed weights restored from the checkpoint, not yet in the model.
    pub(super) pending: Vec<(String, Tensor, CompressedInfo)>,
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

    /// Sets how the statistics cache writes its entries (the stored dtype, and
    /// whether layer inputs are stored; [`StoreOptions`]); an error without a
    /// cache. Takes effect from the next layer on.
    pub fn set_cache_options(&mut self, options: StoreOptions) -> Result<()> {
        match &mut self.cache {
            Some(c) => c.set_options(options),
            None => bail!("this calibration has no statistics cache"),
        }
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
    pub(super) fn count(&self, f: impl FnOnce(&mut CacheCounts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }
    /// The next layer's inputs, read from the cache if they are only there.
    pub(super) fn current_inputs(&self, device: &Device) -> Result<Vec<Tensor>> {
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
            let owner: Vec<(String, usize)> = work
                .linears()
                .into_iter()
                .filter_map(|n| work.owner.get(n).map(|i| (n.to_string(), *i)))
                .collect();
            let inputs = cache
                .stores_inputs(index, model.num_layers())
                .then_some(work.inputs.as_slice());
            cache.store(key, &work.accs, &work.reservoirs, &owner, inputs)?;
        }
        Ok(Some(work))
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
