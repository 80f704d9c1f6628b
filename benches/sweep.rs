//! Seconds per configuration of a sweep over one cached calibration, on the
//! opt-tiny fixture (CPU): bit budgets of 4.0, 3.5, 3.75, 4.25 and 4.5 bits
//! over MI importance scores after 50% SparseGPT, each a fresh copy of the
//! model calibrated with the same `cache` directory, then evaluated.
//!
//! Two sweeps: `sequential: false` (every layer's statistics from the dense
//! model: the first configuration computes them, the later ones only compress
//! and evaluate), and a sequential sweep whose configurations differ from
//! layer 2 on (layers 0–2 reuse the cache). Goal: the later configurations
//! cost less than a quarter of the first. Figures only, no asserts.
//!
//! `cargo bench --bench sweep`. Environment: `SPARSELAB_FIXTURES` (default
//! ../shared), `SPARSELAB_BENCH_WINDOWS` (calibration windows, default 128 as
//! in the reference protocol),
//! `SPARSELAB_BENCH_SEQLEN` (default 512), `SPARSELAB_BENCH_EVAL` (evaluation
//! windows of that length, default 4).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use sparselab::calibrate::{CalibOptions, Calibration, LayerWork};
use sparselab::compress::Method;
use sparselab::compress::{
    allocate_bits, AllocMethod, AllocOptions, BitWidths, ImportanceOptions, QuantOptions,
    SparseGptOptions, SparsityPattern,
};
use sparselab::eval::{perplexity, PplOptions};
use sparselab::model::{LoadOptions, Model};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One configuration: a `target`-bit budget over MI scores on the layers from
/// `from` on, uniform 4 bits before. Returns (seconds, ppl, layers computed,
/// seconds scoring, compressing and evaluating).
fn configure(
    dir: &str,
    opts: &CalibOptions,
    tokens: &[u32],
    eval: &PplOptions,
    target: f64,
    from: usize,
) -> Result<(f64, f64, usize, [f64; 3])> {
    let start = Instant::now();
    let mut model = Model::load(dir, &LoadOptions::default())?;
    let mut calib = Calibration::new(&model, opts.clone())?;
    let mut score_s = 0.0;
    calib.run(&mut model, |w: &mut LayerWork| {
        for linear in w.linears() {
            let bits = if w.index >= from {
                let t = Instant::now();
                let scores = w.score(linear, "mi", &ImportanceOptions::default())?;
                score_s += t.elapsed().as_secs_f64();
                let alloc = AllocOptions {
                    method: AllocMethod::Budget { target_avg: target },
                    ..AllocOptions::default()
                };
                BitWidths::PerColumn(allocate_bits(&scores, &alloc)?)
            } else {
                BitWidths::Uniform(4)
            };
            let method = Method::SparseGpt(SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
                quant: Some(QuantOptions {
                    bits,
                    ..QuantOptions::default()
                }),
                ..SparseGptOptions::default()
            });
            w.compress(linear, &method)?;
        }
        Ok(())
    })?;
    let e = perplexity(&model, tokens, eval)?;
    Ok((
        start.elapsed().as_secs_f64(),
        e.ppl,
        calib.cache_counts().computed,
        [score_s, calib.timings.compress, e.seconds],
    ))
}

fn main() -> Result<()> {
    let fx = std::env::var_os("SPARSELAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    let dir = fx.join("models/opt-tiny");
    if !dir.is_dir() {
        println!("skipped: no opt-tiny fixture at {}", dir.display());
        return Ok(());
    }
    let dir = dir.to_string_lossy().into_owned();
    let (windows, seqlen, eval_windows) = (
        env("SPARSELAB_BENCH_WINDOWS", 128),
        env("SPARSELAB_BENCH_SEQLEN", 512),
        env("SPARSELAB_BENCH_EVAL", 4),
    );
    let text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw"))
        .context("reading wiki.test.raw")?;
    let tokens = Model::load(&dir, &LoadOptions::default())?
        .tokenizer()?
        .encode(&text)?;
    let eval = PplOptions {
        seqlen: Some(seqlen),
        max_windows: Some(eval_windows),
        quiet: true,
        ..PplOptions::default()
    };
    println!(
        "threads: {}; opt-tiny, calibration {windows} × {seqlen} tokens of wiki.valid, \
         evaluation {eval_windows} × {seqlen} of wiki.test",
        rayon::current_num_threads()
    );
    for (label, sequential, from) in [
        ("sequential: false, budgets on every layer", false, 0),
        (
            "sequential, budgets from layer 2 on (layers 0-2 reusable)",
            true,
            2,
        ),
    ] {
        let cache = tempfile::tempdir()?;
        let opts = CalibOptions {
            dataset: fx
                .join("data/wikitext2/wiki.valid.raw")
                .to_string_lossy()
                .into_owned(),
            nsamples: windows,
            seqlen: Some(seqlen),
            quiet: true,
            cache: Some(cache.path().to_path_buf()),
            sequential,
            ..CalibOptions::default()
        };
        println!("\n{label}:");
        let plain = CalibOptions {
            cache: None,
            ..opts.clone()
        };
        let (secs, ppl, _, _) = configure(&dir, &plain, &tokens, &eval, 4.0, from)?;
        println!("  without a cache: {secs:.2} s, ppl {ppl:.3} (the first configuration below also writes the cache)");
        println!(
            "  target  seconds  ppl       layers computed  vs first  (score  compress  eval s)"
        );
        let mut first = None;
        let mut later = Vec::new();
        for (i, target) in [4.0, 3.5, 3.75, 4.25, 4.5].into_iter().enumerate() {
            let (secs, ppl, computed, [sc, comp, ev]) =
                configure(&dir, &opts, &tokens, &eval, target, from)?;
            let f = *first.get_or_insert(secs);
            if i > 0 {
                later.push(secs);
            }
            println!(
                "  {target:>6.2}  {secs:>7.2}  {ppl:>8.3}  {computed:>15}  {:>8.2}  ({sc:>5.2}  {comp:>8.2}  {ev:>6.2})",
                secs / f
            );
        }
        let mean = later.iter().sum::<f64>() / later.len() as f64;
        println!(
            "  first {:.2} s, later configurations {:.2} s on average ({:.2} of the first; goal < 0.25)",
            first.unwrap_or(0.0),
            mean,
            mean / first.unwrap_or(1.0)
        );
        let size: u64 = walk_size(cache.path());
        println!("  cache: {:.1} MiB", size as f64 / (1 << 20) as f64);
    }
    println!("\npeak RSS {:.0} MiB", common::peak_rss_mib());
    Ok(())
}

/// Bytes under a directory.
fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
