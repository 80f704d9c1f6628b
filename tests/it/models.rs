//! Fixture models against the Python reference: logits, legacy layouts, dtypes.

use crate::common;

use candle_core::{DType, Device, Tensor};
use sparselab::model::{LoadOptions, Model};

fn load(dir: &std::path::Path, dtype: Option<DType>) -> Model {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    Model::load(dir.to_str().unwrap(), &opts).unwrap_or_else(|e| panic!("{e:#}"))
}

/// (input_ids as u32 [1, t], reference logits f32 [1, t, vocab]).
fn reference(dir: &std::path::Path) -> (Tensor, Tensor) {
    let t = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu)
        .unwrap();
    let ids = t["input_ids"].to_dtype(DType::U32).unwrap();
    (ids, t["logits"].clone())
}

fn check_reference(name: &str) {
    let Some(fx) = common::fixtures() else { return };
    let dir = fx.join("models").join(name);
    let model = load(&dir, Some(DType::F32));
    let (ids, want) = reference(&dir);
    let got = model.forward(&ids).unwrap();
    assert_eq!(got.dims(), want.dims());
    let diff = common::max_abs_diff(&got, &want);
    println!("{name}: max |Δlogit| = {diff:e}");
    assert!(diff <= 1e-4, "{name}: max abs difference {diff} > 1e-4");
}

#[test]
fn opt_tiny_matches_reference_logits() {
    check_reference("opt-tiny");
}

#[test]
fn llama_tiny_matches_reference_logits() {
    check_reference("llama-tiny");
}

fn check_legacy(name: &str, legacy: &str) {
    let Some(fx) = common::fixtures() else { return };
    let a = load(&fx.join("models").join(name), Some(DType::F32));
    let b = load(&fx.join("models").join(legacy), Some(DType::F32));
    assert_eq!(
        b.weights().format(),
        sparselab::model::CheckpointFormat::PyTorch
    );
    let (ids, _) = reference(&fx.join("models").join(name));
    let diff = common::max_abs_diff(&a.forward(&ids).unwrap(), &b.forward(&ids).unwrap());
    assert_eq!(diff, 0.0, "{legacy} differs from {name} by {diff}");
    // The tokenizers must agree too (vocab.json + merges.txt against tokenizer.json).
    let text = std::fs::read_to_string(fx.join("data/ptb/ptb.test.txt")).unwrap();
    let text: String = text.chars().take(50_000).collect();
    let ta = a.tokenizer().unwrap().encode(&text).unwrap();
    let tb = b.tokenizer().unwrap().encode(&text).unwrap();
    assert_eq!(ta, tb, "{legacy}'s tokenizer differs from {name}'s");
}

#[test]
fn opt_pytorch_bin_layout_gives_same_logits() {
    check_legacy("opt-tiny", "opt-tiny-pt");
}

#[test]
fn llama_sharded_bin_layout_gives_same_logits() {
    check_legacy("llama-tiny", "llama-tiny-pt");
}
