//! The Rhai-kernel notebooks executed headless by real Jupyter
//! (`jupyter nbconvert --execute`, which drives nbclient and jupyter_client)
//! against `sparselab kernel`, installed as a kernelspec in a temporary prefix.
//!
//! Needs Python with nbconvert, nbclient and jupyter_client (`.ci/run`
//! installs them). Under CI a missing Jupyter fails these tests; elsewhere
//! they print why they were skipped.
//!
//! Also checks that the evcxr notebook depends on the library without the
//! command-line front ends (no tokio, ZeroMQ or rustyline in its build).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// Whether Jupyter's notebook runner is importable; under CI its absence is
/// a failure.
fn jupyter() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import nbconvert, nbclient, jupyter_client, nbformat"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    let why = "Jupyter not found (python3 -m pip install --user nbclient nbformat ipykernel jupyter_client nbconvert)";
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// A temporary Jupyter prefix holding the `sparselab-rhai` kernelspec, made
/// by the real `sparselab kernel install --prefix`.
fn kernelspec_prefix() -> tempfile::TempDir {
    let prefix = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sparselab"))
        .args(["kernel", "install", "--prefix"])
        .arg(prefix.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(prefix
        .path()
        .join("share/jupyter/kernels/sparselab-rhai/kernel.json")
        .is_file());
    prefix
}

/// `nb` with the `let NAME = …;` lines of its `parameters` cell set to the
/// given values (as papermill does); every name must be present.
fn with_parameters(nb: &Value, params: &[(&str, String)]) -> Value {
    let mut nb = nb.clone();
    let cell = nb["cells"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| {
            c["metadata"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "parameters"))
        })
        .expect("a cell tagged `parameters`");
    let mut lines: Vec<String> = cell["source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    for (name, value) in params {
        let prefix = format!("let {name} = ");
        let line = lines
            .iter_mut()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("the parameters cell has no `let {name} = …;`"));
        *line = format!("let {name} = {value};  // set by the test\n");
    }
    cell["source"] = Value::from(lines);
    nb
}

/// Executes `nb` (written into `dir`) through `jupyter nbconvert --execute`
/// with the kernelspec from `prefix`; returns the executed notebook and the
/// seconds it took.
fn execute(nb: &Value, dir: &Path, prefix: &Path, allow_errors: bool) -> (Value, f64) {
    let input = dir.join("input.ipynb");
    std::fs::write(&input, serde_json::to_string_pretty(nb).unwrap()).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--ExecutePreprocessor.kernel_name=sparselab-rhai",
        "--ExecutePreprocessor.timeout=900",
        "--output",
        "executed.ipynb",
    ]);
    if allow_errors {
        cmd.arg("--allow-errors");
    }
    cmd.arg(&input)
        .current_dir(dir)
        .env("JUPYTER_PATH", prefix.join("share/jupyter"))
        // Keep the runtime files (connection files) inside the test's directory.
        .env("JUPYTER_RUNTIME_DIR", dir.join("runtime"));
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "nbconvert failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("executed.ipynb")).unwrap();
    (serde_json::from_str(&text).unwrap(), seconds)
}

/// A multi-line string of a notebook file: a string or a list of lines.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
        _ => String::new(),
    }
}

fn code_cells(nb: &Value) -> Vec<&Value> {
    nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cell_type"] == "code")
        .collect()
}

fn outputs(cell: &Value) -> &Vec<Value> {
    cell["outputs"].as_array().unwrap()
}

/// Every code cell ran without an error output; returns the decoded PNGs
/// (width, height) among the outputs.
fn check_clean_run(name: &str, nb: &Value) -> Vec<(u32, u32)> {
    let mut pngs = Vec::new();
    for (i, cell) in code_cells(nb).into_iter().enumerate() {
        assert!(
            cell["execution_count"].is_u64(),
            "{name}: code cell {i} did not run"
        );
        for o in outputs(cell) {
            assert_ne!(
                o["output_type"], "error",
                "{name}: code cell {i} failed: {}",
                o["traceback"]
            );
            if o["data"]["image/png"].is_string() {
                let b64 = text(&o["data"]["image/png"]);
                let bytes = base64::decode(b64.replace('\n', "")).expect("base64 PNG");
                let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
                let reader = decoder.read_info().expect("a PNG");
                pngs.push((reader.info().width, reader.info().height));
                assert!(
                    !text(&o["data"]["image/svg+xml"]).is_empty(),
                    "{name}: a plot without its SVG"
                );
            }
        }
    }
    pngs
}

