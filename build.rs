//! Records the git revision the binary was built from (for `compression.json`),
//! as `SPARSELAB_GIT_REV`; nothing is set when git or the repository is absent.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SPARSELAB_GIT_REV");
    if std::env::var_os("SPARSELAB_GIT_REV").is_some() {
        return; // given by the environment (e.g. a packaging script)
    }
    let Some(rev) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=SPARSELAB_GIT_REV={rev}");
    // Rebuild when HEAD moves: watch HEAD, the branch it points to and packed-refs
    // (only files that exist, or cargo would rerun this script on every build).
    let mut watch = Vec::new();
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(Path::new(&git_dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(Path::new(&common).join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(Path::new(&common).join(branch));
        }
    }
    for p in watch {
        if p.is_file() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
