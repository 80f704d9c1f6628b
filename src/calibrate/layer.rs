//! One decoder layer during calibration ([`LayerWork`]): its linears, their
//! Hessians and input samples, importance scores, and the compression of each
//! linear into a [`LinearReport`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::calibration::Timings;
use super::tensors_bytes;
use crate::compress::importance::{score_importance, ImportanceOptions};
use crate::compress::method::method_settings;
use crate::compress::reservoir::ActivationReservoir;
use crate::compress::{
    compress_weight, relative_output_error, BitWidths, HessianAccumulator, Method, SparseGptOptions,
};
use crate::compute::kernels::CpuGemm;
use crate::model::packed::BitMask;
use crate::model::{CompressedInfo, DecoderLayer};
use crate::report::{bits_rle, ImportanceNote, LinearReport};
use crate::runtime::interrupt;
use crate::runtime::memory::{locate, MemoryLimit, Stage};

/// One decoder layer during calibration: its resident weights, the Hessians of
/// its linears, and what has been compressed so far.
pub struct LayerWork {
    /// Decoder layer index.
    pub index: usize,
    pub(super) layer: DecoderLayer,
    /// The layer's inputs; empty when its statistics came from the cache entry
    /// `inputs_at` (read only if a commit has to run the layer).
    pub(super) inputs: Vec<Tensor>,
    pub(super) inputs_at: Option<PathBuf>,
    /// Hash of the layer's dense linear weights (when a cache is in use).
    pub(super) dense_hash: Option<u64>,
    /// The dense layer's outputs, kept by the statistics pass of a
    /// `sequential: false` calibration: the next layer's inputs.
    pub(super) dense_outputs: Option<Vec<Tensor>>,
    pub(super) sequential: bool,
    pub(super) groups: Vec<Vec<&'static str>>,
    /// One accumulator per distinct linear input (q/k/v share one, as do gate/up).
    pub(super) accs: Vec<HessianAccumulator>,
    /// A sample of the same inputs, parallel to `accs` (empty when disabled).
    pub(super) reservoirs: Vec<ActivationReservoir>,
    pub(super) reservoir_capacity: usize,
    pub(super) seed: u64,
    pub(super) owner: HashMap<&'static str, usize>,
    pub(super) accumulated: Vec<bool>,
    pub(super) compressed: Vec<(&'static str, Tensor)>,
    /// Mask and quantization grid of each compressed linear.
    pub(super) infos: HashMap<&'static str, CompressedInfo>,
    pub(super) importance: HashMap<&'static str, ImportanceNote>,
    pub(super) timings: Timings,
    pub(super) started: Instant,
    /// The host memory limit its large buffers are checked against.
    pub(super) limit: MemoryLimit,
    /// Where the layer computes (named in out-of-memory errors).
    pub(super) device: Device,
    /// Precision of the CPU's Hessian GEMMs.
    pub(super) gemm: CpuGemm,
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

    pub(super) fn static_name(&self, linear: &str) -> Result<&'static str> {
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
    /// the damping, up to three times; each retry is reported on stderr
    /// ([`compress_weight`]).
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
        let (result, percdamp_used) =
            compress_weight(&w, &acc, method, &format!("layer {layer} {linear}"))?;
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
                bits_rle((0..columns).map(|j| q.bits.column(j))),
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
            settings: method_settings(method),
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
