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
