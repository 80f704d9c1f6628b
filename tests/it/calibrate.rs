//! Sequential calibration on the fixture models: SparseGPT against the baselines,
//! structured and joint runs, true-sequential order, and the loop's errors.

use crate::common;

use std::path::Path;

use sparselab::calibrate::{uniform_policy, CalibOptions, Calibration, LayerFilter};
use sparselab::compress::Method;
use sparselab::compress::{
    fasterprune, magnitude_prune, relative_output_error, wanda_prune, BitWidths, QuantOptions,
    SparseGptOptions, SparsityPattern,
};
use sparselab::model::{LoadOptions, Model};

const HALF: SparsityPattern = SparsityPattern::Unstructured { sparsity: 0.5 };

fn load(fx: &Path, name: &str) -> Model {
    let dir = fx.join("models").join(name);
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// 16 windows of 128 tokens from wiki.valid.raw (as a local file: no BOS).
fn calib_opts(fx: &Path) -> CalibOptions {
    common::wiki_calib(fx, 16, 128)
}

/// WikiText-2 test perplexity over the first 64 windows of 128 tokens.
fn test_ppl(fx: &Path, model: &Model) -> f64 {
    common::wiki_test_ppl(fx, model, 128, 64)
}

fn sparsegpt(pattern: SparsityPattern, bits: Option<u32>) -> Method {
    Method::SparseGpt(SparseGptOptions {
        pattern,
        quant: bits.map(|b| QuantOptions {
            bits: BitWidths::Uniform(b),
            ..QuantOptions::default()
        }),
        ..SparseGptOptions::default()
    })
}

fn run(fx: &Path, name: &str, method: Method, true_sequential: bool) -> (Model, Calibration) {
    let mut model = load(fx, name);
    let opts = CalibOptions {
        true_sequential,
        ..calib_opts(fx)
    };
    let mut calib = Calibration::new(&model, opts).unwrap();
    calib
        .run(&mut model, uniform_policy(method, LayerFilter::default()))
        .unwrap();
    (model, calib)
}

#[test]
fn sparsegpt_beats_magnitude_and_wanda_on_every_linear() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["opt-tiny", "llama-tiny"] {
        let mut model = load(&fx, name);
        let mut calib = Calibration::new(&model, calib_opts(&fx)).unwrap();
        let mut compared = 0;
        calib
            .run(&mut model, |work| {
                for linear in work.linears() {
                    // All three on the same weight and Hessian; SparseGPT's result is kept.
                    let w = work.weight(linear)?;
                    let acc = work.hessian(linear)?.clone();
                    let h = acc.hessian();
                    let err = |r: sparselab::compress::CompressResult| relative_output_error(&w, &r.weight, h).unwrap();
                    let opts = SparseGptOptions { pattern: HALF, ..SparseGptOptions::default() };
                    let e_sgpt = err(fasterprune(&w, h, &opts)?);
                    let e_mag = err(magnitude_prune(&w, &HALF)?);
                    let e_wanda = err(wanda_prune(&w, acc.scaler_row(), &HALF)?);
                    assert!(
                        e_sgpt < e_mag && e_sgpt < e_wanda,
                        "{name} layer {} {linear}: sparsegpt {e_sgpt:.3e}, magnitude {e_mag:.3e}, wanda {e_wanda:.3e}",
                        work.index
                    );
                    let r = work.compress(linear, &sparsegpt(HALF, None))?;
                    assert!((r.rel_error - e_sgpt).abs() <= 1e-6 * e_sgpt.max(1e-12), "{r:?} vs {e_sgpt}");
                    compared += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(compared, model.num_layers() * model.linear_names().len());
    }
}

#[test]
fn sparsegpt_perplexity_is_below_magnitude() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["opt-tiny", "llama-tiny"] {
        let (m_sgpt, c) = run(&fx, name, sparsegpt(HALF, None), false);
        let (m_mag, _) = run(&fx, name, Method::Magnitude(HALF), false);
        let (p_sgpt, p_mag) = (test_ppl(&fx, &m_sgpt), test_ppl(&fx, &m_mag));
        let dense = test_ppl(&fx, &load(&fx, name));
        println!("{name}: dense {dense:.3}, sparsegpt 50% {p_sgpt:.3}, magnitude 50% {p_mag:.3}");
        assert!(
            p_sgpt < p_mag,
            "{name}: sparsegpt {p_sgpt} vs magnitude {p_mag}"
        );
        for r in &c.reports {
            assert!((r.sparsity - 0.5).abs() < 0.01, "{r:?}");
            assert!(r.loss.is_some() && r.rel_error > 0.0 && r.rel_error < 1.0);
        }
    }
}

#[test]
fn two_four_and_joint_quantized_runs_report_their_figures() {
    let Some(fx) = common::fixtures() else { return };
    let (_, c) = run(
        &fx,
        "llama-tiny",
        sparsegpt(SparsityPattern::NM { n: 2, m: 4 }, None),
        false,
    );
    assert_eq!(c.reports.len(), 28);
    assert!(c
        .reports
        .iter()
        .all(|r| r.nm_valid == Some(true) && (r.sparsity - 0.5).abs() < 1e-9));
    let (model, c) = run(&fx, "opt-tiny", sparsegpt(HALF, Some(4)), false);
    assert!(c
        .reports
        .iter()
        .all(|r| r.avg_bits == Some(4.0) && r.loss.unwrap() > 0.0));
    // Weights stored back in the model: every row of a quantized linear holds at
    // most 16 distinct non-zero values.
    let w = model
        .weights()
        .get(
            "model.decoder.layers.2.fc1.weight",
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for row in &w {
        let mut vals: Vec<f32> = row.iter().copied().filter(|v| *v != 0.0).collect();
        vals.sort_by(f32::total_cmp);
        vals.dedup();
        assert!(
            vals.len() <= 16,
            "a 4-bit row holds {} distinct values",
            vals.len()
        );
    }
}

#[test]
fn true_sequential_runs_and_changes_later_hessians() {
    let Some(fx) = common::fixtures() else { return };
    let (_, plain) = run(&fx, "opt-tiny", sparsegpt(HALF, None), false);
    let (_, seq) = run(&fx, "opt-tiny", sparsegpt(HALF, None), true);
    assert_eq!(plain.reports.len(), seq.reports.len());
    // Layer 0's first group sees the same inputs either way; its out_proj does not.
    let find = |c: &Calibration, layer: usize, linear: &str| {
        c.reports
            .iter()
            .find(|r| r.layer == layer && r.linear == linear)
            .unwrap()
            .loss
            .unwrap()
    };
    assert_eq!(
        find(&plain, 0, "self_attn.q_proj"),
        find(&seq, 0, "self_attn.q_proj")
    );
    assert_ne!(
        find(&plain, 0, "self_attn.out_proj"),
        find(&seq, 0, "self_attn.out_proj")
    );
}

#[test]
fn layer_work_errors_name_the_problem() {
    let Some(fx) = common::fixtures() else { return };
    let model = load(&fx, "opt-tiny");
    let calib = Calibration::new(&model, calib_opts(&fx)).unwrap();
    let mut work = calib.next_layer(&model).unwrap().unwrap();
    let err = work
        .compress("mlp.up_proj", &sparsegpt(HALF, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mlp.up_proj") && err.contains("fc1"), "{err}");
    work.compress("fc1", &sparsegpt(HALF, None)).unwrap();
    let err = work
        .compress("fc1", &sparsegpt(HALF, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already compressed"), "{err}");
    let bad = sparsegpt(SparsityPattern::Unstructured { sparsity: 1.5 }, None);
    let err = format!("{:#}", work.compress("fc2", &bad).unwrap_err());
    assert!(err.contains("sparsity") && err.contains("1.5"), "{err}");
    let too_long = CalibOptions {
        seqlen: Some(4096),
        ..calib_opts(&fx)
    };
    let err = format!("{:#}", Calibration::new(&model, too_long).err().unwrap());
    assert!(
        err.contains("4096") && err.contains("max_position_embeddings"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "a few words only").unwrap();
    let opts = CalibOptions {
        dataset: short.to_string_lossy().into_owned(),
        ..calib_opts(&fx)
    };
    let err = format!("{:#}", Calibration::new(&model, opts).err().unwrap());
    assert!(err.contains("short.txt"), "{err}");
}

/// Compressed weights spilled to disk as they are produced give the same model
/// as weights kept in memory, and the spill directory goes with the model.
#[test]
fn spilled_compressed_weights_give_the_same_model() {
    let Some(fx) = common::fixtures() else { return };
    let method = || sparsegpt(HALF, Some(4));
    let (in_memory, _) = run(&fx, "opt-tiny", method(), false);
    let mut spilled = load(&fx, "opt-tiny");
    spilled.weights_mut().spill_to_disk(None).unwrap();
    let dir = spilled.weights().spill_dir().unwrap().to_path_buf();
    let mut calib = Calibration::new(&spilled, calib_opts(&fx)).unwrap();
    calib
        .run(
            &mut spilled,
            uniform_policy(method(), LayerFilter::default()),
        )
        .unwrap();
    let linears = spilled.linear_names();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        spilled.num_layers() * linears.len(),
        "one file per compressed linear in {}",
        dir.display()
    );
    for layer in 0..spilled.num_layers() {
        for linear in linears {
            let name = spilled.linear_weight_name(layer, linear);
            assert!(spilled.weights().is_replaced(&name));
            let get = |m: &Model| -> Vec<f32> {
                m.weights()
                    .get(&name, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            assert_eq!(get(&in_memory), get(&spilled), "{name}");
        }
    }
    // The embeddings were released during calibration and come back for evaluation.
    assert_eq!(test_ppl(&fx, &in_memory), test_ppl(&fx, &spilled));
    drop(spilled);
    assert!(!dir.exists(), "{} outlived the model", dir.display());
}

/// `gemm: bf16` (bf16 inputs, f32 accumulation in the forward passes and
/// Hessians) against the f32 run of the same 50% + 4-bit job: the numerics it
/// costs, printed and bounded. Where the CPU lacks AVX512-BF16 the option must
/// be refused with a message that says so.
#[test]
fn bf16_gemms_stay_close_to_f32() {
    let Some(fx) = common::fixtures() else { return };
    let method = sparsegpt(HALF, Some(4));
    let run =
        |gemm: sparselab::compute::kernels::CpuGemm| -> anyhow::Result<(Model, f64, Vec<f64>)> {
            let mut model = load(&fx, "opt-tiny");
            let opts = CalibOptions {
                gemm,
                ..calib_opts(&fx)
            };
            let mut calib = Calibration::new(&model, opts)?;
            calib.run(
                &mut model,
                uniform_policy(method.clone(), LayerFilter::default()),
            )?;
            let errors = calib.reports.iter().map(|r| r.rel_error).collect();
            let ppl = test_ppl(&fx, &model);
            Ok((model, ppl, errors))
        };
    use sparselab::compute::kernels::CpuGemm;
    if !sparselab::compute::bf16_gemm::available() {
        let e = run(CpuGemm::Bf16).err().expect("bf16 must be refused");
        assert!(e.to_string().contains("AVX512-BF16"), "{e}");
        eprintln!("this CPU has no AVX512-BF16: only the refusal was checked");
        return;
    }
    let (m32, ppl32, err32) = run(CpuGemm::F32).unwrap();
    let (m16, ppl16, err16) = run(CpuGemm::Bf16).unwrap();
    let (mut same, mut total) = (0usize, 0usize);
    let linear = |n: &&&str| {
        [".fc1.weight", ".fc2.weight", "proj.weight"]
            .iter()
            .any(|s| n.ends_with(s))
    };
    for name in m32.weights().names().iter().filter(linear) {
        let za: Vec<bool> = flat(&m32, name).iter().map(|&v| v == 0.0).collect();
        let zb: Vec<bool> = flat(&m16, name).iter().map(|&v| v == 0.0).collect();
        total += za.len();
        same += za.iter().zip(&zb).filter(|(x, y)| x == y).count();
    }
    let agreement = same as f64 / total as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "opt-tiny 50% + 4 bit: ppl f32 {ppl32:.4} bf16 {ppl16:.4} ({:+.3}%); mask agreement {agreement:.4}; \
         mean relative output error f32 {:.5} bf16 {:.5}",
        100.0 * (ppl16 / ppl32 - 1.0),
        mean(&err32),
        mean(&err16)
    );
    assert!(total > 0);
    assert!(agreement > 0.95, "mask agreement {agreement}");
    assert!((ppl16 / ppl32 - 1.0).abs() < 0.01, "ppl {ppl32} vs {ppl16}");
    assert!(mean(&err16) < 1.05 * mean(&err32) + 1e-4);
}

fn flat(model: &Model, name: &str) -> Vec<f32> {
    model
        .weights()
        .get(name, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
