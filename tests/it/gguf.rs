//! The real research model, SmolLM2-135M-Instruct as a Q4_1 GGUF file
//! (`tools/fetch-smollm2.sh`): its config, logits and perplexity against
//! transformers' loading of the same file, SparseGPT against magnitude pruning
//! on it, and a pruned GGUF model saved and loaded by transformers.
//!
//! Kept small (a few windows of 256 tokens, a few layers): the heavy
//! measurements are in `docs/results.md`.

use crate::common;

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
    let path = tmp.path().join("split.gguf");
    let meta: Vec<(String, gguf_file::Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("split.count".into(), Value::U16(3)),
        ("split.no".into(), Value::U16(0)),
    ];
    write_gguf(&path, &meta, &[]);
    let m = msg(&path);
    assert!(m.contains("one of 3 split GGUF files"), "{m}");
    let m = msg(&write(
        "odd.gguf",
        "llama",
        &[("blk.0.ffn_gate_exps.weight", GgmlDType::F32)],
    ));
    assert!(m.contains("blk.0.ffn_gate_exps.weight"), "{m}");
}

// ---------------------------------------------------------------------------
// Synthetic GGUF files written here from the llama-tiny fixture (and from
// random tensors): RoPE scaling, hub snapshots holding GGUF files, and every
// tensor type, without the real model.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use sparselab::hub::HubOptions;
use sparselab::model::config::RopeScaling;
use sparselab::model::gguf::{locate, unpermute_rows, GgufCheckpoint};

/// llama.cpp's converter's q/k row permutation (`LlamaModel.permute`):
/// `W.reshape(heads, 2, d/2, in).swapaxes(1, 2)`.
fn permute_rows(t: &Tensor, heads: usize) -> Tensor {
    let dims = t.dims().to_vec();
    let half = dims[0] / heads / 2;
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, 2, half, rest))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape(dims)
        .unwrap()
}

/// llama.cpp's tensor name for transformers' `name`.
fn gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").unwrap();
    let (i, tail) = rest.split_once('.').unwrap();
    let ours = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{i}.{ours}")
}

fn llama_tiny(fx: &Path) -> PathBuf {
    fx.join("models/llama-tiny")
}

/// llama.cpp's `tokenizer.ggml.*` metadata for a byte-level BPE
/// `tokenizer.json` (llama-tiny's: GPT-2's pre-tokenizer, no BOS added).
fn bpe_tokenizer_metadata(tokenizer_json: &Path) -> Vec<(String, Value)> {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (s, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = s.clone();
    }
    let merges: Vec<Value> = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Value::String(match m {
                serde_json::Value::String(s) => s.clone(),
                pair => format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                ),
            })
        })
        .collect();
    let special: Vec<u64> = t["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["special"].as_bool() == Some(true))
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let types: Vec<Value> = (0..tokens.len() as u64)
        .map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 }))
        .collect();
    let s = |x: &str| Value::String(x.into());
    vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("gpt2")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|x| s(x)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// Writes a GGUF file of `metadata` and `tensors`.
fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    gguf_file::write(&mut f, &meta, &ts).unwrap();
}

/// llama-tiny as llama.cpp's converter writes it: its metadata, llama.cpp's
/// names, q/k rows permuted, linears and embeddings as `dtype` (norms f32), and
/// `rope_freqs.weight` when given; `extra` metadata appended.
fn write_llama_tiny_gguf(
    fx: &Path,
    path: &Path,
    dtype: GgmlDType,
    rope_freqs: Option<&[f32]>,
    extra: Vec<(String, Value)>,
) {
    let dir = llama_tiny(fx);
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let mut t = weights[name].to_dtype(candle_core::DType::F32).unwrap();
        if name.ends_with("q_proj.weight") {
            t = permute_rows(&t, 4);
        } else if name.ends_with("k_proj.weight") {
            t = permute_rows(&t, 2);
        }
        let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        tensors.push((gguf_name(name), QTensor::quantize(&t, dt).unwrap()));
    }
    if let Some(f) = rope_freqs {
        let t = Tensor::new(f, &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(4)),
        ("llama.context_length".into(), Value::U32(512)),
        ("llama.embedding_length".into(), Value::U32(256)),
        ("llama.feed_forward_length".into(), Value::U32(688)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.rope.dimension_count".into(), Value::U32(64)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
    ];
    meta.extend(bpe_tokenizer_metadata(&dir.join("tokenizer.json")));
    meta.extend(extra);
    write_gguf(path, &meta, &tensors);
}

