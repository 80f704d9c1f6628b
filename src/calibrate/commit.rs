//! The commit of a layer: its compressed weights into the model, and the
//! compressed (or, under `sequential: false`, dense) layer run over the windows
//! to make the next layer's inputs, unless the cache already holds them.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::cache::{chain_next, layer_weights_hash, StatCache};
use super::{tensors_bytes, Calibration, LayerWork};
use crate::model::Model;
use crate::runtime::interrupt;
use crate::runtime::memory::{locate, Stage};

impl Calibration {
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
        // the next layer's statistics after exactly this prefix, and what a
        // later commit may need of that layer's inputs.
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
                next_entry = cache.skip_to(model, k + 1, chain, nh)?;
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
}
