//! Sequential SparseGPT on an OPT-125M-shaped model with random weights (12
//! layers, 768 wide): 16 windows × 512 tokens at 50% sparsity + 4 bits on CPU.
//! Prints seconds per decoder layer, the shares of forward passes, Hessians and
//! OBS, the FLOPs done and the GFLOP/s reached against this machine's measured
//! f32 GEMM rate, the relative output error of the linears, and peak memory
//! (overall and per stage); on a CPU with AVX512-BF16 the same job again with
//! bf16 GEMMs (`gemm: bf16`); then the same job in PyTorch
//! (`benches/torch_sparsegpt.py`, a straightforward port of the reference) when
//! a Python with torch and transformers is available (`SPARSELAB_PYTHON`).
//!
//! `cargo bench --bench prune_throughput`; environment: `SPARSELAB_BENCH_WINDOWS`
//! (16), `SPARSELAB_BENCH_SEQLEN` (512), `SPARSELAB_BENCH_LAYERS` (12),
//! `SPARSELAB_BENCH_DEVICE` (`cpu`; `cuda` in a `--features cuda` build, where
//! the PyTorch baseline runs on the GPU too), `SPARSELAB_BENCH_GEMMS` (which of
//! `f32,bf16` to run; both where the CPU has bf16).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{peak_rss_mib, rss_split_mib};
use sparselab::calibrate::{uniform_policy, CalibOptions, Calibration, LayerFilter};
use sparselab::compress::Method;
use sparselab::compress::{BitWidths, QuantOptions, SparseGptOptions, SparsityPattern};
use sparselab::compute::kernels::CpuGemm;
use sparselab::model::random::{opt_config, write_random_model};
use sparselab::model::{LoadOptions, Model};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn device() -> Result<Device> {
    sparselab::runtime::device::parse_device(
        &std::env::var("SPARSELAB_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()),
    )
}

/// The device's f32 GEMM rate in GFLOP/s: the best of five products the size
/// of an fc1 over 4096 tokens. On the CPU through faer into a buffer allocated
/// once (so that no page faults are timed), on a device through candle.
fn gemm_rate(device: &Device) -> Result<f64> {
    let (n, k, m) = (4096, 768, 3072);
    let flops = 2.0 * (n * k * m) as f64;
    let mut best = f64::MAX;
    if device.is_cpu() {
        use faer::{Accum, Mat, Par};
        let x = Mat::<f32>::from_fn(n, k, |i, j| ((i * 7 + j * 3) % 11) as f32 * 0.1);
        let w = Mat::<f32>::from_fn(k, m, |i, j| ((i * 5 + j) % 13) as f32 * 0.1);
        let mut out = Mat::<f32>::zeros(n, m);
        for _ in 0..5 {
            let t = Instant::now();
            faer::linalg::matmul::matmul(
                out.as_mut(),
                Accum::Replace,
                x.as_ref(),
                w.as_ref(),
                1.0,
                Par::rayon(0),
            );
            best = best.min(t.elapsed().as_secs_f64());
        }
        return Ok(flops / best / 1e9);
    }
    let x = Tensor::randn(0f32, 1., (n, k), device)?;
    let w = Tensor::randn(0f32, 1., (m, k), device)?;
    for _ in 0..5 {
        let t = Instant::now();
        x.matmul(&w.t()?)?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(flops / best / 1e9)
}

fn main() -> Result<()> {
    sparselab::runtime::alloc::return_freed_memory();
    // The measured run happens in a fresh child process, so that the memory used
    // to write the random checkpoint does not count towards its peak.
    if let Ok(dir) = std::env::var("SPARSELAB_BENCH_CHILD") {
        return measure(Path::new(&dir));
    }
    let (windows, seqlen, layers) = (
        env_or("SPARSELAB_BENCH_WINDOWS", 16),
        env_or("SPARSELAB_BENCH_SEQLEN", 512),
        env_or("SPARSELAB_BENCH_LAYERS", 12),
    );
    let (d, f, vocab) = (768usize, 3072usize, 50272usize);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("opt-125m-random");
    write_random_model(
        &dir,
        &opt_config(vocab, d, layers, 12, f, 2048),
        DType::F32,
        0,
    )?;
    let ids: Vec<Vec<u32>> = (0..windows)
        .map(|w| {
            (0..seqlen)
                .map(|i| (((w * seqlen + i) as u64 * 2_654_435_761) % vocab as u64) as u32)
                .collect()
        })
        .collect();
    std::fs::write(dir.join("windows.json"), serde_json::to_string(&ids)?)?;
    let mut gemms = vec!["f32"];
    // The bf16 option where it can run: the same job, with its numerics.
    if device()?.is_cpu() && sparselab::compute::bf16_gemm::available() {
        gemms.push("bf16");
    }
    if let Ok(only) = std::env::var("SPARSELAB_BENCH_GEMMS") {
        gemms.retain(|g| only.split(',').any(|o| o.trim() == *g));
    }
    for gemm in gemms {
        let status = Command::new(std::env::current_exe()?)
            .env("SPARSELAB_BENCH_CHILD", &dir)
            .env("SPARSELAB_BENCH_GEMM", gemm)
            .status()?;
        anyhow::ensure!(status.success(), "the measured run ({gemm} GEMMs) failed");
    }
    torch_baseline(&dir)
}

fn measure(dir: &Path) -> Result<()> {
    let ids: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("windows.json"))?)?;
    let (windows, seqlen) = (ids.len(), ids[0].len());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let layers = config["num_hidden_layers"].as_u64().unwrap_or(12) as usize;
    let (d, f) = (768usize, 3072usize);
    let device = device()?;
    let gemm = gemm_rate(&device)?;
    // Its buffers stay in the allocator's heaps otherwise, counted below.
    sparselab::runtime::alloc::trim();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let baseline = common::status_mib("VmRSS:");

    let start = Instant::now();
    let load = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    let mut model = Model::load(dir.to_str().unwrap(), &load)?;
    // Compressed layers go to disk as they are produced, as a run on a model
    // larger than memory would keep them.
    model.weights_mut().spill_to_disk(None)?;
    let precision =
        CpuGemm::parse(&std::env::var("SPARSELAB_BENCH_GEMM").unwrap_or_else(|_| "f32".into()))?;
    let opts = CalibOptions {
        nsamples: windows,
        gemm: precision,
        // As `sparselab prune` does: no activation sample for importance metrics.
        reservoir: 0,
        quiet: true,
        ..CalibOptions::default()
    };
    let mut calib = Calibration::from_windows(&model, ids, opts)?;
    let setup_peak = peak_rss_mib();
    let method = Method::SparseGpt(SparseGptOptions {
        pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
        quant: Some(QuantOptions {
            bits: BitWidths::Uniform(4),
            ..QuantOptions::default()
        }),
        ..SparseGptOptions::default()
    });
    // The layers driven by hand (as `Calibration::run` does), so that the peak of
    // each stage can be read: the kernel's high-water mark is reset before each.
    let mut policy = uniform_policy(method, LayerFilter::default());
    let mut stage_peak = [0f64; 3];
    let mut staged = |i: usize, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        f()?;
        stage_peak[i] = stage_peak[i].max(peak_rss_mib());
        Ok(())
    };
    loop {
        let mut work = None;
        staged(0, &mut || {
            work = calib.next_layer(&model)?;
            Ok(())
        })?;
        let Some(mut work) = work else { break };
        staged(1, &mut || policy(&mut work))?;
        let mut work = Some(work);
        staged(2, &mut || {
            calib.commit(&mut model, work.take().expect("committed once"))
        })?;
    }
    device.synchronize()?;
    let total = start.elapsed().as_secs_f64();
    let peak = stage_peak.iter().fold(setup_peak, |a, &b| a.max(b));
    let (anon, file) = rss_split_mib();

    // FLOPs actually asked of the machine (approximate for OBS, exact for GEMMs).
    let n = (windows * seqlen) as f64;
    let (d, f, t) = (d as f64, f as f64, seqlen as f64);
    let linear_fwd = 2.0 * n * (4.0 * d * d + 2.0 * d * f);
    let attn_fwd = 2.0 * n * d * t; // causal: half of q·kᵀ and p·v
                                    // Hessian pass stops before fc2's GEMM; the commit pass runs everything.
    let forward = (linear_fwd - 2.0 * n * d * f) + 2.0 * attn_fwd + linear_fwd;
    // One Hessian per distinct input (q/k/v share one), one triangle each.
    let hessian = n * (3.0 * d * d + f * f);
    // Per linear: one Cholesky and one triangular inverse (n³/3 each), the lazy
    // updates (rows·n²) and the relative error's two triangular products (2·rows·n²).
    let obs_linear = |rows: f64, cols: f64| 0.67 * cols.powi(3) + 3.0 * rows * cols * cols;
    let obs = 4.0 * obs_linear(d, d) + obs_linear(f, d) + obs_linear(d, f);
    let flops = layers as f64 * (forward + hessian + obs);
    let tm = &calib.timings;
    let layer_mib = (4.0 * d * d + 2.0 * d * f) * 4.0 / 1048576.0;
    let acts_mib = n * d * 4.0 / 1048576.0;
    println!(
        "sparselab  OPT-125M-shaped ({layers} layers), {windows} x {seqlen} tokens, 50% + 4 bits, f32 weights, {} GEMMs, {} ({} threads)",
        precision.name(),
        sparselab::runtime::device::device_name(&device),
        rayon::current_num_threads()
    );
    println!(
        "  total {total:.2} s (load + embed + {layers} layers); per layer: {}",
        tm.per_layer
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let busy = tm.forward + tm.hessian + tm.compress;
    println!(
        "  forward {:.2} s ({:.0}%), Hessians {:.2} s ({:.0}%), OBS {:.2} s ({:.0}%)",
        tm.forward,
        100.0 * tm.forward / busy,
        tm.hessian,
        100.0 * tm.hessian / busy,
        tm.compress,
        100.0 * tm.compress / busy
    );
    println!(
        "  {:.1} GFLOP in {total:.2} s = {:.1} GFLOP/s; measured GEMM rate {gemm:.1} GFLOP/s ({:.0}%)",
        flops / 1e9,
        flops / total / 1e9,
        100.0 * flops / total / 1e9 / gemm
    );
    let rel: Vec<f64> = calib.reports.iter().map(|r| r.rel_error).collect();
    println!(
        "  relative output error ‖WX − ŴX‖²/‖WX‖² over the {} linears: mean {:.6}, max {:.6}",
        rel.len(),
        rel.iter().sum::<f64>() / rel.len().max(1) as f64,
        rel.iter().fold(0f64, |a, &b| a.max(b))
    );
    println!("  RSS before loading {baseline:.0} MiB; peak while loading and embedding {setup_peak:.0} MiB");
    println!(
        "  peak RSS per stage: Hessians {:.0} MiB, compressing {:.0} MiB, forward of the compressed layer {:.0} MiB",
        stage_peak[0], stage_peak[1], stage_peak[2]
    );
    println!(
        "  peak RSS {peak:.0} MiB; at the end {anon:.0} MiB anonymous + {file:.0} MiB mapped checkpoint pages \
         (one layer's weights {layer_mib:.0} MiB, activations {acts_mib:.0} MiB, embedding {:.0} MiB)",
        50272.0 * d * 4.0 / 1048576.0
    );
    Ok(())
}

fn torch_baseline(dir: &Path) -> Result<()> {
    let python = std::env::var("SPARSELAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output();
    if !matches!(&ok, Ok(o) if o.status.success()) {
        println!("pytorch    skipped: `{python}` cannot import torch and transformers (set SPARSELAB_PYTHON)");
        return Ok(());
    }
    let script = common::baseline_script("torch_sparsegpt.py");
    let device = sparselab::runtime::device::device_name(&device()?);
    let out = Command::new(&python)
        .arg(script)
        .arg(dir)
        .arg(rayon::current_num_threads().to_string())
        .arg(device.split(':').next().unwrap_or("cpu"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        println!(
            "pytorch    failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