/// A Hugging Face directory with llama-tiny's weights and tokenizer and its
/// config.json with `rope_scaling` in place of its plain RoPE.
fn llama_tiny_with_rope_scaling(fx: &Path, out: &Path, rope_scaling: serde_json::Value) {
    let dir = llama_tiny(fx);
    std::fs::create_dir_all(out).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::os::unix::fs::symlink(dir.join(f), out.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut params = rope_scaling;
    params["rope_theta"] = 10_000.0.into();
    config["rope_parameters"] = params;
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
}

/// The per-frequency factors llama.cpp's converter writes as `rope_freqs.weight`
/// for a Llama-3 `rope_scaling` (`LlamaModel.generate_extra_tensors`, with its
/// frequencies in f32 as torch computes them).
fn llama3_rope_freqs(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old: f64,
) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = (1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)) as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let r = if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            r as f32
        })
        .collect()
}

/// The first `n` tokens of WikiText-2 test as llama-tiny's tokenizer gives them.
fn wiki_ids(fx: &Path, model: &Model, n: usize) -> Tensor {
    let text = std::fs::read_to_string(wiki_test(fx)).unwrap();
    let ids = model.tokenizer().unwrap().encode(&text[..20_000]).unwrap();
    Tensor::from_vec(ids[..n].to_vec(), (1, n), &Device::Cpu).unwrap()
}

fn llama_config(model: &Model) -> &sparselab::model::config::LlamaConfig {
    let ModelConfig::Llama(c) = &model.config else {
        panic!("not a Llama config")
    };
    c
}

fn load_err(spec: &str, opts: &LoadOptions) -> String {
    format!("{:#}", Model::load(spec, opts).err().expect("an error"))
}

/// llama-tiny written as a float GGUF is llama-tiny: same tokenizer ids, same
/// logits (the q/k un-permutation and the name mapping in one check).
#[test]
fn llama_tiny_as_gguf_is_llama_tiny() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("llama-tiny-F32.gguf");
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, None, Vec::new());
    let ours = load(&file);
    let hf = Model::load(llama_tiny(&fx).to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(llama_config(&ours).rope_scaling, RopeScaling::Default);
    let text = std::fs::read_to_string(wiki_test(&fx)).unwrap();
    let text = &text[..20_000];
    assert_eq!(
        ours.tokenizer().unwrap().encode(text).unwrap(),
        hf.tokenizer().unwrap().encode(text).unwrap()
    );
    let ids = wiki_ids(&fx, &hf, 256);
    let diff = common::max_abs_diff(&ours.forward(&ids).unwrap(), &hf.forward(&ids).unwrap());
    assert!(diff < 1e-5, "max |Δ logits| {diff}");
}

