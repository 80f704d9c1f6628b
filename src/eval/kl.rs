//! KL divergence of a model's next-token distributions from a base model's,
//! with the base's log-probabilities computed once and stored in a file.
//!
//! For every predicted token (positions 0…seqlen−2 of each window, the tokens
//! perplexity scores) the result holds KL(base ‖ model) = Σ_v p_v (log p_v −
//! log q_v) over the vocabulary, whether both models' most likely token is the
//! same (top-1 agreement), and both NLLs of the actual next token (Δ perplexity).
//! Means come with their standard errors over tokens, as llama.cpp's
//! `--kl-divergence` reports them.
//!
//! ## The base file
//!
//! Little-endian throughout:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `SLKLBASE` |
//! | 4 | header length H (u32) |
//! | H | header, JSON: `format` (1), `model`, `dataset`, `vocab`, `seqlen`, `windows`, `range` |
//! | 4·windows·seqlen | the windows' token ids (u32) |
//! | windows·(seqlen−1) records | one per predicted token, 20 + 2·vocab bytes each |
//!
//! A record is `lo` (f32), `step` (f32), the base's argmax (u32), `tail` (f32),
//! the base's NLL of the actual next token (f32), then one u16 code per
//! vocabulary entry: code c ≥ 1 stands for log p = lo + (c − 1)·step, with `lo`
//! the smallest log-probability but at most [`RANGE`] nats below the largest
//! and `step` = (largest − lo)/65534, so the largest entry is code 65535 and
//! the rounding error of every log-probability is at most step/2 ≤ 2.5e-4
//! nats. Code 0 marks the entries more than [`RANGE`] nats below the largest
//! (each under e⁻³² of it); their total probability is `tail`, and KL treats
//! them as one merged outcome. This is llama.cpp's 16-bit log-probability
//! layout with a floor for the far tail; the decoded probabilities are
//! renormalized before use. The rounding errors are independent across
//! entries, so their effect on a mean KL is far below the 1e-3 relative this
//! format is tested to (tests/it/eval.rs measures it against the exact KL and
//! torch's). Top-k storage would be smaller, but its KL misses the tail's
//! contribution by the tail mass times the tail's own divergence, which is
//! not small on high-entropy tokens.
//!
//! The tokens are stored so that a base computed on other text, or through
//! another tokenizer, is refused with the first differing position; the
//! vocabulary size is checked against the evaluated model's.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ppl::{default_seqlen, window_batches, window_count, PplOptions, HEAD_CHUNK};
use super::stats::{quantile, Moments};
use super::{argmax, forward_batches, host_f32, log_sum_exp};
use crate::model::Model;

/// What a KL run takes: the perplexity options (window length, batch,
/// windows, quiet).
pub type KlOptions = PplOptions;

/// The base file's first bytes.
pub const MAGIC: &[u8; 8] = b"SLKLBASE";
/// The format version this build reads and writes.
pub const FORMAT: u32 = 1;
/// Log-probabilities more than this many nats below a token's largest are
/// merged into the record's tail.
pub const RANGE: f64 = 32.0;
/// Bytes of a record before its codes.
const RECORD_HEAD: usize = 20;
/// Codes 1…65535 span [lo, largest].
const STEPS: f64 = 65534.0;

/// The base file's JSON header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseHeader {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The base model as it was named when the file was written.
    pub model: String,
    /// The dataset as it was named when the file was written.
    pub dataset: String,
    /// Vocabulary size (entries per record).
    pub vocab: usize,
    /// Window length.
    pub seqlen: usize,
    /// Windows stored.
    pub windows: usize,
    /// [`RANGE`] when written.
    pub range: f64,
}

impl BaseHeader {
    fn record_bytes(&self) -> usize {
        RECORD_HEAD + 2 * self.vocab
    }
}

/// What [`write_base`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BaseInfo {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Windows stored.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// The base model's perplexity on the stored windows.
    pub ppl: f64,
    /// Its standard error (over tokens).
    pub ppl_se: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The outcome of a KL run against a stored base. `kl*` are in nats per token.
