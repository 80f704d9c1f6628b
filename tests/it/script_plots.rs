//! The chart functions from a script: plot_bits, plot_layers, plot_compare
//! and plot_xy on a real run, written as PNG and SVG and read back, and their
//! option checks.

use crate::common;

use std::path::Path;

use sparselab::script::session::Session;
use sparselab::script::ScriptOptions;

fn session() -> Session {
    Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    })
}

/// Width and height of a PNG file, after checking it decodes.
fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    // Not blank: more than one distinct pixel value.
    let first = buf[0];
    assert!(buf[..frame.buffer_size()].iter().any(|&b| b != first));
    (frame.width, frame.height)
}

fn svg_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    roxmltree::Document::parse(&text).unwrap();
    text
}

#[test]
fn charts_of_a_run_from_a_script() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = |name: &str| tmp.path().join(name);
    let mut s = session();
    let text = format!(
        r#"
let m = load_model({model:?});
let calib = calibrate(m, {calib:?}, #{{nsamples: 8, seqlen: 64}});
for layer in calib.layers() {{
    for linear in layer.linears {{
        let scores = score_importance(layer, linear, "wanda");
        prune_layer(layer, linear, #{{sparsity: 0.5, bits: allocate_bits(scores, #{{target_avg: 3.5}})}});
    }}
}}
let s = summary(calib);
let bits = plot_bits(s, #{{path: {bits_png:?}}});
plot_bits(s, #{{path: {bits_svg:?}, title: "my bits"}});
plot_layers(s, "avg_bits", #{{path: {layers_png:?}}});
plot_layers(s, "rel_error", #{{path: {layers_data:?}, format: "svg"}});
let t = compare_table(["wikitext2", "ptb"]);
t.add_row("dense", [27.65, 38.99]);
t.add_row("50% + 3.5 bits", [29.1, ()]);
plot_compare(t, #{{path: {compare_png:?}, title: "perplexity"}});
let xy = plot_xy([4.0, 3.5, 3.0], [217.4, 218.6, 221.0], #{{x_label: "average bits", y_label: "perplexity", path: {xy_svg:?}}});
plot_xy(#{{thresholds: #{{x: [3.9, 2.4], y: [218.6, 219.9]}}, groups: #{{x: [3.5, 3.5], y: [218.0, 218.3]}}}}, #{{path: {xy2_png:?}}});
[bits.to_string(), t.to_string(), t.get("50% + 3.5 bits", "ptb"), t.get("dense", "ptb"), xy.to_string()]
"#,
        model = fx.join("models/opt-tiny").to_string_lossy(),
        calib = fx.join("data/wikitext2/wiki.valid.raw").to_string_lossy(),
        bits_png = out("bits.png"),
        bits_svg = out("bits.svg"),
        layers_png = out("layers.png"),
        layers_data = out("layers.data"),
        compare_png = out("compare.png"),
        xy_svg = out("xy.svg"),
        xy2_png = out("xy2.png"),
    );
    let v = s
        .eval("charts.rhai", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    let bits_text = v[0].clone().into_string().unwrap();
    assert!(bits_text.contains("800x500"), "{bits_text}");
    let table = v[1].clone().into_string().unwrap();
    assert!(
        table.contains("50% + 3.5 bits") && table.contains("27.65"),
        "{table}"
    );
    assert!(v[2].is_unit(), "a missing value reads as ()");
    assert_eq!(v[3].as_float().unwrap(), 38.99);
    assert!(v[4].clone().into_string().unwrap().contains("perplexity"));

    for png in ["bits.png", "layers.png", "compare.png", "xy2.png"] {
        assert_eq!(png_size(&out(png)), (800, 500), "{png}");
    }
    assert!(svg_text(&out("bits.svg")).contains("my bits"));
    // `format` wins over the extension.
    assert!(svg_text(&out("layers.data")).contains("Relative output error per layer"));
    let xy = svg_text(&out("xy.svg"));
    assert!(xy.contains("average bits") && xy.contains("perplexity"));
}

#[test]
fn chart_options_are_checked() {
    let mut s = session();
    let setup = "let t = compare_table([\"wikitext2\"]); t.add_row(\"dense\", [27.6]);\n";
    let err = s
        .eval(
            "o.rhai",
            &format!("{setup}plot_compare(t, #{{titel: \"x\"}})"),
        )
        .unwrap_err();
    assert!(
        err.contains("`titel`") && err.contains("title") && err.contains("format"),
        "{err}"
    );
    let err = s
        .eval(
            "o.rhai",
            &format!("{setup}plot_compare(t, #{{format: \"svg\"}})"),
        )
        .unwrap_err();
    assert!(err.contains("`format` needs `path`"), "{err}");
    let err = s
        .eval(
            "o.rhai",
            &format!("{setup}plot_compare(t, #{{format: \"gif\", path: \"x.gif\"}})"),
        )
        .unwrap_err();
    assert!(err.contains("unknown plot format `gif`"), "{err}");
    let err = s.eval("o.rhai", "plot_xy([1, 2], [3.0], #{})").unwrap_err();
    assert!(err.contains("has 2 x values and 1 y values"), "{err}");
    let err = s
        .eval("o.rhai", "plot_xy([1, \"a\"], [3.0, 4.0], #{})")
        .unwrap_err();
    assert!(err.contains("xs[1] must be a number"), "{err}");
    let err = s
        .eval("o.rhai", "plot_xy(#{a: #{x: [1.0], z: [2.0]}}, #{})")
        .unwrap_err();
    assert!(
        err.contains("series `a` has key `z`; valid keys: x, y"),
        "{err}"
    );
    let err = s
        .eval(
            "o.rhai",
            "let t = compare_table([\"a\"]); t.add_row(\"x\", [1.0, 2.0]);",
        )
        .unwrap_err();
    assert!(
        err.contains("row `x` has 2 values; the table has 1 columns"),
        "{err}"
    );
}

#[test]
fn plot_layers_names_its_fields_and_plot_bits_needs_bits() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    let mut s = session();
    let text = format!(
        r#"
let m = load_model({:?});
let calib = calibrate(m, {:?}, #{{nsamples: 4, seqlen: 32}});
for layer in calib.layers() {{
    for linear in layer.linears {{ prune_layer(layer, linear, #{{sparsity: 0.5}}); }}
}}
let s = summary(calib);
"#,
        fx.join("models/opt-tiny").to_string_lossy(),
        fx.join("data/wikitext2/wiki.valid.raw").to_string_lossy(),
    );
    let setup = s
        .eval("setup.rhai", &text)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(setup.is_unit());
    let err = s.eval("f.rhai", "plot_layers(s, \"bitz\")").unwrap_err();
    assert!(
        err.contains("unknown layer field `bitz`") && err.contains("rel_error"),
        "{err}"
    );
    let err = s.eval("b.rhai", "plot_bits(s)").unwrap_err();
    assert!(err.contains("no quantized channels"), "{err}");
    // Sparsity per layer exists without quantization.
    let v = s
        .eval("l.rhai", "plot_layers(s, \"sparsity\").to_string()")
        .unwrap();
    assert!(v.into_string().unwrap().contains("Sparsity per layer"));
}
