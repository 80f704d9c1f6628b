//! `compression.json`: what a compression run did, per linear and per run, with
//! enough detail (settings, calibration, program version) to reproduce it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::calibrate::{Calibration, LinearReport, Method};
use crate::compress::{BitWidths, SparsityPattern};
use crate::model::Model;
use crate::runtime::device::{device_name, dtype_name};

/// The `format` field of `compression.json`.
pub const REPORT_FORMAT: &str = "sparselab-compression-report";

/// sparselab's version (`CARGO_PKG_VERSION`).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The git revision this build came from, or `unknown` (built outside a git
/// checkout, or without git).
pub fn git_revision() -> &'static str {
    option_env!("SPARSELAB_GIT_REV").unwrap_or("unknown")
}

/// Run-length encoding of a sequence of bit widths: `(bits, run)` pairs.
pub fn bits_rle(bits: impl IntoIterator<Item = u32>) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = Vec::new();
    for b in bits {
        match out.last_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// Expands [`bits_rle`] back to one width per channel.
pub fn bits_from_rle(rle: &[(u32, usize)]) -> Vec<u32> {
    rle.iter()
        .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
        .collect()
}

/// A sparsity pattern as JSON: `{"structure": "dense" | "unstructured" | "n:m", …}`.
pub fn pattern_json(p: &SparsityPattern) -> Value {
    match *p {
        SparsityPattern::Dense => json!({"structure": "dense"}),
        SparsityPattern::Unstructured { sparsity } => {
            json!({"structure": "unstructured", "sparsity": sparsity})
        }
        SparsityPattern::NM { n, m } => json!({"structure": "n:m", "n": n, "m": m}),
    }
}

/// The settings of a method as JSON: pattern, and for SparseGPT/GPTQ the block
/// size, damping, order and quantizer.
pub fn method_settings(method: &Method) -> Value {
    match method {
        Method::SparseGpt(o) => json!({
            "pattern": pattern_json(&o.pattern),
            "blocksize": o.blocksize,
            "percdamp": o.percdamp,
            "act_order": o.act_order,
            "quantizer": o.quant.as_ref().map(|q| json!({
                "bits": match &q.bits {
                    BitWidths::Uniform(b) => json!(b),
                    BitWidths::PerColumn(_) => json!("per-channel"),
                },
                "sym": q.quantizer.sym,
                "mse": q.quantizer.mse,
                "norm": q.quantizer.norm,
                "grid": q.quantizer.grid,
                "maxshrink": q.quantizer.maxshrink,
                "groupsize": q.groupsize,
                "static_groups": q.static_groups,
                "range": "per-row min-max containing 0",
            })),
        }),
        Method::Magnitude(p) | Method::Wanda(p) => json!({"pattern": pattern_json(p)}),
    }
}

/// What the caller knows about a run that the calibration does not: the
/// script, its `--set` values, the command line, the wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunInfo {
    /// The script's text, when a script drove the run.
    pub script: Option<String>,
    /// The script's path.
    pub script_path: Option<String>,
    /// `--set key=value` overrides (any JSON).
    pub set: Option<Value>,
    /// The command line.
    pub command: Option<String>,
    /// Wall time of the whole run, in seconds.
    pub wall_seconds: Option<f64>,
    /// Anything else worth keeping (perplexities, …).
    pub extra: Option<Value>,
}

/// One linear's entry: the report, the saved tensor's name, and its mask
/// structure pulled up from the settings.
fn linear_json(model: &Model, r: &LinearReport) -> Value {
    let canonical = model.linear_weight_name(r.layer, &r.linear);
    let stored = model
        .weights()
        .meta(&canonical)
        .map(|m| m.stored_name.clone())
        .unwrap_or(canonical);
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("tensor".into(), stored.into());
        let structure = r
            .settings
            .pointer("/pattern/structure")
            .cloned()
            .unwrap_or(Value::Null);
        o.insert("mask_structure".into(), structure);
    }
    v
}

/// The whole `compression.json` for a model compressed by `calib`.
pub fn compression_report(model: &Model, calib: &Calibration, run: &RunInfo) -> Value {
    let reports = &calib.reports;
    let weights: f64 = reports.iter().map(|r| (r.rows * r.columns) as f64).sum();
    let weighted = |f: &dyn Fn(&LinearReport) -> f64| {
        if weights == 0.0 {
            0.0
        } else {
            reports
                .iter()
                .map(|r| f(r) * (r.rows * r.columns) as f64)
                .sum::<f64>()
                / weights
        }
    };
    let quantized: Vec<&LinearReport> = reports.iter().filter(|r| r.avg_bits.is_some()).collect();
    let qweights: f64 = quantized.iter().map(|r| (r.rows * r.columns) as f64).sum();
    let avg_bits = (qweights > 0.0).then(|| {
        quantized
            .iter()
            .map(|r| r.avg_bits.unwrap_or(0.0) * (r.rows * r.columns) as f64)
            .sum::<f64>()
            / qweights
    });
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "format": REPORT_FORMAT,
        "version": 1,
        "sparselab": {"version": version(), "git_revision": git_revision()},
        "created_unix": created,
        "model": {
            "spec": model.spec,
            "architecture": format!("{:?}", model.arch()),
            "layers": model.num_layers(),
            "source_format": format!("{:?}", model.weights().format()),
            "dtype": dtype_name(model.dtype()),
            "device": device_name(model.device()),
        },
        "calibration": {
            "dataset": calib.opts.dataset,
            "nsamples": calib.windows(),
            "seqlen": calib.seqlen(),
            "seed": calib.opts.seed,
            "batch": calib.opts.windows_per_pass(calib.seqlen()),
            "true_sequential": calib.opts.true_sequential,
            "reservoir": calib.opts.reservoir,
            "gemm": calib.opts.gemm.name(),
            "checkpoint": calib.opts.checkpoint.as_ref().map(|p| p.display().to_string()),
            "policy_fingerprint": (!calib.opts.fingerprint.is_empty()).then(|| calib.opts.fingerprint.clone()),
            "resumed_after_layers": calib.resumed_layers,
        },
        "run": run,
        "timings": calib.timings,
        "summary": {
            "linears": reports.len(),
            "weights": weights,
            "sparsity": weighted(&|r| r.sparsity),
            "avg_bits": avg_bits,
            "rel_error_mean": if reports.is_empty() { 0.0 } else {
                reports.iter().map(|r| r.rel_error).sum::<f64>() / reports.len() as f64
            },
        },
        "linears": reports.iter().map(|r| linear_json(model, r)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips() {
        let bits = vec![4, 4, 4, 2, 8, 8, 4];
        let rle = bits_rle(bits.iter().copied());
        assert_eq!(rle, vec![(4, 3), (2, 1), (8, 2), (4, 1)]);
        assert_eq!(bits_from_rle(&rle), bits);
        assert!(bits_rle(std::iter::empty()).is_empty());
    }
}
