//! Saving compressed models (dense and packed), atomic writes, resumable
//! calibration and bad input, on random tiny models written here and on the
//! fixture models.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use sparselab::calibrate::compression_report;
use sparselab::calibrate::{uniform_policy, CalibOptions, Calibration, LayerFilter, LayerWork};
use sparselab::compress::Method;
use sparselab::compress::{
    BitWidths, QuantOptions, QuantizerConfig, SparseGptOptions, SparsityPattern,
};
use sparselab::eval::{perplexity, PplOptions};
use sparselab::model::random::{llama_config, opt_config, write_random_model};
use sparselab::model::{LoadOptions, Model, SaveFormat, SaveOptions};
use sparselab::report::{bits_from_rle, RunInfo};

// ------------------------------------------------------------------ helpers

fn load(dir: &Path) -> Model {
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// A random OPT (3 layers) or Llama (3 layers, GQA) written into `dir`.
fn random_model(dir: &Path, llama: bool, dtype: DType) -> Model {
    let cfg = if llama {
        llama_config(128, 64, 3, 4, 2, 128, 64)
    } else {
        opt_config(128, 64, 3, 4, 128, 64)
    };
    write_random_model(dir, &cfg, dtype, 7).unwrap();
    load(dir)
}

fn windows(n: usize, len: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn quiet_opts() -> CalibOptions {
    CalibOptions {
        batch: 4,
        reservoir: 0,
        quiet: true,
        ..CalibOptions::default()
    }
}

fn sparsegpt(pattern: SparsityPattern, quant: Option<QuantOptions>) -> Method {
    Method::SparseGpt(SparseGptOptions {
        pattern,
        quant,
        ..SparseGptOptions::default()
    })
}

fn bits4() -> Option<QuantOptions> {
    Some(QuantOptions {
        bits: BitWidths::Uniform(4),
        ..QuantOptions::default()
    })
}

const HALF: SparsityPattern = SparsityPattern::Unstructured { sparsity: 0.5 };

/// Compresses every linear of a model with `method` on random windows.
fn compress(model: &mut Model, method: Method) -> Calibration {
    let vocab = model.config.vocab_size() as u32;
    let mut calib =
        Calibration::from_windows(model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
    calib
        .run(model, uniform_policy(method, LayerFilter::default()))
        .unwrap();
    calib
}

/// A policy giving each linear a different method, to exercise every encoding.
fn varied_policy(work: &mut LayerWork) -> Result<()> {
    for (i, linear) in work.linears().into_iter().enumerate() {
        let columns = work.weight(linear)?.dim(1)?;
        let method = match (work.index + i) % 6 {
            // Joint SparseGPT, uniform 4-bit.
            0 => sparsegpt(HALF, bits4()),
            // Mixed per-channel widths, dynamic groups, act-order.
            1 => sparsegpt(
                HALF,
                Some(QuantOptions {
                    bits: BitWidths::PerColumn((0..columns).map(|j| [2, 3, 4, 8][j % 4]).collect()),
                    groupsize: Some(16),
                    ..QuantOptions::default()
                }),
            ),
            // GPTQ only, 3 bits, static groups under act-order, symmetric, MSE grid.
            2 => Method::SparseGpt(SparseGptOptions {
                quant: Some(QuantOptions {
                    bits: BitWidths::Uniform(3),
                    quantizer: QuantizerConfig {
                        sym: true,
                        mse: true,
                        ..QuantizerConfig::default()
                    },
                    groupsize: Some(32),
                    static_groups: true,
                }),
                act_order: true,
                ..SparseGptOptions::default()
            }),
            // Structured 2:4 SparseGPT, no quantization (sparse encoding).
            3 => sparsegpt(SparsityPattern::NM { n: 2, m: 4 }, None),
            // Magnitude 2:4 (sparse encoding).
            4 => Method::Magnitude(SparsityPattern::NM { n: 2, m: 4 }),
            // Left dense.
            _ => continue,
        };
        work.compress(linear, &method)?;
    }
    Ok(())
}

fn varied_with_act_order(work: &mut LayerWork) -> Result<()> {
    // Dynamic groups under act-order: groups are runs of the sweep order.
    for linear in work.linears() {
        let method = Method::SparseGpt(SparseGptOptions {
            pattern: SparsityPattern::Unstructured { sparsity: 0.3 },
            quant: Some(QuantOptions {
                bits: BitWidths::Uniform(4),
                groupsize: Some(16),
                ..QuantOptions::default()
            }),
            act_order: true,
            ..SparseGptOptions::default()
        });
        work.compress(linear, &method)?;
    }
    Ok(())
}

fn ids() -> Tensor {
    let w = windows(2, 24, 128, 99);
    Tensor::from_vec(w.concat(), (2, 24), &Device::Cpu).unwrap()
}

/// Logits of the whole model on fixed ids, as bits.
fn logits_bits(model: &Model, ids: &Tensor) -> Vec<u32> {
    model
        .forward(ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Raw little-endian bytes of a tensor in its dtype.
fn raw(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

/// Every tensor of a model as stored (canonical name → bytes), in its stored dtype.
fn all_tensors(model: &Model) -> BTreeMap<String, Vec<u8>> {
    let w = model.weights();
    w.names()
        .into_iter()
        .map(|n| {
            let m = w.meta(n).unwrap();
            (
                n.to_string(),
                raw(&w.get(n, m.dtype, &Device::Cpu).unwrap()),
            )
        })
        .collect()
}

/// (stored name → (dtype, shape)) of every safetensors file in `dir`.
fn safetensors_layout(dir: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            for (name, info) in meta.tensors() {
                out.insert(name, (format!("{:?}", info.dtype), info.shape.clone()));
            }
        }
    }
    out
}

/// (stored name → (dtype, shape)) of a loaded model's source checkpoint.
fn source_layout(model: &Model) -> BTreeMap<String, (String, Vec<usize>)> {
    let w = model.weights();
    let mut out: BTreeMap<String, (String, Vec<usize>)> = w
        .names()
        .into_iter()
        .map(|n| {
            let m = w.meta(n).unwrap();
            (
                m.stored_name.clone(),
                (
                    format!("{:?}", safetensors::Dtype::from(m.dtype)),
                    m.shape.clone(),
                ),
            )
        })
        .collect();
    for m in w.extras() {
        out.insert(
            m.stored_name.clone(),
            (
                format!("{:?}", safetensors::Dtype::from(m.dtype)),
                m.shape.clone(),
            ),
        );
    }
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ------------------------------------------------------------------ dense save

#[test]
fn save_then_load_gives_identical_logits_names_shapes_and_dtypes() {
    for (llama, dtype) in [
        (false, DType::F32),
        (true, DType::F32),
        (true, DType::F16),
        (false, DType::BF16),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut model = random_model(&tmp.path().join("src"), llama, dtype);
        compress(&mut model, sparsegpt(HALF, bits4()));
        let want = logits_bits(&model, &ids());
        let out = tmp.path().join("out");
        let s = model.save(&out, &SaveOptions::default()).unwrap();
        assert_eq!(s.files.last().unwrap(), "model.safetensors");
        let back = load(&out);
        assert_eq!(back.dtype(), dtype);
        assert_eq!(logits_bits(&back, &ids()), want, "llama {llama} {dtype:?}");
        assert_eq!(safetensors_layout(&out), source_layout(&model));
        assert_eq!(all_tensors(&back), all_tensors(&model));
        // config.json is copied as loaded.
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(tmp.path().join("src/config.json")).unwrap()
        );
    }
}

#[test]
fn dtype_conversion_is_saved_and_declared() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    random_model(&src, false, DType::F32);
    let opts = LoadOptions {
        dtype: Some(DType::F16),
        ..LoadOptions::default()
    };
    let mut model = Model::load(src.to_str().unwrap(), &opts).unwrap();
    compress(&mut model, sparsegpt(HALF, None));
    let out = tmp.path().join("out");
    model.save(&out, &SaveOptions::default()).unwrap();
    let layout = safetensors_layout(&out);
    assert!(layout.values().all(|(d, _)| d == "F16"), "{layout:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "float16");
    let back = load(&out);
    assert_eq!(logits_bits(&back, &ids()), logits_bits(&model, &ids()));
}

#[test]
fn opt_tiny_and_its_bin_layout_save_with_the_source_names() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["opt-tiny", "opt-tiny-pt", "llama-tiny-pt"] {
        let mut model = load(&fx.join("models").join(name));
        compress(&mut model, Method::Magnitude(HALF));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        model.save(&out, &SaveOptions::default()).unwrap();
        // Same stored names (whatever prefix the source used), shapes and dtypes;
        // no tied head added.
        assert_eq!(safetensors_layout(&out), source_layout(&model), "{name}");
        assert!(
            !safetensors_layout(&out).contains_key("lm_head.weight") || name.starts_with("llama")
        );
        // Tokenizer files and generation config travel along.
        let files = entries(&out);
        assert!(
            files.contains(&"generation_config.json".to_string()),
            "{files:?}"
        );
        let tok_files = ["tokenizer.json", "vocab.json"];
        assert!(
            tok_files.iter().any(|f| files.contains(&f.to_string())),
            "{files:?}"
        );
        let back = load(&out);
        assert_eq!(
            logits_bits(&back, &ids()),
            logits_bits(&model, &ids()),
            "{name}"
        );
    }
}

/// facebook/opt-* checkpoints store `decoder.…` without transformers' `model.`
/// prefix; a saved copy keeps the source's names (and an extra stored tensor).
#[test]
fn names_without_the_model_prefix_and_extra_tensors_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_random_model(&src, &opt_config(128, 64, 2, 4, 128, 64), DType::F32, 3).unwrap();
    let path = src.join("model.safetensors");
    let ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut stripped: std::collections::HashMap<String, Tensor> = ts
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("model.").to_string(), v))
        .collect();
    let buffer = Tensor::from_vec(vec![1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
    stripped.insert("decoder.some_buffer".to_string(), buffer);
    candle_core::safetensors::save(&stripped, &path).unwrap();
    let mut model = load(&src);
    assert_eq!(
        model
            .weights()
            .meta("model.decoder.layers.0.fc1.weight")
            .unwrap()
            .stored_name,
        "decoder.layers.0.fc1.weight"
    );
    compress(&mut model, sparsegpt(HALF, bits4()));
    for format in [SaveFormat::Dense, SaveFormat::Packed] {
        let out = tmp.path().join(format!("{format:?}"));
        let opts = SaveOptions {
            format,
            ..SaveOptions::default()
        };
        model.save(&out, &opts).unwrap();
        let back = load(&out);
        assert_eq!(source_layout(&back), source_layout(&model), "{format:?}");
        assert!(source_layout(&back).contains_key("decoder.some_buffer"));
        assert!(!source_layout(&back).keys().any(|k| k.starts_with("model.")));
        assert_eq!(all_tensors(&back), all_tensors(&model));
        assert_eq!(logits_bits(&back, &ids()), logits_bits(&model, &ids()));
        let buf = back
            .weights()
            .load_stored("decoder.some_buffer", &Device::Cpu)
            .unwrap();
        assert_eq!(buf.to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    }
    assert_eq!(
        safetensors_layout(&tmp.path().join("Dense")),
        source_layout(&model)
    );
}

#[test]
fn masks_and_quantization_grids_survive_the_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), true, DType::F32);
    let vocab = model.config.vocab_size() as u32;
    let mut calib =
        Calibration::from_windows(&model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
    calib.run(&mut model, varied_policy).unwrap();
    let out = tmp.path().join("out");
    model.save(&out, &SaveOptions::default()).unwrap();
    let back = load(&out);
    let mut checked = 0;
    for r in &calib.reports {
        let name = model.linear_weight_name(r.layer, &r.linear);
        let info = model.weights().compressed(&name).unwrap();
        let w = back
            .weights()
            .get(&name, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (rows, cols) = (w.len(), w[0].len());
        let mut pruned = 0;
        for (i, row) in w.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if info.mask.get(i, j) {
                    assert_eq!(x, 0.0, "{name} [{i}, {j}] pruned but {x}");
                    pruned += 1;
                }
                if let Some(g) = &info.grid {
                    let code = g.code(i, j, x);
                    assert_eq!(
                        g.dequantize(i, j, code).to_bits(),
                        x.to_bits(),
                        "{name} [{i}, {j}] off grid"
                    );
                    assert!(code < 1 << g.bits(j));
                }
            }
        }
        assert_eq!(pruned as f64 / (rows * cols) as f64, r.sparsity, "{name}");
        if let Some(g) = &info.grid {
            let bits: Vec<u32> = (0..cols).map(|j| g.bits(j)).collect();
            assert_eq!(bits_from_rle(&r.bits_rle), bits, "{name}");
        }
        if let Some((n, m)) = r
            .settings
            .pointer("/pattern/m")
            .and_then(|m| m.as_u64())
            .map(|m| {
                (
                    r.settings.pointer("/pattern/n").unwrap().as_u64().unwrap(),
                    m,
                )
            })
        {
            for row in &w {
                for g in row.chunks(m as usize) {
                    assert!(g.iter().filter(|x| **x != 0.0).count() as u64 <= m - n);
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "{checked}");
}

#[test]
fn forced_sharding_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), true, DType::F32);
    compress(&mut model, sparsegpt(HALF, bits4()));
    let out = tmp.path().join("out");
    let opts = SaveOptions {
        shard_bytes: 100_000,
        ..SaveOptions::default()
    };
    let s = model.save(&out, &opts).unwrap();
    let shards: Vec<&String> = s
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() >= 3, "{:?}", s.files);
    assert!(shards[0].starts_with("model-00001-of-"), "{shards:?}");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let layout = safetensors_layout(&out);
    assert_eq!(map.len(), layout.len());
    let total: u64 = layout
        .values()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    for f in &shards {
        let size = std::fs::metadata(out.join(f)).unwrap().len();
        // One tensor may exceed the limit on its own (the embedding here).
        assert!(size < 100_000 + 140_000, "{f}: {size}");
    }
    let back = load(&out);
    assert_eq!(logits_bits(&back, &ids()), logits_bits(&model, &ids()));
    assert_eq!(all_tensors(&back), all_tensors(&model));
}

