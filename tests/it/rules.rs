//! The combination rules of `src/compress/rules.rs`, from both sides: every
//! rule's refused example is refused by `sparselab prune` and by
//! `prune_layer` with the same message (in each one's spelling), and its
//! accepted neighbour runs through both.

use crate::common;

use std::path::Path;
use std::process::Command;

use sparselab::compress::rules::{Front, Settings, RULES};
use sparselab::script::session::Session;
use sparselab::script::ScriptOptions;

const BIN: &str = env!("CARGO_BIN_EXE_sparselab");

/// `sparselab prune` on opt-tiny's first layer (2 windows of 32 tokens) with
/// the settings `pairs`: whether it succeeded, and its stderr.
fn cli(fx: &Path, pairs: &[(&str, &str)], extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("prune")
        .arg("--model")
        .arg(fx.join("models/opt-tiny"))
        .arg("--calib")
        .arg(fx.join("data/wikitext2/wiki.valid.raw"))
        .args(["--nsamples", "2", "--seqlen", "32", "--maxlayer", "1", "-q"]);
    for &(k, v) in pairs {
        cmd.arg(format!("--{}", k.replace('_', "-")));
        if v != "true" {
            cmd.arg(v);
        }
    }
    cmd.args(extra);
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The settings as a `prune_layer` options map literal.
fn map(pairs: &[(&str, &str)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|&(k, v)| match k {
            "method" => format!("{k}: {v:?}"),
            _ => format!("{k}: {v}"),
        })
        .collect();
    format!("#{{{}}}", items.join(", "))
}

#[test]
fn the_cli_and_prune_layer_refuse_and_accept_the_same_combinations() {
    let Some(fx) = common::fixtures() else { return };
    let mut s = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let setup = format!(
        "let m = load_model({:?});\nlet calib = calibrate(m, {:?}, #{{nsamples: 2, seqlen: 32}});\n\
         let layer = calib.next_layer();\nlet linears = layer.linears;\nlet slot = 0;\n",
        fx.join("models/opt-tiny").to_string_lossy(),
        fx.join("data/wikitext2/wiki.valid.raw").to_string_lossy()
    );
    if let Err(e) = s.eval("setup", &setup) {
        panic!("{e}");
    }
    assert!(RULES.len() >= 10);
    for rule in RULES {
        // Refused: by the same rule on both sides, each in its own spelling.
        let settings = Settings::from_pairs(rule.refused).unwrap();
        let cli_msg = settings.refusal(Front::Cli).unwrap();
        let script_msg = settings.refusal(Front::Script).unwrap();
        assert_eq!(cli_msg.rule, rule.name);
        let (ok, err) = cli(&fx, rule.refused, &[]);
        assert!(
            !ok && err.contains(&cli_msg.message),
            "{}: the CLI did not refuse {:?} with {:?}:\n{err}",
            rule.name,
            rule.refused,
            cli_msg.message
        );
        let text = format!("prune_layer(layer, linears[0], {})", map(rule.refused));
        let e = s.eval("refused.rhai", &text).unwrap_err();
        assert!(
            e.contains(&format!("prune_layer: {}", script_msg.message)),
            "{}: prune_layer did not refuse {text} with {:?}:\n{e}",
            rule.name,
            script_msg.message
        );

        // Accepted: both run (each on a linear not compressed yet).
        let (ok, err) = cli(&fx, rule.accepted, &[]);
        assert!(
            ok,
            "{}: the CLI refused {:?}:\n{err}",
            rule.name, rule.accepted
        );
        let text = format!(
            "if slot == linears.len() {{ layer = calib.next_layer(); slot = 0; }}\n\
             prune_layer(layer, linears[slot], {});\nslot += 1;",
            map(rule.accepted)
        );
        let _ = s
            .eval("accepted.rhai", &text)
            .unwrap_or_else(|e| panic!("{}: prune_layer refused {text}:\n{e}", rule.name));
    }
}

#[test]
fn flags_only_the_cli_has_are_refused_when_they_do_nothing() {
    let Some(fx) = common::fixtures() else { return };
    let magnitude = [("method", "magnitude"), ("sparsity", "0.5")];
    let (ok, err) = cli(&fx, &magnitude, &["--true-sequential"]);
    assert!(
        !ok && err.contains("--true-sequential has no effect with --method magnitude"),
        "{err}"
    );
    let (ok, err) = cli(&fx, &[("sparsity", "0.5")], &["--minlayer", "1"]);
    assert!(
        !ok && err.contains("--minlayer 1 and --maxlayer 1 select no layer"),
        "{err}"
    );
    let (ok, err) = cli(&fx, &[("sparsity", "0.5")], &["--eval-nsamples", "4"]);
    assert!(
        !ok && err.contains("--eval-nsamples limits --eval, and no --eval was given"),
        "{err}"
    );
    // The combination the CLI used to accept and the script refused.
    let (ok, err) = cli(
        &fx,
        &[("method", "gptq"), ("sparsity", "0.5"), ("bits", "4")],
        &[],
    );
    assert!(!ok && err.contains("--method gptq only quantizes"), "{err}");
    // The seed's silent case: quantizer flags without --bits.
    let (ok, err) = cli(&fx, &[("sparsity", "0.5"), ("sym", "true")], &[]);
    assert!(!ok && err.contains("--sym needs --bits"), "{err}");
    let (ok, err) = cli(&fx, &[("sparsity", "0.5"), ("groupsize", "128")], &[]);
    assert!(!ok && err.contains("--groupsize needs --bits"), "{err}");
}

#[test]
fn calibration_and_save_flags_that_cannot_act_are_refused() {
    let Some(fx) = common::fixtures() else { return };
    let half = [("sparsity", "0.5")];
    for (extra, expected) in [
        (
            &["--reservoir", "16"][..],
            "--reservoir keeps input rows for the activation-based importance metrics",
        ),
        (
            &["--fingerprint", "mine"][..],
            "--fingerprint names a script's policy",
        ),
        (
            &["--overwrite"][..],
            "--overwrite says how --save writes, and no --save was given",
        ),
        (
            &["--format", "packed"][..],
            "--format says how --save writes, and no --save was given",
        ),
        (&["--format", "gguf"][..], "unknown format `gguf`"),
        (&["--gemm", "f16"][..], "unknown GEMM precision `f16`"),
        (&["--memory-limit", "8Q"][..], "unknown unit `Q`"),
    ] {
        let (ok, err) = cli(&fx, &half, extra);
        assert!(!ok && err.contains(expected), "{extra:?}: {err}");
    }
    // A boolean whose default is true is turned off with `=false`.
    let (ok, err) = cli(&fx, &half, &["--sequential=false"]);
    assert!(ok, "{err}");
    let (ok, err) = cli(&fx, &half, &["--sequential=false", "--true-sequential"]);
    assert!(
        !ok && err.contains("true_sequential needs sequential calibration"),
        "{err}"
    );
}

#[test]
fn calibrate_reads_its_declared_options_and_refuses_what_cannot_act() {
    let Some(fx) = common::fixtures() else { return };
    let mut s = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let model = fx.join("models/opt-tiny").to_string_lossy().into_owned();
    let calib = fx
        .join("data/wikitext2/wiki.valid.raw")
        .to_string_lossy()
        .into_owned();
    let _ = s
        .eval("setup", &format!("let m = load_model({model:?});"))
        .unwrap();
    for (opts, expected) in [
        (
            "#{nsamples: 2, seqlen: 32, nsample: 3}",
            "calibrate: unknown option `nsample` (did you mean `nsamples`?)",
        ),
        (
            "#{nsamples: 2, seqlen: 32, fingerprint: \"mine\"}",
            "calibrate: `fingerprint` names the policy stored in a checkpoint, and no `checkpoint` was given",
        ),
        (
            "#{nsamples: 2, seqlen: 32, gemm: \"f16\"}",
            "calibrate: option `gemm` is unknown GEMM precision `f16`",
        ),
        (
            "#{nsamples: \"2\"}",
            "calibrate: option `nsamples` must be an integer, got string",
        ),
        (
            "#{nsamples: 2, memory_limit: \"8Q\"}",
            "calibrate: option `memory_limit` is not a size",
        ),
    ] {
        let e = s
            .eval("c.rhai", &format!("calibrate(m, {calib:?}, {opts});"))
            .unwrap_err();
        assert!(e.contains(expected), "{opts}: {e}");
    }
    let _ = s
        .eval(
        "c.rhai",
        &format!(
            "let c = calibrate(m, {calib:?}, #{{nsamples: 2, seqlen: 32, batch: 1, memory_limit: \"1G\", gemm: \"f32\"}});"
        ),
    )
    .unwrap();
}

/// `sparselab prune --report` and a script's `write_report` write one
/// document: compression.json's content, with the evaluations under `eval`.
#[test]
fn prune_reports_what_a_script_run_reports() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cli_report = tmp.path().join("cli.json");
    let test = fx.join("data/wikitext2/wiki.test.raw");
    let test = test.to_str().unwrap();
    let (ok, err) = cli(
        &fx,
        &[("sparsity", "0.5")],
        &[
            "--eval",
            test,
            "--eval-nsamples",
            "2",
            "--report",
            cli_report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let script_report = tmp.path().join("script.json");
    let mut s = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let text = format!(
        "let m = load_model({:?});\n\
         let calib = calibrate(m, {:?}, #{{nsamples: 2, seqlen: 32}});\n\
         for layer in calib.layers() {{\n\
             if layer.index < 1 {{ for linear in layer.linears {{ prune_layer(layer, linear, #{{sparsity: 0.5}}); }} }}\n\
         }}\n\
         let r = eval_ppl_stats(m, {test:?}, #{{seqlen: 32, nsamples: 2}});\n\
         write_report(m, {:?}, #{{\"eval\": #{{wikitext2: r}}}});",
        fx.join("models/opt-tiny").to_string_lossy(),
        fx.join("data/wikitext2/wiki.valid.raw").to_string_lossy(),
        script_report.to_string_lossy()
    );
    let _ = s.eval("run.rhai", &text).unwrap_or_else(|e| panic!("{e}"));
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (read(&cli_report), read(&script_report));
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(keys(&a["calibration"]), keys(&b["calibration"]));
    assert_eq!(a["calibration"]["nsamples"], 2);
    assert_eq!(a["calibration"]["seqlen"], 32);
    // Both compressed layer 0 alike, with the same per-linear records.
    assert_eq!(
        a["linears"].as_array().unwrap().len(),
        b["linears"].as_array().unwrap().len()
    );
    for (x, y) in a["linears"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["linears"].as_array().unwrap())
    {
        assert_eq!(keys(x), keys(y));
        assert_eq!(x["linear"], y["linear"]);
        assert_eq!(x["sparsity"], y["sparsity"]);
    }
    let (pa, pb) = (&a["eval"][test]["ppl"], &b["eval"]["wikitext2"]["ppl"]);
    assert!(
        pa.as_f64().unwrap() > 1.0
            && (pa.as_f64().unwrap() - pb.as_f64().unwrap()).abs() < 1e-6 * pa.as_f64().unwrap(),
        "{pa} vs {pb}"
    );
}

/// `--kl-base` on `sparselab prune`: the KL of the compressed model against
/// the dense base stored by `sparselab eval --save-kl-base`, on the windows
/// the base holds of its --eval dataset (perplexity on the --eval windows); a
/// base of another dataset or window length is refused before calibrating.
#[test]
fn prune_measures_kl_against_a_stored_base() {
    let Some(fx) = common::fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.klb");
    let test = fx.join("data/wikitext2/wiki.test.raw");
    let test = test.to_str().unwrap();
    save_base(&fx, test, "32", "3", &base);
    let report = tmp.path().join("r.json");
    let b = base.to_str().unwrap();
    let r = prune_report(
        &fx,
        &["--eval", test, "--eval-nsamples", "5", "--kl-base", b],
        &report,
    );
    // Perplexity on the 5 --eval windows, KL on the 3 the base holds.
    let e = &r["eval"][test];
    assert_eq!(e["windows"], 5);
    let k = &e["kl"];
    assert_eq!(k["windows"], 3);
    let kl = k["kl"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 1.0, "{k}");
    assert!(k["top1"].as_f64().unwrap() > 0.5, "{k}");
    let d = k["ppl"].as_f64().unwrap() - k["base_ppl"].as_f64().unwrap();
    assert!((k["delta_ppl"].as_f64().unwrap() - d).abs() < 1e-9, "{k}");
    // The same windows: the KL pass's perplexity is the run's.
    let r = prune_report(
        &fx,
        &["--eval", test, "--eval-nsamples", "3", "--kl-base", b],
        &report,
    );
    let e = &r["eval"][test];
    assert_eq!(e["windows"], 3);
    assert_eq!(e["ppl"], e["kl"]["ppl"]);
    let (ok, err) = cli(
        &fx,
        &[("sparsity", "0.5")],
        &["--eval", "ptb", "--kl-base", b],
    );
    assert!(
        !ok && err.contains(&format!(
            "holds the base of `{test}`, which is not an --eval dataset"
        )),
        "{err}"
    );
    let short = tmp.path().join("short.klb");
    save_base(&fx, test, "16", "2", &short);
    let (ok, err) = cli(
        &fx,
        &[("sparsity", "0.5")],
        &["--eval", test, "--kl-base", short.to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("holds windows of 16 tokens, and this run's are 32"),
        "{err}"
    );
}

/// opt-tiny's log-probabilities on `windows` windows of `seqlen` tokens of
/// `dataset`, stored at `path` by `sparselab eval --save-kl-base`.
fn save_base(fx: &Path, dataset: &str, seqlen: &str, windows: &str, path: &Path) {
    let out = Command::new(BIN)
        .args(["eval", "--model"])
        .arg(fx.join("models/opt-tiny"))
        .args([
            "--dataset",
            dataset,
            "--seqlen",
            seqlen,
            "--nsamples",
            windows,
            "-q",
        ])
        .arg("--save-kl-base")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `--report` of a 50% `sparselab prune` run with `extra` flags.
fn prune_report(fx: &Path, extra: &[&str], report: &Path) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.extend(["--report", report.to_str().unwrap()]);
    let (ok, err) = cli(fx, &[("sparsity", "0.5")], &args);
    assert!(ok, "{err}");
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}
