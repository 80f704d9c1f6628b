//! Charts written as PNG and SVG and read back; rendering with no system fonts;
//! the exact evcxr display output of plots, summaries and comparison tables.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use sparselab::calibrate::{uniform_policy, CalibOptions, Calibration, LayerFilter};
use sparselab::compress::allocation::{allocate_bits, AllocOptions};
use sparselab::compress::Method;
use sparselab::compress::{BitWidths, QuantOptions, SparseGptOptions, SparsityPattern};
use sparselab::model::{LoadOptions, Model};
use sparselab::plot::{
    bits_chart, compare_chart, histogram, layers_chart, CompareTable, HistOptions, Plot,
    PlotFormat, RichDisplay, DEFAULT_SIZE, LAYER_FIELDS,
};
use sparselab::report::summary::{RunIntent, Summary};
use sparselab::report::{ImportanceNote, LinearReport};

fn report(layer: usize, linear: &str, hist: Vec<(u32, usize)>, err: f64) -> LinearReport {
    let columns = hist.iter().map(|(_, c)| c).sum::<usize>();
    LinearReport {
        layer,
        linear: linear.to_string(),
        method: "sparsegpt".to_string(),
        rows: 16,
        columns,
        sparsity: 0.5 + 0.01 * layer as f64,
        nm_valid: None,
        avg_bits: None,
        bits_histogram: hist,
        bits_rle: Vec::new(),
        settings: serde_json::Value::Null,
        importance: Some(ImportanceNote {
            metric: "wanda".into(),
            min: 0.9,
            max: 1.1 + 0.01 * layer as f64,
        }),
        loss: Some(err * 1e3),
        rel_error: err,
        dead_columns: 0,
        percdamp: Some(0.01),
        seconds: 0.1,
    }
}

/// Four layers of an OPT-like model, mixed precision around 4 bits.
fn summary() -> Summary {
    let mut reports = Vec::new();
    for layer in 0..4 {
        let e = 1e-3 * (1.0 + layer as f64).powi(3);
        reports.push(report(
            layer,
            "self_attn.q_proj",
            vec![(2, 8), (4, 40), (8, 16)],
            e,
        ));
        reports.push(report(layer, "self_attn.k_proj", vec![(3, 16), (4, 48)], e));
        reports.push(report(layer, "fc1", vec![(4, 56), (8, 8)], 2.0 * e));
        reports.push(report(
            layer,
            "fc2",
            vec![(2, 64), (4, 128), (6, 32), (8, 32)],
            0.5 * e,
        ));
    }
    Summary::from_reports(
        &reports,
        &RunIntent {
            bits_requested: true,
            target_avg: Some(4.3),
            strict: false,
        },
    )
    .unwrap()
}

fn table() -> CompareTable {
    let mut t = CompareTable::perplexity(["wikitext2", "ptb", "c4"]);
    t.add_row("dense", vec![27.66, 38.99, 26.56]).unwrap();
    t.add_row("50% sparsegpt", vec![29.98, 42.1, 28.3]).unwrap();
    t.add_row("2:4 + 4 bits", vec![36.2, 55.0, f64::NAN])
        .unwrap();
    t
}

fn values() -> Vec<f32> {
    // A skewed, deterministic sample with a few non-finite values.
    let mut v: Vec<f32> = (0..5000)
        .map(|i| {
            let u = ((i * 7919) % 5000) as f32 / 5000.0;
            -(1.0 - u).ln()
        })
        .collect();
    v.push(f32::NAN);
    v.push(f32::INFINITY);
    v
}

fn all_charts() -> Vec<(String, Plot)> {
    let s = summary();
    let mut charts = vec![
        (
            "histogram".to_string(),
            histogram(
                &values(),
                &HistOptions {
                    title: "importance scores".into(),
                    bins: 40,
                    log_y: false,
                    x_label: "score".into(),
                },
            )
            .unwrap(),
        ),
        (
            "histogram_log".to_string(),
            histogram(
                &values(),
                &HistOptions {
                    log_y: true,
                    ..HistOptions::default()
                },
            )
            .unwrap(),
        ),
        ("bits".to_string(), bits_chart(&s).unwrap()),
        ("compare".to_string(), compare_chart(&table()).unwrap()),
    ];
    for field in LAYER_FIELDS {
        charts.push((format!("layers_{field}"), layers_chart(&s, field).unwrap()));
    }
    charts
}