/// Llama-3.1's RoPE scaling as llama.cpp stores it (per-frequency factors in
/// `rope_freqs.weight`, no metadata) is the `llama3` rope_scaling of the same
/// weights loaded from a Hugging Face directory: the same config, the same
/// logits over 256 positions (which plain RoPE misses by far), and a saved
/// config.json that states it.
#[test]
fn rope_freqs_are_llama3_rope_scaling() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let plain = Model::load(llama_tiny(&fx).to_str().unwrap(), &LoadOptions::default()).unwrap();
    let ids = wiki_ids(&fx, &plain, 256);
    let plain_logits = plain.forward(&ids).unwrap();
    // Llama-3.1's own parameters, then others that the factors alone must give.
    for (i, (factor, low, high, old)) in [(8.0, 1.0, 4.0, 8192), (4.0, 2.0, 16.0, 4096)]
        .into_iter()
        .enumerate()
    {
        let freqs = llama3_rope_freqs(10_000.0, 64, factor, low, high, old as f64);
        assert!(freqs.iter().any(|&r| r > 1.0 && r < factor as f32));
        let file = tmp.path().join(format!("rope{i}.gguf"));
        write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, Some(&freqs), Vec::new());
        let ours = load(&file);
        let hf_dir = tmp.path().join(format!("hf{i}"));
        llama_tiny_with_rope_scaling(
            &fx,
            &hf_dir,
            serde_json::json!({"rope_type": "llama3", "factor": factor,
                "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": old}),
        );
        let hf = Model::load(hf_dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let scaling = &llama_config(&ours).rope_scaling;
        eprintln!("rope_freqs of {factor}/{low}/{high}/{old} read as {scaling:?}");
        let RopeScaling::Llama3 {
            factor: f,
            low_freq_factor: l,
            high_freq_factor: h,
            original_max_position_embeddings: o,
        } = *scaling
        else {
            panic!("{scaling:?}")
        };
        assert_eq!(f, factor);
        if i == 0 {
            assert_eq!((l, h, o), (low, high, old));
        } else {
            // Any original context gives the same frequencies with the right
            // band edges: llama.cpp's 8192 is assumed, so the edges scale by 2.
            assert_eq!((l, h, o), (low * 2.0, high * 2.0, 8192));
        }
        let theirs = hf.forward(&ids).unwrap();
        let logits = ours.forward(&ids).unwrap();
        let diff = common::max_abs_diff(&logits, &theirs);
        let off = common::max_abs_diff(&plain_logits, &theirs);
        eprintln!(
            "logits vs transformers-style llama3: {diff:.2e}; plain RoPE is off by {off:.2e}"
        );
        assert!(diff < 1e-4, "max |Δ logits| {diff}");
        assert!(off > 1e-2, "plain RoPE is off by only {off}");

        // Saved, the model states the same scaling, and runs it.
        let out = tmp.path().join(format!("saved{i}"));
        ours.save(&out, &SaveOptions::default()).unwrap();
        let back = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(&llama_config(&back).rope_scaling, scaling);
        let diff = common::max_abs_diff(&back.forward(&ids).unwrap(), &logits);
        assert!(diff < 1e-5, "saved: max |Δ logits| {diff}");
    }
}

/// Linear RoPE scaling: `rope.scaling.factor` with the type `linear`, or with
/// no type (llama.cpp reads it as linear), or the old `rope.scale_linear`;
/// `none` ignores the factor. Other scalings, factors that no Llama-3 scaling
/// gives, and linear scaling combined with factors are refused by name.
#[test]
fn rope_scaling_metadata_is_read_as_llama_cpp_reads_it() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let hf_dir = tmp.path().join("hf-linear");
    llama_tiny_with_rope_scaling(
        &fx,
        &hf_dir,
        serde_json::json!({"rope_type": "linear", "factor": 2.0}),
    );
    let hf = Model::load(hf_dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let ids = wiki_ids(&fx, &hf, 128);
    let theirs = hf.forward(&ids).unwrap();
    let s = |x: &str| Value::String(x.into());
    let cases: Vec<(&str, Vec<(String, Value)>)> = vec![
        (
            "typed",
            vec![
                ("llama.rope.scaling.type".into(), s("linear")),
                ("llama.rope.scaling.factor".into(), Value::F32(2.0)),
            ],
        ),
        (
            "untyped",
            vec![("llama.rope.scaling.factor".into(), Value::F32(2.0))],
        ),
        (
            "old-key",
            vec![("llama.rope.scale_linear".into(), Value::F32(2.0))],
        ),
    ];
    for (name, meta) in cases {
        let file = tmp.path().join(format!("{name}.gguf"));
        write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, None, meta);
        let ours = load(&file);
        assert_eq!(
            llama_config(&ours).rope_scaling,
            RopeScaling::Linear { factor: 2.0 },
            "{name}"
        );
        let diff = common::max_abs_diff(&ours.forward(&ids).unwrap(), &theirs);
        assert!(diff < 1e-4, "{name}: max |Δ logits| {diff}");
    }
    let file = tmp.path().join("none.gguf");
    let meta = vec![
        ("llama.rope.scaling.type".into(), s("none")),
        ("llama.rope.scaling.factor".into(), Value::F32(2.0)),
    ];
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, None, meta);
    assert_eq!(
        llama_config(&load(&file)).rope_scaling,
        RopeScaling::Default
    );

    let opts = LoadOptions::default();
    let file = tmp.path().join("yarn.gguf");
    let meta = vec![
        ("llama.rope.scaling.type".into(), s("yarn")),
        ("llama.rope.scaling.factor".into(), Value::F32(4.0)),
    ];
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, None, meta);
    let m = load_err(file.to_str().unwrap(), &opts);
    assert!(m.contains("`yarn`") && m.contains("linear"), "{m}");

    let mut odd = llama3_rope_freqs(10_000.0, 64, 8.0, 1.0, 4.0, 8192.0);
    odd[3] = 1.5;
    let file = tmp.path().join("odd.gguf");
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, Some(&odd), Vec::new());
    let m = load_err(file.to_str().unwrap(), &opts);
    assert!(
        m.contains("rope_freqs.weight") && m.contains("llama3"),
        "{m}"
    );

    let file = tmp.path().join("short.gguf");
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, Some(&odd[..8]), Vec::new());
    let m = load_err(file.to_str().unwrap(), &opts);
    assert!(m.contains("8 factors for 32"), "{m}");

    let freqs = llama3_rope_freqs(10_000.0, 64, 8.0, 1.0, 4.0, 8192.0);
    let file = tmp.path().join("both.gguf");
    let meta = vec![("llama.rope.scaling.factor".into(), Value::F32(2.0))];
    write_llama_tiny_gguf(&fx, &file, GgmlDType::F32, Some(&freqs), meta);
    let m = load_err(file.to_str().unwrap(), &opts);
    assert!(m.contains("both linearly"), "{m}");
}

