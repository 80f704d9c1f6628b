//! The real research model, SmolLM2-135M-Instruct as a Q4_1 GGUF file
//! (`tools/fetch-smollm2.sh`): its config, logits and perplexity against
//! transformers' loading of the same file, SparseGPT against magnitude pruning
//! on it, and a pruned GGUF model saved and loaded by transformers.
//!
//! Kept small (a few windows of 256 tokens, a few layers): the heavy
//! measurements are in `docs/results.md`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use sparselab::calibrate::{CalibOptions, Calibration};
use sparselab::compress::Method;
use sparselab::compress::{
    fasterprune, magnitude_prune, relative_output_error, SparseGptOptions, SparsityPattern,
};
use sparselab::model::{Arch, CheckpointFormat, LoadOptions, Model, ModelConfig, SaveOptions};

const HALF: SparsityPattern = SparsityPattern::Unstructured { sparsity: 0.5 };
const SEQLEN: usize = 256;
const WINDOWS: usize = 4;

fn load(gguf: &Path) -> Model {
    Model::load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn wiki_test(fx: &Path) -> PathBuf {
    fx.join("data/wikitext2/wiki.test.raw")
}

/// Runs a script of tests/reference with the test python; its last stdout line
/// is JSON.
fn reference(py: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let path = format!("{}/tests/reference/{script}", env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(py).arg(&path).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn config_comes_from_the_metadata() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let model = load(&gguf);
    let ModelConfig::Llama(c) = &model.config else {
        panic!("not a Llama config")
    };
    assert_eq!(model.arch(), Arch::Llama);
    assert_eq!(model.weights().format(), CheckpointFormat::Gguf);
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!((c.vocab_size, c.rope_theta), (49152, 100000.0));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9, "{}", c.rms_norm_eps);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    // SmolLM's byte-level BPE adds no BOS, so a named dataset gets none.
    assert_eq!(model.named_bos(), None);
    assert_eq!(model.tokenizer().unwrap().vocab_size(), 49152);
}

/// A directory holding one GGUF file is that model; two are refused by name.
#[test]
fn a_directory_with_one_gguf_file_is_a_model() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&gguf, dir.path().join("a.gguf")).unwrap();
    let model = Model::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(model.num_layers(), 30);
    std::os::unix::fs::symlink(&gguf, dir.path().join("b.gguf")).unwrap();
    let err = Model::load(dir.path().to_str().unwrap(), &LoadOptions::default())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("a.gguf, b.gguf"), "{msg}");
}

/// Logits of the first 96 tokens within 1e-3 of transformers' (float32, the
/// same GGUF file dequantized by the gguf package), and the perplexity of the
/// first windows within 0.01%: any mistake in the q/k un-permutation, the
/// config or the dequantization moves both by far more.
#[test]
fn logits_and_perplexity_match_transformers() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers", "gguf", "safetensors"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let logits_file = tmp.path().join("logits.safetensors");
    let r = reference(
        &py,
        "ppl_ref.py",
        &[
            gguf.to_str().unwrap(),
            wiki_test(&fx).to_str().unwrap(),
            &SEQLEN.to_string(),
            &WINDOWS.to_string(),
            "--logits",
            logits_file.to_str().unwrap(),
            "96",
        ],
    );
    let model = load(&gguf);
    let theirs = candle_core::safetensors::load(&logits_file, &Device::Cpu).unwrap();
    let ids: Vec<u32> = theirs["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let text = std::fs::read_to_string(wiki_test(&fx)).unwrap();
    let ours_ids = model.tokenizer().unwrap().encode(&text).unwrap();
    assert_eq!(&ours_ids[..ids.len()], &ids[..], "token ids differ");
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let logits = model.forward(&input).unwrap();
    let diff = common::max_abs_diff(&logits, &theirs["logits"]);
    eprintln!("logits of {} tokens: max |Δ| = {diff:.2e}", ids.len());
    assert!(diff < 1e-3, "max abs logit difference {diff}");

    let ours = common::wiki_test_ppl(&fx, &model, SEQLEN, WINDOWS);
    let theirs = r["ppl"].as_f64().unwrap();
    let rel = (ours - theirs).abs() / theirs;
    eprintln!("ppl over {WINDOWS} x {SEQLEN}: sparselab {ours:.6}, transformers {theirs:.6}, rel {rel:.2e}");
    assert!(rel < 1e-4, "sparselab {ours} vs transformers {theirs}");
}

fn calib(fx: &Path) -> CalibOptions {
    common::wiki_calib(fx, 8, SEQLEN)
}

/// Compresses decoder layers `0..layers` with `method`, leaving the rest dense.
fn compress_first_layers(model: &mut Model, fx: &Path, layers: usize, method: &Method) {
    let mut calib = Calibration::new(model, calib(fx)).unwrap();
    while let Some(mut work) = calib.next_layer(model).unwrap() {
        if work.index >= layers {
            break;
        }
        for linear in work.linears() {
            work.compress(linear, method).unwrap();
        }
        calib.commit(model, work).unwrap();
    }
}