// ------------------------------------------------------------------ packed

#[test]
fn packed_export_restores_identical_dense_weights() {
    type Policy = fn(&mut LayerWork) -> Result<()>;
    let policies: [(&str, Policy); 2] = [
        ("varied", varied_policy),
        ("act-order groups", varied_with_act_order),
    ];
    for (llama, dtype) in [
        (true, DType::F32),
        (false, DType::F32),
        (false, DType::F16),
        (true, DType::BF16),
    ] {
        for (label, policy) in policies {
            let tmp = tempfile::tempdir().unwrap();
            let mut model = random_model(&tmp.path().join("src"), llama, dtype);
            let vocab = model.config.vocab_size() as u32;
            let mut calib =
                Calibration::from_windows(&model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
            calib.run(&mut model, policy).unwrap();
            let dense = tmp.path().join("dense");
            let packed = tmp.path().join("packed");
            let d = model.save(&dense, &SaveOptions::default()).unwrap();
            let p = model
                .save(
                    &packed,
                    &SaveOptions {
                        format: SaveFormat::Packed,
                        ..SaveOptions::default()
                    },
                )
                .unwrap();
            let what = format!("{label}, llama {llama}, {dtype:?}");
            // Quantized values are exactly on the grid in f32, f16 and bf16 at
            // these widths, so nothing falls back to dense.
            assert!(p.stored_dense.is_empty(), "{what}: {:?}", p.stored_dense);
            assert_eq!(p.packed, calib.reports.len(), "{what}");
            assert!(
                p.tensor_bytes < d.tensor_bytes,
                "{what}: packed {} vs dense {}",
                p.tensor_bytes,
                d.tensor_bytes
            );
            let from_packed = load(&packed);
            assert_eq!(
                all_tensors(&from_packed),
                all_tensors(&load(&dense)),
                "{what}"
            );
            assert_eq!(all_tensors(&from_packed), all_tensors(&model), "{what}");
            assert_eq!(
                logits_bits(&from_packed, &ids()),
                logits_bits(&model, &ids()),
                "{what}"
            );
        }
    }
}

#[test]
fn packed_index_documents_each_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), false, DType::F32);
    let vocab = model.config.vocab_size() as u32;
    let mut calib =
        Calibration::from_windows(&model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
    calib.run(&mut model, varied_policy).unwrap();
    let out = tmp.path().join("p");
    let opts = SaveOptions {
        format: SaveFormat::Packed,
        shard_bytes: 60_000,
        ..SaveOptions::default()
    };
    model.save(&out, &opts).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("packed.json")).unwrap()).unwrap();
    assert_eq!(index["format"], "sparselab-packed");
    let tensors = index["tensors"].as_object().unwrap();
    let enc = |n: &str| tensors[n]["encoding"].as_str().unwrap().to_string();
    // Layer 0 of an OPT: k_proj (i=0) quantized, v_proj (1) quantized with mixed
    // widths and groups, q_proj (2) GPTQ, out_proj (3) and fc1 (4) sparse, fc2 dense.
    let l = "model.decoder.layers.0";
    assert_eq!(enc(&format!("{l}.self_attn.k_proj.weight")), "quantized");
    let v = &tensors[&format!("{l}.self_attn.v_proj.weight")];
    assert_eq!(v["widths"], serde_json::json!([2, 3, 4, 8]));
    assert_eq!(v["groupsize"], 16);
    assert_eq!(enc(&format!("{l}.self_attn.out_proj.weight")), "sparse");
    assert_eq!(enc(&format!("{l}.fc2.weight")), "dense");
    assert_eq!(enc("model.decoder.embed_tokens.weight"), "dense");
    let files: std::collections::BTreeSet<&str> = tensors
        .values()
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    assert!(
        files.len() > 1 && files.iter().all(|f| f.starts_with("packed-0")),
        "{files:?}"
    );
    // A quantized linear's parts have the documented shapes.
    let layout = safetensors_layout(&out);
    let k = format!("{l}.self_attn.k_proj.weight");
    assert_eq!(layout[&format!("{k}.qcodes")], ("U8".into(), vec![64, 32]));
    assert_eq!(
        layout[&format!("{k}.qscales")],
        ("F32".into(), vec![64, 1, 1])
    );
    assert_eq!(layout[&format!("{k}.mask")], ("U8".into(), vec![64, 8]));
    let back = load(&out);
    assert_eq!(all_tensors(&back), all_tensors(&model));
}

