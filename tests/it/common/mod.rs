//! What the integration test modules share: finding the fixtures (../shared
//! beside the crate, or `SPARSELAB_FIXTURES`), the Python and research-model
//! probes, and (`kernel`) a Jupyter client.
#![allow(dead_code)]

pub mod kernel;
pub mod linalg;
pub mod rng;

use std::path::PathBuf;

/// The fixtures directory, or `None` (with the reason printed) when it is missing.
/// Under CI (`CI` set) missing fixtures are a failure, not a skip.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SPARSELAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "fixtures not found at {} (set SPARSELAB_FIXTURES)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: fixtures not found at {} (set SPARSELAB_FIXTURES)",
        dir.display()
    );
    None
}

/// A Python interpreter that can import every module in `modules`: the one
/// `SPARSELAB_PYTHON` names, else `python3`. `None` (with the reason printed)
/// when there is none; under CI (`CI` set) that is a failure, not a skip,
/// because `.ci/run` installs one and a silent skip would hide a broken install.
pub fn python(modules: &[&str]) -> Option<String> {
    let py = std::env::var("SPARSELAB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = format!("import {}", modules.join(", "));
    let why = match std::process::Command::new(&py)
        .args(["-c", &probe])
        .output()
    {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => format!(
            "`{py} -c \"{probe}\"` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => format!("cannot run `{py}`: {e}"),
    };
    let hint = format!(
        "set SPARSELAB_PYTHON to a python with {} (.ci/run builds one from \
         tests/reference/requirements.txt)",
        modules.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}; {hint}");
    }
    eprintln!("skipped: {why}; {hint}");
    None
}

/// Calibration on `data/wikitext2/wiki.valid.raw` of the fixtures (read as a
/// local file: no BOS): `nsamples` windows of `seqlen` tokens, quiet.
pub fn wiki_calib(
    fx: &std::path::Path,
    nsamples: usize,
    seqlen: usize,
) -> sparselab::calibrate::CalibOptions {
    sparselab::calibrate::CalibOptions {
        dataset: fx
            .join("data/wikitext2/wiki.valid.raw")
            .to_string_lossy()
            .into_owned(),
        nsamples,
        seqlen: Some(seqlen),
        quiet: true,
        ..Default::default()
    }
}

/// WikiText-2 test perplexity of `model` over the first `windows` windows of
/// `seqlen` tokens of the fixtures' `wiki.test.raw`.
pub fn wiki_test_ppl(
    fx: &std::path::Path,
    model: &sparselab::model::Model,
    seqlen: usize,
    windows: usize,
) -> f64 {
    let text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw")).unwrap();
    let tokens = model.tokenizer().unwrap().encode(&text).unwrap();
    let opts = sparselab::eval::PplOptions {
        seqlen: Some(seqlen),
        max_windows: Some(windows),
        quiet: true,
        ..Default::default()
    };
    sparselab::eval::perplexity(model, &tokens, &opts)
        .unwrap()
        .ppl
}

/// Largest absolute elementwise difference of two tensors of one shape, compared
/// on the host in f32 (either may live on a device or be half precision).
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let host = |t: &candle_core::Tensor| {
        t.to_device(&candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    };
    (host(a) - host(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The real research model, SmolLM2-135M-Instruct as a Q4_1 GGUF file: the path
/// `SPARSELAB_SMOLLM2` names, else the cache `tools/fetch-smollm2.sh` fills
/// (`~/.cache/sparselab-smollm2`). `None` (with how to get it printed) when
/// it is missing; under CI (`CI` set) that is a failure, because `.ci/run`
/// fetches it.
pub fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("SPARSELAB_SMOLLM2")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(".cache/sparselab-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            })
        })?;
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "SmolLM2-135M GGUF not found at {} (run `bash tools/fetch-smollm2.sh`, or set \
         SPARSELAB_SMOLLM2 to the file)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}
