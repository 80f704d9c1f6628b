//! `compression.json`: what a compression run did, per linear and per run, with
//! enough detail (settings, calibration, program version) to reproduce it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{CalibrateSettings, Calibration};
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

/// The calibration's settings under their option names ([`CalibrateSettings`],
/// as `calibrate` and `sparselab prune` take them), with the dataset and how
/// many layers a checkpoint supplied.
fn calibration_json(calib: &Calibration) -> Value {
    let mut v = serde_json::to_value(CalibrateSettings::of(&calib.opts, calib.seqlen()))
        .unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        // Every option, null where the run left it unset, so that reports of
        // different runs have the same keys.
        for key in <CalibrateSettings as crate::options::Declared>::KEYS {
            o.entry(*key).or_insert(Value::Null);
        }
        o.remove("quiet");
        o.insert("dataset".into(), calib.opts.dataset.clone().into());
        // The windows the data gave (fewer than asked where a text is short).
        o.insert("nsamples".into(), calib.windows().into());
        o.insert("resumed_after_layers".into(), calib.resumed_layers.into());
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
        "calibration": calibration_json(calib),
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

/// A run's report: `compression.json` ([`compression_report`]) with `extra`'s
/// entries added at the top level (a run's evaluations under `"eval"`). What
/// `sparselab prune --report` and a script's `write_report` write.
pub fn run_report(
    model: &Model,
    calib: &Calibration,
    run: &RunInfo,
    extra: serde_json::Map<String, Value>,
) -> Value {
    let mut v = compression_report(model, calib, run);
    if let Value::Object(o) = &mut v {
        o.extend(extra);
    }
    v
}

/// Writes a report as indented JSON.
pub fn write_report(path: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))
}
