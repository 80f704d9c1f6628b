//! Perplexity end to end: the CLI, transformers' figures, dtypes, dataset sources.

use crate::common;

use std::path::Path;
use std::process::Command;

use candle_core::DType;
use sparselab::eval::{eval_dataset, PplOptions};
use sparselab::model::{LoadOptions, Model};

/// `sparselab eval … --json` with a controlled environment; returns the JSON lines.
fn cli_eval(
    fx: &Path,
    args: &[&str],
    data_dir: Option<&Path>,
    hf_home: &Path,
) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sparselab"));
    cmd.arg("eval").args(args).arg("--json");
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE");
    match data_dir {
        Some(d) => cmd.env("SPARSELAB_DATA", d),
        None => cmd.env_remove("SPARSELAB_DATA"),
    };
    let out = cmd.current_dir(fx).output().unwrap();
    assert!(
        out.status.success(),
        "sparselab eval {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ppl(v: &serde_json::Value) -> f64 {
    v["ppl"].as_f64().unwrap()
}

/// transformers 5.23 (float32, CPU; 5.24 gives the same) on the same windows, with the reference
/// protocol (tests/reference/ppl_ref.py): wikitext2 test as the named dataset
/// (rows joined by "\n\n", one BOS) and ptb.test.txt as a local file, seqlen 256,
/// first 8 windows.
const REFERENCE: [(&str, f64, f64); 2] = [
    ("opt-tiny", 334.4739990234375, 191.88075256347656),
    ("llama-tiny", 292.9444885253906, 161.19224548339844),
];

#[test]
fn cli_matches_transformers_perplexity() {
    let Some(fx) = common::fixtures() else { return };
    for (model, wiki, ptb) in REFERENCE {
        let dir = fx.join("models").join(model);
        let lines = cli_eval(
            &fx,
            &[
                "--model",
                dir.to_str().unwrap(),
                "--dataset",
                "wikitext2",
                "--dataset",
                "data/ptb/ptb.test.txt",
                "--seqlen",
                "256",
                "--nsamples",
                "8",
            ],
            Some(&fx.join("data")),
            &fx.join("hf-cache"),
        );
        assert_eq!(lines.len(), 2);
        for (line, want) in lines.iter().zip([wiki, ptb]) {
            for key in ["model", "dataset", "seqlen", "windows", "ppl", "seconds"] {
                assert!(line.get(key).is_some(), "missing {key} in {line}");
            }
            assert_eq!(line["windows"], 8);
            let rel = (ppl(line) - want).abs() / want;
            assert!(
                rel < 1e-5,
                "{model} {}: ppl {} vs transformers {want}",
                line["dataset"],
                ppl(line)
            );
        }
    }
}

#[test]
fn named_datasets_from_data_dir_and_hub_cache_agree() {
    let Some(fx) = common::fixtures() else { return };
    let dir = fx.join("models/llama-tiny");
    let args = [
        "--model",
        dir.to_str().unwrap(),
        "--dataset",
        "wikitext2:test",
        "--seqlen",
        "128",
        "--nsamples",
        "3",
    ];
    let from_data = cli_eval(&fx, &args, Some(&fx.join("data")), &fx.join("hf-cache"));
    let from_cache = cli_eval(&fx, &args, None, &fx.join("hf-cache"));
    assert_eq!(ppl(&from_data[0]), ppl(&from_cache[0]));
    // PTB evaluates through the named dataset too (stripped lines joined by " ").
    let ptb = cli_eval(
        &fx,
        &[
            "--model",
            dir.to_str().unwrap(),
            "--dataset",
            "ptb",
            "--seqlen",
            "128",
            "--nsamples",
            "3",
        ],
        Some(&fx.join("data")),
        &fx.join("hf-cache"),
    );
    assert!(ppl(&ptb[0]).is_finite() && ppl(&ptb[0]) > 1.0);
}