// ------------------------------------------------------------------ atomicity

#[test]
fn existing_directory_needs_overwrite_and_is_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), false, DType::F32);
    compress(&mut model, Method::Magnitude(HALF));
    let parent = tmp.path().join("saves");
    let out = parent.join("m");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "earlier output").unwrap();
    let err = format!(
        "{:#}",
        model.save(&out, &SaveOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("not empty") && err.contains("overwrite"),
        "{err}"
    );
    assert_eq!(entries(&out), vec!["keep.txt"]);
    assert_eq!(entries(&parent), vec!["m"]);

    let opts = SaveOptions {
        overwrite: true,
        ..SaveOptions::default()
    };
    model.save(&out, &opts).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert_eq!(entries(&parent), vec!["m"], "no temporary or old copy left");
    assert_eq!(
        logits_bits(&load(&out), &ids()),
        logits_bits(&model, &ids())
    );

    // An empty directory is fine without overwrite; saving over the source is not.
    let empty = parent.join("empty");
    std::fs::create_dir(&empty).unwrap();
    model.save(&empty, &SaveOptions::default()).unwrap();
    let err = format!(
        "{:#}",
        model
            .save(
                tmp.path().join("src"),
                &SaveOptions {
                    overwrite: true,
                    ..SaveOptions::default()
                }
            )
            .unwrap_err()
    );
    assert!(err.contains("loaded from"), "{err}");
    // A file in the way is named.
    std::fs::write(parent.join("file"), "x").unwrap();
    let err = format!(
        "{:#}",
        model
            .save(parent.join("file"), &SaveOptions::default())
            .unwrap_err()
    );
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn a_full_disk_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), true, DType::F32);
    compress(&mut model, sparsegpt(HALF, bits4()));
    let mut sizes = Vec::new();
    for (format, name) in [(SaveFormat::Dense, "full"), (SaveFormat::Packed, "fullp")] {
        let opts = SaveOptions {
            format,
            ..SaveOptions::default()
        };
        sizes.push(
            model
                .save(tmp.path().join(name), &opts)
                .unwrap()
                .tensor_bytes,
        );
    }
    let full = sizes[0];
    for (format, size) in [
        (SaveFormat::Dense, sizes[0]),
        (SaveFormat::Packed, sizes[1]),
    ] {
        for budget in [10, 2_000, size / 2, size - 100] {
            let parent = tmp.path().join(format!("deep/{format:?}/{budget}"));
            let out = parent.join("m");
            let opts = SaveOptions {
                format,
                fail_after_bytes: Some(budget),
                ..SaveOptions::default()
            };
            let err = format!("{:#}", model.save(&out, &opts).unwrap_err());
            assert!(err.contains("disk is full"), "{budget}: {err}");
            assert!(err.contains("nothing was written"), "{budget}: {err}");
            assert!(!out.exists(), "{budget}: output left behind");
            // Parents it had to create are gone too.
            assert!(
                !tmp.path().join("deep").exists(),
                "{budget}: parents left behind"
            );
        }
    }
    // Overwriting: the earlier output survives a failed save untouched.
    let out = tmp.path().join("full");
    let before = entries(&out);
    let opts = SaveOptions {
        overwrite: true,
        fail_after_bytes: Some(full / 3),
        ..SaveOptions::default()
    };
    assert!(model.save(&out, &opts).is_err());
    assert_eq!(entries(&out), before);
    assert_eq!(entries(tmp.path()), vec!["full", "fullp", "src"]);
    assert_eq!(
        logits_bits(&load(&out), &ids()),
        logits_bits(&model, &ids())
    );
}

