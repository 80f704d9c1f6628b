//! Perplexity end to end: the CLI, transformers' figures, dtypes, dataset sources.

mod common;

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
