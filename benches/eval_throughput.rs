//! Evaluation throughput and peak memory on a model with random weights, against
//! PyTorch eager on the same checkpoint and tokens when a Python with torch and
//! transformers is available. Two shapes (`SPARSELAB_BENCH_ARCH`): `opt`, OPT-125M
//! (12 layers, 768 wide, vocab 50272, the default), and `llama`, SmolLM2-135M
//! (30 layers, 576 wide, 9 query and 3 key/value heads, SwiGLU 1536, vocab
//! 49152, tied head: the real model of docs/results.md).
//!
//! `SPARSELAB_BENCH_MODEL=PATH` benchmarks a real checkpoint instead (a model
//! directory or a GGUF file, such as SmolLM2-135M's from `tools/fetch-smollm2.sh`)
//! on the first windows of WikiText-2's test split (`SPARSELAB_DATA`); PyTorch
//! then loads the same checkpoint (a GGUF through transformers' `gguf_file`,
//! dequantized to f32 as sparselab does), and both print the perplexity.
//!
//! `cargo bench --bench eval_throughput`; environment: `SPARSELAB_BENCH_ARCH`,
//! `SPARSELAB_BENCH_WINDOWS`
//! (default 4), `SPARSELAB_BENCH_SEQLEN` (default 2048), `SPARSELAB_BENCH_BATCH`
//! (windows per forward pass; default `eval_ppl`'s), `SPARSELAB_BENCH_DTYPE`
//! (default f32), `SPARSELAB_BENCH_DEVICE` (default cpu), `SPARSELAB_PYTHON`
//! (default `python3`).

use std::path::Path;
use std::process::Command;

mod common;