/// A real full disk: a 256 KiB tmpfs (needs root and `mount`; skipped otherwise).
#[test]
fn a_real_full_tmpfs_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut model = random_model(&tmp.path().join("src"), false, DType::F32);
    compress(&mut model, Method::Magnitude(HALF));
    // About 450 KB of weights: does not fit.
    let err = format!(
        "{:#}",
        model
            .save(mnt.join("m"), &SaveOptions::default())
            .unwrap_err()
    );
    assert!(err.contains("disk is full"), "{err}");
    assert!(entries(&mnt).is_empty(), "{:?}", entries(&mnt));
}

// ------------------------------------------------------------------ report

#[test]
fn compression_report_describes_linears_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), false, DType::F32);
    let vocab = model.config.vocab_size() as u32;
    let mut calib =
        Calibration::from_windows(&model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
    calib.run(&mut model, varied_policy).unwrap();
    let run = RunInfo {
        script: Some("let m = load(\"x\");".into()),
        set: Some(serde_json::json!({"target": 3.5})),
        wall_seconds: Some(1.5),
        ..RunInfo::default()
    };
    let report = compression_report(&model, &calib, &run);
    let out = tmp.path().join("out");
    model
        .save(
            &out,
            &SaveOptions {
                report: Some(report),
                ..SaveOptions::default()
            },
        )
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compression.json")).unwrap())
            .unwrap();
    assert_eq!(r["sparselab"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(r["sparselab"]["git_revision"].is_string());
    assert_eq!(r["calibration"]["nsamples"], 8);
    assert_eq!(r["calibration"]["seqlen"], 32);
    assert_eq!(r["run"]["set"]["target"], 3.5);
    assert_eq!(r["model"]["dtype"], "f32");
    let linears = r["linears"].as_array().unwrap();
    assert_eq!(linears.len(), calib.reports.len());
    let mixed = linears
        .iter()
        .find(|l| l["layer"] == 0 && l["linear"] == "self_attn.v_proj")
        .unwrap();
    assert_eq!(
        mixed["tensor"],
        "model.decoder.layers.0.self_attn.v_proj.weight"
    );
    assert_eq!(mixed["mask_structure"], "unstructured");
    assert_eq!(mixed["settings"]["quantizer"]["groupsize"], 16);
    assert_eq!(mixed["bits_rle"].as_array().unwrap().len(), 64);
    assert_eq!(
        mixed["bits_histogram"],
        serde_json::json!([[2, 16], [3, 16], [4, 16], [8, 16]])
    );
    let nm = linears
        .iter()
        .find(|l| l["layer"] == 0 && l["linear"] == "self_attn.out_proj")
        .unwrap();
    assert_eq!(nm["mask_structure"], "n:m");
    assert!(nm["rel_error"].as_f64().unwrap() > 0.0);
}

// ------------------------------------------------------------------ resume

/// Per replaced tensor: its bytes, its grid's parameters and its mask bytes.
type CompressedState = BTreeMap<String, (Vec<u8>, Option<Vec<f32>>, Vec<u8>)>;

/// What the compression left in the model's weight store.
fn compressed_state(model: &Model) -> CompressedState {
    let w = model.weights();
    w.names()
        .into_iter()
        .filter(|n| w.is_replaced(n))
        .map(|n| {
            let info = w.compressed(n).unwrap();
            (
                n.to_string(),
                (
                    raw(&w.get(n, w.meta(n).unwrap().dtype, &Device::Cpu).unwrap()),
                    info.grid.as_ref().map(|g| g.params.clone()),
                    info.mask.bytes().to_vec(),
                ),
            )
        })
        .collect()
}

fn ckpt_opts(dir: &Path, fingerprint: &str) -> CalibOptions {
    CalibOptions {
        checkpoint: Some(dir.to_path_buf()),
        fingerprint: fingerprint.to_string(),
        ..quiet_opts()
    }
}

#[test]
fn an_interrupted_run_resumes_to_identical_weights() {
    for true_sequential in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut model = random_model(&src, true, DType::F32);
        let win = windows(8, 32, 128, 5);
        let with_seq = |o: CalibOptions| CalibOptions {
            true_sequential,
            ..o
        };

        // Uninterrupted, without a checkpoint.
        let mut calib =
            Calibration::from_windows(&model, win.clone(), with_seq(quiet_opts())).unwrap();
        calib.run(&mut model, varied_policy).unwrap();
        let want = compressed_state(&model);
        let want_reports = calib.reports.len();
        let want_logits = logits_bits(&model, &ids());

        // Killed by the policy at layer 2 (of 3).
        let ck = tmp.path().join("ckpt");
        let mut m1 = load(&src);
        let mut c1 =
            Calibration::from_windows(&m1, win.clone(), with_seq(ckpt_opts(&ck, "varied")))
                .unwrap();
        let err = c1
            .run(&mut m1, |work: &mut LayerWork| {
                if work.index == 2 {
                    anyhow::bail!("injected failure");
                }
                varied_policy(work)
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"));
        drop((m1, c1));
        let files = entries(&ck);
        assert!(
            files.contains(&"inputs-00002.safetensors".to_string()),
            "{files:?}"
        );
        assert!(
            !files.contains(&"inputs-00001.safetensors".to_string()),
            "{files:?}"
        );

        // A fresh process: same settings, same checkpoint.
        let mut m2 = load(&src);
        let mut c2 =
            Calibration::from_windows(&m2, win.clone(), with_seq(ckpt_opts(&ck, "varied")))
                .unwrap();
        assert_eq!(c2.resumed_layers, 2);
        assert_eq!(c2.next_index(), 2);
        // Layers driven by hand need the restored weights first.
        let err = c2.next_layer(&m2).err().unwrap().to_string();
        assert!(err.contains("restore"), "{err}");
        c2.run(&mut m2, varied_policy).unwrap();
        assert_eq!(c2.reports.len(), want_reports);
        assert_eq!(
            compressed_state(&m2),
            want,
            "true_sequential {true_sequential}"
        );
        assert_eq!(logits_bits(&m2, &ids()), want_logits);

        // A finished checkpoint restores everything and computes nothing.
        let mut m3 = load(&src);
        let mut c3 =
            Calibration::from_windows(&m3, win.clone(), with_seq(ckpt_opts(&ck, "varied")))
                .unwrap();
        assert_eq!(c3.resumed_layers, 3);
        c3.run(&mut m3, |_: &mut LayerWork| anyhow::bail!("must not run"))
            .unwrap();
        assert_eq!(compressed_state(&m3), want);
        // …and a packed save after a resume still has every grid.
        let p = m3
            .save(
                tmp.path().join("packed"),
                &SaveOptions {
                    format: SaveFormat::Packed,
                    ..SaveOptions::default()
                },
            )
            .unwrap();
        assert!(p.stored_dense.is_empty());
        assert_eq!(p.packed, want_reports);
    }
}

#[test]
fn a_checkpoint_from_another_run_is_refused_naming_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut model = random_model(&src, false, DType::F32);
    let win = windows(8, 32, 128, 5);
    let ck = tmp.path().join("ckpt");
    let mut c =
        Calibration::from_windows(&model, win.clone(), ckpt_opts(&ck, "sparsegpt 0.5")).unwrap();
    c.run(
        &mut model,
        uniform_policy(Method::Magnitude(HALF), LayerFilter::default()),
    )
    .unwrap();
    let model = load(&src);
    let refused = |opts: CalibOptions, win: Vec<Vec<u32>>, field: &str| {
        let err = match Calibration::from_windows(&model, win, opts) {
            Ok(_) => panic!("{field}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("different run") && err.contains(field),
            "{field}: {err}"
        );
    };
    refused(
        CalibOptions {
            seed: 1,
            ..ckpt_opts(&ck, "sparsegpt 0.5")
        },
        win.clone(),
        "seed: checkpoint has 0, this run has 1",
    );
    refused(ckpt_opts(&ck, "sparsegpt 0.6"), win.clone(), "policy");
    refused(
        ckpt_opts(&ck, "sparsegpt 0.5"),
        windows(4, 32, 128, 5),
        "nsamples",
    );
    refused(
        ckpt_opts(&ck, "sparsegpt 0.5"),
        windows(8, 32, 128, 6),
        "windows_hash",
    );
    refused(
        CalibOptions {
            true_sequential: true,
            ..ckpt_opts(&ck, "sparsegpt 0.5")
        },
        win.clone(),
        "true_sequential",
    );
    // Another model (different config).
    let other = tmp.path().join("other");
    write_random_model(&other, &opt_config(128, 64, 2, 4, 128, 64), DType::F32, 7).unwrap();
    let other = load(&other);
    let err = format!(
        "{:#}",
        Calibration::from_windows(&other, win.clone(), ckpt_opts(&ck, "sparsegpt 0.5"))
            .err()
            .unwrap()
    );
    assert!(err.contains("config_hash"), "{err}");
    // A directory that is not a checkpoint.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "x").unwrap();
    let err = format!(
        "{:#}",
        Calibration::from_windows(&model, win, ckpt_opts(&foreign, "x"))
            .err()
            .unwrap()
    );
    assert!(err.contains("holds no sparselab checkpoint"), "{err}");
}

// ------------------------------------------------------------------ bad input

fn poison(dir: &Path, tensor: &str, at: usize, value: f32) {
    let path = dir.join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let t = &ts[tensor];
    let shape = t.dims().to_vec();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[at] = value;
    ts.insert(
        tensor.to_string(),
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&ts, &path).unwrap();
}

#[test]
fn non_finite_weights_are_named_by_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    random_model(&src, false, DType::F32);
    poison(
        &src,
        "model.decoder.layers.1.fc1.weight",
        64 * 3 + 7,
        f32::NAN,
    );
    let mut model = load(&src); // layers load lazily
    let err = format!("{:#}", model.layer(1).err().unwrap());
    assert!(
        err.contains("model.decoder.layers.1.fc1.weight") && err.contains("NaN at [3, 7]"),
        "{err}"
    );
    // Calibration stops at that layer, naming the tensor; layer 0 was done.
    let mut calib =
        Calibration::from_windows(&model, windows(4, 16, 128, 1), quiet_opts()).unwrap();
    let err = format!(
        "{:#}",
        calib
            .run(
                &mut model,
                uniform_policy(Method::Magnitude(HALF), LayerFilter::default())
            )
            .unwrap_err()
    );
    assert!(
        err.contains("layers.1.fc1.weight") && err.contains("non-finite"),
        "{err}"
    );
    // Saving refuses too, and leaves nothing.
    let out = tmp.path().join("out");
    let err = format!(
        "{:#}",
        model.save(&out, &SaveOptions::default()).unwrap_err()
    );
    assert!(err.contains("layers.1.fc1.weight"), "{err}");
    assert!(!out.exists());

    // An infinity in the embedding is caught when the model is opened.
    let src2 = tmp.path().join("src2");
    random_model(&src2, true, DType::F32);
    poison(&src2, "model.embed_tokens.weight", 5, f32::NEG_INFINITY);
    let err = load_err(&src2);
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("-inf at [0, 5]"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    random_model(&src, false, DType::F32);
    std::fs::copy(
        fx.join("models/opt-tiny/tokenizer.json"),
        src.join("tokenizer.json"),
    )
    .unwrap();
    let err = load_err(&src);
    assert!(
        err.contains("tokenizer")
            && err.contains("does not match")
            && err.contains("vocab_size is 128"),
        "{err}"
    );
}

#[test]
fn bad_compression_settings_are_refused_before_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model(&tmp.path().join("src"), false, DType::F32);
    let calib = Calibration::from_windows(&model, windows(4, 16, 128, 1), quiet_opts()).unwrap();
    let mut work = calib.next_layer(&model).unwrap().unwrap();
    let q = |bits: BitWidths| {
        sparsegpt(
            SparsityPattern::Dense,
            Some(QuantOptions {
                bits,
                ..QuantOptions::default()
            }),
        )
    };
    let cases: Vec<(Method, &str)> = vec![
        (
            sparsegpt(SparsityPattern::Unstructured { sparsity: 1.0 }, None),
            "sparsity must be in [0, 1), got 1",
        ),
        (
            Method::Magnitude(SparsityPattern::Unstructured { sparsity: -0.1 }),
            "[0, 1)",
        ),
        (
            Method::Wanda(SparsityPattern::NM { n: 4, m: 4 }),
            "0 < n < m",
        ),
        (
            sparsegpt(SparsityPattern::NM { n: 5, m: 4 }, None),
            "0 < n < m",
        ),
        (q(BitWidths::Uniform(0)), "bits must be in 1..=16, got 0"),
        (q(BitWidths::Uniform(17)), "bits must be in 1..=16, got 17"),
        (q(BitWidths::PerColumn(vec![4; 63])), "63 entries"),
    ];
    let before = work
        .weight("fc1")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (method, want) in cases {
        let err = format!("{:#}", work.compress("fc1", &method).unwrap_err());
        assert!(err.contains(want), "{want}: {err}");
    }
    let after = work
        .weight("fc1")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(before, after);
    assert!(work.reports.is_empty());
    // fc1 is still compressible: no failed attempt left it marked.
    work.compress("fc1", &Method::Magnitude(HALF)).unwrap();
}

#[test]
fn empty_or_short_datasets_are_refused() {
    let Some(fx) = common::fixtures() else { return };
    let model = load(&fx.join("models/opt-tiny"));
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "A few words only.").unwrap();
    for (file, want) in [(&empty, "too short"), (&short, "too short")] {
        let opts = CalibOptions {
            dataset: file.to_string_lossy().into_owned(),
            nsamples: 4,
            seqlen: Some(64),
            ..quiet_opts()
        };
        let err = format!("{:#}", Calibration::new(&model, opts).err().unwrap());
        assert!(
            err.contains(want) && err.contains(&*file.to_string_lossy()),
            "{err}"
        );
    }
    let err = format!(
        "{:#}",
        Calibration::from_windows(&model, Vec::new(), quiet_opts())
            .err()
            .unwrap()
    );
    assert!(err.contains("non-empty"), "{err}");
}

// ------------------------------------------------------------------ bad input, end to end
//
// One test per bad input of issue 7, each through the program a researcher runs
// (`sparselab prune … --save DIR --overwrite`, or `sparselab run` for the
// script-only settings): it must fail naming the culprit, leave the earlier
// output in DIR byte for byte as it was, and leave nothing else beside it (no
// temporary directory, no new output). A full disk during the save is
// `a_full_disk_leaves_nothing_behind` and `a_real_full_tmpfs_leaves_nothing_behind`.

/// A small random OPT (vocabulary 4096, as the fixture tokenizer) with
/// opt-tiny's tokenizer, so that the CLI can calibrate it in well under a second.
fn cli_model(fx: &Path, dir: &Path) {
    write_random_model(dir, &opt_config(4096, 64, 2, 4, 128, 64), DType::F32, 3).unwrap();
    std::fs::copy(
        fx.join("models/opt-tiny/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

/// Every file under `dir` with its bytes (relative paths, sorted).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Runs `sparselab ARGS` in a fresh directory holding an earlier output `prev/`
/// (the `--save` target, with `--overwrite` where `save` is set) and asserts
/// that it fails, that its stderr contains every `want`, that `prev/` is
/// unchanged and that nothing else appeared. Returns the stderr.
fn refused(args: &[&std::ffi::OsStr], save: bool, want: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let prev = tmp.path().join("prev");
    std::fs::create_dir(&prev).unwrap();
    std::fs::write(prev.join("model.safetensors"), b"an earlier run's weights").unwrap();
    std::fs::write(prev.join("compression.json"), b"{\"earlier\": true}").unwrap();
    let before = tree(tmp.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sparselab"));
    cmd.current_dir(tmp.path()).args(args);
    if save {
        cmd.arg("--save").arg(&prev).arg("--overwrite");
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "it succeeded: {stderr}");
    for w in want {
        assert!(stderr.contains(w), "`{w}` not in: {stderr}");
    }
    assert_eq!(
        tree(tmp.path()),
        before,
        "files changed or appeared beside the earlier output ({:?})",
        entries(tmp.path())
    );
    stderr
}

/// `prune` arguments for `model`: 2 calibration windows of 32 tokens from the
/// fixture WikiText-2, then `settings` (the method's flags).
fn prune_args(fx: &Path, model: &Path, settings: &[&str]) -> Vec<std::ffi::OsString> {
    prune_args_on(&fx.join("data/wikitext2/wiki.valid.raw"), model, settings)
}

/// As [`prune_args`], calibrating on `calib`.
fn prune_args_on(calib: &Path, model: &Path, settings: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["prune".into(), "--model".into(), model.into()];
    v.push("--calib".into());
    v.push(calib.into());
    for a in ["--nsamples", "2", "--seqlen", "32", "-q"] {
        v.push(a.into());
    }
    v.extend(settings.iter().map(|s| s.into()));
    v
}

fn os(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// The file name of the last shard in `dir/model.safetensors.index.json`.
fn last_shard(dir: &Path) -> String {
    let idx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut files: Vec<String> = idx["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    files.sort();
    assert!(
        files.len() > 1 && files.first() != files.last(),
        "{files:?}"
    );
    files.pop().unwrap()
}

#[test]
fn bad_input_missing_shard() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = (tmp.path().join("src"), tmp.path().join("m"));
    cli_model(&fx, &src);
    let opts = SaveOptions {
        shard_bytes: 400_000,
        ..SaveOptions::default()
    };
    load(&src).save(&m, &opts).unwrap();
    let shard = last_shard(&m);
    std::fs::remove_file(m.join(&shard)).unwrap();
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &[&shard, "missing"],
    );
}

#[test]
fn bad_input_truncated_shard() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (src, m) = (tmp.path().join("src"), tmp.path().join("m"));
    cli_model(&fx, &src);
    let opts = SaveOptions {
        shard_bytes: 400_000,
        ..SaveOptions::default()
    };
    load(&src).save(&m, &opts).unwrap();
    let shard = last_shard(&m);
    let bytes = std::fs::read(m.join(&shard)).unwrap();
    std::fs::write(m.join(&shard), &bytes[..bytes.len() - 1000]).unwrap();
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &[&shard],
    );
}

/// Rewrites one tensor of `dir/model.safetensors` with `t`.
fn replace_tensor(dir: &Path, name: &str, t: Tensor) {
    let path = dir.join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(ts.contains_key(name), "{name}");
    ts.insert(name.to_string(), t);
    candle_core::safetensors::save(&ts, &path).unwrap();
}

#[test]
fn bad_input_wrong_shape() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let name = "model.decoder.layers.1.fc2.weight";
    replace_tensor(
        &m,
        name,
        Tensor::zeros((64, 100), DType::F32, &Device::Cpu).unwrap(),
    );
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &[name, "[64, 100]", "[64, 128]"],
    );
}

#[test]
fn bad_input_wrong_dtype() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let name = "model.decoder.layers.0.self_attn.k_proj.weight";
    replace_tensor(
        &m,
        name,
        Tensor::zeros((64, 64), DType::I64, &Device::Cpu).unwrap(),
    );
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &[name, "I64", "expected f32, f16 or bf16"],
    );
}