/// A Hugging Face cache (Python's layout: refs, snapshots of symlinks into
/// blobs) in a temporary directory.
struct TempHubCache {
    dir: tempfile::TempDir,
}

impl TempHubCache {
    const COMMIT: &'static str = "0123456789abcdef0123456789abcdef01234567";

    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn repo_root(&self, repo: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// Adds `src` to the `main` snapshot of `repo` as `name` (a blob named by a
    /// stand-in hash, linked from the snapshot).
    fn add(&self, repo: &str, name: &str, src: &Path) {
        let root = self.repo_root(repo);
        let snap = root.join("snapshots").join(Self::COMMIT);
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), Self::COMMIT).unwrap();
        let blob = format!(
            "{:064x}",
            std::fs::read_dir(root.join("blobs")).unwrap().count()
        );
        std::fs::copy(src, root.join("blobs").join(&blob)).unwrap();
        let link = snap.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = name.matches('/').count();
        let up = "../".repeat(depth + 2);
        std::os::unix::fs::symlink(format!("{up}blobs/{blob}"), &link).unwrap();
        assert!(link.is_file(), "{} does not resolve", link.display());
    }

    fn opts(&self) -> LoadOptions {
        LoadOptions {
            hub: HubOptions {
                cache_dir: self.dir.path().to_path_buf(),
                offline: true,
                endpoint: None,
            },
            ..LoadOptions::default()
        }
    }
}

