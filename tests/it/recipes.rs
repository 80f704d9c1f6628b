//! The recipes in scripts/ that build on cached calibrations — sweep.rhai,
//! compare.rhai and vicuna_mi.rhai — run on the fixture models with small
//! `--set` values, and each test reads the recipe's own output (its table, its
//! warnings, its files) and checks the values in it. quickstart.rhai and
//! opt.rhai are run by tests/it/script.rs. A recipe added to scripts/ without a
//! test here or there fails `every_recipe_has_a_test`.

use crate::common;

use std::path::Path;
use std::process::Command;

use sparselab::report::summary::TARGET_TOLERANCE;

const BIN: &str = env!("CARGO_BIN_EXE_sparselab");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `sparselab run -q scripts/NAME.rhai --set k=v …`; panics on failure.
fn run_recipe(name: &str, sets: &[(&str, String)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-q", &format!("{ROOT}/scripts/{name}.rhai")]);
    for (k, v) in sets {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The small, offline settings every recipe takes.
fn small(fx: &Path, model: &str, cache: &Path) -> Vec<(&'static str, String)> {
    let s = |p: &str| fx.join(p).to_string_lossy().into_owned();
    vec![
        ("model", s(&format!("models/{model}"))),
        ("calib_data", s("data/wikitext2/wiki.valid.raw")),
        ("nsamples", "4".into()),
        ("seqlen", "64".into()),
        ("eval_windows", "8".into()),
        ("cache", cache.to_string_lossy().into_owned()),
    ]
}

/// The rows of the table whose header starts with `first` (after its rule).
fn table<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = out.lines().collect();
    let head = (0..lines.len().saturating_sub(1))
        .find(|&i| lines[i].starts_with(first) && lines[i + 1].starts_with("---"))
        .unwrap_or_else(|| panic!("no table starting with {first}:\n{out}"));
    lines[head + 2..]
        .iter()
        .copied()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("WARNING") && !l.starts_with("best"))
        .collect()
}

fn num(cell: &str) -> f64 {
    cell.parse()
        .unwrap_or_else(|_| panic!("`{cell}` is not a number"))
}

/// `… X with sequential …, Y with sequential: false (±Z%)` style lines: the two
/// perplexities after `sequential ppl` and `sequential: false ppl`.
fn mode_gap(line: &str) -> (f64, f64) {
    let after = |key: &str| -> f64 {
        let i = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        num(line[i..].split([' ', ',']).find(|s| !s.is_empty()).unwrap())
    };
    (after("sequential ppl "), after("sequential: false ppl "))
}

#[test]
fn every_recipe_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(format!("{ROOT}/scripts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rhai"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "compare.rhai",
            "mixed.rhai",
            "opt.rhai",
            "quickstart.rhai",
            "sweep.rhai",
            "vicuna_mi.rhai"
        ],
        "a recipe was added or removed: give it a test (here or in tests/it/script.rs)"
    );
    for n in &names {
        let out = Command::new(BIN)
            .args(["check", &format!("{ROOT}/scripts/{n}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn sweep_reuses_one_calibration_and_flags_missed_targets() {
    let Some(fx) = common::fixtures() else { return };
    let cache = tempfile::tempdir().unwrap();
    let mut sets = small(&fx, "opt-tiny", cache.path());
    sets.push((
        "data",
        fx.join("data/wikitext2/wiki.test.raw")
            .to_string_lossy()
            .into_owned(),
    ));
    sets.push(("groups", "2,4".into()));
    // One set near 4 bits on opt-tiny, one that cannot reach it (every group
    // mean is below 5, so nearly everything gets 2 or 3 bits).
    sets.push(("thresholds", "0.6/0.9/1.2/1.8;5/6/7/8".into()));
    let out = run_recipe("sweep", &sets);
    let rows = table(&out, "groups");
    assert_eq!(rows.len(), 4, "{out}");
    let mut missed = 0;
    let mut ppls = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let c: Vec<&str> = row.split_whitespace().collect();
        // The perplexity cell is "ppl ± standard error".
        let (groups, th, bits, ppl) = (num(c[0]), c[1], num(c[2]), num(c[3]));
        assert_eq!(c[4], "±", "{row}");
        let (se, secs, computed) = (num(c[5]), num(c[6]), num(c[7]));
        assert!(se > 0.0 && se < ppl, "{row}");
        assert_eq!(groups, if i < 2 { 2.0 } else { 4.0 }, "{row}");
        assert_eq!(
            th,
            if i % 2 == 0 {
                "0.6/0.9/1.2/1.8"
            } else {
                "5.0/6.0/7.0/8.0"
            }
        );
        assert!((2.0..=8.0).contains(&bits), "{row}");
        assert!(ppl.is_finite() && ppl > 1.0 && secs > 0.0, "{row}");
        // Dense statistics: the first configuration computes the 4 layers,
        // every later one reads them from the cache.
        assert_eq!(computed, if i == 0 { 4.0 } else { 0.0 }, "{row}");
        let flagged = c.get(8) == Some(&"MISSED");
        assert_eq!(flagged, (bits - 4.0).abs() > TARGET_TOLERANCE, "{row}");
        missed += flagged as usize;
        ppls.push(ppl);
    }
    assert!(missed >= 2, "the 5/6/7/8 thresholds miss 4 bits:\n{out}");
    assert!(
        out.contains(&format!("WARNING: {missed} of 4 configurations missed")),
        "{out}"
    );
    assert!(out.contains("WARNING: average"), "{out}");
    // A miss is the run's last line too.
    assert!(last_line(&out).starts_with("MISSED TARGET"), "{out}");
    // The sequential check of the best configuration: close to the dense one.
    let best = ppls.iter().cloned().fold(f64::INFINITY, f64::min);
    let line = out
        .lines()
        .find(|l| l.starts_with("sequential check"))
        .unwrap();
    let i = line.find("ppl ").unwrap() + 4;
    let seq = num(line[i..].split_whitespace().next().unwrap());
    let j = line.find("calibration, ").unwrap() + "calibration, ".len();
    let dense = num(line[j..].split_whitespace().next().unwrap());
    assert!((dense - best).abs() < 1e-3 * best, "{line} vs best {best}");
    assert!((seq - dense).abs() / seq < 0.05, "{line}");
}

#[test]
fn compare_prints_four_configurations_with_their_bit_distributions() {
    let Some(fx) = common::fixtures() else { return };
    let cache = tempfile::tempdir().unwrap();
    let charts = tempfile::tempdir().unwrap();
    let mut sets = small(&fx, "opt-tiny", cache.path());
    sets.push((
        "data",
        fx.join("data/wikitext2/wiki.test.raw")
            .to_string_lossy()
            .into_owned(),
    ));
    sets.push((
        "out",
        charts.path().join("c").to_string_lossy().into_owned(),
    ));
    let out = run_recipe("compare", &sets);
    let rows = table(&out, "configuration");
    assert_eq!(rows.len(), 4, "{out}");
    let names = [
        "quantile 4.0",
        "quantile 3.5",
        "budget 4.0",
        "no quantization",
    ];
    let mut ppl = Vec::new();
    for (row, name) in rows.iter().zip(names) {
        let rest = row.strip_prefix(name).unwrap_or_else(|| panic!("{row}"));
        let c: Vec<&str> = rest.split_whitespace().collect();
        ppl.push(num(c[0]));
        let target = match name {
            "quantile 3.5" => Some(3.5),
            "no quantization" => None,
            _ => Some(4.0),
        };
        match target {
            Some(t) => assert!((num(c[1]) - t).abs() < 0.1, "{row}"),
            None => assert_eq!(c[1], "-", "{row}"),
        }
        // Sequential statistics after the same first layer: only layer 0 is
        // shared between the first and later configurations.
        let computed = num(c[3]);
        assert!((3.0..=4.0).contains(&computed), "{row}");
    }
    for p in &ppl {
        assert!(p.is_finite() && *p > 1.0 && *p < 1.2 * ppl[3], "{out}");
    }
    // Distributions: quantile 3.5 spreads 25% over each of four widths.
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("quantile 3.5: 2b"))
        .unwrap();
    for w in ["2b 25.0%", "3b 25.0%", "4b 25.0%", "5b 25.0%"] {
        assert!(line.contains(w), "{line}");
    }
    assert!(out.contains("  no quantization: float"), "{out}");
    let (seq, dense) = mode_gap(
        out.lines()
            .find(|l| l.starts_with("calibration modes"))
            .unwrap(),
    );
    // The table prints five significant digits, the line three decimals.
    assert!(
        (seq - ppl[2]).abs() < 0.01,
        "the sequential budget run is the table's"
    );
    assert!((seq - dense).abs() / seq < 0.05);
    for f in [
        "bits-quantile-4.0.png",
        "bits-quantile-3.5.png",
        "bits-budget-4.0.png",
        "kl.png",
    ] {
        let png = std::fs::read(charts.path().join("c").join(f)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{f}");
    }
}

#[test]
fn vicuna_mi_reports_the_target_and_both_calibration_modes() {
    let Some(fx) = common::fixtures() else { return };
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let test = fx
        .join("data/wikitext2/wiki.test.raw")
        .to_string_lossy()
        .into_owned();
    let ptb = fx
        .join("data/ptb/ptb.test.txt")
        .to_string_lossy()
        .into_owned();
    let mut sets = small(&fx, "llama-tiny", cache.path());
    sets.push(("eval_sets", format!("{test},{ptb}")));
    sets.push(("n_groups", "4".into()));
    sets.push(("thresholds", "0.6/0.9/1.2/1.8".into()));
    sets.push(("check_modes", "true".into()));
    sets.push(("out", dir.path().to_string_lossy().into_owned()));
    let out = run_recipe("vicuna_mi", &sets);
    // The summary, whose average the recipe's own line repeats.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("average bits "))
        .unwrap();
    let avg = num(line["average bits ".len()..]
        .split_whitespace()
        .next()
        .unwrap());
    let text_avg = out
        .lines()
        .find(|l| l.starts_with("average bits: "))
        .map(|l| {
            num(l["average bits: ".len()..]
                .split_whitespace()
                .next()
                .unwrap())
        })
        .unwrap();
    assert!((avg - text_avg).abs() < 1e-3, "{out}");
    assert!(
        summary.to_string().contains("\"total_channels\""),
        "{summary}"
    );
    let missed = (avg - 4.0).abs() > TARGET_TOLERANCE;
    assert_eq!(line.contains("MISSED TARGET"), missed, "{line}");
    assert_eq!(out.contains("WARNING: average"), missed);
    assert_eq!(
        last_line(&out).starts_with("MISSED TARGET"),
        missed,
        "{out}"
    );
    assert!(std::fs::read(dir.path().join("bits.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    for d in [&test, &ptb] {
        let p = out
            .lines()
            .find(|l| l.starts_with(&format!("ppl {d}: ")))
            .map(|l| {
                num(l
                    .split(": ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap())
            })
            .unwrap();
        let gap = out
            .lines()
            .find(|l| l.starts_with(&format!("calibration modes, {d}:")))
            .unwrap();
        let (seq, dense) = mode_gap(gap);
        assert_eq!(seq, (p * 1000.0).round() / 1000.0, "{gap}");
        assert!((seq - dense).abs() / seq < 0.05, "{gap}");
    }

    // Thresholds no group mean reaches: everything at the lowest tier, and the
    // recipe says so loudly.
    let mut sets = small(&fx, "llama-tiny", cache.path());
    sets.push(("eval_sets", test.clone()));
    sets.push(("thresholds", "5/6/7/8".into()));
    let out = run_recipe("vicuna_mi", &sets);
    assert!(
        out.contains("WARNING: average 2.00 bits is far from the target 4.00"),
        "{out}"
    );
    assert!(last_line(&out).starts_with("MISSED TARGET"), "{out}");
}

/// The last non-empty line of a run's output.
fn last_line(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// The value after `prefix` on the line that starts with it.
fn value_after(out: &str, prefix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{out}"));
    num(line[prefix.len()..].split(',').next().unwrap().trim())
}

#[test]
fn mixed_compares_allocations_at_equal_bits_per_weight() {
    let Some(fx) = common::fixtures() else { return };
    let s = |p: &str| fx.join(p).to_string_lossy().into_owned();
    let run = |allocation: &str| {
        run_recipe(
            "mixed",
            &[
                ("model", s("models/llama-tiny")),
                ("calib_data", s("data/wikitext2/wiki.valid.raw")),
                ("eval_data", s("data/wikitext2/wiki.test.raw")),
                ("nsamples", "4".into()),
                ("seqlen", "64".into()),
                ("eval_windows", "4".into()),
                ("target", "2.5".into()),
                ("allocation", allocation.into()),
            ],
        )
    };
    let mut loss = std::collections::HashMap::new();
    for allocation in ["uniform", "error", "error-model", "budget:obs", "random"] {
        let out = run(allocation);
        // The last lines: `average bits X`, then one `ppl NAME: Y`.
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        let n = lines.len();
        assert!(
            lines[n - 2].starts_with("average bits "),
            "{allocation}:\n{out}"
        );
        assert!(lines[n - 1].starts_with("ppl "), "{allocation}:\n{out}");
        let avg = value_after(&out, "average bits ");
        assert!(
            (avg - 2.5).abs() < 0.005,
            "{allocation}: average {avg} bits per weight"
        );
        // `ppl NAME: Y ± E`, after one `kl NAME: K ± E, top-1 T ± E %`.
        let ppl = num(lines[n - 1]
            .rsplit(':')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap());
        assert!(
            lines[n - 1].contains(" ± "),
            "{allocation}: {}",
            lines[n - 1]
        );
        assert!(
            lines[n - 3].starts_with("kl ") && lines[n - 3].contains("top-1"),
            "{allocation}:\n{out}"
        );
        assert!(ppl.is_finite() && ppl > 1.0, "{allocation}: ppl {ppl}");
        assert!(!out.contains("MISSED"), "{allocation}:\n{out}");
        loss.insert(
            allocation,
            value_after(&out, "OBS loss summed over linears "),
        );
    }
    // What the allocator minimises, the sweep's booked loss, drops against
    // uniform widths and against the same histogram shuffled.
    assert!(loss["error"] < 0.9 * loss["uniform"], "{loss:?}");
    assert!(loss["error"] < 0.9 * loss["random"], "{loss:?}");
}
