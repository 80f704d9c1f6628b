//! Evaluation: perplexity with its standard error ([`ppl`]), the KL divergence
//! of a model's next-token distribution from a stored base model's ([`kl`]),
//! and zero-shot tasks scored by log-likelihood from local files ([`tasks`]).
//!
//! All of them run their token sequences through [`forward_batches`]: batches
//! of equal-length sequences go stage by stage through the model, so only one
//! decoder layer and one batch of activations are resident at a time (on an
//! accelerator, as many batches as fit a fixed budget).

pub mod kl;
pub mod ppl;
pub mod stats;
pub mod tasks;

use anyhow::Result;
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use crate::model::Model;
use crate::runtime::progress::Progress;

pub use kl::{
    ensure_base, kl_against_model, kl_divergence, write_base, BaseInfo, KlOptions, KlResult,
};
pub use ppl::{
    dataset_tokens, default_seqlen, eval_dataset, perplexity, window_nll, PplOptions, PplResult,
    HEAD_CHUNK,
};
pub use stats::{format_pm, Moments};
pub use tasks::{eval_tasks, TaskOptions, TaskResult, TaskSpec};

/// Bytes of hidden states an accelerator holds at once during evaluation.
const DEVICE_HIDDEN_BUDGET: usize = 2 << 30;

/// Batches evaluated together, layer by layer. On the CPU one (window-major:
/// memory stays one batch's activations, and reading a layer from the mapped
/// checkpoint costs little next to its forward pass). On an accelerator as many
/// as fit [`DEVICE_HIDDEN_BUDGET`], as the reference's layer-by-layer `opt_eval`
/// does: copying every layer to the device for every window would cost more
/// than the forward passes themselves.
fn chunks_per_group(model: &Model, batch: usize, seqlen: usize) -> usize {
    if model.device().is_cpu() {
        return 1;
    }
    let per_chunk = batch * seqlen * model.hidden_size() * model.dtype().size_in_bytes();
    (DEVICE_HIDDEN_BUDGET / per_chunk.max(1)).max(1)
}

/// One batch for [`forward_batches`]: `n` sequences of `ids.len() / n` tokens each.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The token ids, row-major `[n, t]`.
    pub ids: &'a [u32],
    /// Sequences in the batch.
    pub n: usize,
}

/// Runs `batches` through `model` stage by stage and calls `each(i, hidden)`
/// with batch `i`'s final hidden states `[n, t, hidden]`, in batch order.
/// `label` names the progress bar (none when `quiet`).
pub fn forward_batches(
    model: &Model,
    batches: &[Batch],
    label: &str,
    quiet: bool,
    mut each: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let layers = model.num_layers();
    let widest = batches.iter().map(|b| b.ids.len()).max().unwrap_or(1);
    let per_group = chunks_per_group(model, 1, widest);
    let mut progress = Progress::new(label, (batches.len() * (layers + 2)) as u64, quiet);
    for g0 in (0..batches.len()).step_by(per_group) {
        let group = &batches[g0..batches.len().min(g0 + per_group)];
        let mut hidden = Vec::with_capacity(group.len());
        for b in group {
            let ids =
                Tensor::from_slice(b.ids, (b.n, b.ids.len() / b.n), &candle_core::Device::Cpu)?;
            hidden.push(model.embed(&ids)?);
            progress.inc(1);
        }
        // Layer-major within a group: each layer is brought to the device once
        // for all of the group's batches.
        for l in 0..layers {
            let layer = model.layer(l)?;
            for h in hidden.iter_mut() {
                crate::runtime::interrupt::check()?;
                *h = layer.forward(h)?;
                progress.inc(1);
            }
        }
        for (i, h) in hidden.iter().enumerate() {
            each(g0 + i, h)?;
            progress.inc(1);
        }
    }
    progress.finish();
    Ok(())
}

/// −log softmax(logits[r])[targets[r]] for each row of `[rows, vocab]` logits.
pub fn row_nlls(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let (rows, vocab) = logits.dims2()?;
    anyhow::ensure!(
        targets.len() == rows,
        "row_nlls: {} targets for {rows} rows",
        targets.len()
    );
    if logits.device().is_cpu() {
        let logits = logits.to_dtype(DType::F32)?;
        return Ok(crate::compute::kernels::with_cpu_f32(&logits, |l| {
            l.par_chunks(vocab)
                .zip(targets.par_iter())
                .map(|(row, &t)| log_sum_exp(row) - row[t as usize] as f64)
                .collect()
        })?);
    }
    let logits = logits.to_dtype(DType::F32)?;
    let targets = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok(picked
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .into_iter()
        .map(|x| -x)
        .collect())
}

/// Σ of −log softmax(logits[r])[targets[r]] over rows of `[rows, vocab]` logits,
/// summed in row order (the same weights always give the same bits).
pub fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    Ok(row_nlls(logits, targets)?.iter().sum())
}

/// log Σ exp(row), in f64 with the vectorized exponential of the kernels.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    max as f64 + crate::compute::kernels::exp_sum_f64(row, max).ln()
}

/// The index of the first largest value (as torch's `argmax` picks it).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Logits `[rows, vocab]` on the host in f32, contiguous (for the scorers that
/// read every entry).
fn host_f32(logits: &Tensor) -> Result<Tensor> {
    Ok(logits
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() -> Result<()> {
        let logits = Tensor::zeros((4, 7), DType::F32, &Device::Cpu)?;
        let nll = nll_sum(&logits, &[2, 3, 4, 5])? / 4.0;
        assert!((nll - 7f64.ln()).abs() < 1e-6);
        Ok(())
    }
}