#[derive(Debug, Clone, Serialize)]
pub struct KlResult {
    /// Mean KL(base ‖ model) over predicted tokens.
    pub kl: f64,
    /// Its standard error.
    pub kl_se: f64,
    /// Median per-token KL.
    pub kl_median: f64,
    /// 99th percentile of the per-token KL.
    pub kl_p99: f64,
    /// Largest per-token KL.
    pub kl_max: f64,
    /// Fraction of tokens where both models' most likely token is the same.
    pub top1: f64,
    /// Its standard error.
    pub top1_se: f64,
    /// The model's perplexity on the same tokens.
    pub ppl: f64,
    /// Its standard error.
    pub ppl_se: f64,
    /// The base model's perplexity on the same tokens (from the stored NLLs).
    pub base_ppl: f64,
    /// Its standard error.
    pub base_ppl_se: f64,
    /// ppl − base_ppl.
    pub delta_ppl: f64,
    /// Its standard error, from the covariance of both models' per-token NLLs
    /// (smaller than either perplexity's own error when they move together).
    pub delta_ppl_se: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Tokens predicted.
    pub tokens: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Writes `model`'s log-probabilities on the windows of `tokens` to `path` as
/// a base file (see the module documentation); `model_name` and `dataset` are
/// recorded in its header. The file appears complete or not at all (written
/// beside it, then renamed).
pub fn write_base(
    model: &Model,
    tokens: &[u32],
    opts: &KlOptions,
    path: &Path,
    model_name: &str,
    dataset: &str,
) -> Result<BaseInfo> {
    let start = Instant::now();
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    let windows = window_count(model, tokens.len(), seqlen, opts.max_windows)?;
    let vocab = model.config.vocab_size();
    let header = BaseHeader {
        format: FORMAT,
        model: model_name.to_string(),
        dataset: dataset.to_string(),
        vocab,
        seqlen,
        windows,
        range: RANGE,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| -> Result<Moments> {
        let file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let json = serde_json::to_vec(&header)?;
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        for t in &tokens[..windows * seqlen] {
            out.write_all(&t.to_le_bytes())?;
        }
        let batches = window_batches(tokens, seqlen, windows, opts.batch);
        let mut nll = Moments::default();
        forward_batches(model, &batches, "KL base", opts.quiet, |i, h| {
            let b = batches[i];
            for w in 0..b.n {
                let ids = &b.ids[w * seqlen..(w + 1) * seqlen];
                for p0 in (0..seqlen - 1).step_by(HEAD_CHUNK) {
                    let rows = HEAD_CHUNK.min(seqlen - 1 - p0);
                    let logits = host_f32(
                        &model
                            .head(&h.narrow(0, w, 1)?.narrow(1, p0, rows)?)?
                            .squeeze(0)?,
                    )?;
                    ensure!(
                        logits.dims2()?.1 == vocab,
                        "the model's head gives {} logits per token, its config says vocab_size {vocab}",
                        logits.dims2()?.1
                    );
                    let targets = &ids[p0 + 1..p0 + 1 + rows];
                    let records: Vec<(Vec<u8>, f64)> =
                        crate::compute::kernels::with_cpu_f32(&logits, |l| {
                            l.par_chunks(vocab)
                                .zip(targets.par_iter())
                                .map(|(row, &t)| encode_row(row, t))
                                .collect()
                        })?;
                    for (rec, x) in &records {
                        out.write_all(rec)?;
                        nll.add(*x);
                    }
                }
            }
            Ok(())
        })?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(nll)
    })();
    let nll = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    let ppl = nll.mean().exp();
    Ok(BaseInfo {
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path)?.len(),
        windows,
        seqlen,
        vocab,
        ppl,
        ppl_se: ppl * nll.se(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One token's record (see the module documentation) and the base's NLL of
/// `target` in f64.
fn encode_row(row: &[f32], target: u32) -> (Vec<u8>, f64) {
    let lse = log_sum_exp(row);
    let top_index = argmax(row);
    let top = row[top_index] as f64 - lse;
    let min = row.iter().fold(f32::INFINITY, |m, &v| m.min(v)) as f64 - lse;
    let floor = top - RANGE;
    let lo = min.max(floor) as f32;
    let step = ((top - lo as f64) / STEPS) as f32;
    let (lo_d, step_d) = (lo as f64, step as f64);
    let nll = lse - row[target as usize] as f64;
    let mut tail = 0f64;
    let mut rec = Vec::with_capacity(RECORD_HEAD + 2 * row.len());
    rec.extend_from_slice(&lo.to_le_bytes());
    rec.extend_from_slice(&step.to_le_bytes());
    rec.extend_from_slice(&(top_index as u32).to_le_bytes());
    rec.extend_from_slice(&[0u8; 4]); // tail, filled in below
    rec.extend_from_slice(&(nll as f32).to_le_bytes());
    for &v in row {
        let lp = v as f64 - lse;
        let code: u16 = if lp < floor {
            tail += lp.exp();
            0
        } else if step == 0.0 {
            u16::MAX
        } else {
            (((lp - lo_d) / step_d).round() + 1.0).clamp(1.0, 65535.0) as u16
        };
        rec.extend_from_slice(&code.to_le_bytes());
    }
    rec[12..16].copy_from_slice(&(tail as f32).to_le_bytes());
    (rec, nll)
}

/// One token's comparison: KL(base ‖ model), whether the argmaxes agree, the
/// model's NLL of the target and the base's.
#[derive(Debug, Clone, Copy)]
struct TokenKl {
    kl: f64,
    agree: bool,
    nll: f64,
    base_nll: f64,
}

/// Compares a stored record with the model's logits `q` for the same token.
fn compare_row(rec: &[u8], q: &[f32], target: u32) -> TokenKl {
    let f = |at: usize| f32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
    let (lo, step) = (f(0) as f64, f(4) as f64);
    let base_top = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
    let (tail, base_nll) = (f(12) as f64, f(16) as f64);
    let lse_q = log_sum_exp(q);
    // a = Σ p̂, b = Σ p̂ (log p̂ − log q) over the coded entries; q_tail = the
    // model's mass on the base's tail entries.
    let (mut a, mut b, mut q_tail) = (0f64, 0f64, 0f64);
    for (c, &qv) in rec[RECORD_HEAD..].chunks_exact(2).zip(q) {
        let code = u16::from_le_bytes([c[0], c[1]]);
        let lq = qv as f64 - lse_q;
        if code == 0 {
            q_tail += lq.exp();
            continue;
        }
        let lp = lo + (code - 1) as f64 * step;
        let p = lp.exp();
        a += p;
        b += p * (lp - lq);
    }
    // Renormalized: p = p̂ / s over the coded entries and tail / s.
    let s = a + tail;
    let mut kl = (b - s.ln() * a) / s;
    if tail > 0.0 {
        let t = tail / s;
        kl += t * (t.ln() - q_tail.ln());
    }
    TokenKl {
        kl,
        agree: argmax(q) == base_top,
        nll: lse_q - q[target as usize] as f64,
        base_nll,
    }
}

/// An opened base file: its header and tokens, positioned at its first record.
pub struct BaseFile {
    /// The file's path.
    pub path: PathBuf,
    /// Its header.
    pub header: BaseHeader,
    /// The stored windows' tokens.
    pub tokens: Vec<u32>,
    reader: BufReader<File>,
}

impl BaseFile {
    /// Opens and checks a base file: magic, header, and a length that matches
    /// the header (a truncated file is refused).
    pub fn open(path: &Path) -> Result<Self> {
        let redo = "write it again with `kl_base(dense_model, dataset, path)` or \
                    `sparselab eval --model DENSE --dataset D --save-kl-base FILE`";
        let file = File::open(path)
            .with_context(|| format!("cannot open KL base file {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 12];
        if len < 12 || reader.read_exact(&mut magic).is_err() || &magic[..8] != MAGIC {
            bail!(
                "{} is not a sparselab KL base file (it does not start with {:?}); {redo}",
                path.display(),
                std::str::from_utf8(MAGIC).unwrap()
            );
        }
        let hlen = u32::from_le_bytes(magic[8..12].try_into().unwrap()) as u64;
        ensure!(
            12 + hlen <= len,
            "KL base file {} is truncated ({len} bytes, its header alone needs {}); {redo}",
            path.display(),
            12 + hlen
        );
        let mut json = vec![0u8; hlen as usize];
        reader.read_exact(&mut json)?;
        let header: BaseHeader = serde_json::from_slice(&json).with_context(|| {
            format!(
                "KL base file {} has a corrupt header; {redo}",
                path.display()
            )
        })?;
        ensure!(
            header.format == FORMAT,
            "KL base file {} has format version {}, this sparselab reads version {FORMAT}; {redo}",
            path.display(),
            header.format
        );
        ensure!(
            header.seqlen >= 2 && header.windows >= 1 && header.vocab >= 1,
            "KL base file {} has an impossible header (seqlen {}, windows {}, vocab {}); {redo}",
            path.display(),
            header.seqlen,
            header.windows,
            header.vocab
        );
        let tokens = (header.windows * header.seqlen) as u64;
        let records = (header.windows * (header.seqlen - 1)) as u64;
        let want = 12 + hlen + 4 * tokens + records * header.record_bytes() as u64;
        ensure!(
            len == want,
            "KL base file {} is {} ({len} bytes; its header describes {} windows of {} tokens \
             over a vocabulary of {}, {want} bytes): {redo}",
            path.display(),
            if len < want {
                "truncated"
            } else {
                "longer than its header says"
            },
            header.windows,
            header.seqlen,
            header.vocab
        );
        let mut raw = vec![0u8; 4 * tokens as usize];
        reader.read_exact(&mut raw)?;
        let tokens = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            header,
            tokens,
            reader,
        })
    }

    /// The moments of the stored base NLLs of every record (reads the file
    /// to its end).
    fn stored_nlls(&mut self) -> Result<Moments> {
        let rec = self.header.record_bytes() as i64;
        let mut nll = Moments::default();
        let mut four = [0u8; 4];
        for _ in 0..self.header.windows * (self.header.seqlen - 1) {
            self.reader.seek_relative(16)?;
            self.reader.read_exact(&mut four)?;
            nll.add(f32::from_le_bytes(four) as f64);
            self.reader.seek_relative(rec - 20)?;
        }
        Ok(nll)
    }

    /// Checks that this base can serve `model` on `windows` windows of
    /// `tokens` with `seqlen`; the errors say what differs and what to do.
    fn check(&self, model: &Model, tokens: &[u32], seqlen: usize, windows: usize) -> Result<()> {
        let h = &self.header;
        let p = self.path.display();
        let vocab = model.config.vocab_size();
        ensure!(
            vocab == h.vocab,
            "KL base file {p} was computed over a vocabulary of {} tokens (model {}), the \
             evaluated model has {vocab}: a base must come from the same model family; compute \
             one from this model's dense version",
            h.vocab,
            h.model
        );
        ensure!(
            seqlen == h.seqlen,
            "KL base file {p} holds windows of {} tokens, the evaluation asks for seqlen \
             {seqlen}: evaluate with seqlen {} (the default with a base file) or compute a new base",
            h.seqlen,
            h.seqlen
        );
        ensure!(
            windows <= h.windows,
            "KL base file {p} holds {} windows, the evaluation asks for {windows}: evaluate at \
             most {} (nsamples) or compute a base with more windows",
            h.windows,
            h.windows
        );
        let n = windows * seqlen;
        ensure!(
            tokens.len() >= n,
            "the evaluation text has {} tokens, fewer than the {windows} windows of {seqlen} \
             tokens KL base file {p} holds",
            tokens.len()
        );
        if let Some(i) = (0..n).find(|&i| tokens[i] != self.tokens[i]) {
            bail!(
                "KL base file {p} was computed on other tokens (dataset {:?} through model {}'s \
                 tokenizer): window {}, position {} holds token {} there and {} here. Use the \
                 dataset and tokenizer the base was made with, or compute a new base",
                h.dataset,
                h.model,
                i / seqlen,
                i % seqlen,
                self.tokens[i],
                tokens[i]
            );
        }
        Ok(())
    }
}

/// [`write_base`] unless `path` holds a base of the same model name, tokens,
/// window length and windows already (then it is reused as it is). Returns
/// what the file holds and whether it was reused.
pub fn ensure_base(
    model: &Model,
    tokens: &[u32],
    opts: &KlOptions,
    path: &Path,
    model_name: &str,
    dataset: &str,
) -> Result<(BaseInfo, bool)> {
    let start = Instant::now();
    let seqlen = opts.seqlen.unwrap_or_else(|| default_seqlen(model));
    let windows = window_count(model, tokens.len(), seqlen, opts.max_windows)?;
    if path.is_file() {
        if let Ok(mut base) = BaseFile::open(path) {
            let same = base.header.model == model_name
                && base.header.windows == windows
                && base.check(model, tokens, seqlen, windows).is_ok();
            if same {
                let nll = base.stored_nlls()?;
                let ppl = nll.mean().exp();
                let info = BaseInfo {
                    path: path.to_path_buf(),
                    bytes: std::fs::metadata(path)?.len(),
                    windows,
                    seqlen,
                    vocab: base.header.vocab,
                    ppl,
                    ppl_se: ppl * nll.se(),
                    seconds: start.elapsed().as_secs_f64(),
                };
                return Ok((info, true));
            }
        }
    }
    let opts = KlOptions {
        seqlen: Some(seqlen),
        ..opts.clone()
    };
    Ok((
        write_base(model, tokens, &opts, path, model_name, dataset)?,
        false,
    ))
}

/// KL divergence of `model` from the base stored in `base` (see the module
/// documentation) on the windows of `tokens`. The window length defaults to
/// the base's, the windows to all the base holds; both must match it.
pub fn kl_divergence(
    model: &Model,
    base: &Path,
    tokens: &[u32],
    opts: &KlOptions,
) -> Result<KlResult> {
    let start = Instant::now();
    let mut base = BaseFile::open(base)?;
    let seqlen = opts.seqlen.unwrap_or(base.header.seqlen);
    let windows = opts.max_windows.unwrap_or(base.header.windows);
    let windows = window_count(model, tokens.len(), seqlen, Some(windows)).and_then(|w| {
        ensure!(
            w == windows || opts.max_windows.is_some(),
            "the evaluation text has {} tokens, fewer than the {windows} windows of \
                 {seqlen} tokens KL base file {} holds",
            tokens.len(),
            base.path.display()
        );
        Ok(w)
    })?;
    base.check(model, tokens, seqlen, windows)?;
    let vocab = base.header.vocab;
    let rec_bytes = base.header.record_bytes();
    let batches = window_batches(tokens, seqlen, windows, opts.batch);
    let mut per_token: Vec<TokenKl> = Vec::with_capacity(windows * (seqlen - 1));
    let mut buf = Vec::new();
    forward_batches(model, &batches, "KL divergence", opts.quiet, |i, h| {
        let b = batches[i];
        for w in 0..b.n {
            let ids = &b.ids[w * seqlen..(w + 1) * seqlen];
            for p0 in (0..seqlen - 1).step_by(HEAD_CHUNK) {
                let rows = HEAD_CHUNK.min(seqlen - 1 - p0);
                let logits = host_f32(
                    &model
                        .head(&h.narrow(0, w, 1)?.narrow(1, p0, rows)?)?
                        .squeeze(0)?,
                )?;
                buf.resize(rows * rec_bytes, 0);
                base.reader
                    .read_exact(&mut buf)
                    .with_context(|| format!("reading KL base file {}", base.path.display()))?;
                let targets = &ids[p0 + 1..p0 + 1 + rows];
                let out: Vec<TokenKl> = crate::compute::kernels::with_cpu_f32(&logits, |l| {
                    l.par_chunks(vocab)
                        .zip(buf.par_chunks(rec_bytes))
                        .zip(targets.par_iter())
                        .map(|((q, rec), &t)| compare_row(rec, q, t))
                        .collect()
                })?;
                per_token.extend(out);
            }
        }
        Ok(())
    })?;
    Ok(summarize(&per_token, windows, seqlen, start))
}

/// The statistics of the per-token comparisons.
fn summarize(per_token: &[TokenKl], windows: usize, seqlen: usize, start: Instant) -> KlResult {
    let (mut kl, mut agree) = (Moments::default(), Moments::default());
    let (mut nll, mut base_nll) = (Moments::default(), Moments::default());
    let mut cross = 0f64;
    for t in per_token {
        kl.add(t.kl);
        agree.add(if t.agree { 1.0 } else { 0.0 });
        nll.add(t.nll);
        base_nll.add(t.base_nll);
        cross += t.nll * t.base_nll;
    }
    let mut sorted: Vec<f64> = per_token.iter().map(|t| t.kl).collect();
    sorted.sort_by(f64::total_cmp);
    let n = per_token.len() as f64;
    let ppl = nll.mean().exp();
    let base_ppl = base_nll.mean().exp();
    // Delta method on exp(mean nll) − exp(mean base nll), with the covariance
    // of the two NLLs (llama.cpp's "Mean PPL(Q)-PPL(base)").
    let cov = cross / n - nll.mean() * base_nll.mean();
    let var = ppl * ppl * nll.variance() + base_ppl * base_ppl * base_nll.variance()
        - 2.0 * ppl * base_ppl * cov;
    KlResult {
        kl: kl.mean(),
        kl_se: kl.se(),
        kl_median: quantile(&sorted, 0.5),
        kl_p99: quantile(&sorted, 0.99),
        kl_max: sorted.last().copied().unwrap_or(f64::NAN),
        top1: agree.mean(),
        top1_se: agree.se(),
        ppl,
        ppl_se: ppl * nll.se(),
        base_ppl,
        base_ppl_se: base_ppl * base_nll.se(),
        delta_ppl: ppl - base_ppl,
        delta_ppl_se: (var.max(0.0) / (n - 1.0)).sqrt(),
        windows,
        seqlen,
        tokens: per_token.len(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// [`kl_divergence`] against a base model held in memory: its base file is
/// written to a temporary file (deleted afterwards) and read back. To compare
/// several models against one base, write the base once with [`write_base`].
pub fn kl_against_model(
    model: &Model,
    base: &Model,
    tokens: &[u32],
    opts: &KlOptions,
) -> Result<KlResult> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the KL base")?;
    let path = dir.path().join("base.klb");
    let opts = KlOptions {
        seqlen: Some(opts.seqlen.unwrap_or_else(|| default_seqlen(model))),
        ..opts.clone()
    };
    write_base(base, tokens, &opts, &path, "(in memory)", "(tokens)")?;
    kl_divergence(model, &path, tokens, &opts)
}

impl KlResult {
    /// The one-line summary the CLI and recipes print: KL ± se, median, p99,
    /// max, top-1 agreement ± se, Δppl ± se.
    pub fn text(&self) -> String {
        use super::format_pm;
        format!(
            "KL {} (median {:.4}, p99 {:.4}, max {:.4}), top-1 agreement {} %, Δppl {}",
            format_pm(self.kl, self.kl_se),
            self.kl_median,
            self.kl_p99,
            self.kl_max,
            format_pm(100.0 * self.top1, 100.0 * self.top1_se),
            format_pm(self.delta_ppl, self.delta_ppl_se)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact KL of two logit rows, in f64.
    fn exact(p: &[f32], q: &[f32]) -> f64 {
        let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
        p.iter()
            .zip(q)
            .map(|(&a, &b)| {
                let la = a as f64 - lp;
                la.exp() * (la - (b as f64 - lq))
            })
            .sum()
    }

    #[test]
    fn stored_rows_give_the_exact_kl() {
        // A peaked row with a far tail (entries > 32 nats below the top) and a
        // perturbed copy; and a flat row.
        let v = 3000;
        let p: Vec<f32> = (0..v)
            .map(|i| 12.0 - (i as f32) * 0.02 - ((i * 7919) % 13) as f32 * 0.3)
            .collect();
        let q: Vec<f32> = p
            .iter()
            .enumerate()
            .map(|(i, x)| x + ((i * 31) % 17) as f32 * 0.05 - 0.4)
            .collect();
        let flat: Vec<f32> = (0..v).map(|i| ((i * 13) % 7) as f32 * 0.01).collect();
        for (a, b) in [(&p, &q), (&q, &p), (&flat, &q), (&p, &p)] {
            let (rec, nll) = encode_row(a, 5);
            let got = compare_row(&rec, b, 5);
            let want = exact(a, b);
            // One token, not a mean over many: its rounding errors do not
            // average out (measured: at most 1.3e-4 relative on these rows).
            assert!(
                (got.kl - want).abs() <= 1e-3 * want.max(1e-3),
                "stored {} vs exact {want}",
                got.kl
            );
            assert!((nll - (log_sum_exp(a) - a[5] as f64)).abs() < 1e-12);
        }
        let (rec, _) = encode_row(&p, 0);
        let tail = f32::from_le_bytes(rec[12..16].try_into().unwrap());
        assert!(tail > 0.0 && tail < 1e-12, "tail mass {tail}");
    }
}
