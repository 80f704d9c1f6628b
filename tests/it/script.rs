//! The Rhai scripting environment: native vectors, every primitive through a
//! script on opt-tiny, a script against the Rust API (same weights, losses and
//! perplexity), each error class by its message, `sparselab run`/`check`, the
//! recipes, and the REPL driven through a pseudo-terminal.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use sparselab::calibrate::{uniform_policy, CalibOptions, Calibration, LayerFilter};
use sparselab::compress::Method;
use sparselab::compress::{SparseGptOptions, SparsityPattern};
use sparselab::eval::{eval_dataset, PplOptions};
use sparselab::model::{LoadOptions, Model};
use sparselab::script::handles::ModelHandle;
use sparselab::script::session::Session;
use sparselab::script::{run_file, ScriptOptions};

const BIN: &str = env!("CARGO_BIN_EXE_sparselab");

struct Fx {
    model: String,
    calib: String,
    test: String,
}

fn fx() -> Option<Fx> {
    let dir = common::fixtures()?;
    let s = |p: &str| dir.join(p).to_string_lossy().into_owned();
    Some(Fx {
        model: s("models/opt-tiny"),
        calib: s("data/wikitext2/wiki.valid.raw"),
        test: s("data/wikitext2/wiki.test.raw"),
    })
}

fn quiet() -> ScriptOptions {
    ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    }
}

/// Evaluates `text` in the session; panics with the formatted error.
fn eval(session: &mut Session, text: &str) -> rhai::Dynamic {
    session
        .eval("test", text)
        .unwrap_or_else(|e| panic!("script failed:\n{e}"))
}

/// Runs `text` for its effect on the session.
fn run(session: &mut Session, text: &str) {
    let _ = eval(session, text);
}

fn eval_err(session: &mut Session, text: &str) -> String {
    match session.eval("test.rhai", text) {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e,
    }
}

/// The setup lines shared by the scripts: model `m`, calibration options `copts`.
fn setup(f: &Fx) -> String {
    format!(
        "let m = load_model({:?});\nlet copts = #{{nsamples: 8, seqlen: 64}};\nlet calib_data = {:?};\nlet test_data = {:?};\n",
        f.model, f.calib, f.test
    )
}