/// Decodes a PNG: (width, height, RGB(A) bytes, bytes per pixel).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    let bpp = info.color_type.samples();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, bpp)
}

fn distinct_colours(pixels: &[u8], bpp: usize) -> usize {
    pixels.chunks(bpp).collect::<HashSet<_>>().len()
}

/// Checks a PNG: size, more than one colour, and dark (text) pixels in the
/// title band at the top.
fn check_png(name: &str, bytes: &[u8], size: (u32, u32)) {
    let (w, h, pixels, bpp) = decode_png(bytes);
    assert_eq!((w, h), size, "{name}");
    let colours = distinct_colours(&pixels, bpp);
    assert!(colours > 10, "{name}: only {colours} colours");
    let band = &pixels[..(w as usize * (h as usize / 14) * bpp)];
    let dark = band
        .chunks(bpp)
        .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(
        dark > 50,
        "{name}: no title text drawn ({dark} dark pixels)"
    );
}

/// Checks an SVG: parses, has the size, text (the title) and shapes.
fn check_svg(name: &str, text: &str, title: &str, size: (u32, u32)) {
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{name}");
    assert_eq!(root.attribute("width"), Some(size.0.to_string().as_str()));
    assert_eq!(root.attribute("height"), Some(size.1.to_string().as_str()));
    let count = |tag: &str| {
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .count()
    };
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    assert!(texts.len() > 5, "{name}: {} text elements", texts.len());
    assert!(
        texts.iter().any(|t| t == title),
        "{name}: title `{title}` not among {texts:?}"
    );
    let shapes = count("rect") + count("path") + count("polyline") + count("line");
    assert!(shapes > 5, "{name}: {shapes} shapes");
}

#[test]
fn every_chart_as_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    for (name, plot) in all_charts() {
        assert_eq!((plot.width(), plot.height()), DEFAULT_SIZE);
        let png_path = dir.path().join(format!("{name}.png"));
        let svg_path = dir.path().join(format!("{name}.SVG"));
        plot.save(&png_path).unwrap();
        plot.save(&svg_path).unwrap();
        let png_bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(png_bytes, plot.png(), "{name}");
        check_png(&name, &png_bytes, DEFAULT_SIZE);
        let svg_text = std::fs::read_to_string(&svg_path).unwrap();
        assert_eq!(svg_text, plot.svg(), "{name}");
        check_svg(&name, &svg_text, plot.title(), DEFAULT_SIZE);
        if let Some(out) = std::env::var_os("SPARSELAB_PLOT_OUT") {
            // Keep the charts for a person to look at.
            plot.save(Path::new(&out).join(format!("{name}.png")))
                .unwrap();
            plot.save(Path::new(&out).join(format!("{name}.svg")))
                .unwrap();
        }
    }
}

#[test]
fn chart_contents() {
    let s = summary();
    let svg = bits_chart(&s).unwrap().svg().to_string();
    for label in ["2 bits", "8 bits", "q_proj: 256 ch, 4.75 bits", "all: "] {
        assert!(svg.contains(label), "bits chart lacks `{label}`");
    }
    let svg = compare_chart(&table()).unwrap().svg().to_string();
    for label in [
        "wikitext2",
        "c4",
        "2:4 + 4 bits",
        "27.66",
        "Perplexity per dataset",
    ] {
        assert!(svg.contains(label), "compare chart lacks `{label}`");
    }
    let svg = layers_chart(&s, "rel_error").unwrap().svg().to_string();
    assert!(svg.contains("layer mean") && svg.contains("decoder layer"));
    let svg = histogram(&values(), &HistOptions::default())
        .unwrap()
        .svg()
        .to_string();
    assert!(svg.contains("n = 5000") && svg.contains("2 NaN/inf left out"));
}

#[test]
fn sizes_and_formats() {
    let plot = bits_chart(&summary()).unwrap();
    let small = plot.with_size(400, 300).unwrap();
    check_png("small", small.png(), (400, 300));
    check_svg("small", small.svg(), plot.title(), (400, 300));
    let big = plot.with_size(1600, 1000).unwrap();
    check_png("big", big.png(), (1600, 1000));
    assert!(plot.with_size(10, 10).is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.dat");
    let e = plot.save(&path).unwrap_err();
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "error does not name the path: {e}"
    );
    plot.save_as(&path, PlotFormat::Svg).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("<svg"));
    plot.save_as(&path, PlotFormat::parse("PNG").unwrap())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), plot.png());
    assert!(PlotFormat::parse("jpeg").is_err());

    let missing = dir.path().join("no/such/dir/chart.png");
    let e = plot.save(&missing).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
}

