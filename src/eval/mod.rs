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
    let mut progress = Progress::new("perplexity", (chunks * (layers + 2)) as u64, opts.quiet);
    let mut nll_sum = 0f64;
    for c in 0..chunks {
        let first = c * batch;
        let n = batch.min(windows - first);
        let ids = &tokens[first * seqlen..(first + n) * seqlen];
        let ids = Tensor::from_slice(ids, (n, seqlen), &candle_core::Device::Cpu)?;
        let mut hidden = model.embed(&ids)?;
        progress.inc(1);
        for l in 0..layers {
            hidden = model.layer(l)?.forward(&hidden)?;
            progress.inc(1);
        }
        // One window at a time through the head keeps the [seqlen, vocab] logits small.
        for w in 0..n {
            let logits = model.head(&hidden.narrow(0, w, 1)?)?;
            nll_sum += window_nll(&logits.squeeze(0)?, &ids.get(w)?)? * seqlen as f64;
        }
        progress.inc(1);
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
    let tokens = eval_tokens(
        &spec,
        model.tokenizer()?,
        Some(model.config.bos_token_id()),
        seqlen,
    )?;
    let opts = PplOptions {
        seqlen: Some(seqlen),
        ..opts.clone()
    };
    perplexity(model, &tokens, &opts)
}

/// Mean cross-entropy of `logits[:-1]` (`[t, vocab]`, f32) against `ids[1:]`.
pub fn window_nll(logits: &Tensor, ids: &Tensor) -> Result<f64> {
    let t = logits.dim(0)?;
    let logits = logits.narrow(0, 0, t - 1)?.to_dtype(DType::F32)?;
    let targets = ids.narrow(0, 1, t - 1)?.to_device(logits.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    let mean = picked
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok(-mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() -> Result<()> {
        let logits = Tensor::zeros((5, 7), DType::F32, &Device::Cpu)?;
        let ids = Tensor::new(&[1u32, 2, 3, 4, 5], &Device::Cpu)?;
        let nll = window_nll(&logits, &ids)?;
        assert!((nll - 7f64.ln()).abs() < 1e-6);
        Ok(())
    }
}
