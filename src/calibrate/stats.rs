//! The statistics hook: one pass of a decoder layer over the windows, with a
//! hook on its linears' inputs that feeds each distinct input's Hessian
//! accumulator and activation reservoir, and stops the layer once every wanted
//! input is in.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Tensor, TensorId};

use super::{tensors_bytes, LayerWork};
use crate::compress::reservoir::ActivationReservoir;
use crate::compress::HessianAccumulator;
use crate::model::layers::StopForward;
use crate::runtime::interrupt;
use crate::runtime::memory::{locate, Stage};

impl LayerWork {
    /// Runs the layer over every window, accumulating the Hessians of one
    /// sequential group (`Some`) or of every linear (`None`).
    pub(super) fn accumulate(&mut self, group: Option<usize>) -> Result<()> {
        let (device, index) = (self.device.clone(), self.index);
        self.accumulate_inner(group)
            .map_err(|e| locate(e, &device, Stage::Hessians, Some(index), None))
    }

    /// Bytes held by the layer's Hessians and input samples.
    pub(super) fn accs_bytes(&self) -> u64 {
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
}

/// Bytes of one Hessian accumulator (f32 `columns²` plus its row scaler).
fn hessian_bytes(columns: usize) -> u64 {
    ((columns * columns + columns) * std::mem::size_of::<f32>()) as u64
}
