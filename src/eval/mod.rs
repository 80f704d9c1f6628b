//! Evaluation: perplexity with its standard error ([`ppl`]), the KL divergence
//! of a model's next-token distribution from a stored base model's ([`kl`]),
//! and zero-shot tasks scored by log-likelihood from local files ([`tasks`]).
//!
//! All of them run their token sequences through [`forward_batches`]: batches
//! of equal-length sequences go stage by stage through the model, as many
//! batches at a time as a fixed budget of hidden states allows, so only one
//! decoder layer, that budget and one batch's temporaries are resident.

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

/// Bytes of hidden states the host holds at once during evaluation: small
/// next to a layer's temporaries for a batch, large enough that a layer is
/// read (or dequantized, from a GGUF file) once for dozens of windows
/// instead of once per batch.
const HOST_HIDDEN_BUDGET: usize = 256 << 20;

/// Batches evaluated together, layer by layer, as the reference's
/// layer-by-layer `opt_eval` does: as many as fit the device's budget of
/// hidden states. Bringing a layer to the device (a copy out of the mapped
/// checkpoint, a dequantization, or a host-to-accelerator transfer) for every
/// batch would cost a large share of the forward passes themselves.
fn chunks_per_group(model: &Model, batch: usize, seqlen: usize) -> usize {
    let budget = if model.device().is_cpu() {
        HOST_HIDDEN_BUDGET
    } else {
        DEVICE_HIDDEN_BUDGET
    };
    let per_chunk = batch * seqlen * model.hidden_size() * model.dtype().size_in_bytes();
    (budget / per_chunk.max(1)).max(1)
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

/// Bytes of one slice of logits in [`streamed_nlls`]: below the allocator's
/// mmap threshold (`runtime::alloc`), so that every slice reuses the same
/// heap pages instead of faulting in a fresh mapping.
const LOGIT_SLICE_BYTES: usize = 16 << 20;

/// −log softmax(x·wᵀ)[targets[r]] for each row `r` of features `x` `[rows, d]`
/// and a head weight `w` `[vocab, d]` (f32, CPU), without holding the
/// `[rows, vocab]` logits: they are computed one slice of the vocabulary at a
/// time, and each row keeps a running maximum and `Σ exp` (rescaled when the
/// maximum grows; the terms are in f32, the sums in f64, as in [`row_nlls`]).
/// The weight is packed for the GEMM once per slice and call, where chunks of
/// positions would pack all of it once per chunk. Other devices and dtypes go
/// through [`row_nlls`] on the whole logits.
pub fn streamed_nlls(x: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    use crate::compute::kernels::{exp_sum_f64, is_cpu_f32, with_cpu_f32, xwt};
    let (rows, _) = x.dims2()?;
    let (vocab, _) = w.dims2()?;
    anyhow::ensure!(
        targets.len() == rows,
        "streamed_nlls: {} targets for {rows} rows",
        targets.len()
    );
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        anyhow::bail!("target token {t} is outside the head's vocabulary of {vocab}");
    }
    if !(is_cpu_f32(x) && is_cpu_f32(w)) {
        return row_nlls(&xwt(x, w)?, targets);
    }
    let slice = (LOGIT_SLICE_BYTES / 4 / rows.max(1)).clamp(256, vocab.max(1));
    // Per row: the running maximum, Σ exp(logit − maximum), the target's logit.
    let mut state = vec![(f32::NEG_INFINITY, 0f64, 0f32); rows];
    for v0 in (0..vocab).step_by(slice) {
        let len = slice.min(vocab - v0);
        let logits = xwt(x, &w.narrow(0, v0, len)?)?;
        with_cpu_f32(&logits, |l| {
            l.par_chunks(len)
                .zip(state.par_iter_mut())
                .zip(targets.par_iter())
                .for_each(|((row, (max, sum, picked)), &t)| {
                    let local = crate::compute::kernels::max_f32(row);
                    if local > *max {
                        *sum *= (*max as f64 - local as f64).exp();
                        *max = local;
                    }
                    *sum += exp_sum_f64(row, *max);
                    let t = t as usize;
                    if (v0..v0 + len).contains(&t) {
                        *picked = row[t - v0];
                    }
                });
        })?;
    }
    Ok(state
        .into_iter()
        .map(|(max, sum, picked)| max as f64 + sum.ln() - picked as f64)
        .collect())
}

/// Σ of −log softmax(logits[r])[targets[r]] over rows of `[rows, vocab]` logits,
/// summed in row order (the same weights always give the same bits).
pub fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    Ok(row_nlls(logits, targets)?.iter().sum())
}

/// log Σ exp(row), in f64 with the vectorized exponential of the kernels.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = crate::compute::kernels::max_f32(row);
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

    #[test]
    fn nll_matches_log_softmax() -> Result<()> {
        let l = Tensor::randn(0f32, 3., (4, 11), &Device::Cpu)?;
        let targets = [0u32, 10, 5, 3];
        let got = nll_sum(&l, &targets)?;
        let lp = candle_nn::ops::log_softmax(&l, 1)?.to_vec2::<f32>()?;
        let want: f64 = targets
            .iter()
            .enumerate()
            .map(|(r, &t)| -lp[r][t as usize] as f64)
            .sum();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn streamed_nlls_equal_whole_rows() -> Result<()> {
        // 8192 rows make the slices 512 wide: three slices of a 1100-entry
        // vocabulary, the last one short, and maxima that grow across them.
        let (rows, d, vocab) = (8192, 16, 1100);
        let x = Tensor::randn(0f32, 1.0, (rows, d), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (vocab, d), &Device::Cpu)?;
        let targets: Vec<u32> = (0..rows).map(|r| (r * 131 % vocab) as u32).collect();
        let got = streamed_nlls(&x, &w, &targets)?;
        let want = row_nlls(&crate::compute::kernels::xwt(&x, &w)?, &targets)?;
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5 * w.abs().max(1.0),
                "row {r}: {g} vs {w}"
            );
        }
        assert!(streamed_nlls(&x, &w, &[vocab as u32; 8192]).is_err());
        Ok(())
    }
}