#[test]
fn half_precision_perplexity_is_within_one_percent() {
    let Some(fx) = common::fixtures() else { return };
    let text = fx.join("data/wikitext2/wiki.test.raw");
    let opts = PplOptions {
        seqlen: Some(256),
        max_windows: Some(4),
        quiet: true,
        ..PplOptions::default()
    };
    for model in ["opt-tiny", "llama-tiny"] {
        let dir = fx.join("models").join(model);
        let mut results = Vec::new();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let lopts = LoadOptions {
                dtype: Some(dtype),
                ..LoadOptions::default()
            };
            let m = Model::load(dir.to_str().unwrap(), &lopts).unwrap();
            results.push(eval_dataset(&m, text.to_str().unwrap(), &opts).unwrap().ppl);
        }
        for (dtype, p) in ["f16", "bf16"].iter().zip(&results[1..]) {
            let rel = (p - results[0]).abs() / results[0];
            println!(
                "{model} {dtype}: ppl {p:.3} vs f32 {:.3} ({:.3}%)",
                results[0],
                rel * 100.0
            );
            assert!(
                rel < 0.01,
                "{model} {dtype}: {p} vs f32 {} ({:.2}%)",
                results[0],
                rel * 100.0
            );
        }
    }
}

#[test]
fn cli_reports_bad_device_and_missing_dataset() {
    let Some(fx) = common::fixtures() else { return };
    let dir = fx.join("models/opt-tiny");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sparselab"))
            .arg("eval")
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", fx.join("no-such-cache"))
            .env_remove("HF_HUB_CACHE")
            .env_remove("SPARSELAB_DATA")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    #[cfg(not(feature = "cuda"))]
    {
        let err = run(&[
            "--model",
            dir.to_str().unwrap(),
            "--dataset",
            "wikitext2",
            "--device",
            "cuda",
        ]);
        assert!(err.contains("built without CUDA"), "{err}");
    }
    let err = run(&["--model", dir.to_str().unwrap(), "--dataset", "ptb"]);
    assert!(
        err.contains("SPARSELAB_DATA") && err.contains("no-such-cache") && err.contains("offline"),
        "{err}"
    );
}

/// The stored transformers figures ([`REFERENCE`]) are what
/// `tests/reference/ppl_ref.py` computes with the transformers that `.ci/run`
/// installs, so a new transformers that changed them would be noticed here
/// rather than as an unexplained mismatch in `cli_matches_transformers_perplexity`.
#[test]
fn reference_figures_reproduce_with_the_installed_transformers() {
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers"]) else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/ppl_ref.py");
    // All four runs at once: each is mostly single-threaded tokenization.
    let mut runs = Vec::new();
    for (model, wiki, ptb) in REFERENCE {
        for (file, named, want) in [
            ("data/wikitext2/wiki.test.raw", true, wiki),
            ("data/ptb/ptb.test.txt", false, ptb),
        ] {
            let mut cmd = Command::new(&py);
            cmd.arg(script)
                .arg(fx.join("models").join(model))
                .arg(fx.join(file))
                .args(["256", "8"])
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            if named {
                cmd.arg("--named-wikitext");
            }
            runs.push((model, file, want, cmd.spawn().unwrap()));
        }
    }
    for (model, file, want, child) in runs {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(r["windows"], 8);
        let got = ppl(&r);
        assert!(
            (got - want).abs() / want < 1e-6,
            "{model} {file}: ppl_ref.py gives {got}, the stored figure is {want}"
        );
    }
}

// ---- standard errors, KL divergence, zero-shot tasks ---------------------

use sparselab::calibrate::{uniform_policy, Calibration, LayerFilter};
use sparselab::compress::Method;
use sparselab::compress::SparsityPattern;
use sparselab::eval::kl::BaseFile;
use sparselab::eval::tasks::{load_docs, score_task, wikitext_last_word_docs};
use sparselab::eval::{kl_divergence, perplexity, write_base, KlResult, TaskOptions, TaskSpec};

const KL_SEQLEN: usize = 128;
const KL_WINDOWS: usize = 4;

fn quiet_ppl() -> PplOptions {
    PplOptions {
        seqlen: Some(KL_SEQLEN),
        max_windows: Some(KL_WINDOWS),
        quiet: true,
        ..PplOptions::default()
    }
}

fn load(dir: &Path) -> Model {
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn wiki_tokens(fx: &Path, m: &Model) -> Vec<u32> {
    let text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw")).unwrap();
    m.tokenizer().unwrap().encode(&text).unwrap()
}

/// opt-tiny with every linear magnitude-pruned to `sparsity` (no data needed).
fn pruned(fx: &Path, sparsity: f64) -> Model {
    let mut m = load(&fx.join("models/opt-tiny"));
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|w| (0..16).map(|i| (w * 16 + i) as u32).collect())
        .collect();
    let opts = sparselab::calibrate::CalibOptions {
        quiet: true,
        reservoir: 0,
        ..Default::default()
    };
    let mut calib = Calibration::from_windows(&m, ids, opts).unwrap();
    let method = Method::Magnitude(SparsityPattern::Unstructured { sparsity });
    calib
        .run(&mut m, uniform_policy(method, LayerFilter::default()))
        .unwrap();
    m
}

