//! Perplexity as the reference protocol computes it, with its standard error.
//!
//! The token stream is cut into n = ⌊tokens / seqlen⌋ non-overlapping windows
//! from token 0. For each window the loss is the mean cross-entropy of
//! `logits[:-1]` against `ids[1:]`, times seqlen; ppl = exp(Σ loss / (n·seqlen)),
//! which is exp of the mean NLL over all n·(seqlen − 1) predicted tokens. Its
//! standard error is llama.cpp's: the delta method on the mean NLL over
//! tokens, se(ppl) = ppl · sqrt((E[nll²] − E[nll]²) / (N − 1)) with N the
//! predicted tokens (tokens of a window are not independent, so this is the
//! same optimistic figure llama.cpp prints, comparable with it).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::stats::Moments;
use super::{forward_batches, Batch};
use crate::data::datasets::{eval_tokens, DatasetSpec, Split};
use crate::model::Model;

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
    /// Standard error of `ppl` over the predicted tokens (delta method on the
    /// mean NLL, as llama.cpp computes it).
    pub ppl_se: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Tokens predicted: windows · (seqlen − 1).
    pub tokens: usize,
    /// Sum over windows of (mean CE · seqlen), as the reference accumulates it.
    pub nll_sum: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl PplResult {
    /// `ppl ± se` as text ([`super::format_pm`]).
    pub fn text(&self) -> String {
        super::format_pm(self.ppl, self.ppl_se)
    }
}

/// The window length the reference would use for `model`.
pub fn default_seqlen(model: &Model) -> usize {
    model.config.max_position_embeddings().min(2048)
}

/// Checks `seqlen` against the model and returns the number of windows of
/// `tokens` to evaluate (at most `max_windows`).
pub(crate) fn window_count(
    model: &Model,
    tokens: usize,
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<usize> {
    if seqlen < 2 {
        bail!("seqlen must be at least 2 (got {seqlen})");
    }
    if seqlen > model.config.max_position_embeddings() {
        bail!(
            "seqlen {seqlen} exceeds the model's max_position_embeddings {}",
            model.config.max_position_embeddings()
        );
    }
    let mut windows = tokens / seqlen;
    if let Some(m) = max_windows {
        windows = windows.min(m);
    }
    if windows == 0 {
        bail!("the evaluation text has {tokens} tokens, fewer than one window of seqlen {seqlen}");
    }
    Ok(windows)
}

/// The batches of `windows` windows of `seqlen` tokens, `batch` windows each.
pub(crate) fn window_batches(
    tokens: &[u32],
    seqlen: usize,
    windows: usize,
    batch: usize,
) -> Vec<Batch<'_>> {
    let batch = batch.max(1);
    (0..windows)
        .step_by(batch)
        .map(|first| {
            let n = batch.min(windows - first);
            Batch {
                ids: &tokens[first * seqlen..(first + n) * seqlen],
                n,
            }
        })
        .collect()
}

/// Perplexity of `model` on a token stream.
pub fn perplexity(model: &Model, tokens: &[u32], opts: &PplOptions) -> Result<PplResult> {
    let start = Instant::now();
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    let windows = window_count(model, tokens.len(), seqlen, opts.max_windows)?;
    let batches = window_batches(tokens, seqlen, windows, opts.batch);
    let mut nll_sum = 0f64;
    let mut nll = Moments::default();
    forward_batches(model, &batches, "perplexity", opts.quiet, |i, h| {
        let b = batches[i];
        // On the host, the head runs once for all of the batch's windows: the
        // streamed logits' GEMMs then have `n·(t−1)` rows and narrower slices
        // of the vocabulary, a better shape for them than one window's (and
        // the weight is read once per batch). An accelerator holds a whole
        // window's logits at once, so it goes window by window.
        let step = if model.device().is_cpu() { b.n } else { 1 };
        for w0 in (0..b.n).step_by(step) {
            let k = step.min(b.n - w0);
            let ids = &b.ids[w0 * seqlen..(w0 + k) * seqlen];
            for per_token in token_nlls(model, &h.narrow(0, w0, k)?, ids)?.chunks(seqlen - 1) {
                per_token.iter().for_each(|&x| nll.add(x));
                nll_sum += per_token.iter().sum::<f64>() / (seqlen - 1) as f64 * seqlen as f64;
            }
        }
        Ok(())
    })?;
    // The reference's sum (per-window means), exp of the same mean NLL.
    let ppl = (nll_sum / (windows * seqlen) as f64).exp();
    Ok(PplResult {
        ppl,
        ppl_se: ppl * nll.se(),
        windows,
        seqlen,
        tokens: nll.n,
        nll_sum,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Perplexity of `model` on a dataset named as [`DatasetSpec::parse`] accepts it
/// (split defaults to `test`). Named datasets follow the reference protocol: its
/// text joins, one leading BOS, C4 truncated to 256 windows.
pub fn eval_dataset(model: &Model, dataset: &str, opts: &PplOptions) -> Result<PplResult> {
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    let tokens = dataset_tokens(model, dataset, seqlen)?;
    let opts = PplOptions {
        seqlen: Some(seqlen),
        ..opts.clone()
    };
    perplexity(model, &tokens, &opts)
}

/// The evaluation tokens of `dataset` for `model` (split defaults to `test`).
pub fn dataset_tokens(model: &Model, dataset: &str, seqlen: usize) -> Result<Vec<u32>> {
    let spec = DatasetSpec::parse(dataset, Split::Test)?;
    eval_tokens(&spec, model.tokenizer()?, model.named_bos(), seqlen)
}

/// Positions per head call where the whole `[positions, vocab]` logits are
/// needed (the KL divergence, tasks): bounds what is held at once. At 128
/// positions a 50k vocabulary's logits (25 MiB in f32) stay below the
/// allocator's mmap threshold (`runtime::alloc`), so every chunk reuses the
/// same heap pages.
pub const HEAD_CHUNK: usize = 128;

/// The NLL of each of ids 1…t−1 given the tokens before it, window by window,
/// from `n` windows' final hidden states `[n, t, hidden]` and their ids
/// (`n·t`, row-major): `n·(t−1)` values, the logits streamed by slices of the
/// vocabulary ([`streamed_nlls`](super::streamed_nlls)).
pub fn token_nlls(model: &Model, hidden: &Tensor, ids: &[u32]) -> Result<Vec<f64>> {
    let n = hidden.dim(0)?;
    let t = ids.len() / n.max(1);
    anyhow::ensure!(
        n * t == ids.len() && t >= 1,
        "token_nlls: {} ids for {n} windows",
        ids.len()
    );
    let (features, weight) = model.head_parts(&hidden.narrow(1, 0, t - 1)?)?;
    let targets: Vec<u32> = ids.chunks(t).flat_map(|w| w[1..].iter().copied()).collect();
    super::streamed_nlls(&features, &weight, &targets)
}

/// Mean cross-entropy of the window's logits at positions 0…t−2 against ids 1…t−1,
/// computed from its final hidden states `[1, t, hidden]` in chunks of positions.
pub fn window_nll(model: &Model, hidden: &Tensor, ids: &[u32]) -> Result<f64> {
    Ok(token_nlls(model, hidden, ids)?.iter().sum::<f64>() / (ids.len() - 1) as f64)
}
