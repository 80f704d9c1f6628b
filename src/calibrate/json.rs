//! `compression.json`: what a compression run did, per linear and per run, with
//! enough detail (settings, calibration, program version) to reproduce it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::Calibration;
use crate::model::Model;
use crate::report::{git_revision, version, LinearReport, RunInfo, REPORT_FORMAT};
use crate::runtime::device::{device_name, dtype_name};

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