/// Per-token log-softmax rows (f64) of the first `windows` windows, from the
/// whole-model forward pass (not the evaluation loop).
fn log_probs(m: &Model, tokens: &[u32], windows: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for w in 0..windows {
        let ids = &tokens[w * KL_SEQLEN..(w + 1) * KL_SEQLEN];
        let ids = candle_core::Tensor::from_slice(ids, (1, KL_SEQLEN), &candle_core::Device::Cpu)
            .unwrap();
        let logits: Vec<Vec<f32>> = m
            .forward(&ids)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for row in &logits[..KL_SEQLEN - 1] {
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            out.push(row.iter().map(|&v| v as f64 - lse).collect());
        }
    }
    out
}

fn kl_from_file(fx: &Path, model: &Model, base: &Path) -> KlResult {
    let opts = PplOptions {
        seqlen: None,
        max_windows: None,
        ..quiet_ppl()
    };
    kl_divergence(model, base, &wiki_tokens(fx, model), &opts).unwrap()
}

#[test]
fn perplexity_standard_error_matches_a_direct_computation() {
    let Some(fx) = common::fixtures() else { return };
    let m = load(&fx.join("models/llama-tiny"));
    let tokens = wiki_tokens(&fx, &m);
    let r = perplexity(&m, &tokens, &quiet_ppl()).unwrap();
    // Directly: NLLs from the whole-model forward pass, mean, sample variance.
    let lp = log_probs(&m, &tokens, KL_WINDOWS);
    let nll: Vec<f64> = lp
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (w, p) = (i / (KL_SEQLEN - 1), i % (KL_SEQLEN - 1));
            -row[tokens[w * KL_SEQLEN + p + 1] as usize]
        })
        .collect();
    let n = nll.len() as f64;
    let mean = nll.iter().sum::<f64>() / n;
    let sample_var = nll.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let ppl = mean.exp();
    let se = ppl * (sample_var / n).sqrt();
    println!("ppl {} (direct {ppl:.4} ± {se:.4})", r.text());
    assert_eq!(r.tokens, KL_WINDOWS * (KL_SEQLEN - 1));
    assert!((r.ppl - ppl).abs() < 1e-5 * ppl, "{} vs {ppl}", r.ppl);
    assert!((r.ppl_se - se).abs() < 1e-4 * se, "se {} vs {se}", r.ppl_se);
}

#[test]
fn kl_against_itself_is_zero_and_grows_with_sparsity() {
    let Some(fx) = common::fixtures() else { return };
    let dense = load(&fx.join("models/opt-tiny"));
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("opt-tiny.klb");
    let tokens = wiki_tokens(&fx, &dense);
    let info = write_base(
        &dense,
        &tokens,
        &quiet_ppl(),
        &base,
        "opt-tiny",
        "wiki.test.raw",
    )
    .unwrap();
    assert_eq!(
        (info.windows, info.seqlen, info.vocab),
        (KL_WINDOWS, KL_SEQLEN, 4096)
    );
    let own = kl_from_file(&fx, &dense, &base);
    println!("self: {}", own.text());
    assert!(
        own.kl.abs() < 1e-6 && own.kl_max < 1e-5,
        "self KL {}",
        own.text()
    );
    assert_eq!(own.top1, 1.0);
    assert!(own.delta_ppl.abs() < 1e-3, "{}", own.text());

    // Stored form against the exact KL from both models' full distributions.
    let lp = log_probs(&dense, &tokens, KL_WINDOWS);
    let mut kls = Vec::new();
    for sparsity in [0.25, 0.5] {
        let m = pruned(&fx, sparsity);
        let r = kl_from_file(&fx, &m, &base);
        let lq = log_probs(&m, &tokens, KL_WINDOWS);
        let exact = lp
            .iter()
            .zip(&lq)
            .map(|(p, q)| p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>())
            .sum::<f64>()
            / lp.len() as f64;
        let rel = (r.kl - exact).abs() / exact;
        println!(
            "{sparsity}: {} | exact KL {exact:.6}, relative difference {rel:.2e}",
            r.text()
        );
        assert!(
            rel < 1e-3,
            "{sparsity}: stored-base KL {} vs exact {exact} ({rel:.2e})",
            r.kl
        );
        assert!(r.top1 < 1.0 && r.kl_se > 0.0 && r.kl_max >= r.kl_p99 && r.kl_p99 >= r.kl_median);
        kls.push(r.kl);
    }
    assert!(
        kls[1] > kls[0],
        "KL at 50% {} is not above 25% {}",
        kls[1],
        kls[0]
    );
}