use anyhow::{Context, Result};
use candle_core::DType;
use common::peak_rss_mib;
use sparselab::eval::{perplexity, PplOptions};
use sparselab::model::random::{llama_config, opt_config, write_random_model};
use sparselab::model::{LoadOptions, Model};
use sparselab::runtime::device::{parse_device, parse_dtype};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A benchmarked model shape: its label, its `config.json` and the attention's
/// query and key/value heads and head width.
struct Shape {
    label: &'static str,
    config: serde_json::Value,
    vocab: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn shape(arch: &str) -> Result<Shape> {
    Ok(match arch {
        "opt" => Shape {
            label: "OPT-125M-shaped",
            config: opt_config(50272, 768, 12, 12, 3072, 2048),
            vocab: 50272,
            heads: 12,
            kv_heads: 12,
            head_dim: 64,
        },
        "llama" => {
            // SmolLM2-135M's config.json: tied head, rope θ 100000.
            let mut config = llama_config(49152, 576, 30, 9, 3, 1536, 8192);
            config["tie_word_embeddings"] = true.into();
            config["rope_theta"] = 100000.0.into();
            Shape {
                label: "SmolLM2-135M-shaped",
                config,
                vocab: 49152,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
            }
        }
        other => anyhow::bail!("SPARSELAB_BENCH_ARCH={other}: expected opt or llama"),
    })
}

fn main() -> Result<()> {
    sparselab::runtime::alloc::return_freed_memory();
    // The measured run happens in a fresh child process, so that the memory used
    // to write the random checkpoint does not count towards its peak.
    if let Ok(dir) = std::env::var("SPARSELAB_BENCH_CHILD") {
        return measure(Path::new(&dir));
    }
    let windows: usize = env_or("SPARSELAB_BENCH_WINDOWS", "4").parse()?;
    let seqlen: usize = env_or("SPARSELAB_BENCH_SEQLEN", "2048").parse()?;
    let dtype = parse_dtype(&env_or("SPARSELAB_BENCH_DTYPE", "f32"))?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let (model, label, tokens) = match std::env::var("SPARSELAB_BENCH_MODEL") {
        Ok(path) => {
            anyhow::ensure!(
                std::env::var_os("SPARSELAB_BENCH_ARCH").is_none(),
                "SPARSELAB_BENCH_ARCH picks a random model's shape; it has no effect with \
                 SPARSELAB_BENCH_MODEL (unset one of them)"
            );
            let model = Model::load(&path, &LoadOptions::default())?;
            let mut tokens = sparselab::eval::dataset_tokens(&model, "wikitext2", seqlen)?;
            anyhow::ensure!(
                tokens.len() >= windows * seqlen,
                "WikiText-2's test split has fewer than {windows} windows of {seqlen}"
            );
            tokens.truncate(windows * seqlen);
            let label = format!("{}, WikiText-2 test", model_label(&path));
            (path.into(), label, tokens)
        }
        Err(_) => {
            let shape = shape(&env_or("SPARSELAB_BENCH_ARCH", "opt"))?;
            let model = dir.join("random-model");
            write_random_model(&model, &shape.config, DType::F32, 0)?;
            // Deterministic pseudo-random token ids shared with the PyTorch run.
            let tokens: Vec<u32> = (0..windows * seqlen)
                .map(|i| ((i as u64 * 2_654_435_761) % shape.vocab as u64) as u32)
                .collect();
            (model, shape.label.to_string(), tokens)
        }
    };
    std::fs::write(dir.join("tokens.json"), serde_json::to_string(&tokens)?)?;
    let status = Command::new(std::env::current_exe()?)
        .env("SPARSELAB_BENCH_CHILD", dir)
        .env("SPARSELAB_BENCH_CHILD_MODEL", &model)
        .env("SPARSELAB_BENCH_CHILD_LABEL", &label)
        .status()?;
    anyhow::ensure!(status.success(), "the measured run failed");
    torch_baseline(
        &model,
        &dir.join("tokens.json"),
        &label,
        seqlen,
        dtype,
        rayon::current_num_threads(),
    )
}

/// A real checkpoint's name for the printed lines: its file or directory name.
fn model_label(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

fn measure(dir: &Path) -> Result<()> {
    let model_path = std::env::var("SPARSELAB_BENCH_CHILD_MODEL")?;
    let label = std::env::var("SPARSELAB_BENCH_CHILD_LABEL")?;
    let seqlen: usize = env_or("SPARSELAB_BENCH_SEQLEN", "2048").parse()?;
    let dtype = parse_dtype(&env_or("SPARSELAB_BENCH_DTYPE", "f32"))?;
    let device = parse_device(&env_or("SPARSELAB_BENCH_DEVICE", "cpu"))?;
    let tokens: Vec<u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json"))?)?;
    let windows = tokens.len() / seqlen;
    let opts = LoadOptions {
        device,
        dtype: Some(dtype),
        ..LoadOptions::default()
    };
    let model = Model::load(&model_path, &opts)?;
    // The batch `sparselab eval` and `eval_ppl` use unless told otherwise.
    let batch: usize = env_or(
        "SPARSELAB_BENCH_BATCH",
        &PplOptions::default().batch.to_string(),
    )
    .parse()?;
    let ppl_opts = PplOptions {
        seqlen: Some(seqlen),
        batch,
        max_windows: None,
        quiet: true,
    };
    // One warm-up window, then the timed run.
    perplexity(&model, &tokens[..seqlen], &ppl_opts)?;
    let r = perplexity(&model, &tokens, &ppl_opts)?;
    let threads = rayon::current_num_threads();
    println!(
        "sparselab  {}, {windows} x {seqlen} tokens (batches of {batch}), {dtype:?}, {} ({threads} threads): \
         {:.0} tokens/s, {:.2} s, peak RSS {:.0} MiB, ppl {:.2}",
        label,
        sparselab::runtime::device::device_name(model.device()),
        (windows * seqlen) as f64 / r.seconds,
        r.seconds,
        peak_rss_mib(),
        r.ppl
    );
    if std::env::var_os("SPARSELAB_BENCH_MODEL").is_some() {
        return Ok(());
    }
    let shape = shape(&env_or("SPARSELAB_BENCH_ARCH", "opt"))?;
    attention_kernel(&shape, windows.min(batch), seqlen, dtype, model.device())
}

/// Times the causal attention alone on one forward pass's shape (the model's
/// heads), counting the FLOPs of the causal half.
fn attention_kernel(
    shape: &Shape,
    b: usize,
    t: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<()> {
    let (heads, kv_heads, d) = (shape.heads, shape.kv_heads, shape.head_dim);
    let x = |h: usize| candle_core::Tensor::randn(0f32, 1., (b, t, h * d), device)?.to_dtype(dtype);
    let (q, k, v) = (x(heads)?, x(kv_heads)?, x(kv_heads)?);
    let run = || sparselab::model::layers::causal_attention(&q, &k, &v, heads, kv_heads, 0.125);
    run()?;
    device.synchronize()?;
    let reps = 5;
    let start = std::time::Instant::now();
    for _ in 0..reps {
        run()?;
    }
    device.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    let flops = 4.0 * (b * heads * d) as f64 * (t * (t + 1) / 2) as f64;
    println!(
        "attention  [{b}, {t}, {heads}x{d}] per layer: {:.1} ms, {:.0} GFLOP/s (causal half)",
        secs * 1e3,
        flops / secs / 1e9
    );
    Ok(())
}

/// Runs benches/torch_eval.py on the same checkpoint and tokens, if possible.
fn torch_baseline(
    model: &Path,
    tokens: &Path,
    label: &str,
    seqlen: usize,
    dtype: DType,
    threads: usize,
) -> Result<()> {
    let python = env_or("SPARSELAB_PYTHON", "python3");
    let script = common::baseline_script("torch_eval.py");
    let probe = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        println!("pytorch    skipped: `{python}` cannot import torch and transformers (set SPARSELAB_PYTHON)");
        return Ok(());
    }
    let out = Command::new(&python)
        .arg(&script)
        .arg(model)
        .arg(tokens)
        .arg(seqlen.to_string())
        .arg(dtype.as_str())
        .arg(threads.to_string())
        .arg(
            env_or("SPARSELAB_BENCH_DEVICE", "cpu")
                .split(':')
                .next()
                .unwrap_or("cpu"),
        )
        .arg(label)
        .output()
        .context("running the PyTorch baseline")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        println!(
            "pytorch    failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
