//! The evaluation primitives beyond `eval_ppl`: perplexity with its standard
//! error, KL divergence and top-1 agreement against a stored base model, and
//! zero-shot tasks from local files ([`crate::eval`]).
//!
//! ```rhai
//! let dense = load_model("models/opt-125m");
//! let base = kl_base(dense, "wikitext2", "cache/opt-125m.wikitext2.klb", #{seqlen: 512, nsamples: 16});
//! // … compress a copy `m` …
//! let r = eval_kl(m, base.path, "wikitext2");
//! print(`ppl ${fmt_pm(r.ppl, r.ppl_se)}, KL ${fmt_pm(r.kl, r.kl_se)}, top-1 ${fmt(100.0 * r.top1, 4)} %`);
//! ```

use std::path::Path;

use rhai::plugin::*;
use rhai::{Dynamic, Map, FLOAT, INT};

use super::handles::{script_err, ModelHandle};
use super::options::{Opts, TaskSettings};
use super::primitives::{engine_quiet, ppl_options};
use super::vector::err;
use crate::eval::KlResult;

type R<T> = Result<T, Box<EvalAltResult>>;

/// The functions of this module, in the order `:help` lists them.
pub const EVALUATION: &[&str] = &[
    "eval_ppl_stats",
    "kl_base",
    "eval_kl",
    "eval_tasks",
    "fmt_pm",
];

fn float(x: f64) -> Dynamic {
    Dynamic::from_float(x as FLOAT)
}

fn int(x: usize) -> Dynamic {
    Dynamic::from_int(x as INT)
}

fn opt_float(x: Option<f64>) -> Dynamic {
    x.map(float).unwrap_or(Dynamic::UNIT)
}

/// A KL result as a script map.
fn kl_map(r: &KlResult) -> Map {
    let mut m = Map::new();
    for (k, v) in [
        ("kl", r.kl),
        ("kl_se", r.kl_se),
        ("kl_median", r.kl_median),
        ("kl_p99", r.kl_p99),
        ("kl_max", r.kl_max),
        ("top1", r.top1),
        ("top1_se", r.top1_se),
        ("ppl", r.ppl),
        ("ppl_se", r.ppl_se),
        ("base_ppl", r.base_ppl),
        ("base_ppl_se", r.base_ppl_se),
        ("delta_ppl", r.delta_ppl),
        ("delta_ppl_se", r.delta_ppl_se),
        ("seconds", r.seconds),
    ] {
        m.insert(k.into(), float(v));
    }
    m.insert("windows".into(), int(r.windows));
    m.insert("seqlen".into(), int(r.seqlen));
    m.insert("tokens".into(), int(r.tokens));
    m.insert("text".into(), r.text().into());
    m
}

/// The tokens of `dataset` for `model` with window length `seqlen`.
fn tokens(m: &crate::model::Model, dataset: &str, seqlen: usize) -> R<Vec<u32>> {
    crate::eval::dataset_tokens(m, dataset, seqlen).map_err(script_err)
}