#[test]
fn kl_matches_torch() {
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers"]) else {
        return;
    };
    let dense_dir = fx.join("models/opt-tiny");
    let dense = load(&dense_dir);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.klb");
    let tokens = wiki_tokens(&fx, &dense);
    write_base(&dense, &tokens, &quiet_ppl(), &base, "opt-tiny", "wiki").unwrap();
    let m = pruned(&fx, 0.5);
    let saved = tmp.path().join("opt-tiny-50");
    m.save(&saved, &sparselab::model::SaveOptions::default())
        .unwrap();
    let r = kl_from_file(&fx, &m, &base);
    let windows: Vec<&[u32]> = tokens.chunks(KL_SEQLEN).take(KL_WINDOWS).collect();
    let ids = tmp.path().join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&windows).unwrap()).unwrap();
    let o = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/reference/kl_ref.py"
        ))
        .args([&dense_dir, &saved, &ids])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let t: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let rel = |a: f64, key: &str| (a - t[key].as_f64().unwrap()).abs() / t[key].as_f64().unwrap();
    println!(
        "ours: {} | torch: {t} | relative differences: KL {:.2e}, ppl {:.2e}, base ppl {:.2e}",
        r.text(),
        rel(r.kl, "kl"),
        rel(r.ppl, "ppl"),
        rel(r.base_ppl, "base_ppl")
    );
    assert_eq!(t["tokens"].as_u64().unwrap() as usize, r.tokens);
    assert!(rel(r.kl, "kl") < 1e-4, "KL {} vs torch {}", r.kl, t["kl"]);
    assert!(
        rel(r.kl_max, "kl_max") < 1e-3,
        "max KL {} vs torch {}",
        r.kl_max,
        t["kl_max"]
    );
    assert!(rel(r.ppl, "ppl") < 1e-5 && rel(r.base_ppl, "base_ppl") < 1e-5);
    // An argmax may flip on a near tie between the two implementations.
    assert!((r.top1 - t["top1"].as_f64().unwrap()).abs() <= 2.0 / r.tokens as f64);
}

#[test]
fn mismatched_base_files_are_refused() {
    let Some(fx) = common::fixtures() else { return };
    let dense = load(&fx.join("models/opt-tiny"));
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.klb");
    let tokens = wiki_tokens(&fx, &dense);
    write_base(&dense, &tokens, &quiet_ppl(), &base, "opt-tiny", "wiki").unwrap();
    let try_kl = |m: &Model, path: &Path, tokens: &[u32], seqlen: Option<usize>| {
        let opts = PplOptions {
            seqlen,
            max_windows: None,
            ..quiet_ppl()
        };
        format!("{:#}", kl_divergence(m, path, tokens, &opts).unwrap_err())
    };
    // Truncated.
    let bytes = std::fs::read(&base).unwrap();
    let cut = tmp.path().join("cut.klb");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = try_kl(&dense, &cut, &tokens, None);
    assert!(
        e.contains("truncated") && e.contains("cut.klb") && e.contains("kl_base"),
        "{e}"
    );
    // Foreign: not a base file at all.
    let e = try_kl(
        &dense,
        &fx.join("models/opt-tiny/config.json"),
        &tokens,
        None,
    );
    assert!(e.contains("is not a sparselab KL base file"), "{e}");
    // Other tokens.
    let ptb = std::fs::read_to_string(fx.join("data/ptb/ptb.test.txt")).unwrap();
    let other = dense.tokenizer().unwrap().encode(&ptb).unwrap();
    let e = try_kl(&dense, &base, &other, None);
    assert!(
        e.contains("computed on other tokens") && e.contains("window 0"),
        "{e}"
    );
    // Another window length.
    let e = try_kl(&dense, &base, &tokens, Some(64));
    assert!(e.contains("seqlen 64") && e.contains("128"), "{e}");
    // Another vocabulary.
    let dir = tmp.path().join("small");
    let cfg = sparselab::model::random::opt_config(128, 64, 2, 4, 128, 256);
    sparselab::model::random::write_random_model(&dir, &cfg, DType::F32, 3).unwrap();
    let small = load(&dir);
    let e = try_kl(&small, &base, &tokens, None);
    assert!(
        e.contains("vocabulary of 4096") && e.contains("same model family"),
        "{e}"
    );
    assert!(BaseFile::open(&base).is_ok());
}