/// `--model org/name` whose cached snapshot holds a GGUF file and no
/// safetensors loads the GGUF file; `org/name:FILE` (a file name or a
/// quantization tag, also after `@revision`) picks one of several, and a
/// plain id with several is an error listing them. A snapshot with a Hugging
/// Face checkpoint stays a Hugging Face model unless a GGUF file is named.
#[test]
fn a_hub_snapshot_holding_gguf_files_is_a_model() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f32_file = tmp.path().join("f32.gguf");
    let f16_file = tmp.path().join("f16.gguf");
    write_llama_tiny_gguf(&fx, &f32_file, GgmlDType::F32, None, Vec::new());
    write_llama_tiny_gguf(&fx, &f16_file, GgmlDType::F16, None, Vec::new());
    let direct = load(&f32_file);
    let ids = wiki_ids(&fx, &direct, 64);
    let want = direct.forward(&ids).unwrap();

    let cache = TempHubCache::new();
    let repo = "sparselab-test/llama-tiny-GGUF";
    cache.add(repo, "llama-tiny.F32.gguf", &f32_file);
    cache.add(repo, "README.md", &llama_tiny(&fx).join("README.md"));
    let opts = cache.opts();
    let model = Model::load(repo, &opts).unwrap();
    assert_eq!(model.weights().format(), CheckpointFormat::Gguf);
    let diff = common::max_abs_diff(&model.forward(&ids).unwrap(), &want);
    assert_eq!(diff, 0.0);
    assert!(model.tokenizer().is_ok());

    // Two quantizations (the second in a folder, as some repositories have).
    cache.add(repo, "f16/llama-tiny.F16.gguf", &f16_file);
    let m = load_err(repo, &opts);
    assert!(
        m.contains("f16/llama-tiny.F16.gguf, llama-tiny.F32.gguf") && m.contains(":FILE"),
        "{m}"
    );
    let file_of = |spec: &str| {
        let p = locate(spec, &opts).unwrap().expect("a GGUF file");
        p.strip_prefix(
            cache
                .repo_root(repo)
                .join("snapshots")
                .join(TempHubCache::COMMIT),
        )
        .unwrap()
        .to_string_lossy()
        .into_owned()
    };
    assert_eq!(
        file_of(&format!("{repo}:f16/llama-tiny.F16.gguf")),
        "f16/llama-tiny.F16.gguf"
    );
    assert_eq!(file_of(&format!("{repo}:F16")), "f16/llama-tiny.F16.gguf");
    assert_eq!(file_of(&format!("{repo}:f32")), "llama-tiny.F32.gguf");
    let at_commit = format!("{repo}@{}:F32", TempHubCache::COMMIT);
    assert_eq!(file_of(&at_commit), "llama-tiny.F32.gguf");
    let model = Model::load(&format!("{repo}:F16"), &opts).unwrap();
    let diff = common::max_abs_diff(&model.forward(&ids).unwrap(), &want);
    assert!(diff > 0.0 && diff < 1e-2, "f16 against f32: {diff}");

    let m = load_err(&format!("{repo}:Q4_K_M"), &opts);
    assert!(
        m.contains("`Q4_K_M`") && m.contains("llama-tiny.F32.gguf") && m.contains("HF_HUB_OFFLINE"),
        "{m}"
    );
    let m = load_err(&format!("{repo}:llama-tiny"), &opts);
    assert!(m.contains("matches several"), "{m}");
    let m = load_err(&format!("{repo}:README.md"), &opts);
    assert!(m.contains("not a GGUF file"), "{m}");
    let m = load_err("sparselab-test/not-cached:F16", &opts);
    assert!(m.contains("not in the hub cache"), "{m}");

    // A repository with a Hugging Face checkpoint and a GGUF export of it.
    let both = "sparselab-test/llama-tiny";
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        cache.add(both, f, &llama_tiny(&fx).join(f));
    }
    cache.add(both, "llama-tiny.F16.gguf", &f16_file);
    assert_eq!(locate(both, &opts).unwrap(), None);
    let model = Model::load(both, &opts).unwrap();
    assert_eq!(model.weights().format(), CheckpointFormat::Safetensors);
    let model = Model::load(&format!("{both}:F16"), &opts).unwrap();
    assert_eq!(model.weights().format(), CheckpointFormat::Gguf);
}