#[test]
fn vectors_compute_like_rust() {
    let mut s = Session::new(quiet());
    let f = |s: &mut Session, e: &str| eval(s, e).as_float().unwrap();
    let i = |s: &mut Session, e: &str| eval(s, e).as_int().unwrap();
    let st = |s: &mut Session, e: &str| {
        let v = eval(s, e);
        s.display(&v)
    };
    run(&mut s, "let v = from_array([3.0, 1.0, 2.0, 5.0, 4.0]);");
    assert_eq!(f(&mut s, "v.sum()"), 15.0);
    assert_eq!(f(&mut s, "v.mean()"), 3.0);
    assert!((f(&mut s, "v.std()") - 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(f(&mut s, "v.min()"), 1.0);
    assert_eq!(f(&mut s, "v.max()"), 5.0);
    assert_eq!(f(&mut s, "v.quantile(0.5)"), 3.0);
    assert_eq!(f(&mut s, "v.quantile(0.1)"), 1.4); // numpy: linear interpolation
    assert_eq!(i(&mut s, "v.len()"), 5);
    assert_eq!(i(&mut s, "v.len"), 5);
    assert_eq!(st(&mut s, "v.argsort()"), "Vector<int>[5] [1, 2, 0, 4, 3]");
    assert_eq!(
        st(&mut s, "v.argsort(true)"),
        "Vector<int>[5] [3, 4, 0, 2, 1]"
    );
    assert_eq!(
        st(&mut s, "v[v.argsort()]"),
        "Vector<f32>[5] [1, 2, 3, 4, 5]"
    );
    assert_eq!(st(&mut s, "v * 2 + 1"), "Vector<f32>[5] [7, 3, 5, 11, 9]");
    assert_eq!(st(&mut s, "10 - v"), "Vector<f32>[5] [7, 9, 8, 5, 6]");
    assert_eq!(st(&mut s, "v / v"), "Vector<f32>[5] [1, 1, 1, 1, 1]");
    assert_eq!(st(&mut s, "v ** 2"), "Vector<f32>[5] [9, 1, 4, 25, 16]");
    assert_eq!(
        st(&mut s, "v > 2.5"),
        "Vector<mask>[5] [true, false, false, true, true]"
    );
    assert_eq!(i(&mut s, "(v >= 3 & v < 5).count()"), 2);
    assert_eq!(i(&mut s, "(!(v > 2)).count()"), 2);
    assert_eq!(st(&mut s, "v[v > 2.5]"), "Vector<f32>[3] [3, 5, 4]");
    assert_eq!(st(&mut s, "v[1..3]"), "Vector<f32>[2] [1, 2]");
    assert_eq!(st(&mut s, "v[1..=3]"), "Vector<f32>[3] [1, 2, 5]");
    assert_eq!(st(&mut s, "v.slice(-2, 5)"), "Vector<f32>[2] [5, 4]");
    assert_eq!(f(&mut s, "v[-1]"), 4.0);
    run(&mut s, "let w = v; w[0] = 10;"); // copy on write: v keeps its value
    assert_eq!(f(&mut s, "v[0] + w[0]"), 13.0);
    assert_eq!(
        st(&mut s, "v.clamp(2, 4)"),
        "Vector<f32>[5] [3, 2, 2, 4, 4]"
    );
    assert!((f(&mut s, "v.normalize().mean()") - 1.0).abs() < 1e-6);
    assert_eq!(f(&mut s, "v.normalize(\"minmax\").max()"), 1.0);
    assert!(f(&mut s, "v.normalize(\"zscore\").mean()").abs() < 1e-7);
    assert_eq!(st(&mut s, "v.histogram(2).counts"), "Vector<int>[2] [2, 3]");
    assert_eq!(
        st(&mut s, "v.histogram(2).edges"),
        "Vector<f32>[3] [1, 3, 5]"
    );
    assert_eq!(
        st(&mut s, "concat(v, arange(3))"),
        "Vector<f32>[8] [3, 1, 2, 5, 4, 0, 1, 2]"
    );
    assert_eq!(st(&mut s, "v.to_array()"), "[3.0, 1.0, 2.0, 5.0, 4.0]");
    assert_eq!(
        eval(&mut s, "from_array([4, 2, 4]).dtype").to_string(),
        "int"
    );
    assert_eq!(
        st(&mut s, "from_array([4, 2, 4, 3]).value_counts().counts"),
        "Vector<int>[3] [1, 1, 2]"
    );
    assert_eq!(
        st(&mut s, "arange(1000)"),
        "Vector<int>[1000] [0, 1, 2, 3, 4, …, 998, 999]"
    );
    assert_eq!(i(&mut s, "let n = 0; for x in v { n += 1; } n"), 5);
    assert_eq!(
        st(&mut s, "select(v > 2, v, 0)"),
        "Vector<f32>[5] [3, 0, 0, 5, 4]"
    );
    let e = eval_err(&mut s, "v + arange(4)");
    assert!(e.contains("different lengths: 5 and 4"), "{e}");
    let e = eval_err(&mut s, "v[7]");
    assert!(e.contains("index 7 is out of range"), "{e}");
    let e = eval_err(&mut s, "v.quantile(1.5)");
    assert!(e.contains("q must be in [0, 1]"), "{e}");
}

#[test]
fn every_primitive_runs_on_opt_tiny() {
    let Some(f) = fx() else { return };
    let mut s = Session::new(quiet());
    run(&mut s, &setup(&f));
    assert_eq!(eval(&mut s, "m.arch").to_string(), "opt");
    assert_eq!(eval(&mut s, "m.num_layers").as_int().unwrap(), 4);
    assert_eq!(eval(&mut s, "m.hidden_size").as_int().unwrap(), 256);
    assert_eq!(eval(&mut s, "m.device").to_string(), "cpu");
    assert_eq!(eval(&mut s, "m.dtype").to_string(), "f32");
    assert_eq!(
        eval(&mut s, "m.linears").to_string(),
        r#"["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"]"#
    );
    let script = r#"
        let calib = calibrate(m, calib_data, copts);
        let seen = [];
        let out = #{};
        for layer in calib.layers() {
            seen.push(layer.index);
            if layer.index == 0 {
                out.ws = layer.weight_stats("fc1");
                out.hs = layer.hessian_stats("fc1");
                out.diag = layer.hessian_diag("fc1").len();
                out.norms = layer.column_norms("fc2").len();
                out.act = layer.act_norms("fc1").len();
                out.shape = layer.shape("fc2");
                out.weight = layer.weight("fc1").len();
            }
            for linear in layer.linears {
                let r = prune_layer(layer, linear, #{sparsity: 0.5});
                if layer.index == 0 && linear == "fc1" { out.r = r; }
            }
            if layer.index == 0 { out.after = layer.weight_stats("fc1").zeros; }
        }
        out.seen = seen;
        out.reports = calib.reports().len();
        out.ppl = eval_ppl(m, test_data, #{seqlen: 64, nsamples: 8});
        out
    "#;
    let out = eval(&mut s, script).cast::<rhai::Map>();
    assert_eq!(out["seen"].to_string(), "[0, 1, 2, 3]");
    let ws = out["ws"].clone().cast::<rhai::Map>();
    assert_eq!(ws["rows"].as_int().unwrap(), 1024);
    assert_eq!(ws["columns"].as_int().unwrap(), 256);
    assert_eq!(ws["zeros"].as_float().unwrap(), 0.0);
    let hs = out["hs"].clone().cast::<rhai::Map>();
    assert_eq!(hs["nsamples"].as_int().unwrap(), 8);
    assert!(hs["trace"].as_float().unwrap() > 0.0);
    assert_eq!(out["diag"].as_int().unwrap(), 256);
    assert_eq!(out["norms"].as_int().unwrap(), 1024);
    assert_eq!(out["act"].as_int().unwrap(), 256);
    assert_eq!(out["shape"].to_string(), "[256, 1024]");
    assert_eq!(out["weight"].as_int().unwrap(), 256 * 1024);
    let r = out["r"].clone().cast::<rhai::Map>();
    for key in ["sparsity", "avg_bits", "loss", "rel_error", "seconds"] {
        assert!(r.contains_key(key), "{key} missing from {r:?}");
    }
    assert!((r["sparsity"].as_float().unwrap() - 0.5).abs() < 0.01);
    assert!(r["avg_bits"].is_unit());
    assert!(r["loss"].as_float().unwrap() > 0.0);
    assert!((out["after"].as_float().unwrap() - 0.5).abs() < 0.01);
    assert_eq!(out["reports"].as_int().unwrap(), 24);
    let ppl = out["ppl"].as_float().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");

    // Per-channel bits from a Vector, n:m, magnitude and wanda on a fresh model.
    let script = r#"
        let m2 = load_model(m.spec);
        let calib = calibrate(m2, calib_data, copts);
        let layer = calib.next_layer();
        let bits = select(layer.hessian_diag("fc1") > layer.hessian_diag("fc1").quantile(0.5), 4, 3);
        let a = prune_layer(layer, "fc1", #{sparsity: 0.5, bits: bits});
        let b = prune_layer(layer, "fc2", #{prunen: 2, prunem: 4, bits: 8, sym: true});
        let c = prune_layer(layer, "self_attn.q_proj", #{method: "magnitude", sparsity: 0.5});
        let d = prune_layer(layer, "self_attn.k_proj", #{method: "wanda", sparsity: 0.5});
        let e = prune_layer(layer, "self_attn.v_proj", #{method: "gptq", bits: 4, groupsize: 64, act_order: true});
        calib.commit();
        [a.avg_bits, b.nm_valid, c.method, d.method, e.method, e.sparsity, calib.next_index]
    "#;
    assert_eq!(
        eval(&mut s, script).to_string(),
        r#"[3.5, true, "magnitude", "wanda", "gptq", 0.0, 1]"#
    );
}

#[test]
fn a_script_reproduces_the_rust_api_exactly() {
    let Some(f) = fx() else { return };
    // The Rust API: 50% SparseGPT on every linear, then perplexity.
    let mut model = Model::load(&f.model, &LoadOptions::default()).unwrap();
    let opts = CalibOptions {
        dataset: f.calib.clone(),
        nsamples: 8,
        seqlen: Some(64),
        quiet: true,
        ..CalibOptions::default()
    };
    let mut calib = Calibration::new(&model, opts).unwrap();
    let method = Method::SparseGpt(SparseGptOptions {
        pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
        ..SparseGptOptions::default()
    });
    calib
        .run(&mut model, uniform_policy(method, LayerFilter::default()))
        .unwrap();
    let ppl_opts = PplOptions {
        seqlen: Some(64),
        max_windows: Some(16),
        quiet: true,
        ..PplOptions::default()
    };
    let rust_ppl = eval_dataset(&model, &f.test, &ppl_opts).unwrap().ppl;

    // The same through the script library's pipeline.
    let mut s = Session::new(quiet());
    run(&mut s, &setup(&f));
    let script = r#"
        import "sparselab/pipeline" as pipeline;
        let calib = pipeline::run(m, calib_data, copts, #{sparsity: 0.5});
        let losses = calib.reports().map(|r| r.loss);
        let ppl = eval_ppl(m, test_data, #{seqlen: 64, nsamples: 16});
    "#;
    run(&mut s, script);
    let script_ppl = s.scope.get_value::<f64>("ppl").unwrap();
    assert_eq!(script_ppl, rust_ppl, "perplexity differs");
    let losses = s.scope.get_value::<rhai::Array>("losses").unwrap();
    assert_eq!(losses.len(), calib.reports.len());
    for (l, r) in losses.iter().zip(&calib.reports) {
        assert_eq!(
            l.as_float().unwrap(),
            r.loss.unwrap(),
            "{} {}",
            r.layer,
            r.linear
        );
    }
    let handle = s.scope.get_value::<ModelHandle>("m").unwrap();
    let scripted = handle.read().unwrap();
    for layer in 0..model.num_layers() {
        for linear in model.linear_names() {
            let name = model.linear_weight_name(layer, linear);
            let a = model
                .weights()
                .get(&name, DType::F32, &Device::Cpu)
                .unwrap();
            let b = scripted
                .weights()
                .get(&name, DType::F32, &Device::Cpu)
                .unwrap();
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(a == b, "{name} differs between the script and the Rust API");
        }
    }
}

#[test]
fn layers_commit_when_the_loop_moves_on() {
    let Some(f) = fx() else { return };
    let mut s = Session::new(quiet());
    run(&mut s, &setup(&f));
    // A layer handle kept past its turn is committed and refuses work.
    let e = eval_err(
        &mut s,
        r#"let calib = calibrate(m, calib_data, copts);
           let kept = ();
           for layer in calib.layers() { kept = layer; }
           prune_layer(kept, "fc1", #{sparsity: 0.5});"#,
    );
    assert!(e.contains("layer 3 is already committed"), "{e}");
    // A `break` leaves the layer open; reading the model commits it, with its
    // compressed weights.
    let out = eval(
        &mut s,
        r#"let m3 = load_model(m.spec);
           let calib = calibrate(m3, calib_data, copts);
           for layer in calib.layers() { prune_layer(layer, "fc1", #{sparsity: 0.5}); break; }
           let before = calib.next_index;
           eval_ppl(m3, test_data, #{seqlen: 64, nsamples: 2});
           let l1 = calib.next_layer();
           [before, calib.next_index, l1.index, l1.weight_stats("fc1").zeros,
            calib.reports().len()]"#,
    );
    assert_eq!(out.to_string(), "[0, 1, 1, 0.0, 1]");
}

#[test]
fn options_are_checked_and_errors_are_located() {
    let Some(f) = fx() else { return };
    let mut s = Session::new(quiet());
    run(&mut s, &setup(&f));
    run(
        &mut s,
        "let calib = calibrate(m, calib_data, copts); let layer = calib.next_layer();",
    );
    // Unknown option key: named, nearest suggested, valid keys listed.
    let e = eval_err(&mut s, r#"prune_layer(layer, "fc1", #{spasity: 0.5});"#);
    assert!(e.contains("unknown option `spasity`"), "{e}");
    assert!(e.contains("did you mean `sparsity`"), "{e}");
    assert!(
        e.contains("valid options: method, sparsity, prunen, prunem, bits"),
        "{e}"
    );
    // The evaluation functions' options are declared once (with `sparselab
    // eval`'s flags): checked the same way, before anything is evaluated.
    let e = eval_err(&mut s, r#"eval_ppl(m, "wikitext2", #{bach: 2})"#);
    assert!(
        e.contains("eval_ppl: unknown option `bach` (did you mean `batch`?)")
            && e.contains("valid options: seqlen, nsamples, batch, quiet"),
        "{e}"
    );
    let e = eval_err(&mut s, r#"eval_ppl(m, "wikitext2", #{batch: "2"})"#);
    assert!(
        e.contains("eval_ppl: option `batch` must be an integer, got string"),
        "{e}"
    );
    let e = eval_err(
        &mut s,
        r#"kl_base(m, "wikitext2", "b.klb", #{nsamples: -1})"#,
    );
    assert!(
        e.contains("kl_base: option `nsamples` must be a non-negative integer, got -1"),
        "{e}"
    );
    // `:help` lists declared options with their type, default and meaning.
    let help = s.help("prune_layer").unwrap();
    assert!(
        help.contains("  blocksize (integer, default 128): OBS block size"),
        "{help}"
    );
    assert!(help.contains("  bits (integer or a Vector"), "{help}");
    let e = eval_err(&mut s, r#"load_model("x", #{devise: "cpu"})"#);
    assert!(
        e.contains("load_model: unknown option `devise`") && e.contains("device, dtype, revision"),
        "{e}"
    );
    // Wrong type: the expected type is named.
    let e = eval_err(&mut s, r#"calibrate(m, calib_data, #{nsamples: "8"})"#);
    assert!(
        e.contains("option `nsamples` must be an integer, got string"),
        "{e}"
    );
    let e = eval_err(
        &mut s,
        r#"prune_layer(layer, "fc1", #{sparsity: 0.5, bits: 4, sym: 1})"#,
    );
    assert!(e.contains("`sym` must be a boolean"), "{e}");
    let e = eval_err(
        &mut s,
        r#"prune_layer(layer, "fc1", #{sparsity: 0.5, bits: 4.5})"#,
    );
    assert!(e.contains("`bits` must be an integer or a Vector"), "{e}");
    let e = eval_err(&mut s, r#"prune_layer(layer, 3, #{sparsity: 0.5})"#);
    assert!(
        e.contains("no form of `prune_layer` takes") && e.contains("Layer"),
        "{e}"
    );
    // Options that would be silently ignored are errors.
    let e = eval_err(
        &mut s,
        r#"prune_layer(layer, "fc1", #{method: "magnitude", sparsity: 0.5, bits: 4})"#,
    );
    assert!(
        e.contains("`bits` applies to method sparsegpt or gptq, not magnitude"),
        "{e}"
    );
    let e = eval_err(
        &mut s,
        r#"prune_layer(layer, "fc1", #{sparsity: 0.5, groupsize: 64})"#,
    );
    assert!(e.contains("`groupsize` needs `bits`"), "{e}");
    let e = eval_err(
        &mut s,
        r#"prune_layer(layer, "mlp.up_proj", #{sparsity: 0.5})"#,
    );
    assert!(
        e.contains("no linear `mlp.up_proj`") && e.contains("fc1"),
        "{e}"
    );
    // Unknown function with suggestions; unknown variable and property too.
    let e = eval_err(&mut s, "prune_layr(layer)");
    assert!(
        e.contains("unknown function `prune_layr`; did you mean `prune_layer`?"),
        "{e}"
    );
    let e = eval_err(&mut s, "eval_pppl(m, test_data)");
    assert!(
        e.contains("unknown function `eval_pppl`; did you mean") && e.contains("`eval_ppl`"),
        "{e}"
    );
    let e = eval_err(&mut s, "print(calibb)");
    assert!(
        e.contains("unknown variable `calibb`; did you mean") && e.contains("`calib`"),
        "{e}"
    );
    let e = eval_err(&mut s, "m.num_layer");
    assert!(e.contains("did you mean `num_layers`?"), "{e}");
    // file:line:column, the source line and a caret under the column.
    let e = eval_err(
        &mut s,
        "let a = 1;\nlet b = 2;\n  prune_layer(layer, \"fc1\", #{spasity: 0.5});\n",
    );
    assert!(
        e.contains(" --> test.rhai:3:3\n  |\n3 |   prune_layer(layer, \"fc1\", #{spasity: 0.5});\n  |   ^\n"),
        "{e}"
    );
    // An error inside a function names the call site too.
    let e = eval_err(
        &mut s,
        "fn apply(l) {\n    prune_layer(l, \"fc1\", #{sparsty: 0.5})\n}\napply(layer);\n",
    );
    assert!(
        e.contains("--> test.rhai:2:5")
            && e.contains("in call to `apply`, called at test.rhai:4:1"),
        "{e}"
    );
    // A syntax error points at its place.
    let e = eval_err(&mut s, "let x = [1, 2;\n");
    assert!(e.contains("test.rhai:1:"), "{e}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn sparselab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_and_check_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let script = write(
        tmp.path(),
        "knobs.rhai",
        "param n = 3;\nparam rate = 0.5;\nparam name = \"x\";\nparam flag = false;\n\
         print(`${n} ${type_of(n)} ${rate} ${type_of(rate)} ${name} ${flag}`);\nprint(type_of(extra));\n",
    );
    let p = script.to_str().unwrap();
    let (ok, out, err) = sparselab(&["run", p]);
    assert!(out.contains("3 i64 0.5 f64 x false"), "{out}");
    // `extra` is read, but was never set: a located error, exit status 1.
    assert!(
        !ok && err.contains("unknown variable `extra`") && err.contains("knobs.rhai:6:15"),
        "{err}"
    );
    let (ok, out, err) = sparselab(&[
        "run",
        p,
        "--set",
        "n=7",
        "--set",
        "rate=2",
        "--set",
        "name=125",
        "--set",
        "flag=true",
        "--set",
        "extra=hello",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("7 i64 2.0 f64 125 true\nstring"), "{out}");
    // Type of a param is its default's; a name the script never uses is an error.
    let (ok, _, err) = sparselab(&["run", p, "--set", "extra=1", "--set", "n=2.5"]);
    assert!(
        !ok && err.contains("parameter `n` expects an integer"),
        "{err}"
    );
    let (ok, _, err) = sparselab(&["run", p, "--set", "extra=1", "--set", "nn=2"]);
    assert!(
        !ok && err.contains("--set nn: the script never uses") && err.contains("`nn` → `n`?"),
        "{err}"
    );

    let (ok, out, err) = sparselab(&["check", p]);
    assert!(ok && out.contains("ok"), "{out}{err}");
    let bad = write(
        tmp.path(),
        "bad.rhai",
        "import \"sparselab/report\" as report;\nlet m = load_model(\"x\");\n\
         let c = calibrate(m, \"wikitext2\", #{nsample: 8});\nreport::tabel([], []);\nprune_layr(c);\n",
    );
    let (ok, _, err) = sparselab(&["check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("calibrate: unknown option `nsample` (did you mean `nsamples`?)"),
        "{err}"
    );
    assert!(err.contains("bad.rhai:3:"), "{err}");
    assert!(
        err.contains("module `report` has no function `tabel`; did you mean `report::table`?"),
        "{err}"
    );
    assert!(
        err.contains("unknown function `prune_layr`; did you mean `prune_layer`?"),
        "{err}"
    );
    let syntax = write(tmp.path(), "syntax.rhai", "let x = ;\n");
    let (ok, _, err) = sparselab(&["check", syntax.to_str().unwrap()]);
    assert!(
        !ok && err.contains("syntax.rhai:1:9") && err.contains("^"),
        "{err}"
    );

    // User modules: beside the script, or through --path / SPARSELAB_SCRIPT_PATH.
    let lib = tmp.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    write(&lib, "mine.rhai", "/// Doubles.\nfn twice(x) { x * 2 }\n");
    let user = write(
        tmp.path(),
        "user.rhai",
        "import \"mine\" as mine;\nprint(mine::twice(21));\n",
    );
    let (ok, _, err) = sparselab(&["run", user.to_str().unwrap()]);
    assert!(
        !ok && err.contains("module `mine` not found") && err.contains("SPARSELAB_SCRIPT_PATH"),
        "{err}"
    );
    let (ok, out, err) = sparselab(&[
        "run",
        user.to_str().unwrap(),
        "--path",
        lib.to_str().unwrap(),
    ]);
    assert!(ok && out.trim() == "42", "{out}{err}");
    let out = Command::new(BIN)
        .args(["run", user.to_str().unwrap()])
        .env("SPARSELAB_SCRIPT_PATH", &lib)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn an_error_in_a_library_module_shows_the_module_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.rhai",
        "import \"sparselab/report\" as report;\nprint(report::table([\"a\", \"b\"], [[1]]));\n",
    );
    let err = run_file(&p, &quiet()).unwrap_err();
    assert!(
        err.contains("table: a row has 1 cells, the header 2"),
        "{err}"
    );
    assert!(err.contains("--> sparselab/report:"), "{err}");
    assert!(
        err.contains("called at") && err.contains("t.rhai:2:"),
        "{err}"
    );
}

#[test]
fn the_quickstart_and_opt_recipes_run_on_opt_tiny() {
    let Some(f) = fx() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    let set = |k: &str, v: &str| format!("{k}={v}");
    let args = [
        set("model", &f.model),
        set("data", &f.test),
        set("calib_data", &f.calib),
        set("nsamples", "8"),
        set("seqlen", "64"),
        set("eval_windows", "8"),
    ];
    let charts = tempfile::tempdir().unwrap();
    let out_dir = charts.path().join("charts");
    let mut cmd = vec![
        "run".to_string(),
        "-q".into(),
        format!("{root}/scripts/quickstart.rhai"),
        "--set".into(),
        format!("out={}", out_dir.display()),
    ];
    for a in &args {
        cmd.push("--set".into());
        cmd.push(a.clone());
    }
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (ok, out, err) = sparselab(&cmd);
    assert!(ok, "{out}\n{err}");
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("configuration"))
        .take_while(|l| !l.starts_with("wrote "))
        .collect();
    assert_eq!(table.len(), 5, "{out}");
    assert!(out.contains("wrote "), "{out}");
    assert!(
        table[0].split_whitespace().collect::<Vec<_>>()
            == ["configuration", "ppl", "se", "sparsity", "bits", "seconds"]
    );
    let ppl = |row: &str, name: &str| -> (f64, Vec<String>) {
        let rest = row
            .strip_prefix(name)
            .unwrap_or_else(|| panic!("{row} is not {name}"));
        let cells: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        (cells[0].parse().unwrap(), cells)
    };
    let (dense, c) = ppl(table[2], "dense");
    assert_eq!(c[2..4], ["0", "-"]);
    let (sparse, c) = ppl(table[3], "sparsegpt 0.5 ");
    assert!(c[2].starts_with("0.5") && c[3] == "-", "{c:?}");
    let (quant, c) = ppl(table[4], "sparsegpt 0.5 + mixed 4.0-bit");
    let avg: f64 = c[3].parse().unwrap();
    assert!(c[2].starts_with("0.5") && (avg - 4.0).abs() < 0.05, "{c:?}");
    for p in [dense, sparse, quant] {
        assert!(p.is_finite() && p > 1.0 && p < 2.0 * dense, "{out}");
    }
    // The charts: a real PNG and an SVG with the histogram's title.
    let png = std::fs::read(out_dir.join("bits.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    let svg = std::fs::read_to_string(out_dir.join("rel_error.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("relative output error per linear"));

    let opt = format!("{root}/scripts/opt.rhai");
    let (ok, out, err) = sparselab(&[
        "run",
        "-q",
        &opt,
        "--set",
        &set("model", &f.model),
        "--set",
        &set("dataset", &f.calib),
        "--set",
        &set("eval_data", &f.test),
        "--set",
        "nsamples=8",
        "--set",
        "seqlen=64",
        "--set",
        "eval_windows=8",
        "--set",
        "prunen=2",
        "--set",
        "prunem=4",
        "--set",
        "maxlayer=2",
        "--set",
        "verbose=true",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("compressed 12 linears"), "{out}");
    assert!(out.contains("sparsity 0.5000"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with(&f.test), "{out}");
    let (ok, _, err) = sparselab(&["check", &opt]);
    assert!(ok, "{err}");
}

/// Drives `sparselab repl` through a pseudo-terminal (Python's pty module):
/// sends the inputs one by one, each time waiting for the prompt to come back
/// (an input starting with NUL is sent without waiting: a long-running line),
/// and returns the transcript.
fn repl_transcript(history: &Path, inputs: &[&str]) -> Option<String> {
    let driver = r#"
import os, pty, select, sys, time, json
binary, inputs = sys.argv[1], json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "repl", "-q"])
out = b""
def read_until(marker, timeout, start):
    global out
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            out += chunk
            if marker is not None and marker in out[start:]:
                return True
    return False
read_until(b"sparselab> ", 20.0, 0)
for line in inputs:
    wait = not line.startswith("\x00")
    line = line.lstrip("\x00")
    out += b"\n<<SEND " + line.encode().replace(b"\x1b", b"ESC").replace(b"\t", b"TAB") + b">>\n"
    start = len(out)
    os.write(fd, line.encode())
    if wait:
        read_until(b"sparselab> ", 20.0, start)
        read_until(None, 0.15, start)
    else:
        # Wait until rustyline has left raw mode (bracketed paste off), so a
        # following Ctrl-C is a signal, not a key.
        read_until(b"\x1b[?2004l", 20.0, start)
        read_until(None, 0.5, start)
os.write(fd, b"\x04")
read_until(None, 1.0, len(out))
# Never hang the test: a REPL still running after its inputs is killed.
for _ in range(50):
    if os.waitpid(pid, os.WNOHANG)[0] != 0:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    out += b"\n<<KILLED: the REPL did not exit>>\n"
sys.stdout.write(out.decode("utf-8", "replace"))
"#;
    let inputs = serde_json::to_string(inputs).unwrap();
    let out = Command::new("python3")
        .args(["-c", driver, BIN, &inputs])
        .env("SPARSELAB_HISTORY", history)
        .env("TERM", "xterm")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!("pty driver failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("python3 is needed for the REPL test: {e}");
            }
            eprintln!("skipped: python3 not available ({e})");
            None
        }
    }
}

#[test]
fn the_repl_keeps_state_completes_helps_and_survives_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let lib = write(
        tmp.path(),
        "lib.rhai",
        "fn loaded() { 40 + 2 }\nlet from_file = 7;\n",
    );
    let load = format!(":load {}\r", lib.display());
    let Some(t) = repl_transcript(
        &history,
        &[
            // Multi-line input: the function body continues while `{` is open.
            "fn twice(x) {\r",
            "    x * 2\r",
            "}\r",
            "let v = from_array([1.0, 2.0, 3.0]);\r",
            "twice(v).sum()\r",
            // An error does not end the session; state survives it.
            "prune_layr(1)\r",
            "v.len\r",
            // Completion of a primitive's name, and of option keys inside #{…}.
            "eval_p\t\x15",
            "calibrate(m, \"d\", #{nsam\t\x15",
            // Completion of a property after a dot.
            "v.dty\t\x15",
            ":help prune_layer\r",
            ":vars\r",
            // :load keeps the file's functions and variables; :reset forgets all.
            &load,
            "loaded() + from_file\r",
            // Ctrl-C stops a running script and returns to the prompt.
            "\x00let n = 0; loop { n += 1; }\r",
            "\x03",
            "n > 0\r",
            ":reset\r",
            "v.len\r",
            ":quit\r",
        ],
    ) else {
        return;
    };
    assert!(t.contains("12.0"), "multi-line function:\n{t}");
    assert!(t.contains("did you mean `prune_layer`?"), "error:\n{t}");
    assert!(
        t.contains("\n3\r") || t.contains("\r\n3\r\n"),
        "state after the error:\n{t}"
    );
    assert!(t.contains("eval_ppl"), "completion of eval_p:\n{t}");
    assert!(t.contains("nsamples"), "completion of an option key:\n{t}");
    assert!(
        t.contains("prune_layer(layer: Layer, linear: string, options: map) -> map")
            && t.contains("Compresses one linear of an open layer"),
        ":help:\n{t}"
    );
    assert!(
        t.contains("v: Vector = Vector<f32>[3] [1, 2, 3]"),
        ":vars:\n{t}"
    );
    assert!(t.contains("v.dtype"), "completion of a property:\n{t}");
    assert!(t.contains("\n49\r"), ":load:\n{t}");
    assert!(
        t.contains("error: interrupted (Ctrl-C)") && t.contains("\ntrue\r"),
        "Ctrl-C:\n{t}"
    );
    assert!(t.contains("unknown variable `v`"), ":reset:\n{t}");
    // History persists: the next session recalls the last line with ↑.
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(
        saved.contains("twice(v).sum()") && saved.contains(":vars"),
        "{saved}"
    );
    // History: …, ":help prune_layer", ":vars", ":load …", "loaded() + from_file",
    // the loop, "n > 0", ":reset", "v.len", ":quit".
    let up = "\x1b[A".repeat(9) + "\r";
    let t = repl_transcript(&history, &[&up, ":quit\r"]).unwrap();
    assert!(t.contains("Compresses one linear of an open layer"), "{t}");
}

/// Ctrl-C during a long primitive in the REPL: the whole test split in windows
/// of 64 tokens takes minutes on opt-tiny, the prompt must come back within the
/// driver's 20 s, with the interruption reported and the session usable.
#[test]
fn ctrl_c_inside_a_primitive_returns_the_repl_to_its_prompt() {
    let Some(f) = fx() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let load = format!("let m = load_model({:?});\r", f.model);
    let long = format!("\x00eval_ppl(m, {:?}, #{{seqlen: 64}})\r", f.test);
    let Some(t) = repl_transcript(&history, &[&load, &long, "\x03", "40 + 2\r", ":quit\r"]) else {
        return;
    };
    let after = t
        .split("<<SEND \x03>>")
        .nth(1)
        .unwrap_or_else(|| panic!("{t}"));
    assert!(after.contains("error: interrupted (Ctrl-C)"), "{t}");
    assert!(after.contains("\n42\r"), "the session goes on:\n{t}");
    assert!(!t.contains("KILLED"), "{t}");
}

#[test]
fn check_flags_values_outside_a_closed_set_with_suggestions() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = write(
        tmp.path(),
        "values.rhai",
        "let m = load_model(\"x\");\nlet c = calibrate(m, \"wikitext2\");\n\
         for layer in c.layers() {\n    for linear in layer.linears {\n\
         \x20       let s = score_importance(layer, linear, \"obz\");\n\
         \x20       let b = allocate_bits(s.normalize(\"minmx\"), #{method: \"budgte\", target_avg: 4.0});\n\
         \x20       prune_layer(layer, linear, #{method: \"sparsgpt\", sparsity: 0.5, bits: b});\n    }\n}\n\
         save(m, \"out\", #{format: \"pakced\"});\n\
         let ok = allocate_bits(vector([1.0]), #{method: \"groups\", grouping: \"kmeans\", target_avg: 2.0});\n",
    );
    let (ok, _, err) = sparselab(&["check", bad.to_str().unwrap()]);
    assert!(!ok);
    for expected in [
        "score_importance: unknown importance metric `obz` (did you mean `obs`?); valid: magnitude, activation",
        "normalize: unknown normalisation `minmx` (did you mean `minmax`?)",
        "allocate_bits: unknown allocation method `budgte` (did you mean `budget`?); valid: quantile, budget, threshold, groups",
        "prune_layer: unknown method `sparsgpt` (did you mean `sparsegpt`?)",
        "save: unknown save format `pakced` (did you mean `packed`?)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("values.rhai:5:"), "{err}");
    assert_eq!(err.matches("unknown").count(), 5, "{err}");
}

#[test]
fn every_closed_set_matches_what_its_primitive_accepts() {
    use sparselab::script::check::{Slot, CLOSED_VALUES};
    let Some(f) = fx() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let mut s = Session::new(quiet());
    run(&mut s, &setup(&f));
    run(
        &mut s,
        "let calib = calibrate(m, calib_data, #{nsamples: 2, seqlen: 32});\n\
         let layer = calib.next_layer();\n\
         prune_layer(layer, \"fc1\", #{sparsity: 0.5, bits: 4});\n\
         layer = calib.next_layer();\nlet sm = summary(calib);\n\
         let t = compare_table([\"a\"]);\nt.add_row(\"x\", [1.0]);\nlet v = vector([1.0, 2.0, 3.0, 4.0]);",
    );
    let out = |ext: &str| format!("{:?}", tmp.path().join(format!("p.{ext}")));
    // One call per closed set, `@V@` standing for the value.
    let call = |function: &str, slot: Slot| -> String {
        match (function, slot) {
            ("prune_layer", Slot::Key("method")) => {
                "prune_layer(layer, \"fc2\", #{method: @V@, sparsity: 0.5})".into()
            }
            ("score_importance", Slot::Arg(2)) => "score_importance(layer, \"fc2\", @V@)".into(),
            ("channel_errors", Slot::Key("weight")) => {
                "channel_errors(layer, \"fc2\", #{weight: @V@})".into()
            }
            ("group_channels", Slot::Key("method")) => {
                "group_channels(v, 2, #{method: @V@})".into()
            }
            ("allocate_bits", Slot::Key("method")) => "allocate_bits(v, #{method: @V@})".into(),
            ("allocate_bits", Slot::Key("grouping")) => {
                "allocate_bits(v, #{method: \"groups\", target_avg: 4.0, grouping: @V@})".into()
            }
            ("calibrate", Slot::Key("gemm")) => {
                "calibrate(m, calib_data, #{nsamples: 1, seqlen: 16, gemm: @V@})".into()
            }
            ("load_model", Slot::Key("dtype")) => {
                format!("load_model({:?}, #{{dtype: @V@}})", f.model)
            }
            ("save", Slot::Key("format")) => format!("save(m, {full:?}, #{{format: @V@}})"),
            ("normalize", Slot::Arg(1)) => "v.normalize(@V@)".into(),
            ("plot_layers", Slot::Arg(1)) => "plot_layers(sm, @V@)".into(),
            ("plot_histogram", Slot::Key("format")) => {
                format!("plot_histogram(v, #{{path: {}, format: @V@}})", out("h"))
            }
            ("plot_bits", Slot::Key("format")) => {
                format!("plot_bits(sm, #{{path: {}, format: @V@}})", out("b"))
            }
            ("plot_layers", Slot::Key("format")) => {
                format!(
                    "plot_layers(sm, \"sparsity\", #{{path: {}, format: @V@}})",
                    out("l")
                )
            }
            ("plot_compare", Slot::Key("format")) => {
                format!("plot_compare(t, #{{path: {}, format: @V@}})", out("c"))
            }
            ("plot_xy", Slot::Key("format")) => {
                format!(
                    "plot_xy([1.0, 2.0], [3.0, 4.0], #{{path: {}, format: @V@}})",
                    out("x")
                )
            }
            other => panic!("no call for {other:?}: add one for the new closed set"),
        }
    };
    for set in CLOSED_VALUES {
        let template = call(set.function, set.slot);
        // Every listed value passes the primitive's own check.
        for value in (set.values)() {
            let text = template.replace("@V@", &format!("{value:?}"));
            if let Err(e) = s.eval("value.rhai", &text) {
                assert!(
                    !e.contains("unknown"),
                    "{text} refused a listed value:\n{e}"
                );
            }
        }
        // A value outside the set is refused by it.
        let text = template.replace("@V@", "\"zzz\"");
        let e = s
            .eval("value.rhai", &text)
            .expect_err(&format!("{text} accepted a value outside the set"));
        assert!(e.contains("unknown") && e.contains("zzz"), "{text}:\n{e}");
    }
}