/// The task fixtures with their reference layouts.
const TASKS: [(&str, &str, &str); 5] = [
    ("piqa", "piqa", "piqa.jsonl"),
    ("arc_easy", "arc", "arc_easy.jsonl"),
    ("hellaswag", "hellaswag", "hellaswag.jsonl"),
    ("winogrande", "winogrande", "winogrande.jsonl"),
    ("lambada", "lambada", "lambada.jsonl"),
];

fn task_ref(py: &str, model: &Path, layout: &str, file: &Path) -> std::process::Child {
    Command::new(py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/reference/tasks_ref.py"
        ))
        .arg(model)
        .arg(layout)
        .arg(file)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn check_against_ref(name: &str, ours: &sparselab::eval::TaskResult, child: std::process::Child) {
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let t: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let lls: Vec<Vec<f64>> = serde_json::from_value(t["lls"].clone()).unwrap();
    assert_eq!(lls.len(), ours.docs, "{name}");
    for (d, (a, b)) in ours.loglikelihoods.iter().zip(&lls).enumerate() {
        assert_eq!(a.len(), b.len(), "{name} doc {d}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() < 2e-4 * y.abs().max(1.0),
                "{name} doc {d}: ll {x} vs torch {y}"
            );
        }
    }
    assert_eq!(ours.acc, t["acc"].as_f64().unwrap(), "{name} acc");
    assert_eq!(ours.acc_norm, t["acc_norm"].as_f64(), "{name} acc_norm");
    println!(
        "{} | torch acc {} acc_norm {}",
        ours.text(),
        t["acc"],
        t["acc_norm"]
    );
}

#[test]
fn task_scorers_match_torch_log_likelihoods() {
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers"]) else {
        return;
    };
    let dir = fx.join("models/opt-tiny");
    let m = load(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tasks");
    let opts = TaskOptions {
        batch: 4,
        quiet: true,
        ..TaskOptions::default()
    };
    let children: Vec<_> = TASKS
        .iter()
        .map(|(_, layout, file)| task_ref(&py, &dir, layout, &data.join(file)))
        .collect();
    for ((name, _, file), child) in TASKS.iter().zip(children) {
        let spec = TaskSpec::parse(&format!("{name}={}", data.join(file).display())).unwrap();
        let docs = load_docs(&spec, None).unwrap();
        let r = score_task(&m, name, &docs, &opts).unwrap();
        assert!(r.docs >= 2 && (0.0..=1.0).contains(&r.acc), "{name}");
        assert_eq!(r.ppl.is_some(), *name == "lambada");
        check_against_ref(name, &r, child);
    }
}

#[test]
fn wikitext_last_word_task_matches_torch() {
    let Some(fx) = common::fixtures() else { return };
    let Some(py) = common::python(&["torch", "transformers"]) else {
        return;
    };
    let text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw")).unwrap();
    let docs: Vec<_> = wikitext_last_word_docs(&text).into_iter().take(6).collect();
    assert_eq!(docs.len(), 6);
    for d in &docs {
        let (ctx, word) = &d.requests[0];
        assert!(
            ctx.split(' ').count() >= 14
                && word.starts_with(' ')
                && word[1..].chars().all(char::is_alphabetic)
        );
    }
    // The same documents in the LAMBADA layout, for the reference.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("wiki-lastword.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| {
            serde_json::json!({"text": format!("{}{}", d.requests[0].0, d.requests[0].1)})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let dir = fx.join("models/llama-tiny");
    let child = task_ref(&py, &dir, "lambada", &file);
    let m = load(&dir);
    let spec = TaskSpec::parse(&format!(
        "wikitext2_lastword={}",
        fx.join("data/wikitext2/wiki.test.raw").display()
    ))
    .unwrap();
    let opts = TaskOptions {
        limit: Some(6),
        batch: 4,
        quiet: true,
    };
    let r = score_task(
        &m,
        "wikitext2_lastword",
        &load_docs(&spec, Some(6)).unwrap(),
        &opts,
    )
    .unwrap();
    assert!(r.ppl.unwrap().is_finite());
    check_against_ref("wikitext2_lastword", &r, child);
}