#[test]
fn bad_input_nan_and_inf_weights_are_named_by_tensor() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    // In layer 1: the calibration has done layer 0 when it meets it.
    poison(
        &m,
        "model.decoder.layers.1.fc1.weight",
        64 * 5 + 2,
        f32::NAN,
    );
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &["model.decoder.layers.1.fc1.weight", "NaN at [5, 2]"],
    );
    let m2 = tmp.path().join("m2");
    cli_model(&fx, &m2);
    poison(
        &m2,
        "model.decoder.layers.0.self_attn.v_proj.weight",
        3,
        f32::INFINITY,
    );
    refused(
        &os(&prune_args(&fx, &m2, &["--sparsity", "0.5"])),
        true,
        &[
            "model.decoder.layers.0.self_attn.v_proj.weight",
            "inf at [0, 3]",
        ],
    );
}

#[test]
fn bad_input_config_missing_a_key() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let mut cfg = opt_config(4096, 64, 2, 4, 128, 64);
    cfg.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &["num_attention_heads", "config.json"],
    );
}

#[test]
fn bad_input_tokenizer_not_matching_the_vocabulary() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    // The config now claims 2048 tokens; the tokenizer has ids up to 4095.
    std::fs::write(
        m.join("config.json"),
        opt_config(2048, 64, 2, 4, 128, 64).to_string(),
    )
    .unwrap();
    replace_tensor(
        &m,
        "model.decoder.embed_tokens.weight",
        Tensor::zeros((2048, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    refused(
        &os(&prune_args(&fx, &m, &["--sparsity", "0.5"])),
        true,
        &["tokenizer", "does not match", "vocab_size is 2048"],
    );
}

#[test]
fn bad_input_empty_or_too_short_dataset() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(
        &short,
        "A few words only, far fewer than 2 windows of 32 tokens.",
    )
    .unwrap();
    for file in [&empty, &short] {
        let args = prune_args_on(file, &m, &["--sparsity", "0.5"]);
        refused(&os(&args), true, &["too short", &file.to_string_lossy()]);
    }
}

#[test]
fn bad_input_sparsity_outside_0_1() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    for s in ["--sparsity=1", "--sparsity=1.5", "--sparsity=-0.1"] {
        refused(
            &os(&prune_args(&fx, &m, &[s])),
            true,
            &["sparsity must be in [0, 1)"],
        );
    }
}

