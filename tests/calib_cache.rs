//! The calibration statistics cache: a sweep that changes layer k onward reuses
//! layers 0..=k and ends with exactly the weights and perplexity of a fresh run;
//! `sequential: false` takes every layer's statistics from the dense model and a
//! second configuration computes none; entries of another model state or with a
//! tampered key are not used. (Interruption: tests/interrupt.rs.)

mod common;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use sparselab::calibrate::{CalibOptions, Calibration, LayerWork};
use sparselab::compress::Method;
use sparselab::compress::{BitWidths, QuantOptions, SparseGptOptions, SparsityPattern};
use sparselab::model::{LoadOptions, Model};

fn load(fx: &Path, name: &str) -> Model {
    let dir = fx.join("models").join(name);
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// 4 windows of 64 tokens from wiki.valid.raw.
fn opts(fx: &Path, cache: Option<&Path>, sequential: bool) -> CalibOptions {
    CalibOptions {
        dataset: fx
            .join("data/wikitext2/wiki.valid.raw")
            .to_string_lossy()
            .into_owned(),
        nsamples: 4,
        seqlen: Some(64),
        batch: 2,
        reservoir: 256,
        quiet: true,
        cache: cache.map(Path::to_path_buf),
        sequential,
        ..CalibOptions::default()
    }
}

fn ppl(fx: &Path, model: &Model) -> f64 {
    common::wiki_test_ppl(fx, model, 64, 8)
}

/// 50% SparseGPT everywhere; from layer `quant_from` on also 4-bit.
fn method(bits: bool) -> Method {
    Method::SparseGpt(SparseGptOptions {
        pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
        quant: bits.then(|| QuantOptions {
            bits: BitWidths::Uniform(4),
            ..QuantOptions::default()
        }),
        ..SparseGptOptions::default()
    })
}

/// Calibrates a fresh copy of `name` and compresses every linear, quantizing
/// from layer `quant_from` on. Returns the model, its reports' losses and the
/// calibration.
fn sweep_run(
    fx: &Path,
    name: &str,
    quant_from: usize,
    o: CalibOptions,
) -> (Model, Vec<Option<f64>>, Calibration) {
    let mut model = load(fx, name);
    let mut calib = Calibration::new(&model, o).unwrap();
    calib
        .run(&mut model, |w: &mut LayerWork| {
            let m = method(w.index >= quant_from);
            for l in w.linears() {
                w.compress(l, &m)?;
            }
            Ok(())
        })
        .unwrap();
    let losses = calib.reports.iter().map(|r| r.loss).collect();
    (model, losses, calib)
}

/// Every linear weight of every layer, as it is in the model.
fn weights(model: &Model) -> Vec<Tensor> {
    (0..model.num_layers())
        .flat_map(|i| {
            model
                .layer(i)
                .unwrap()
                .linears()
                .iter()
                .map(|l| l.weight().clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_same_weights(a: &Model, b: &Model) {
    for (x, y) in weights(a).iter().zip(weights(b)) {
        let d = common::max_abs_diff(x, &y);
        assert_eq!(d, 0.0, "weights differ by {d}");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Entries (directories) in the cache, no temporary leftovers.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    for p in &out {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with('.'), "leftover temporary entry {name}");
    }
    out
}

#[test]
fn a_sweep_from_layer_k_reuses_the_prefix_and_matches_a_fresh_run() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["opt-tiny", "llama-tiny"] {
        let cache = tempdir();
        // First configuration: quantize from layer 1; fills the cache.
        let (_, _, first) = sweep_run(&fx, name, 1, opts(&fx, Some(cache.path()), true));
        let layers = first.cache_counts().computed;
        assert_eq!(first.cache_counts().reused, 0);
        assert_eq!(entries(cache.path()).len(), layers);

        // Second: quantize from layer 2 on. Layers 0 and 1 get the same
        // compression, so layers 0, 1 and 2 see the same inputs: reused.
        let k = 2;
        let (cached, cached_losses, second) =
            sweep_run(&fx, name, k, opts(&fx, Some(cache.path()), true));
        let c = second.cache_counts();
        assert_eq!(c.reused, k, "{name}: {c:?}");
        assert_eq!(c.computed, layers - k, "{name}: {c:?}");
        // No forward pass was needed for layer 0 (layer 1's inputs were cached),
        // and none after the last layer.
        assert_eq!(c.forwards_skipped, 2, "{name}: {c:?}");

        // The same configuration without any cache.
        let (fresh, fresh_losses, plain) = sweep_run(&fx, name, k, opts(&fx, None, true));
        assert_eq!(plain.cache_counts().reused, 0);
        assert_same_weights(&cached, &fresh);
        assert_eq!(cached_losses, fresh_losses, "{name}: OBS losses differ");
        let (p1, p2) = (ppl(&fx, &cached), ppl(&fx, &fresh));
        assert_eq!(p1, p2, "{name}: perplexity {p1} (cached) vs {p2} (fresh)");

        // The very same configuration again: everything reused.
        let (_, _, third) = sweep_run(&fx, name, k, opts(&fx, Some(cache.path()), true));
        assert_eq!(third.cache_counts().reused, layers);
        assert_eq!(third.cache_counts().computed, 0);
    }
}

#[test]
fn dense_statistics_are_computed_once_per_sweep() {
    let Some(fx) = common::fixtures() else { return };
    let cache = tempdir();
    let (a, _, first) = sweep_run(&fx, "opt-tiny", 0, opts(&fx, Some(cache.path()), false));
    let layers = first.cache_counts().computed;
    assert_eq!(layers, a.num_layers());
    // The dense statistics pass also made every next layer's inputs.
    assert_eq!(
        first.cache_counts().forwards_skipped,
        1,
        "only after the last layer"
    );
    // Another allocation: every layer's statistics come from the cache.
    let (b, _, second) = sweep_run(&fx, "opt-tiny", 2, opts(&fx, Some(cache.path()), false));
    let c = second.cache_counts();
    assert_eq!((c.reused, c.computed), (layers, 0), "{c:?}");
    // Identical to the same configuration computed without a cache.
    let (fresh, _, _) = sweep_run(&fx, "opt-tiny", 2, opts(&fx, None, false));
    assert_same_weights(&b, &fresh);

    // The statistics are the dense model's: the last layer's Hessian equals
    // that of a calibration that compresses nothing.
    let model = load(&fx, "opt-tiny");
    let mut dense = Calibration::new(&model, opts(&fx, None, true)).unwrap();
    let mut model_mut = load(&fx, "opt-tiny");
    let mut dense_h = None;
    let last = model.num_layers() - 1;
    dense
        .run(&mut model_mut, |w| {
            if w.index == last {
                dense_h = Some(w.hessian("fc1")?.hessian().clone());
            }
            Ok(())
        })
        .unwrap();
    let mut m = load(&fx, "opt-tiny");
    let mut nonseq = Calibration::new(&m, opts(&fx, None, false)).unwrap();
    let mut nonseq_h = None;
    nonseq
        .run(&mut m, |w| {
            if w.index == last {
                nonseq_h = Some(w.hessian("fc1")?.hessian().clone());
            }
            for l in w.linears() {
                w.compress(l, &method(true))?;
            }
            Ok(())
        })
        .unwrap();
    let d = (dense_h.unwrap() - nonseq_h.unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn entries_for_other_weights_or_with_another_key_are_not_used() {
    let Some(fx) = common::fixtures() else { return };
    let cache = tempdir();
    let (mut model, _, first) = sweep_run(&fx, "opt-tiny", 0, opts(&fx, Some(cache.path()), true));
    let layers = first.cache_counts().computed;

    // The same model object, now compressed: its layer 0 weights differ, so
    // nothing matches.
    let mut again = Calibration::new(&model, opts(&fx, Some(cache.path()), true)).unwrap();
    again.run(&mut model, |_| Ok(())).unwrap();
    assert_eq!(again.cache_counts().reused, 0);
    assert_eq!(again.cache_counts().computed, layers);

    // Tamper with the stored key of layer 0's entry of the first run: it must
    // be ignored (and replaced), not used.
    let mut tampered = 0;
    for e in entries(cache.path()) {
        let path = e.join("entry.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["key"]["layer"] == 0 {
            v["key"]["run"]["seed"] = 7.into();
            std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
            tampered += 1;
        }
    }
    assert_eq!(tampered, 2, "one layer-0 entry per model state");
    let (_, _, third) = sweep_run(&fx, "opt-tiny", 0, opts(&fx, Some(cache.path()), true));
    let c = third.cache_counts();
    assert_eq!(
        c.computed, 1,
        "only the tampered layer is recomputed: {c:?}"
    );
    assert_eq!(c.reused, layers - 1, "{c:?}");
}

#[test]
fn a_checkpoint_of_the_other_calibration_mode_is_refused() {
    let Some(fx) = common::fixtures() else { return };
    let dir = tempdir();
    let ckpt = dir.path().join("ckpt");
    let mut model = load(&fx, "opt-tiny");
    let o = CalibOptions {
        checkpoint: Some(ckpt.clone()),
        ..opts(&fx, None, false)
    };
    let mut calib = Calibration::new(&model, o.clone()).unwrap();
    let work = calib.next_layer(&model).unwrap().unwrap();
    calib.commit(&mut model, work).unwrap();
    let other = CalibOptions {
        sequential: true,
        ..o.clone()
    };
    let e = Calibration::new(&load(&fx, "opt-tiny"), other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sequential: checkpoint has false, this run has true"),
        "{e}"
    );
    // The same mode resumes after layer 0.
    let again = Calibration::new(&load(&fx, "opt-tiny"), o).unwrap();
    assert_eq!(again.resumed_layers, 1);
}