fn notebook(path: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

#[test]
fn failing_cell_gives_a_located_error_and_the_kernel_keeps_serving() {
    if !jupyter() {
        return;
    }
    let prefix = kernelspec_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (nb, seconds) = execute(
        &notebook("tests/notebooks/error_cell.ipynb"),
        dir.path(),
        prefix.path(),
        true,
    );
    eprintln!("error_cell.ipynb executed in {seconds:.1}s");
    let cells = code_cells(&nb);
    assert_eq!(cells.len(), 3);
    // The failing cell: an error output whose traceback is the CLI's text.
    let errors: Vec<&Value> = outputs(cells[1])
        .iter()
        .filter(|o| o["output_type"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{:?}", outputs(cells[1]));
    let e = errors[0];
    let count = cells[1]["execution_count"].as_u64().unwrap();
    assert!(text(&e["evalue"]).contains("no_such_variable"));
    let tb: Vec<String> = e["traceback"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let tb = tb.join("\n");
    assert!(tb.contains(&format!("cell[{count}]:2:13")), "{tb}");
    assert!(tb.contains("let z = y * no_such_variable;"), "{tb}");
    let caret = tb
        .lines()
        .find(|l| l.trim_start().starts_with('|') && l.contains('^'));
    assert!(caret.is_some(), "no caret line in:\n{tb}");
    // The next cell ran in the same session.
    let last = outputs(cells[2]);
    let stream: String = last
        .iter()
        .filter(|o| o["output_type"] == "stream")
        .map(|o| text(&o["text"]))
        .collect();
    assert_eq!(stream, "still serving\n");
    let result = last
        .iter()
        .find(|o| o["output_type"] == "execute_result")
        .expect("the last cell's value");
    assert_eq!(text(&result["data"]["text/plain"]), "42");
}

#[test]
fn thresholds_notebook_runs_and_plots() {
    if !jupyter() {
        return;
    }
    let Some(fx) = common::fixtures() else {
        return;
    };
    let prefix = kernelspec_prefix();
    let dir = tempfile::tempdir().unwrap();
    let nb = with_parameters(
        &notebook("notebooks/thresholds.ipynb"),
        &[
            ("model_dir", quoted(&fx.join("models/opt-tiny"))),
            (
                "calib_data",
                quoted(&fx.join("data/wikitext2/wiki.valid.raw")),
            ),
            (
                "eval_data",
                quoted(&fx.join("data/wikitext2/wiki.test.raw")),
            ),
            ("nsamples", "8".into()),
            ("seqlen", "64".into()),
            ("eval_windows", "8".into()),
            (
                "threshold_sets",
                "[[0.1, 0.25, 0.5, 0.75], [0.4, 0.6, 0.8, 0.9]]".into(),
            ),
            ("group_counts", "[3, 5]".into()),
            ("cache_dir", quoted(&dir.path().join("cache"))),
        ],
    );
    let (out, seconds) = execute(&nb, dir.path(), prefix.path(), false);
    eprintln!("thresholds.ipynb (fixture parameters) executed in {seconds:.1}s");
    let pngs = check_clean_run("thresholds.ipynb", &out);
    // The perplexity-against-bits chart and the bit distribution.
    assert_eq!(pngs, vec![(800, 500), (800, 500)]);
    let text: String = code_cells(&out)
        .iter()
        .flat_map(|c| outputs(c).iter())
        .filter(|o| o["output_type"] == "stream")
        .map(|o| text(&o["text"]))
        .collect();
    // Five configurations; the statistics were computed once and reused after.
    assert_eq!(text.matches(": avg bits ").count(), 5, "{text}");
    assert!(text.contains("uniform 4 bits: avg bits 4.000"), "{text}");
    assert!(
        text.contains("cache 0/"),
        "no configuration reused the cache:\n{text}"
    );
}

#[test]
fn vicuna_mi_notebook_runs_on_the_fixture_model() {
    if !jupyter() {
        return;
    }
    let Some(fx) = common::fixtures() else {
        return;
    };
    let prefix = kernelspec_prefix();
    let dir = tempfile::tempdir().unwrap();
    let test = quoted(&fx.join("data/wikitext2/wiki.test.raw"));
    let nb = with_parameters(
        &notebook("notebooks/vicuna_mi.ipynb"),
        &[
            ("model", quoted(&fx.join("models/llama-tiny"))),
            (
                "calib_data",
                quoted(&fx.join("data/wikitext2/wiki.valid.raw")),
            ),
            ("eval_datasets", format!("[{test}]")),
            ("nsamples", "8".into()),
            ("seqlen", "64".into()),
            ("eval_windows", "8".into()),
        ],
    );
    let (out, seconds) = execute(&nb, dir.path(), prefix.path(), false);
    eprintln!("vicuna_mi.ipynb (llama-tiny parameters) executed in {seconds:.1}s");
    let pngs = check_clean_run("vicuna_mi.ipynb", &out);
    // Histogram, bits, two per-layer charts, comparison.
    assert_eq!(pngs.len(), 5, "{pngs:?}");
    // The summary and the table arrive as HTML.
    let html: Vec<String> = code_cells(&out)
        .iter()
        .flat_map(|c| outputs(c).iter())
        .map(|o| text(&o["data"]["text/html"]))
        .collect();
    assert!(html.iter().any(|h| h.contains("sparselab-summary")));
    assert!(html
        .iter()
        .any(|h| h.contains("sparselab-compare") && h.contains("dense")));
}

/// The crates that only the interactive front ends need (the REPL's line
/// editor, the Jupyter kernel's runtime and transport).
const FRONT_END_CRATES: [&str; 5] = [
    "rustyline",
    "tokio",
    "zeromq",
    "jupyter-protocol",
    "jupyter-zmq-client",
];

/// The crate names in this package's normal dependency tree, as
/// `cargo tree -e normal` prints them, with `extra` arguments.
fn dependency_names(extra: &[&str]) -> Vec<String> {
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args([
            "tree",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// An evcxr notebook depends on the library alone: its `:dep` line (and the
/// Cargo.toml that `check_evcxr.sh --compile-only` writes) turns the default
/// features off, and without them no front-end crate is in the tree, so
/// evcxr's first cell compiles no tokio, ZeroMQ or rustyline.
#[test]
fn evcxr_dep_builds_no_front_end_crates() {
    let nb = notebook("notebooks/quickstart_evcxr.ipynb");
    let deps: Vec<String> = code_cells(&nb)
        .iter()
        .flat_map(|c| {
            text(&c["source"])
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.trim_start().starts_with(":dep sparselab"))
        .collect();
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert!(deps[0].contains("default-features = false"), "{}", deps[0]);
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks/check_evcxr.sh"),
    )
    .unwrap();
    assert!(
        script.contains("sparselab = { path = \"$repo\", default-features = false }"),
        "check_evcxr.sh should build the notebook as its :dep line does"
    );

    let lib = dependency_names(&["--no-default-features"]);
    assert!(lib.iter().any(|n| n == "candle-core"), "{lib:?}");
    for name in FRONT_END_CRATES {
        assert!(
            !lib.iter().any(|n| n == name),
            "{name} in the library's tree"
        );
    }
    // The default features (the binary) still have them all.
    let all = dependency_names(&[]);
    for name in FRONT_END_CRATES {
        assert!(all.iter().any(|n| n == name), "{name} missing with `cli`");
    }
}