#[export_module]
pub mod evaluation {
    /// Perplexity of `model` on `dataset` (as `eval_ppl` takes it) with its
    /// standard error: `#{ppl, ppl_se, text, windows, seqlen, tokens, seconds}`,
    /// where `text` is `"35.21 ± 0.42"`. The error is llama.cpp's: the delta
    /// method on the mean NLL over the predicted tokens.
    #[rhai_fn(return_raw)]
    pub fn eval_ppl_stats(ctx: NativeCallContext, model: ModelHandle, dataset: &str) -> R<Map> {
        eval_ppl_stats_with(ctx, model, dataset, Map::new())
    }
    /// `eval_ppl_stats` with options `#{seqlen, nsamples, batch, quiet}` (as
    /// `eval_ppl`'s).
    #[rhai_fn(name = "eval_ppl_stats", return_raw)]
    pub fn eval_ppl_stats_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        dataset: &str,
        options: Map,
    ) -> R<Map> {
        let o = Opts::new("eval_ppl_stats", options)?;
        let opts = ppl_options(&ctx, &o)?;
        let m = model.settled()?;
        let r = crate::eval::eval_dataset(&m, dataset, &opts).map_err(script_err)?;
        let mut out = Map::new();
        out.insert("ppl".into(), float(r.ppl));
        out.insert("ppl_se".into(), float(r.ppl_se));
        out.insert("text".into(), r.text().into());
        out.insert("windows".into(), int(r.windows));
        out.insert("seqlen".into(), int(r.seqlen));
        out.insert("tokens".into(), int(r.tokens));
        out.insert("seconds".into(), float(r.seconds));
        Ok(out)
    }

    /// Computes the base of later `eval_kl` calls: `model`'s next-token
    /// log-probabilities on the windows of `dataset`, stored in the file `path`
    /// (16-bit codes per vocabulary entry; see `sparselab::eval::kl`). A file
    /// already there for the same model, tokens, seqlen and windows is reused.
    /// Returns `#{path, bytes, windows, seqlen, vocab, ppl, ppl_se, reused, seconds}`.
    #[rhai_fn(return_raw)]
    pub fn kl_base(
        ctx: NativeCallContext,
        model: ModelHandle,
        dataset: &str,
        path: &str,
    ) -> R<Map> {
        kl_base_with(ctx, model, dataset, path, Map::new())
    }
    /// `kl_base` with options `#{seqlen, nsamples, batch, quiet}`: window length
    /// (default: the model's, at most 2048), the first `nsamples` windows
    /// (default all), windows per batch, no progress output.
    #[rhai_fn(name = "kl_base", return_raw)]
    pub fn kl_base_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        dataset: &str,
        path: &str,
        options: Map,
    ) -> R<Map> {
        let o = Opts::new("kl_base", options)?;
        let mut opts = ppl_options(&ctx, &o)?;
        let m = model.settled()?;
        let seqlen = opts
            .seqlen
            .unwrap_or_else(|| crate::eval::default_seqlen(&m));
        opts.seqlen = Some(seqlen);
        let tokens = tokens(&m, dataset, seqlen)?;
        let (info, reused) =
            crate::eval::ensure_base(&m, &tokens, &opts, Path::new(path), model.spec(), dataset)
                .map_err(script_err)?;
        let mut out = Map::new();
        out.insert("path".into(), path.into());
        out.insert("bytes".into(), Dynamic::from_int(info.bytes as INT));
        out.insert("windows".into(), int(info.windows));
        out.insert("seqlen".into(), int(info.seqlen));
        out.insert("vocab".into(), int(info.vocab));
        out.insert("ppl".into(), float(info.ppl));
        out.insert("ppl_se".into(), float(info.ppl_se));
        out.insert("reused".into(), reused.into());
        out.insert("seconds".into(), float(info.seconds));
        Ok(out)
    }

    /// KL divergence of `model` from the base stored in the file `base` (see
    /// `kl_base`) on `dataset`, per predicted token over the vocabulary:
    /// `#{kl, kl_se, kl_median, kl_p99, kl_max, top1, top1_se, ppl, ppl_se,
    /// base_ppl, base_ppl_se, delta_ppl, delta_ppl_se, windows, seqlen, tokens,
    /// seconds, text}` (KL in nats; `top1` the fraction of tokens where both
    /// models' most likely token agree). The window length and windows are the
    /// base's; a base made from other tokens or another vocabulary is refused.
    #[rhai_fn(return_raw)]
    pub fn eval_kl(
        ctx: NativeCallContext,
        model: ModelHandle,
        base: &str,
        dataset: &str,
    ) -> R<Map> {
        eval_kl_with(ctx, model, base, dataset, Map::new())
    }
    /// `eval_kl` against a stored base with options `#{seqlen, nsamples, batch,
    /// quiet}` (seqlen and nsamples must agree with the base; nsamples may take
    /// its first windows only).
    #[rhai_fn(name = "eval_kl", return_raw)]
    pub fn eval_kl_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        base: &str,
        dataset: &str,
        options: Map,
    ) -> R<Map> {
        let o = Opts::new("eval_kl", options)?;
        let mut opts = ppl_options(&ctx, &o)?;
        let m = model.settled()?;
        let header = crate::eval::kl::BaseFile::open(Path::new(base))
            .map_err(script_err)?
            .header;
        let seqlen = opts.seqlen.unwrap_or(header.seqlen);
        opts.seqlen = Some(seqlen);
        let tokens = tokens(&m, dataset, seqlen)?;
        let r =
            crate::eval::kl_divergence(&m, Path::new(base), &tokens, &opts).map_err(script_err)?;
        Ok(kl_map(&r))
    }
    /// `eval_kl` against a base model in memory: its log-probabilities go
    /// through a temporary base file, computed anew on every call (for several
    /// models against one base, write the base once with `kl_base`).
    #[rhai_fn(name = "eval_kl", return_raw)]
    pub fn eval_kl_model(
        ctx: NativeCallContext,
        model: ModelHandle,
        base: ModelHandle,
        dataset: &str,
    ) -> R<Map> {
        eval_kl_model_with(ctx, model, base, dataset, Map::new())
    }
    /// `eval_kl` against a base model in memory, with options `#{seqlen,
    /// nsamples, batch, quiet}`.
    #[rhai_fn(name = "eval_kl", return_raw)]
    pub fn eval_kl_model_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        base: ModelHandle,
        dataset: &str,
        options: Map,
    ) -> R<Map> {
        let o = Opts::new("eval_kl", options)?;
        let mut opts = ppl_options(&ctx, &o)?;
        let m = model.settled()?;
        let seqlen = opts
            .seqlen
            .unwrap_or_else(|| crate::eval::default_seqlen(&m));
        opts.seqlen = Some(seqlen);
        let tokens = tokens(&m, dataset, seqlen)?;
        let r = if base.same(&model) {
            crate::eval::kl_against_model(&m, &m, &tokens, &opts)
        } else {
            let b = base.settled()?;
            crate::eval::kl_against_model(&m, &b, &tokens, &opts)
        }
        .map_err(script_err)?;
        Ok(kl_map(&r))
    }

    /// Zero-shot tasks scored by log-likelihood as lm-eval-harness does, from
    /// local files: options `#{tasks, limit, batch, quiet}` (`:help
    /// eval_tasks` lists them) where `tasks` maps task names to JSONL files
    /// (`#{piqa: "piqa.jsonl", arc_easy: "arc.jsonl"}`) or is an array of
    /// `"name=file"` strings; `limit` scores only each file's first documents.
    /// Returns a map from task name to `#{acc, acc_se, acc_norm, acc_norm_se,
    /// ppl, docs, seconds, text}` (fractions; `()` where a metric does not apply).
    #[rhai_fn(return_raw)]
    pub fn eval_tasks(ctx: NativeCallContext, model: ModelHandle, options: Map) -> R<Map> {
        let o = Opts::new("eval_tasks", options)?.parse::<TaskSettings>()?;
        let specs = o.tasks.clone().map(|t| t.0).unwrap_or_default();
        if specs.is_empty() {
            return err(
                "eval_tasks: give the tasks as option `tasks`: a map from task name to its \
                 JSONL file (#{tasks: #{piqa: \"piqa.jsonl\"}}) or an array of \"name=file\"",
            );
        }
        let opts = crate::eval::TaskOptions {
            limit: o.limit,
            batch: o.batch(),
            quiet: o.quiet.unwrap_or_else(|| engine_quiet(&ctx)),
        };
        let m = model.settled()?;
        let results = crate::eval::eval_tasks(&m, &specs, &opts).map_err(script_err)?;
        let mut out = Map::new();
        for r in results {
            let mut t = Map::new();
            t.insert("acc".into(), float(r.acc));
            t.insert("acc_se".into(), float(r.acc_se));
            t.insert("acc_norm".into(), opt_float(r.acc_norm));
            t.insert("acc_norm_se".into(), opt_float(r.acc_norm_se));
            t.insert("ppl".into(), opt_float(r.ppl));
            t.insert("docs".into(), int(r.docs));
            t.insert("seconds".into(), float(r.seconds));
            t.insert("text".into(), r.text().into());
            out.insert(r.task.as_str().into(), t.into());
        }
        Ok(out)
    }

    /// `value ± se` as text, the error to two significant digits and the value
    /// to the same decimal place: `fmt_pm(35.2137, 0.4213)` is `"35.21 ± 0.42"`.
    pub fn fmt_pm(value: FLOAT, se: FLOAT) -> String {
        crate::eval::format_pm(value, se)
    }
}