#[test]
fn bad_input_n_m_with_n_not_below_m() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    for (n, mm) in [("4", "4"), ("5", "4")] {
        refused(
            &os(&prune_args(&fx, &m, &["--prunen", n, "--prunem", mm])),
            true,
            &["0 < n < m", &format!("{n}:{mm}")],
        );
    }
}

#[test]
fn bad_input_bits_outside_1_16() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    for b in ["0", "17"] {
        refused(
            &os(&prune_args(&fx, &m, &["--sparsity", "0.5", "--bits", b])),
            true,
            &[&format!("bits must be in 1..=16, got {b}")],
        );
    }
}

/// Runs a script with `sparselab run` and the model as `--set model=…`.
fn script_args(tmp: &Path, fx: &Path, model: &Path, body: &str) -> Vec<std::ffi::OsString> {
    let script = tmp.join("policy.rhai");
    std::fs::write(&script, body).unwrap();
    let calib = fx.join("data/wikitext2/wiki.valid.raw");
    vec![
        "run".into(),
        script.into(),
        "--quiet".into(),
        "--set".into(),
        format!("model={}", model.display()).into(),
        "--set".into(),
        format!("calib={}", calib.display()).into(),
    ]
}

#[test]
fn bad_input_bit_vector_of_the_wrong_length() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let ckpt = tmp.path().join("ckpt");
    // fc2 reads 128 channels; 127 widths are one short. The checkpoint must not
    // gain a layer from the failed attempt.
    let body = format!(
        r#"let m = load_model(model);
let calib = calibrate(m, calib, #{{nsamples: 2, seqlen: 32, checkpoint: "{}"}});
for layer in calib.layers() {{
    let bits = [];
    for i in 0..127 {{ bits.push(4); }}
    prune_layer(layer, "fc2", #{{sparsity: 0.5, bits: bits}});
}}
"#,
        ckpt.display()
    );
    let err = refused(
        &os(&script_args(tmp.path(), &fx, &m, &body)),
        false,
        &["127", "fc2"],
    );
    assert!(err.contains("entries"), "{err}");
    // The checkpoint holds its manifest and no finished layer.
    assert_eq!(entries(&ckpt), vec!["manifest.json"], "{err}");
}

#[test]
fn bad_input_target_outside_the_tiers() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let body = r#"let m = load_model(model);
let calib = calibrate(m, calib, #{nsamples: 2, seqlen: 32});
for layer in calib.layers() {
    let scores = score_importance(layer, "fc1", "magnitude");
    let bits = allocate_bits(scores, #{method: "budget", tiers: [2, 4, 8], target_avg: 9.0});
    prune_layer(layer, "fc1", #{sparsity: 0.5, bits: bits});
}
"#;
    refused(
        &os(&script_args(tmp.path(), &fx, &m, body)),
        false,
        &["target_avg 9 is outside the tiers' range [2, 8]"],
    );
}

// ------------------------------------------------------------------ out of memory

#[test]
fn bad_input_out_of_memory_names_the_device_layer_and_linear() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    // 2 × 32 tokens × 64 wide inputs (16 KiB) and the layer's four Hessians
    // (64² three times, 128² once: 115 KiB) fit in 300 KiB, and so do the OBS
    // work matrices of the 64-column linears (≤ 160 KiB); fc2's (128 columns:
    // 4·128² + 3·64·128 floats = 352 KiB) do not.
    let err = refused(
        &os(&prune_args(
            &fx,
            &m,
            &["--sparsity", "0.5", "--memory-limit", "300K"],
        )),
        true,
        &[
            "out of memory on cpu while compressing layer 0 (linear fc2)",
            "the OBS work matrices of fc2 (64×128)",
            "over the memory limit of 300.0 KiB",
        ],
    );
    // The headline comes first, not a backend string.
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains("out of memory")),
        "{err}"
    );
    // Too little for the Hessians: named as such, with the layer.
    refused(
        &os(&prune_args(
            &fx,
            &m,
            &["--sparsity", "0.5", "--memory-limit", "40K"],
        )),
        true,
        &["out of memory on cpu while collecting the Hessians of layer 0"],
    );
    // Too little for the inputs themselves.
    refused(
        &os(&prune_args(
            &fx,
            &m,
            &["--sparsity", "0.5", "--memory-limit", "8K"],
        )),
        true,
        &[
            "out of memory on cpu while embedding the calibration windows",
            "the inputs of layer 0",
        ],
    );
}

