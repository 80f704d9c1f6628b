//! Finding the shared fixtures (../shared beside the crate, or `SPARSELAB_FIXTURES`).
#![allow(dead_code)]

use std::path::PathBuf;

/// The fixtures directory, or `None` (with the reason printed) when it is missing.
/// Under CI (`CI` set) missing fixtures are a failure, not a skip.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SPARSELAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "fixtures not found at {} (set SPARSELAB_FIXTURES)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: fixtures not found at {} (set SPARSELAB_FIXTURES)",
        dir.display()
    );
    None
}

/// A Python interpreter that can import every module in `modules`: the one
/// `SPARSELAB_PYTHON` names, else `python3`. `None` (with the reason printed)
/// when there is none; under CI (`CI` set) that is a failure, not a skip,
/// because `.ci/run` installs one and a silent skip would hide a broken install.
pub fn python(modules: &[&str]) -> Option<String> {
    let py = std::env::var("SPARSELAB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = format!("import {}", modules.join(", "));
    let why = match std::process::Command::new(&py)
        .args(["-c", &probe])
        .output()
    {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => format!(
            "`{py} -c \"{probe}\"` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => format!("cannot run `{py}`: {e}"),
    };
    let hint = format!(
        "set SPARSELAB_PYTHON to a python with {} (.ci/run builds one from \
         tests/reference/requirements.txt)",
        modules.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}; {hint}");
    }
    eprintln!("skipped: {why}; {hint}");
    None
}