#[test]
fn cli_reports_errors_kl_and_tasks() {
    let Some(fx) = common::fixtures() else { return };
    let dir = fx.join("models/opt-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("wiki.klb");
    let (m, b) = (dir.to_str().unwrap(), base.to_str().unwrap());
    let common_args = [
        "--model",
        m,
        "--dataset",
        "wikitext2",
        "--seqlen",
        "64",
        "--nsamples",
        "3",
    ];
    let saved = cli_eval(
        &fx,
        &[&common_args[..], &["--save-kl-base", b]].concat(),
        Some(&fx.join("data")),
        &fx.join("hf-cache"),
    );
    assert!(saved[0]["ppl_se"].as_f64().unwrap() > 0.0 && base.is_file());
    // Against the stored base: seqlen and windows come from the file.
    let piqa = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tasks/piqa.jsonl");
    let lines = cli_eval(
        &fx,
        &[
            "--model",
            m,
            "--dataset",
            "wikitext2",
            "--kl-base",
            b,
            "--task",
            &format!("piqa={piqa}"),
        ],
        Some(&fx.join("data")),
        &fx.join("hf-cache"),
    );
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["seqlen"].as_u64(), lines[0]["windows"].as_u64()),
        (Some(64), Some(3))
    );
    assert_eq!(ppl(&lines[0]), ppl(&saved[0]));
    assert!(lines[0]["kl"]["kl"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(lines[0]["kl"]["top1"], 1.0);
    assert_eq!(lines[1]["task"], "piqa");
    assert_eq!(lines[1]["docs"], 3);
    assert!(lines[1]["acc"].is_number() && lines[1]["acc_norm"].is_number());
    // Errors name the problem and the way out.
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sparselab"))
            .arg("eval")
            .args(args)
            .env("SPARSELAB_DATA", fx.join("data"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--model", m, "--dataset", "ptb", "--kl-base", b]);
    assert!(e.contains("computed on other tokens"), "{e}");
    let e = run(&["--model", m, "--task", "piqa"]);
    assert!(e.contains("piqa=FILE.jsonl"), "{e}");
    let e = run(&["--model", m, "--task", "mmlu=x.jsonl"]);
    assert!(
        e.contains("unknown task `mmlu`") && e.contains("hellaswag"),
        "{e}"
    );
    let e = run(&["--model", m]);
    assert!(e.contains("--dataset") && e.contains("--task"), "{e}");
}

#[test]
fn script_functions_report_errors_bars_kl_and_tasks() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("kl.rhai");
    let text = format!(
        r#"
let dense = load_model({model:?});
let m = load_model({model:?});
let opts = #{{seqlen: 64, nsamples: 2, quiet: true}};
let p = eval_ppl_stats(dense, {data:?}, opts);
let base = kl_base(dense, {data:?}, {base:?}, opts);
let again = kl_base(dense, {data:?}, {base:?}, opts);
let r = eval_kl(m, base.path, {data:?});
let r2 = eval_kl(m, dense, {data:?}, opts);
let t = eval_tasks(m, #{{tasks: #{{piqa: {piqa:?}}}, quiet: true}});
print(`ppl ${{p.text}} | ${{fmt_pm(base.ppl, base.ppl_se)}} | reused ${{again.reused}} | kl ${{r.kl}} ${{r2.kl}} | top1 ${{r.top1}} | piqa ${{t.piqa.docs}}`);
"#,
        model = fx.join("models/opt-tiny"),
        data = fx.join("data/wikitext2/wiki.test.raw"),
        base = tmp.path().join("b.klb"),
        piqa = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tasks/piqa.jsonl"),
    );
    std::fs::write(&script, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sparselab"))
        .arg("run")
        .arg(&script)
        .arg("-q")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap();
    println!("{line}");
    let fields: Vec<&str> = line.split(" | ").collect();
    assert!(
        fields[0].starts_with("ppl ") && fields[0].contains(" ± "),
        "{line}"
    );
    assert_eq!(fields[0]["ppl ".len()..], fields[1][..], "{line}");
    assert_eq!(fields[2], "reused true", "{line}");
    let kls: Vec<f64> = fields[3]["kl ".len()..]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(kls.iter().all(|k| k.abs() < 1e-6), "{line}");
    assert_eq!(fields[4], "top1 1.0");
    assert_eq!(fields[5], "piqa 3");
}