/// On a real model the difference is large (unlike the tiny fixtures):
/// SparseGPT at 50% has a lower relative output error than magnitude pruning
/// on every linear of the first layers, and a lower perplexity.
#[test]
fn sparsegpt_beats_magnitude_on_the_real_model() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let Some(fx) = common::fixtures() else { return };
    let layers = 3;
    let mut model = load(&gguf);
    let dense = common::wiki_test_ppl(&fx, &model, SEQLEN, WINDOWS);
    let mut calibration = Calibration::new(&model, calib(&fx)).unwrap();
    let sgpt = Method::SparseGpt(SparseGptOptions {
        pattern: HALF,
        ..SparseGptOptions::default()
    });
    let mut worst_ratio: f64 = 0.0;
    while let Some(mut work) = calibration.next_layer(&model).unwrap() {
        if work.index >= layers {
            break;
        }
        for linear in work.linears() {
            let w = work.weight(linear).unwrap();
            let h = work.hessian(linear).unwrap().hessian().clone();
            let opts = SparseGptOptions {
                pattern: HALF,
                ..SparseGptOptions::default()
            };
            let e_sgpt =
                relative_output_error(&w, &fasterprune(&w, &h, &opts).unwrap().weight, &h).unwrap();
            let e_mag =
                relative_output_error(&w, &magnitude_prune(&w, &HALF).unwrap().weight, &h).unwrap();
            eprintln!(
                "layer {} {linear}: sparsegpt {e_sgpt:.4e}, magnitude {e_mag:.4e}",
                work.index
            );
            assert!(
                e_sgpt < e_mag,
                "layer {} {linear}: sparsegpt {e_sgpt:.4e} >= magnitude {e_mag:.4e}",
                work.index
            );
            worst_ratio = worst_ratio.max(e_sgpt / e_mag);
            work.compress(linear, &sgpt).unwrap();
        }
        calibration.commit(&mut model, work).unwrap();
    }
    let ppl_sgpt = common::wiki_test_ppl(&fx, &model, SEQLEN, WINDOWS);

    let mut mag_model = load(&gguf);
    compress_first_layers(&mut mag_model, &fx, layers, &Method::Magnitude(HALF));
    let ppl_mag = common::wiki_test_ppl(&fx, &mag_model, SEQLEN, WINDOWS);
    eprintln!(
        "first {layers} layers at 50%: dense {dense:.3}, sparsegpt {ppl_sgpt:.3}, magnitude \
         {ppl_mag:.3}; worst error ratio sparsegpt/magnitude {worst_ratio:.3}"
    );
    assert!(
        ppl_sgpt < ppl_mag,
        "sparsegpt {ppl_sgpt} vs magnitude {ppl_mag}"
    );
    // The real model reacts to pruning, which the fixtures barely do.
    assert!(
        ppl_mag > dense * 1.01,
        "magnitude {ppl_mag} vs dense {dense}"
    );
}

/// A GGUF model pruned and saved is a Hugging Face directory (config.json,
/// tokenizer files, safetensors) that transformers loads with the same
/// perplexity sparselab measures.
#[test]
fn pruned_gguf_model_saves_as_a_transformers_checkpoint() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers", "safetensors"]) else {
        return;
    };
    let mut model = load(&gguf);
    let sgpt = Method::SparseGpt(SparseGptOptions {
        pattern: HALF,
        ..SparseGptOptions::default()
    });
    compress_first_layers(&mut model, &fx, 2, &sgpt);
    let ours = common::wiki_test_ppl(&fx, &model, SEQLEN, 2);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    let summary = model.save(&out, &SaveOptions::default()).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            summary.files.iter().any(|x| x == f),
            "{f} not in {:?}",
            summary.files
        );
    }
    // sparselab reads its own save back as the same model.
    let back = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(back.weights().format(), CheckpointFormat::Safetensors);
    let again = common::wiki_test_ppl(&fx, &back, SEQLEN, 2);
    assert!((again - ours).abs() / ours < 1e-6, "{again} vs {ours}");

    let r = reference(
        &py,
        "load_saved.py",
        &[
            out.to_str().unwrap(),
            wiki_test(&fx).to_str().unwrap(),
            &SEQLEN.to_string(),
            "2",
        ],
    );
    for k in ["missing", "unexpected", "mismatched"] {
        assert_eq!(r[k], serde_json::json!([]), "{k} keys: {}", r[k]);
    }
    let theirs = r["ppl"].as_f64().unwrap();
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "saved (2 layers at 50%): sparselab {ours:.5}, transformers {theirs:.5}, rel {rel:.2e}, \
         zeros {}",
        r["zeros"]
    );
    assert!(rel < 1e-4, "{ours} vs {theirs}");
    assert!(r["zeros"].as_f64().unwrap() > 0.03, "zeros {}", r["zeros"]);
}

/// Unsupported content is refused by name, never loaded as a different model.
#[test]
fn unsupported_gguf_content_is_named() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, arch: &str, tensors: &[(&str, GgmlDType)]| -> PathBuf {
        let path = tmp.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let arch_v = Value::String(arch.to_string());
        let meta: Vec<(&str, &Value)> = vec![("general.architecture", &arch_v)];
        let qs: Vec<(String, QTensor)> = tensors
            .iter()
            .map(|(n, dt)| {
                let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
                (n.to_string(), QTensor::quantize(&t, *dt).unwrap())
            })
            .collect();
        let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (n.as_str(), q)).collect();
        gguf_file::write(&mut f, &meta, &refs).unwrap();
        path
    };
    let msg = |p: &Path| {
        format!(
            "{:#}",
            Model::load(p.to_str().unwrap(), &LoadOptions::default())
                .err()
                .unwrap()
        )
    };
    let m = msg(&write(
        "gpt2.gguf",
        "gpt2",
        &[("token_embd.weight", GgmlDType::F32)],
    ));
    assert!(
        m.contains("architecture `gpt2`") && m.contains("llama"),
        "{m}"
    );
    let m = msg(&write(
        "odd.gguf",
        "llama",
        &[("blk.0.ffn_gate_exps.weight", GgmlDType::F32)],
    ));
    assert!(m.contains("blk.0.ffn_gate_exps.weight"), "{m}");
}