#[test]
fn out_of_memory_in_a_script_names_the_layer_and_linear() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let body = r#"let m = load_model(model);
let calib = calibrate(m, calib, #{nsamples: 2, seqlen: 32, reservoir: 0, memory_limit: "300K"});
for layer in calib.layers() {
    for linear in layer.linears { prune_layer(layer, linear, #{sparsity: 0.5}); }
}
"#;
    refused(
        &os(&script_args(tmp.path(), &fx, &m, body)),
        false,
        &["out of memory on cpu while compressing layer 0 (linear fc2)"],
    );
}

/// The Rust API: the error is an `OutOfMemory` that a caller can match on, and
/// the layers committed before it stay in the model.
#[test]
fn out_of_memory_is_a_typed_error_with_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), true, DType::F32);
    let opts = CalibOptions {
        memory_limit: Some(300 << 10),
        ..quiet_opts()
    };
    let mut calib = Calibration::from_windows(&model, windows(2, 32, 128, 1), opts).unwrap();
    let err = calib
        .run(
            &mut model,
            uniform_policy(sparsegpt(HALF, None), LayerFilter::default()),
        )
        .unwrap_err();
    let oom = err
        .downcast_ref::<sparselab::runtime::memory::OutOfMemory>()
        .unwrap_or_else(|| panic!("not an OutOfMemory: {err:#}"));
    assert_eq!(oom.device, "cpu");
    assert_eq!(oom.layer, Some(0));
    // Llama-shaped: down_proj reads the 128-wide MLP.
    assert_eq!(oom.linear.as_deref(), Some("mlp.down_proj"), "{err:#}");
    assert!(calib.reports.is_empty());
    assert_eq!(calib.next_index(), 0);
}

// ------------------------------------------------------------------ CLI

