//! What the benchmarks share: memory readings from /proc.
#![allow(dead_code)]

/// A `kB` field of /proc/self/status (`VmHWM:`, `RssAnon:`, …) in MiB; NaN
/// where /proc is not there.
pub fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Peak resident memory of this process in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Current anonymous and file-backed (mapped checkpoint) resident memory in MiB.
pub fn rss_split_mib() -> (f64, f64) {
    (status_mib("RssAnon:"), status_mib("RssFile:"))
}

/// A Python baseline script in benches/: beside the sources this binary was built
/// from, or under `benches/` of the current directory when the binary was copied
/// to another machine (a GPU box) with the repository.
pub fn baseline_script(name: &str) -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name);
    if built.exists() {
        built
    } else {
        std::path::Path::new("benches").join(name)
    }
}
