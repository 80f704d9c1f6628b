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
