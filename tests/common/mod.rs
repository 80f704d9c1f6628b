//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// The shared test fixtures directory, or `None` when the test should be skipped.
///
/// The directory is `$SPARSELAB_FIXTURES` if that is set, else `../shared` next to the
/// crate root. When it does not exist and `CI` is set, this panics (fixtures must be
/// present in CI); otherwise it prints why the test is skipped and returns `None`, so
/// a test starts with `let Some(dir) = common::fixtures() else { return };`.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SPARSELAB_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    if dir.is_dir() {
        return Some(dir);
    }
    let why = format!(
        "fixtures directory {} not found (set SPARSELAB_FIXTURES)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    None
}
