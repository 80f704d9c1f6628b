//! Mixed precision from a script: importance, allocation, summary and charts
//! through the primitives, and the summary's refusals.

use crate::common;

use sparselab::script::session::Session;
use sparselab::script::ScriptOptions;

fn session() -> Session {
    Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    })
}

fn setup() -> Option<String> {
    let dir = common::fixtures()?;
    let s = |p: &str| dir.join(p).to_string_lossy().into_owned();
    Some(format!(
        "let m = load_model({:?});\nlet calib = calibrate(m, {:?}, #{{nsamples: 8, seqlen: 64}});\n",
        s("models/opt-tiny"),
        s("data/wikitext2/wiki.valid.raw")
    ))
}

#[test]
fn budget_allocation_from_importance_meets_the_target() {
    let Some(setup) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("scores.png");
    let mut s = session();
    let text = format!(
        r#"{setup}
let all = ();
for layer in calib.layers() {{
    for linear in layer.linears {{
        let scores = score_importance(layer, linear, "wanda");
        let bits = allocate_bits(scores, #{{target_avg: 4.0}});
        prune_layer(layer, linear, #{{sparsity: 0.5, bits: bits}});
        all = if type_of(all) == "()" {{ scores }} else {{ all.concat(scores) }};
    }}
}}
plot_histogram(all, #{{title: "wanda scores", path: {png:?}}});
let s = summary(calib, #{{target_avg: 4.0, strict: true}});
[s.avg_bits, s.total_channels, s.to_string()]
"#
    );
    let out = s
        .eval("mixed.rhai", &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = out.into_array().unwrap();
    let avg = out[0].as_float().unwrap();
    assert!((avg - 4.0).abs() < 0.01, "average {avg}");
    assert_eq!(out[1].as_int().unwrap(), 4 * (4 * 256 + 256 + 1024));
    let text = out[2].clone().into_string().unwrap();
    assert!(
        text.contains("importance_range=(")
            && text.contains("average bits: 4.000")
            && !text.contains("MISSED"),
        "{text}"
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

#[test]
fn summary_refuses_a_missed_target_and_missing_quantization() {
    let Some(setup) = setup() else { return };
    // Thresholds that put nearly every channel at 8 bits against a 4.0 target.
    let mut s = session();
    let text = format!(
        r#"{setup}
for layer in calib.layers() {{
    for linear in layer.linears {{
        let scores = score_importance(layer, linear, "magnitude").normalize();
        let bits = allocate_bits(scores, #{{method: "threshold", thresholds: [0.0, 0.01, 0.02, 0.03]}});
        prune_layer(layer, linear, #{{sparsity: 0.5, bits: bits}});
    }}
}}
summary(calib, #{{target_avg: 4.0}}).to_string()
"#
    );
    let report = s
        .eval("miss.rhai", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_string()
        .unwrap();
    let first = report.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(first.contains("MISSED TARGET"), "{report}");
    let err = s
        .eval(
            "miss.rhai",
            "summary(calib, #{target_avg: 4.0, strict: true})",
        )
        .unwrap_err();
    assert!(err.contains("4.00") || err.contains("target"), "{err}");

    // Bits requested, nothing quantized: the summary is an error that says so.
    let mut s = session();
    let text = format!(
        r#"{setup}
for layer in calib.layers() {{
    for linear in layer.linears {{ prune_layer(layer, linear, #{{sparsity: 0.5}}); }}
}}
summary(calib, #{{target_avg: 4.0}})
"#
    );
    let err = s.eval("none.rhai", &text).unwrap_err();
    assert!(err.contains("no channel was quantized"), "{err}");
}

#[test]
fn allocation_options_are_checked() {
    let mut s = session();
    let err = s
        .eval(
            "opts.rhai",
            "allocate_bits(vector([1.0, 2.0, 3.0]), #{method: \"budget\"})",
        )
        .unwrap_err();
    assert!(err.contains("target_avg"), "{err}");
    let err = s
        .eval(
            "opts.rhai",
            "allocate_bits(vector([1.0, 2.0]), #{target_avg: 4.0, thresholds: [1.0]})",
        )
        .unwrap_err();
    assert!(
        err.contains("thresholds") && err.contains("budget"),
        "{err}"
    );
    let err = s
        .eval(
            "opts.rhai",
            "allocate_bits(vector([1.0, 2.0]), #{taget_avg: 4.0})",
        )
        .unwrap_err();
    assert!(err.contains("target_avg"), "{err}");
    let ids = s
        .eval(
            "g.rhai",
            "group_channels(vector([1.0, 9.0, 1.1, 8.0]), 2, #{method: \"kmeans\"}).to_array()",
        )
        .unwrap();
    let ids: Vec<i64> = ids
        .into_array()
        .unwrap()
        .iter()
        .map(|v| v.as_int().unwrap_or_else(|_| v.as_float().unwrap() as i64))
        .collect();
    assert_eq!(ids, vec![0, 1, 0, 1]);
}

/// The mixed-precision primitives read their maps through their declared
/// options: unknown keys get a suggestion, wrong types name the type, a
/// Vector passes where a list is expected, and `:help` shows the declaration.
#[test]
fn mixed_precision_option_maps_follow_their_declarations() {
    let mut s = session();
    for (text, want) in [
        (
            "owl_sparsities([0.1, 0.2], #{sparsity: 0.5, lamda: 0.1})",
            "owl_sparsities: unknown option `lamda` (did you mean `lambda`?)",
        ),
        (
            "owl_sparsities([0.1, 0.2], #{lambda: 0.1})",
            "owl_sparsities: `sparsity` (the mean target) is required",
        ),
        (
            "group_channels(vector([1.0, 2.0]), 2, #{method: 1})",
            "group_channels: option `method` must be a string, got integer `1`",
        ),
        (
            "allocate_bits(vector([1.0, 2.0]), #{tiers: [2, -3]})",
            "allocate_bits: option `tiers` element 1 is -3, not a non-negative integer",
        ),
        (
            "allocate_model(#{}, #{target: 3.0})",
            "allocate_model: unknown option `target` (did you mean `target_avg`?)",
        ),
    ] {
        let e = s.eval("opts.rhai", text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
    let bits = s
        .eval(
            "opts.rhai",
            "allocate_bits(vector([1.0, 2.0, 3.0, 4.0]), #{tiers: vector([2, 4])}).to_array()",
        )
        .unwrap()
        .into_array()
        .unwrap();
    let bits: Vec<i64> = bits
        .iter()
        .map(|v| v.as_int().unwrap_or_else(|_| v.as_float().unwrap() as i64))
        .collect();
    assert_eq!(bits, vec![2, 2, 4, 4]);
    let help = sparselab::script::options::options_help("channel_errors").unwrap();
    assert!(
        help.contains("  blocksize (integer, default 128):"),
        "{help}"
    );
}

/// The error of a run that computed widths and quantized nothing.
const NOTHING_QUANTIZED: &str =
    "bit widths were computed by allocate_bits but prune_layer was never given `bits:` — nothing was quantized";

#[test]
fn widths_that_never_reach_prune_layer_are_an_error_in_every_front_end() {
    let Some(setup) = setup() else { return };
    // The REPL and the kernel (both evaluate through a Session): the error
    // comes when the calibration's layers end, with or without `summary`.
    let mut s = session();
    let text = format!(
        r#"{setup}
for layer in calib.layers() {{
    for linear in layer.linears {{
        let bits = allocate_bits(score_importance(layer, linear, "wanda"), #{{target_avg: 4.0}});
        prune_layer(layer, linear, #{{sparsity: 0.5}});
    }}
}}
"#
    );
    let err = s.eval("forgot.rhai", &text).unwrap_err();
    assert!(err.contains(NOTHING_QUANTIZED), "{err}");
    assert!(
        err.contains("the calibration compressed 24 linears"),
        "{err}"
    );

    // A summary without a target, before the loop ends, is an error too.
    let mut s = session();
    let text = format!(
        r#"{setup}
let layer = calib.next_layer();
for linear in layer.linears {{
    let bits = allocate_bits(score_importance(layer, linear, "wanda"), #{{}});
    prune_layer(layer, linear, #{{sparsity: 0.5}});
}}
calib.next_layer();
summary(calib)
"#
    );
    let err = s.eval("summary.rhai", &text).unwrap_err();
    assert!(err.contains("no channel was quantized"), "{err}");

    // Scoring importance without allocating is not computing widths.
    let mut s = session();
    let text = format!(
        r#"{setup}
for layer in calib.layers() {{
    for linear in layer.linears {{
        let scores = score_importance(layer, linear, "magnitude");
        prune_layer(layer, linear, #{{sparsity: 0.5}});
    }}
}}
summary(calib).to_string()
"#
    );
    let text = s
        .eval("scores.rhai", &text)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(text.to_string().contains("0 quantized"), "{text}");
}

#[test]
fn sparselab_run_fails_when_widths_were_computed_and_nothing_quantized() {
    let Some(setup) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sparselab");
    let run = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(bin)
            .args(["run", "-q"])
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Widths computed outside any compression, never used: the script's end.
    let (ok, _, err) = run(
        "unused.rhai",
        "let bits = allocate_bits(vector([1.0, 2.0, 3.0, 4.0]), #{});\nprint(bits);\n",
    );
    assert!(!ok && err.contains(NOTHING_QUANTIZED), "{err}");
    assert!(err.contains("the script ended"), "{err}");
    // Widths passed on: success, and a missed target is the last line.
    let text = format!(
        r#"{setup}
for layer in calib.layers() {{
    for linear in layer.linears {{
        let scores = score_importance(layer, linear, "magnitude").normalize();
        let bits = allocate_bits(scores, #{{method: "threshold", thresholds: [0.0, 0.01, 0.02, 0.03]}});
        prune_layer(layer, linear, #{{sparsity: 0.5, bits: bits}});
    }}
}}
print(summary(calib, #{{target_avg: 4.0}}));
print("done");
"#
    );
    let (ok, out, err) = run("missed.rhai", &text);
    assert!(ok, "{err}");
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.starts_with("MISSED TARGET: average"), "{out}");
    assert_eq!(
        sparselab::report::summary::TARGET_TOLERANCE,
        run_value("target_tolerance()")
    );
}

/// A script expression's float value.
fn run_value(expr: &str) -> f64 {
    session()
        .eval("v.rhai", expr)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_float()
        .unwrap()
}

/// Evaluates `text` after the fixture setup and returns its value.
fn eval_after_setup(setup: &str, text: &str) -> Result<rhai::Dynamic, String> {
    session().eval("t.rhai", &format!("{setup}\n{text}"))
}

#[test]
fn error_curves_allocate_per_linear_and_across_the_model() {
    let Some(setup) = setup() else { return };
    // Per linear: the widths minimise the curves' sum at the target, and the
    // sweep's own loss drops against uniform 3-bit in every linear (summed).
    let text = r#"
let out = #{ uniform_pred: 0.0, error_pred: 0.0, avg: [], tiers_used: 0 };
for layer in calib.layers() {
    for linear in layer.linears {
        let c = channel_errors(layer, linear, #{ sparsity: 0.5, tiers: [2, 3, 4, 6, 8] });
        let w = allocate_bits(c, #{ target_avg: 3.0 });
        out.uniform_pred += c.total_error(full(c.channels, 3));
        out.error_pred += c.total_error(w);
        out.avg.push(w.mean());
        out.tiers_used = max(out.tiers_used, w.value_counts().len());
        prune_layer(layer, linear, #{ sparsity: 0.5, bits: w });
    }
}
out
"#;
    let out = eval_after_setup(&setup, text)
        .unwrap_or_else(|e| panic!("{e}"))
        .cast::<rhai::Map>();
    let f = |k: &str| out[k].as_float().unwrap();
    assert!(f("error_pred") < 0.9 * f("uniform_pred"), "{out:?}");
    for a in out["avg"].clone().into_array().unwrap() {
        assert!((a.as_float().unwrap() - 3.0).abs() < 1e-6, "{out:?}");
    }
    // At a target that is a tier, the measured errors still make mixing pay.
    assert!(out["tiers_used"].as_int().unwrap() >= 2, "{out:?}");

    // Model-wide: one budget over every linear, weighted by rows.
    let text = r#"
let curves = pipeline::error_curves(m, "PLACEHOLDER", #{ nsamples: 8, seqlen: 64 }, #{ sparsity: 0.5 });
let widths = allocate_model(curves, #{ target_avg: 3.0 });
let bits = 0.0; let weights = 0;
for k in curves.keys() {
    bits += widths[k].sum() * curves[k].rows;
    weights += curves[k].channels * curves[k].rows;
}
[curves.len(), bits / weights, widths.keys()]
"#;
    let data = common::fixtures()
        .unwrap()
        .join("data/wikitext2/wiki.valid.raw")
        .to_string_lossy()
        .into_owned();
    let text = format!(
        "import \"sparselab/pipeline\" as pipeline;\n{}",
        text.replace("PLACEHOLDER", &data)
    );
    let out = eval_after_setup(&setup, &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    // opt-tiny: 4 layers × 6 linears.
    assert_eq!(out[0].as_int().unwrap(), 24);
    let avg = out[1].as_float().unwrap();
    assert!((avg - 3.0).abs() < 1e-3, "average {avg} bits per weight");
}

#[test]
fn error_curve_options_are_checked() {
    let Some(setup) = setup() else { return };
    let layer0 = "let layer = calib.next_layer();";
    for (text, want) in [
        (
            r#"channel_errors(layer, "fc1", #{ weight: "obz" })"#,
            "unknown error weight `obz`",
        ),
        (
            r#"channel_errors(layer, "fc1", #{ sparsity: 0.5, prunen: 2, prunem: 4 })"#,
            "not both",
        ),
        (
            r#"allocate_bits(channel_errors(layer, "fc1", #{}), #{ target_avg: 3.0, tiers: [2, 4] })"#,
            "option `tiers` does not apply to error curves",
        ),
        (
            r#"allocate_bits(channel_errors(layer, "fc1", #{}), #{})"#,
            "need `target_avg`",
        ),
        (
            r#"allocate_bits(score_importance(layer, "fc1", "obs"), #{ target_avg: 3.0, weights: [1.0] })"#,
            "option `weights` steers the error allocator",
        ),
        (
            r#"allocate_model(#{ a: 1 }, #{ target_avg: 3.0 })"#,
            "`a` must be error curves",
        ),
        (
            r#"allocate_bits(channel_errors(layer, "fc1", #{}), #{ target_avg: 3.0, weights: [1.0] })"#,
            "1 weights for",
        ),
    ] {
        let e = eval_after_setup(&setup, &format!("{layer0}\n{text}")).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn owl_sparsities_average_to_the_target_and_follow_outliers() {
    let Some(setup) = setup() else { return };
    let data = common::fixtures()
        .unwrap()
        .join("data/wikitext2/wiki.valid.raw")
        .to_string_lossy()
        .into_owned();
    let text = format!(
        r#"import "sparselab/pipeline" as pipeline;
let owl = pipeline::owl_layer_sparsities(m, {data:?}, #{{ nsamples: 8, seqlen: 64 }}, 0.6, 5.0, 0.08);
let c = pipeline::run_layer_sparsity(m, {data:?}, #{{ nsamples: 8, seqlen: 64 }}, #{{}}, owl.sparsities);
let achieved = [];
for r in c.reports() {{ achieved.push(r.sparsity); }}
[owl.ratios, owl.sparsities, achieved]"#
    );
    let out = eval_after_setup(&setup, &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    let v = |i: usize| -> Vec<f64> {
        out[i]
            .clone()
            .into_array()
            .unwrap()
            .iter()
            .map(|x| x.as_float().unwrap())
            .collect()
    };
    let (ratios, sp, achieved) = (v(0), v(1), v(2));
    assert_eq!(ratios.len(), 4);
    assert!(ratios.iter().all(|r| (0.0..0.5).contains(r)), "{ratios:?}");
    let mean = sp.iter().sum::<f64>() / sp.len() as f64;
    assert!((mean - 0.6).abs() < 1e-6, "{sp:?}");
    // The layer with the most outliers is pruned least, by λ below the target
    // at the extremes.
    let most = (0..4)
        .max_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
        .unwrap();
    let least = (0..4)
        .min_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
        .unwrap();
    assert!(
        (sp[least] - sp[most] - 0.16).abs() < 1e-6,
        "{ratios:?} {sp:?}"
    );
    // Every linear got its layer's sparsity (the sweep's threshold counts ties).
    for (k, a) in achieved.iter().enumerate() {
        assert!(
            (a - sp[k / 6]).abs() < 0.01,
            "linear {k}: {a} vs {}",
            sp[k / 6]
        );
    }
}