#[test]
fn cli_prune_saves_refuses_and_overwrites() {
    let Some(fx) = common::fixtures() else { return };
    let bin = env!("CARGO_BIN_EXE_sparselab");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let calib = fx.join("data/wikitext2/wiki.valid.raw");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .args(["prune", "--model"])
            .arg(fx.join("models/opt-tiny"))
            .args([
                "--sparsity",
                "0.5",
                "--bits",
                "4",
                "--nsamples",
                "4",
                "--seqlen",
                "64",
                "-q",
            ])
            .arg("--calib")
            .arg(&calib)
            .arg("--save")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compression.json")).unwrap())
            .unwrap();
    assert_eq!(report["linears"].as_array().unwrap().len(), 24);
    assert!(report["run"]["command"]
        .as_str()
        .unwrap()
        .contains("--save"));
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not empty"), "{err}");
    let o = run(&["--overwrite", "--format", "packed"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("packed.json").is_file() && !out.join("model.safetensors").exists());
    let packed = load(&out);
    let dense_dir = tmp.path().join("dense");
    let o = Command::new(bin)
        .args(["prune", "--model"])
        .arg(fx.join("models/opt-tiny"))
        .args([
            "--sparsity",
            "0.5",
            "--bits",
            "4",
            "--nsamples",
            "4",
            "--seqlen",
            "64",
            "-q",
        ])
        .arg("--calib")
        .arg(&calib)
        .arg("--save")
        .arg(&dense_dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(all_tensors(&packed), all_tensors(&load(&dense_dir)));
}

// ------------------------------------------------------------------ transformers

#[test]
fn transformers_loads_the_saved_model_with_the_same_perplexity() {
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers"]) else {
        return;
    };
    // The first 60,000 characters of the WikiText-2 test text (about 14,000
    // tokens): both sides tokenize the same file, and a prefix keeps the test
    // short (tokenizing all 1.3 MB took most of its time on 2 cores).
    let tmp_text = tempfile::tempdir().unwrap();
    let head = |split: &str| {
        let full =
            std::fs::read_to_string(fx.join(format!("data/wikitext2/wiki.{split}.raw"))).unwrap();
        let cut = full
            .char_indices()
            .nth(60_000)
            .map_or(full.len(), |(i, _)| i);
        let file = tmp_text.path().join(format!("wiki.{split}.head.raw"));
        std::fs::write(&file, &full[..cut]).unwrap();
        file
    };
    let (text_file, calib_file) = (head("test"), head("valid"));
    let text = std::fs::read_to_string(&text_file).unwrap();
    let (seqlen, nwin) = (128, 8);
    for name in ["opt-tiny", "llama-tiny", "opt-tiny-pt"] {
        let mut model = load(&fx.join("models").join(name));
        let opts = CalibOptions {
            dataset: calib_file.to_string_lossy().into_owned(),
            nsamples: 16,
            seqlen: Some(seqlen),
            ..quiet_opts()
        };
        let mut calib = Calibration::new(&model, opts).unwrap();
        calib
            .run(
                &mut model,
                uniform_policy(sparsegpt(HALF, bits4()), LayerFilter::default()),
            )
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(name);
        model.save(&out, &SaveOptions::default()).unwrap();
        let saved = load(&out);
        let tokens = saved.tokenizer().unwrap().encode(&text).unwrap();
        let popts = PplOptions {
            seqlen: Some(seqlen),
            max_windows: Some(nwin),
            quiet: true,
            ..PplOptions::default()
        };
        let ours = perplexity(&saved, &tokens, &popts).unwrap().ppl;
        let o = Command::new(&py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/reference/load_saved.py"
            ))
            .arg(&out)
            .arg(&text_file)
            .arg(seqlen.to_string())
            .arg(nwin.to_string())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(r["windows"], nwin);
        for k in ["missing", "unexpected", "mismatched"] {
            assert_eq!(r[k], serde_json::json!([]), "{name}: {k} keys: {}", r[k]);
        }
        let theirs = r["ppl"].as_f64().unwrap();
        let rel = (ours - theirs).abs() / theirs;
        eprintln!(
            "{name} (SparseGPT 50% + 4-bit, saved): sparselab ppl {ours:.5}, transformers {theirs:.5}, \
             rel. diff {rel:.2e}, zeros in linears {:.4}",
            r["zeros"].as_f64().unwrap()
        );
        assert!(rel < 1e-3, "{name}: {ours} vs {theirs}");
    }
}

/// The Python decoder printed in docs/packed-format.md restores the same bytes.
#[test]
fn the_documented_python_decoder_reads_the_packed_format() {
    let Some(py) = common::python(&["numpy", "safetensors.numpy"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut model = random_model(&tmp.path().join("src"), false, DType::F32);
    let vocab = model.config.vocab_size() as u32;
    let mut calib =
        Calibration::from_windows(&model, windows(8, 32, vocab, 1), quiet_opts()).unwrap();
    calib.run(&mut model, varied_policy).unwrap();
    let (p, d) = (tmp.path().join("p"), tmp.path().join("d"));
    let packed = SaveOptions {
        format: SaveFormat::Packed,
        ..SaveOptions::default()
    };
    model.save(&p, &packed).unwrap();
    model.save(&d, &SaveOptions::default()).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/packed-format.md"
    ))
    .unwrap();
    let snippet = doc
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    let check = format!(
        "{snippet}\nidx = json.load(open('{p}/packed.json'))\n\
         dense = load_file('{d}/model.safetensors')\nn = 0\n\
         for name, e in idx['tensors'].items():\n    if e['encoding'] == 'quantized':\n\
         \x20       assert load_quantized('{p}', name, e).tobytes() == dense[name].tobytes(), name\n\
         \x20       n += 1\nprint(n)\n",
        p = p.display(),
        d = d.display()
    );
    let o = Command::new(&py).args(["-c", &check]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n: usize = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(n, 9, "quantized linears checked"); // 3 layers × (k, v, q)
}

// ------------------------------------------------------------------ script

/// `m.save(dir)` from a script: the directory loads with the script's
/// compressed weights, `compression.json` holds the script and its `--set`
/// values, a second save into it is refused without `overwrite`, and the
/// packed format restores the same tensors.
#[test]
fn a_script_saves_the_model_with_its_report() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    cli_model(&fx, &m);
    let out = tmp.path().join("out");
    let body = r#"param out = "";
param format = "safetensors";
let m = load_model(model);
let calib = calibrate(m, calib, #{nsamples: 2, seqlen: 32, reservoir: 0});
for layer in calib.layers() {
    for linear in layer.linears { prune_layer(layer, linear, #{sparsity: 0.5, bits: 4}); }
}
let s = m.save(out, #{format: format, overwrite: format == "packed"});
print(`saved ${s.tensors} tensors`);
"#;
    let run = |format: &str| {
        let mut args = script_args(tmp.path(), &fx, &m, body);
        for a in [
            "--set".into(),
            format!("out={}", out.display()).into(),
            "--set".into(),
            format!("format={format}").into(),
        ] {
            args.push(a);
        }
        Command::new(env!("CARGO_BIN_EXE_sparselab"))
            .args(&args)
            .output()
            .unwrap()
    };
    let o = run("safetensors");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("saved "));
    let saved = load(&out);
    // Every linear of both layers is at 50% and on a 4-bit grid.
    for layer in 0..2 {
        for lin in ["self_attn.q_proj", "fc1", "fc2"] {
            let w = saved
                .weights()
                .get(
                    &saved.linear_weight_name(layer, lin),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let zeros = w.iter().filter(|v| **v == 0.0).count() as f64 / w.len() as f64;
            assert!((0.5..0.53).contains(&zeros), "layer {layer} {lin}: {zeros}");
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compression.json")).unwrap())
            .unwrap();
    assert_eq!(report["linears"].as_array().unwrap().len(), 12);
    assert!(report["run"]["script"]
        .as_str()
        .unwrap()
        .contains("prune_layer(layer, linear, #{sparsity: 0.5, bits: 4})"));
    assert_eq!(report["run"]["set"]["format"], "safetensors");
    assert_eq!(report["calibration"]["nsamples"], 2);
    let dense = all_tensors(&saved);

    // Again without overwrite: refused, and the first save is untouched.
    let before = tree(&out);
    let o = run("safetensors");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("not empty"),
        "{stderr}"
    );
    assert_eq!(tree(&out), before);

    // Packed, over it: the same dense tensors come back.
    let o = run("packed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("packed.json").is_file());
    assert_eq!(all_tensors(&load(&out)), dense);
}

/// `prune --spill-dir` keeps compressed layers on disk during the run: the saved
/// model is byte for byte the one an in-memory run saves, and the temporary
/// directory is gone afterwards.
#[test]
fn prune_with_spill_dir_saves_the_same_model_and_cleans_up() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let model = fx.join("models/opt-tiny");
    let settings = ["--sparsity", "0.5", "--bits", "4"];
    for (out, extra) in [
        ("in-memory", vec![]),
        (
            "spilled",
            vec!["--spill-dir".into(), spill.clone().into_os_string()],
        ),
    ] {
        let mut args = prune_args(&fx, &model, &settings);
        args.extend(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_sparselab"))
            .args(&args)
            .arg("--save")
            .arg(tmp.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let weights = |d: &str| std::fs::read(tmp.path().join(d).join("model.safetensors")).unwrap();
    assert!(
        weights("in-memory") == weights("spilled"),
        "saved weights differ"
    );
    assert_eq!(
        entries(&spill),
        Vec::<String>::new(),
        "spill directory left behind"
    );
}