/// A deterministic stand-in for Gaussian weights (a few outliers included, as
/// in trained weights), row-major `rows × cols`.
fn pseudo_random(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            // Box–Muller.
            let (a, b) = (uniform(), uniform());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos() * 0.05) as f32
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// Every tensor type candle dequantizes, written by candle's quantizer: read
/// through the checkpoint (q un-permuted) it equals candle's own
/// dequantization exactly, and the float source within that type's
/// quantization error; the stored dtype is reported (f16/bf16 kept, quantized
/// types read as f32). A type candle cannot read is an error naming it.
#[test]
fn every_tensor_type_dequantizes() {
    // Relative RMS error bounds of each type on Gaussian weights (measured
    // errors are about half of these).
    let types: &[(GgmlDType, &str, f64)] = &[
        (GgmlDType::F32, "F32", 0.0),
        (GgmlDType::F16, "F16", 1e-3),
        (GgmlDType::BF16, "BF16", 8e-3),
        (GgmlDType::Q8_0, "Q8_0", 1e-2),
        (GgmlDType::Q6K, "Q6_K", 4e-2),
        (GgmlDType::Q5_0, "Q5_0", 8e-2),
        (GgmlDType::Q5_1, "Q5_1", 8e-2),
        (GgmlDType::Q5K, "Q5_K", 8e-2),
        (GgmlDType::Q4_0, "Q4_0", 0.15),
        (GgmlDType::Q4_1, "Q4_1", 0.15),
        (GgmlDType::Q4K, "Q4_K", 0.15),
        (GgmlDType::Q3K, "Q3_K", 0.3),
        (GgmlDType::Q2K, "Q2_K", 0.6),
    ];
    let heads = 4;
    let sources = [
        ("model.embed_tokens.weight", pseudo_random(512, 256, 1)),
        (
            "model.layers.0.self_attn.q_proj.weight",
            pseudo_random(256, 256, 2),
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            pseudo_random(128, 256, 3),
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            pseudo_random(256, 512, 4),
        ),
    ];
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "llama.attention.head_count".into(),
            Value::U32(heads as u32),
        ),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for &(dtype, name, bound) in types {
        let mut tensors = Vec::new();
        let mut quantized = Vec::new();
        for (canonical, src) in &sources {
            let stored = match *canonical {
                n if n.ends_with("q_proj.weight") => permute_rows(src, heads),
                n if n.ends_with("k_proj.weight") => permute_rows(src, 2),
                _ => src.clone(),
            };
            let q = QTensor::quantize(&stored, dtype)
                .unwrap_or_else(|e| panic!("candle cannot quantize to {name}: {e}"));
            quantized.push(q.dequantize(&Device::Cpu).unwrap());
            tensors.push((gguf_name(canonical), q));
        }
        let file = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&file, &meta, &tensors);
        let ck = GgufCheckpoint::open(&file).unwrap();
        let listed = ck.tensors();
        for ((canonical, src), candle_deq) in sources.iter().zip(&quantized) {
            let ours = ck.load(canonical, &Device::Cpu).unwrap();
            let want_dtype = match dtype {
                GgmlDType::F16 => candle_core::DType::F16,
                GgmlDType::BF16 => candle_core::DType::BF16,
                _ => candle_core::DType::F32,
            };
            assert_eq!(ours.dtype(), want_dtype, "{name} {canonical}");
            let entry = listed.iter().find(|t| t.0 == *canonical).unwrap();
            assert_eq!((entry.1, &entry.2[..]), (want_dtype, src.dims()));
            let candle_deq = match *canonical {
                n if n.ends_with("q_proj.weight") => unpermute_rows(candle_deq, heads).unwrap(),
                n if n.ends_with("k_proj.weight") => unpermute_rows(candle_deq, 2).unwrap(),
                _ => candle_deq.clone(),
            };
            let exact = common::max_abs_diff(&ours, &candle_deq);
            assert_eq!(
                exact, 0.0,
                "{name} {canonical}: differs from candle's dequantization"
            );
            let ours = ours.to_dtype(candle_core::DType::F32).unwrap();
            let err = (&ours - src)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
                / src
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt();
            if canonical.ends_with("q_proj.weight") {
                eprintln!("{name}: relative RMS error {err:.2e} (bound {bound:.0e})");
            }
            assert!(
                (err as f64) <= bound,
                "{name} {canonical}: relative error {err} above {bound}"
            );
        }
    }

    // Types candle names but cannot read from a file (llama.cpp's types for
    // activations, never used for weights).
    for (dtype, name) in [(GgmlDType::Q8_1, "Q8_1"), (GgmlDType::Q8K, "Q8_K")] {
        let file = tmp.path().join(format!("{name}.gguf"));
        let q = QTensor::quantize(&sources[3].1, dtype).unwrap();
        write_gguf(&file, &meta, &[(gguf_name(sources[3].0), q)]);
        let m = format!("{:#}", GgufCheckpoint::open(&file).err().unwrap());
        assert!(
            m.contains(&format!("type {name}")) && m.contains("blk.0.ffn_down.weight"),
            "{m}"
        );
    }

    // A type candle cannot read (IQ4_XS, ggml type 23): the type id of the
    // only tensor, patched in a Q4_0 file.
    let file = tmp.path().join("iq4_xs.gguf");
    let q = QTensor::quantize(&sources[3].1, GgmlDType::Q4_0).unwrap();
    write_gguf(&file, &meta, &[(gguf_name(sources[3].0), q)]);
    let mut bytes = std::fs::read(&file).unwrap();
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims (u32), the dims (u64 each), then the type (u32).
    let ty = at + 4 + 2 * 8;
    assert_eq!(
        &bytes[ty..ty + 4],
        &2u32.to_le_bytes(),
        "Q4_0 is ggml type 2"
    );
    bytes[ty..ty + 4].copy_from_slice(&23u32.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let m = format!("{:#}", GgufCheckpoint::open(&file).err().unwrap());
    assert!(m.contains("IQ4_XS") && m.contains("Q4_K"), "{m}");
}
