//! Perplexity as the reference protocol computes it.
//!
//! The token stream is cut into n = ⌊tokens / seqlen⌋ non-overlapping windows
//! from token 0. For each window the loss is the mean cross-entropy of
//! `logits[:-1]` against `ids[1:]`, times seqlen; ppl = exp(Σ loss / (n·seqlen)).
//! Windows are run stage by stage in batches, so only one decoder layer and one
//! batch of activations are resident at a time.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::data::datasets::{eval_tokens, DatasetSpec, Split};
use crate::model::Model;
use crate::progress::Progress;

/// Options of a perplexity run.
#[derive(Debug, Clone)]
pub struct PplOptions {
    /// Window length; `None` = the model's `max_position_embeddings`, capped at 2048.
    pub seqlen: Option<usize>,
    /// Windows run together through each layer.
    pub batch: usize,
    /// Evaluate only the first `n` windows (`None` = all).
    pub max_windows: Option<usize>,
    /// No progress output.
    pub quiet: bool,
}

impl Default for PplOptions {
    fn default() -> Self {
        Self {
            seqlen: None,
            batch: 8,
            max_windows: None,
            quiet: false,
        }
    }
}

/// The outcome of a perplexity run.
#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    /// Perplexity.
    pub ppl: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Sum over windows of (mean CE · seqlen), as the reference accumulates it.
    pub nll_sum: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The window length the reference would use for `model`.
pub fn default_seqlen(model: &Model) -> usize {
    model.config.max_position_embeddings().min(2048)
}

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

/// Perplexity of `model` on a token stream.
pub fn perplexity(model: &Model, tokens: &[u32], opts: &PplOptions) -> Result<PplResult> {
    let start = Instant::now();
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    if seqlen < 2 {
        bail!("seqlen must be at least 2 (got {seqlen})");
    }
    if seqlen > model.config.max_position_embeddings() {
        bail!(
            "seqlen {seqlen} exceeds the model's max_position_embeddings {}",
            model.config.max_position_embeddings()
        );
    }
    let mut windows = tokens.len() / seqlen;
    if let Some(m) = opts.max_windows {
        windows = windows.min(m);
    }
    if windows == 0 {
        bail!(
            "the evaluation text has {} tokens, fewer than one window of seqlen {seqlen}",
            tokens.len()
        );
    }
    let batch = opts.batch.max(1);
    let chunks = windows.div_ceil(batch);
    let layers = model.num_layers();
    let per_group = chunks_per_group(model, batch, seqlen);
    let mut progress = Progress::new("perplexity", (chunks * (layers + 2)) as u64, opts.quiet);
    let mut nll_sum = 0f64;
    for g0 in (0..chunks).step_by(per_group) {
        let group: Vec<(usize, usize)> = (g0..chunks.min(g0 + per_group))
            .map(|c| (c * batch, batch.min(windows - c * batch)))
            .collect();
        let mut hidden = Vec::with_capacity(group.len());
        for &(first, n) in &group {
            let ids = &tokens[first * seqlen..(first + n) * seqlen];
            let ids = Tensor::from_slice(ids, (n, seqlen), &candle_core::Device::Cpu)?;
            hidden.push(model.embed(&ids)?);
            progress.inc(1);
        }
        // Layer-major within a group: each layer is brought to the device once
        // for all of the group's windows.
        for l in 0..layers {
            let layer = model.layer(l)?;
            for h in hidden.iter_mut() {
                crate::interrupt::check()?;
                *h = layer.forward(h)?;
                progress.inc(1);
            }
        }
        for (&(first, n), h) in group.iter().zip(&hidden) {
            for w in 0..n {
                let window = &tokens[(first + w) * seqlen..(first + w + 1) * seqlen];
                nll_sum += window_nll(model, &h.narrow(0, w, 1)?, window)? * seqlen as f64;
            }
            progress.inc(1);
        }
    }
    progress.finish();
    let ppl = (nll_sum / (windows * seqlen) as f64).exp();
    Ok(PplResult {
        ppl,
        windows,
        seqlen,
        nll_sum,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Perplexity of `model` on a dataset named as [`DatasetSpec::parse`] accepts it
/// (split defaults to `test`). Named datasets follow the reference protocol: its
/// text joins, one leading BOS, C4 truncated to 256 windows.
pub fn eval_dataset(model: &Model, dataset: &str, opts: &PplOptions) -> Result<PplResult> {
    let spec = DatasetSpec::parse(dataset, Split::Test)?;
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    let tokens = eval_tokens(&spec, model.tokenizer()?, model.named_bos(), seqlen)?;
    let opts = PplOptions {
        seqlen: Some(seqlen),
        ..opts.clone()
    };
    perplexity(model, &tokens, &opts)
}

/// Positions per head call: bounds the `[positions, vocab]` logits held at once.
const HEAD_CHUNK: usize = 512;

/// Mean cross-entropy of the window's logits at positions 0…t−2 against ids 1…t−1,
/// computed from its final hidden states `[1, t, hidden]` in chunks of positions.
pub fn window_nll(model: &Model, hidden: &Tensor, ids: &[u32]) -> Result<f64> {
    let t = ids.len();
    let mut sum = 0f64;
    for p0 in (0..t - 1).step_by(HEAD_CHUNK) {
        let rows = HEAD_CHUNK.min(t - 1 - p0);
        let logits = model.head(&hidden.narrow(1, p0, rows)?)?.squeeze(0)?;
        sum += nll_sum(&logits, &ids[p0 + 1..p0 + 1 + rows])?;
    }
    Ok(sum / (t - 1) as f64)
}

/// Σ of −log softmax(logits[r])[targets[r]] over rows of `[rows, vocab]` logits.
pub fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    if logits.device().is_cpu() {
        return Ok(crate::model::kernels::nll_sum(logits, targets)?);
    }
    let logits = logits.to_dtype(DType::F32)?;
    let targets = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(-picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
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
