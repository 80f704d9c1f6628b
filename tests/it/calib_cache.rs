//! The calibration statistics cache: a sweep that changes layer k onward reuses
//! layers 0..=k and ends with exactly the weights and perplexity of a fresh run;
//! `sequential: false` takes every layer's statistics from the dense model and a
//! second configuration computes none; entries of another model state or with a
//! tampered key are not used. (Interruption: tests/it/interrupt.rs.) The entries
//! as an artifact (docs/stats-format.md): bit-exact round trips, packed
//! triangles, inputs stored only where a calibration can need them, old
//! formats refused, and the documented numpy reader run on a written entry.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sparselab::calibrate::cache::{StatCache, StatsDType, StoreOptions, VERSION};
use sparselab::calibrate::{CalibOptions, Calibration, LayerWork};
use sparselab::compress::reservoir::ActivationReservoir;
use sparselab::compress::{BitWidths, QuantOptions, SparseGptOptions, SparsityPattern};
use sparselab::compress::{HessianAccumulator, Method};
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

// ---- The statistics artifact (docs/stats-format.md) ----

/// Deterministic values in [-1, 1) (SplitMix64).
fn noise(seed: u64, len: usize) -> Vec<f32> {
    crate::common::rng::symmetric_f32s(seed, len)
}

/// Batches `[2, 8, columns]` of input `which` (three per input).
fn batches(which: u64, columns: usize) -> Vec<Tensor> {
    (0..3)
        .map(|b| {
            Tensor::from_vec(
                noise(which * 100 + b, 2 * 8 * columns),
                (2, 8, columns),
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect()
}

/// Two inputs (48 and 80 columns) accumulated from [`batches`], with
/// reservoirs of 20 rows; `q/k/v` read the first, `fc2` the second.
fn sample_stats() -> (
    Vec<HessianAccumulator>,
    Vec<ActivationReservoir>,
    Vec<(String, usize)>,
) {
    let mut accs = Vec::new();
    let mut res = Vec::new();
    for (i, cols) in [48usize, 80].into_iter().enumerate() {
        let mut a = HessianAccumulator::new(cols, &Device::Cpu).unwrap();
        let mut r = ActivationReservoir::new(20, cols, 5 + i as u64).unwrap();
        for x in batches(i as u64, cols) {
            a.add_batch(&x).unwrap();
            r.add_batch(&x).unwrap();
        }
        accs.push(a);
        res.push(r);
    }
    let owner = ["q_proj", "k_proj", "v_proj", "fc2"]
        .iter()
        .enumerate()
        .map(|(k, n)| (n.to_string(), usize::from(k == 3)))
        .collect();
    (accs, res, owner)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn test_cache(dir: &Path, sequential: bool) -> StatCache {
    let run = serde_json::json!({ "model": "test", "nsamples": 6, "seqlen": 8 });
    StatCache::with_run(dir, run, DType::BF16, sequential).unwrap()
}

#[test]
fn an_entry_reads_back_bit_for_bit_with_packed_hessians_and_no_inputs() {
    let dir = tempdir();
    let cache = test_cache(dir.path(), true);
    let (accs, res, owner) = sample_stats();
    // A third input whose Hessian is not exactly symmetric is stored whole.
    let mut skew = noise(9, 16 * 16);
    skew[1] += 1.0;
    let skew = Tensor::from_vec(skew, (16, 16), &Device::Cpu).unwrap();
    let mut accs = accs;
    accs.push(
        HessianAccumulator::from_parts(
            skew,
            Tensor::ones(16, DType::F32, &Device::Cpu).unwrap(),
            3,
        )
        .unwrap(),
    );
    let mut owner = owner;
    owner.push(("o_proj".into(), 2));
    let key = cache.key(3, 11, 12);
    assert_eq!(key.version, VERSION);
    assert_eq!(key.stats_dtype, "F32");
    // Reservoirs are per input or not at all.
    assert!(cache.store(&key, &accs, &res, &owner, None).is_err());
    let mut res = res;
    let mut r = ActivationReservoir::new(4, 16, 1).unwrap();
    r.add_batch(&Tensor::ones((2, 3, 16), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    res.push(r);
    let entry = cache.store(&key, &accs, &res, &owner, None).unwrap();
    assert!(!entry.join("inputs.safetensors").exists());
    let e = StatCache::inputs(&entry, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no layer inputs"), "{e}");

    let back = cache.load(&key, &Device::Cpu).unwrap().unwrap();
    assert!(!back.has_inputs);
    assert_eq!(back.accs.len(), 3);
    for (a, b) in accs.iter().zip(&back.accs) {
        assert_eq!(bits(a.hessian()), bits(b.hessian()), "Hessians differ");
        assert_eq!(bits(a.scaler_row()), bits(b.scaler_row()));
        assert_eq!(a.nsamples(), b.nsamples());
    }
    for (a, b) in res.iter().zip(&back.reservoirs) {
        assert_eq!(a.as_slice(), b.as_slice());
        assert_eq!(
            (a.capacity(), a.seen(), a.rng_state()),
            (b.capacity(), b.seen(), b.rng_state())
        );
    }
    let want: std::collections::BTreeMap<String, usize> = owner.iter().cloned().collect();
    assert_eq!(back.owner, want);

    // The file holds the triangles (n(n+1)/2 values), the skewed one whole,
    // and describes itself.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("entry.json")).unwrap()).unwrap();
    let layouts: Vec<&str> = v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["layout"].as_str().unwrap())
        .collect();
    assert_eq!(layouts, ["lower-packed", "lower-packed", "full"]);
    assert_eq!(v["inputs"][0]["hessian"]["shape"][0], 48 * 49 / 2);
    assert_eq!(
        v["inputs"][0]["linears"],
        serde_json::json!(["q_proj", "k_proj", "v_proj"])
    );
    assert_eq!(v["protocol"]["statistics"], "sequential");
    assert!(v["layer_inputs"].is_null());
    let st = candle_core::safetensors::load(entry.join("stats.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(st["input.1.hessian"].dims(), [80 * 81 / 2]);
    assert_eq!(st["input.2.hessian"].dims(), [16, 16]);
}

#[test]
fn stored_inputs_come_back_and_the_stored_dtype_is_part_of_the_key() {
    let dir = tempdir();
    let mut cache = test_cache(dir.path(), true);
    // Sequential: inputs for every layer but the first and the last.
    let stored: Vec<bool> = (0..4).map(|k| cache.stores_inputs(k, 4)).collect();
    assert_eq!(stored, [false, true, true, false]);
    assert!((0..4).all(|k| !test_cache(dir.path(), false).stores_inputs(k, 4)));

    let (accs, res, owner) = sample_stats();
    let inputs = batches(7, 48);
    let key = cache.key(1, 1, 2);
    let entry = cache
        .store(&key, &accs, &res, &owner, Some(&inputs))
        .unwrap();
    let back = StatCache::inputs(&entry, &Device::Cpu).unwrap();
    assert_eq!(back.len(), inputs.len());
    for (a, b) in inputs.iter().zip(&back) {
        assert_eq!(bits(a), bits(b));
    }
    assert!(cache.load(&key, &Device::Cpu).unwrap().unwrap().has_inputs);

    // In the model's dtype (bf16 here): rounded, under another key.
    cache
        .set_options(StoreOptions {
            dtype: StatsDType::Model,
            inputs: None,
        })
        .unwrap();
    let bkey = cache.key(1, 1, 2);
    assert_eq!(bkey.stats_dtype, "BF16");
    assert!(cache.load(&bkey, &Device::Cpu).unwrap().is_none());
    cache.store(&bkey, &accs, &res, &owner, None).unwrap();
    let b = cache.load(&bkey, &Device::Cpu).unwrap().unwrap();
    for (a, b) in accs.iter().zip(&b.accs) {
        let rounded = a.hessian().to_dtype(DType::BF16).unwrap();
        assert_eq!(bits(&rounded), bits(b.hessian()));
        assert_eq!(
            bits(a.scaler_row()),
            bits(b.scaler_row()),
            "scales stay f32"
        );
    }
    // The f32 entry is still there for an f32 calibration.
    cache.set_options(StoreOptions::default()).unwrap();
    let f = cache.load(&key, &Device::Cpu).unwrap().unwrap();
    assert_eq!(bits(accs[1].hessian()), bits(f.accs[1].hessian()));
}

#[test]
fn a_cache_with_old_format_entries_is_refused_naming_them() {
    let dir = tempdir();
    let old = dir.path().join("layer00000-0123456789abcdef");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("inputs.safetensors"), vec![0u8; 4096]).unwrap();
    let v1 = serde_json::json!({
        "key": { "format": "sparselab-calibration-cache", "version": 1, "run": {},
                 "layer": 0, "prefix": "0", "weights": "0" },
        "owner": { "fc1": 0 }, "accs": [{ "nsamples": 4 }], "reservoirs": []
    });
    std::fs::write(old.join("entry.json"), v1.to_string()).unwrap();
    let run = serde_json::json!({ "model": "test" });
    let e = StatCache::with_run(dir.path(), run.clone(), DType::F32, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("1 entries written in version 1"), "{e}");
    assert!(e.contains(&format!("reads version {VERSION}")), "{e}");
    assert!(e.contains("layer00000-0123456789abcdef"), "{e}");
    assert!(e.contains("Delete them"), "{e}");
    // Once they are gone the directory opens.
    std::fs::remove_dir_all(&old).unwrap();
    assert!(StatCache::with_run(dir.path(), run, DType::F32, true).is_ok());
}

#[test]
fn the_documented_numpy_reader_reads_an_entry_sparselab_wrote() {
    let Some(py) = common::python(&["numpy"]) else {
        return;
    };
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/stats-format.md"))
        .unwrap();
    let start = doc
        .find("# stats-format reader")
        .expect("docs/stats-format.md has the reader block");
    let reader = &doc[start..start + doc[start..].find("```").unwrap()];

    let dir = tempdir();
    let mut cache = test_cache(dir.path(), false);
    let (accs, res, owner) = sample_stats();
    let f32_entry = cache
        .store(&cache.key(2, 3, 4), &accs, &res, &owner, None)
        .unwrap();
    cache
        .set_options(StoreOptions {
            dtype: StatsDType::Model,
            inputs: None,
        })
        .unwrap();
    let bf16_entry = cache
        .store(&cache.key(2, 3, 4), &accs, &res, &owner, None)
        .unwrap();
    // The inputs the Hessians were accumulated from, as raw f32.
    for (i, cols) in [48usize, 80].into_iter().enumerate() {
        let x: Vec<u8> = batches(i as u64, cols)
            .iter()
            .flat_map(|t| bits(t).into_iter().flat_map(u32::to_le_bytes))
            .collect();
        std::fs::write(dir.path().join(format!("x{i}.f32")), x).unwrap();
    }
    let script = format!(
        r#"{reader}
import sys
out = sys.argv[1]
entry, inputs = read_entry(sys.argv[2])
assert entry["key"]["layer"] == 2 and entry["protocol"]["statistics"] == "dense"
assert [i["linears"] for i in inputs] == [["q_proj", "k_proj", "v_proj"], ["fc2"]]
worst = 0.0
for k, inp in enumerate(inputs):
    h = inp["hessian"]
    h.astype("<f4").tofile(f"{{out}}/h{{k}}.f32")
    inp["scaler_row"].astype("<f4").tofile(f"{{out}}/s{{k}}.f32")
    n = h.shape[0]
    x = np.fromfile(f"{{out}}/x{{k}}.f32", dtype="<f4").astype(np.float64).reshape(-1, n)
    seqs = 6  # three batches of two windows
    ref = 2.0 / seqs * (x.T @ x)
    worst = max(worst, float(np.abs(h - ref).max() / np.abs(ref).max()))
    sref = (x * x).sum(0) / seqs
    assert np.allclose(inp["scaler_row"], sref, rtol=1e-5), k
    assert inp["reservoir"].shape == (20, n)
    assert np.array_equal(h, h.T)
print("max relative error", worst)
assert worst < 1e-5, worst
_, b = read_entry(sys.argv[3])
for k, inp in enumerate(b):
    inp["hessian"].astype("<f4").tofile(f"{{out}}/b{{k}}.f32")
    assert inp["hessian"].dtype == np.float32
"#
    );
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(&script)
        .arg(dir.path())
        .arg(&f32_entry)
        .arg(&bf16_entry)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: String| -> Vec<u32> {
        std::fs::read(dir.path().join(name))
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    for (k, a) in accs.iter().enumerate() {
        assert_eq!(read(format!("h{k}.f32")), bits(a.hessian()), "input {k}");
        assert_eq!(read(format!("s{k}.f32")), bits(a.scaler_row()), "input {k}");
        let rounded = a.hessian().to_dtype(DType::BF16).unwrap();
        assert_eq!(read(format!("b{k}.f32")), bits(&rounded), "bf16 input {k}");
    }
}

/// Whether the entry at `dir` stores its layer's inputs.
fn has_inputs(dir: &Path) -> bool {
    dir.join("inputs.safetensors").is_file()
}

fn entry_layer(dir: &Path) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("entry.json")).unwrap()).unwrap();
    v["key"]["layer"].as_u64().unwrap() as usize
}

#[test]
fn entries_without_inputs_serve_every_use_that_does_not_need_them() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["opt-tiny", "llama-tiny"] {
        // Dense statistics store no inputs at all.
        let cache = tempdir();
        let (_, _, first) = sweep_run(&fx, name, 0, opts(&fx, Some(cache.path()), false));
        let layers = first.cache_counts().computed;
        assert!(layers >= 3, "{name}");
        assert!(
            entries(cache.path()).iter().all(|e| !has_inputs(e)),
            "{name}"
        );

        // A partial cache (as an interrupted run leaves): the layers found reuse
        // their statistics, the forward passes that the missing ones need run,
        // and the result is that of a run without a cache.
        for e in entries(cache.path()) {
            if entry_layer(&e) >= 2 {
                std::fs::remove_dir_all(e).unwrap();
            }
        }
        let (cached, _, second) = sweep_run(&fx, name, 1, opts(&fx, Some(cache.path()), false));
        let c = second.cache_counts();
        assert_eq!((c.reused, c.computed), (2, layers - 2), "{name}: {c:?}");
        let (fresh, _, _) = sweep_run(&fx, name, 1, opts(&fx, None, false));
        assert_same_weights(&cached, &fresh);
        // Complete again: nothing runs but the compression.
        let (_, _, third) = sweep_run(&fx, name, 1, opts(&fx, Some(cache.path()), false));
        let c = third.cache_counts();
        assert_eq!(
            (c.reused, c.forwards_skipped),
            (layers, layers),
            "{name}: {c:?}"
        );

        // A sequential calibration that compresses from layer 2 on shares the
        // dense entries of layers 0–2 (nothing before them is compressed): it
        // reuses their Hessians, computes the inputs the entries lack, and
        // matches a sequential run without a cache.
        let seq_from = |fx: &Path, cache: Option<&Path>| {
            let mut model = load(fx, name);
            let mut calib = Calibration::new(&model, opts(fx, cache, true)).unwrap();
            calib
                .run(&mut model, |w: &mut LayerWork| {
                    if w.index >= 2 {
                        for l in w.linears() {
                            w.compress(l, &method(false))?;
                        }
                    }
                    Ok(())
                })
                .unwrap();
            (model, calib.cache_counts())
        };
        let dense_only = tempdir();
        let mut model = load(&fx, name);
        let mut calib =
            Calibration::new(&model, opts(&fx, Some(dense_only.path()), false)).unwrap();
        calib.run(&mut model, |_| Ok(())).unwrap();
        let (seq, c) = seq_from(&fx, Some(dense_only.path()));
        assert_eq!((c.reused, c.computed), (3, layers - 3), "{name}: {c:?}");
        assert_eq!(c.forwards_skipped, 1, "only after the last layer: {c:?}");
        let (seq_fresh, _) = seq_from(&fx, None);
        assert_same_weights(&seq, &seq_fresh);
        // The sequential run stored inputs with the entries it wrote, for the
        // layers between the first and the last.
        for e in entries(dense_only.path()) {
            let k = entry_layer(&e);
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.join("entry.json")).unwrap())
                    .unwrap();
            let want = v["protocol"]["statistics"] == "sequential" && k + 1 < layers;
            assert_eq!(has_inputs(&e), want, "{name} layer {k}");
        }
    }
}