#[test]
fn chart_errors_say_what_is_wrong() {
    let e = histogram(&[], &HistOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no finite values"), "{e}");
    let e = histogram(&[f32::NAN], &HistOptions::default()).unwrap_err();
    assert!(e.to_string().contains("1 NaN or infinite"), "{e}");
    let e = histogram(
        &[1.0],
        &HistOptions {
            bins: 0,
            ..HistOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("bins"), "{e}");
    // One distinct value still draws.
    check_png(
        "constant",
        histogram(&[3.0; 10], &HistOptions::default())
            .unwrap()
            .png(),
        DEFAULT_SIZE,
    );

    let s = summary();
    let e = layers_chart(&s, "perplexity").unwrap_err();
    assert!(
        e.to_string()
            .contains("avg_bits, sparsity, loss, rel_error"),
        "{e}"
    );

    let mut r = report(0, "fc1", vec![], 1e-3);
    r.columns = 8;
    r.loss = None;
    let float = Summary::from_reports(&[r], &RunIntent::default()).unwrap();
    let e = bits_chart(&float).unwrap_err();
    assert!(e.to_string().contains("no quantized channels"), "{e}");
    let e = layers_chart(&float, "loss").unwrap_err();
    assert!(e.to_string().contains("SparseGPT/GPTQ only"), "{e}");
    check_png(
        "one layer",
        layers_chart(&float, "sparsity").unwrap().png(),
        DEFAULT_SIZE,
    );

    let e = compare_chart(&CompareTable::perplexity(["wikitext2"])).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn compare_chart_goes_log_for_a_broken_configuration() {
    let mut t = table();
    t.add_row("2:4 magnitude", vec![3000.0, 5000.0, 4000.0])
        .unwrap();
    let svg = compare_chart(&t).unwrap().svg().to_string();
    assert!(svg.contains("perplexity (log scale)"));
    check_png(
        "log compare",
        compare_chart(&t).unwrap().png(),
        DEFAULT_SIZE,
    );
}

/// The process loads no font library: text comes from the embedded DejaVu Sans.
#[cfg(target_os = "linux")]
#[test]
fn no_system_font_library_is_loaded() {
    let _ = bits_chart(&summary()).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for lib in ["fontconfig", "freetype"] {
        assert!(!maps.contains(lib), "{lib} is mapped into the process");
    }
}

const CHILD: &str = "SPARSELAB_PLOT_TEST_CHILD";

/// Runs one test of this binary in a child process with `env`; returns its stdout.
fn run_child(test: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    // Test names are module paths below the crate (`plot::child_…`).
    let (_, module) = module_path!().split_once("::").unwrap();
    let name = format!("{module}::{test}");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "child {test} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The child half of `renders_with_no_fonts_installed`: renders with every
/// font lookup pointed at nothing and prints the title band's dark pixels.
#[test]
fn child_render_without_fonts() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let plot = compare_chart(&table()).unwrap();
    check_png("no fonts", plot.png(), DEFAULT_SIZE);
    println!("CHILD_OK {}", plot.png().len());
}

#[test]
fn renders_with_no_fonts_installed() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let out = run_child(
        "child_render_without_fonts",
        &[
            ("FONTCONFIG_FILE", "/dev/null"),
            ("FONTCONFIG_PATH", dir),
            ("XDG_DATA_HOME", dir),
            ("XDG_DATA_DIRS", dir),
            ("HOME", dir),
        ],
    );
    assert!(out.contains("CHILD_OK"), "{out}");
}

/// Splits evcxr output into `(mime, data)` blocks, checking the framing.
fn blocks(out: &str) -> Vec<(String, String)> {
    let mut rest = out;
    let mut found = Vec::new();
    while !rest.is_empty() {
        let head = rest
            .strip_prefix("EVCXR_BEGIN_CONTENT ")
            .unwrap_or_else(|| panic!("no block start at {:?}", &rest[..rest.len().min(80)]));
        let (mime, body) = head.split_once('\n').unwrap();
        let end = body.find("\nEVCXR_END_CONTENT\n").expect("block end");
        found.push((mime.to_string(), body[..end].to_string()));
        rest = &body[end + "\nEVCXR_END_CONTENT\n".len()..];
    }
    found
}

fn evcxr_of(x: &dyn RichDisplay) -> String {
    let mut out = Vec::new();
    x.write_evcxr(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn plot_evcxr_output_exactly() {
    let plot = bits_chart(&summary()).unwrap();
    let mut out = Vec::new();
    plot.write_evcxr(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let b64 = base64::encode(plot.png());
    assert_eq!(
        out,
        format!(
            "EVCXR_BEGIN_CONTENT image/png\n{b64}\nEVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT text/plain\n{plot}\nEVCXR_END_CONTENT\n",
            plot.svg()
        )
    );
    let found = blocks(&out);
    let mimes: Vec<&str> = found.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(mimes, ["image/png", "image/svg+xml", "text/plain"]);
    // The base64 is one line and decodes to the PNG.
    assert!(!found[0].1.contains('\n'));
    let png = base64::decode(&found[0].1).unwrap();
    check_png("evcxr png", &png, DEFAULT_SIZE);
    check_svg("evcxr svg", &found[1].1, plot.title(), DEFAULT_SIZE);
    assert_eq!(out, evcxr_of(&plot));
    let html = plot.html();
    roxmltree::Document::parse(&html).unwrap();
    assert!(html.starts_with("<img src=\"data:image/png;base64,"));
}

#[test]
fn summary_evcxr_output_exactly() {
    let s = summary();
    let mut out = Vec::new();
    s.write_evcxr(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        format!(
            "EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT text/plain\n{}\nEVCXR_END_CONTENT\n",
            s.html(),
            s.to_string().trim_end()
        )
    );
    let found = blocks(&out);
    assert_eq!(found.len(), 2);
    assert_eq!(found[1].1, s.to_string().trim_end());
    let doc = roxmltree::Document::parse(&found[0].1).unwrap();
    let tables: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("table"))
        .collect();
    assert_eq!(tables.len(), 3, "tiers, per type, per linear");
    let rows = |t: &roxmltree::Node| t.descendants().filter(|n| n.has_tag_name("tr")).count() - 1;
    assert_eq!(rows(&tables[0]), s.tiers.len());
    assert_eq!(rows(&tables[1]), s.per_type.len());
    assert_eq!(rows(&tables[2]), s.per_linear.len());
    let cells: Vec<String> = tables[0]
        .descendants()
        .filter(|n| n.has_tag_name("td"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    let t = &s.tiers[0];
    assert_eq!(
        cells[..3],
        [
            t.bits.to_string(),
            t.channels.to_string(),
            format!("{:.2}", t.percent)
        ]
    );
    let text: String = doc
        .root_element()
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect();
    assert!(
        text.contains("average 4.286 bits (target 4.300, -0.014)"),
        "{text}"
    );
    assert_eq!(out, evcxr_of(&s));
}

#[test]
fn compare_table_evcxr_output_exactly() {
    let t = table();
    let out = evcxr_of(&t);
    assert_eq!(
        out,
        format!(
            "EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT text/plain\n{}\nEVCXR_END_CONTENT\n",
            t.html(),
            t.to_string().trim_end()
        )
    );
    let found = blocks(&out);
    let doc = roxmltree::Document::parse(&found[0].1).unwrap();
    let bold: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("b"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(bold, ["27.66", "38.99", "26.56"]);
    let cells = doc.descendants().filter(|n| n.has_tag_name("td")).count();
    assert_eq!(cells, 3 * 4);
}

/// The child half of `evcxr_display_matches_evcxr_runtime`: prints each value
/// through evcxr_runtime's own emitters and through `evcxr_display`.
#[test]
fn child_evcxr_display() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    use std::io::Write;
    let plot = compare_chart(&table()).unwrap();
    let s = summary();
    let t = table();
    let values: [&dyn Fn(); 6] = [
        &|| evcxr_runtime::Display::evcxr_display(&plot),
        &|| plot.evcxr_display(),
        &|| evcxr_runtime::Display::evcxr_display(&s),
        &|| s.evcxr_display(),
        &|| evcxr_runtime::Display::evcxr_display(&t),
        &|| t.evcxr_display(),
    ];
    for show in values {
        println!("@@MARK@@");
        std::io::stdout().flush().unwrap();
        show();
        std::io::stdout().flush().unwrap();
    }
    println!("@@MARK@@");
}

/// What `evcxr_display` prints on the real stdout is byte for byte what
/// evcxr_runtime's emitters print, and what `write_evcxr` writes.
#[test]
fn evcxr_display_matches_evcxr_runtime() {
    let out = run_child("child_evcxr_display", &[]);
    let parts: Vec<&str> = out.split("@@MARK@@\n").collect();
    assert_eq!(parts.len(), 8, "{out}");
    let expected = [
        evcxr_of(&compare_chart(&table()).unwrap()),
        evcxr_of(&summary()),
        evcxr_of(&table()),
    ];
    for (i, exp) in expected.iter().enumerate() {
        assert_eq!(parts[1 + 2 * i], exp, "evcxr_runtime emitters, value {i}");
        assert_eq!(parts[2 + 2 * i], exp, "evcxr_display, value {i}");
    }
}

/// The charts of real runs on opt-tiny: 50% SparseGPT with 4 bits through
/// `uniform_policy`, and with per-channel widths in equal shares by magnitude.
#[test]
fn charts_of_real_runs_on_opt_tiny() {
    let Some(fx) = common::fixtures() else { return };
    let dir = fx.join("models/opt-tiny");
    let opts = CalibOptions {
        dataset: fx
            .join("data/wikitext2/wiki.valid.raw")
            .to_string_lossy()
            .into_owned(),
        nsamples: 8,
        seqlen: Some(64),
        quiet: true,
        ..CalibOptions::default()
    };
    let intent = RunIntent {
        bits_requested: true,
        target_avg: Some(4.0),
        strict: false,
    };
    let method = |bits: BitWidths| {
        Method::SparseGpt(SparseGptOptions {
            pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
            quant: Some(QuantOptions {
                bits,
                ..QuantOptions::default()
            }),
            ..SparseGptOptions::default()
        })
    };

    let mut model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut calib = Calibration::new(&model, opts.clone()).unwrap();
    calib
        .run(
            &mut model,
            uniform_policy(method(BitWidths::Uniform(4)), LayerFilter::default()),
        )
        .unwrap();
    let uniform = Summary::from_reports(&calib.reports, &intent).unwrap();

    let mut model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut calib = Calibration::new(&model, opts).unwrap();
    let mut scores_all = Vec::new();
    calib
        .run(&mut model, |work| {
            for linear in work.linears() {
                let w = work.weight(linear)?;
                let scores: Vec<f32> = w.abs()?.sum(0)?.to_vec1()?;
                // Equal shares of 2, 3, 4, 6 and 8 bits by rank.
                let bits = allocate_bits(&scores, &AllocOptions::default())?;
                scores_all.extend(&scores);
                work.compress(linear, &method(BitWidths::PerColumn(bits)))?;
            }
            Ok(())
        })
        .unwrap();
    let mixed = Summary::from_reports(
        &calib.reports,
        &RunIntent {
            bits_requested: true,
            ..RunIntent::default()
        },
    )
    .unwrap();
    assert_eq!(mixed.tiers.len(), 5, "{mixed}");

    let mut charts = vec![
        ("bits uniform", bits_chart(&uniform).unwrap()),
        ("bits mixed", bits_chart(&mixed).unwrap()),
        (
            "scores",
            histogram(
                &scores_all,
                &HistOptions {
                    log_y: true,
                    ..HistOptions::default()
                },
            )
            .unwrap(),
        ),
    ];
    for field in LAYER_FIELDS {
        charts.push((field, layers_chart(&mixed, field).unwrap()));
    }
    for (name, plot) in &charts {
        check_png(name, plot.png(), DEFAULT_SIZE);
        check_svg(name, plot.svg(), plot.title(), DEFAULT_SIZE);
    }
    let html = mixed.html();
    let doc = roxmltree::Document::parse(&html).unwrap();
    let linear_rows = doc.descendants().filter(|n| n.has_tag_name("tr")).count();
    // tiers + header, types + header, linears + header
    assert_eq!(
        linear_rows,
        mixed.tiers.len() + mixed.per_type.len() + mixed.per_linear.len() + 3
    );
}
