//! Shared helpers for the integration tests.

use std::path::PathBuf;

/// The fixtures directory (`$SPARSELAB_FIXTURES`, default `../shared` beside the
/// crate), or `None` when it is missing: then the calling test prints why it is
/// skipped — unless `CI` is set, where missing fixtures are a failure.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SPARSELAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    if dir.is_dir() {
        return Some(dir);
    }
    let why = format!(
        "fixtures not found at {} (set SPARSELAB_FIXTURES)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}
