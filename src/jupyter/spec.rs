//! `sparselab kernel install`: the kernelspec that tells Jupyter how to start
//! the kernel.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The kernelspec's directory name, what `--kernel_name` / a notebook's
/// `metadata.kernelspec.name` refers to.
pub const KERNEL_NAME: &str = "sparselab-rhai";

/// The name Jupyter shows in its kernel menu.
pub const DISPLAY_NAME: &str = "sparselab (Rhai)";

/// Where to install.
#[derive(Debug, Clone)]
pub enum InstallTarget {
    /// The user's Jupyter data directory (`$JUPYTER_DATA_DIR`, else
    /// `~/.local/share/jupyter` on Linux, `~/Library/Jupyter` on macOS).
    User,
    /// `PREFIX/share/jupyter` (a virtual environment, or a temporary prefix that
    /// `JUPYTER_PATH` points at).
    Prefix(PathBuf),
}

/// The `kernel.json` text for the program at `exe`.
pub fn kernel_json(exe: &Path) -> serde_json::Value {
    serde_json::json!({
        "argv": [exe.to_string_lossy(), "kernel", "--connection-file", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "rhai",
        // Jupyter's default, spelled out: the kernel takes SIGINT (and also
        // answers interrupt_request on the control channel).
        "interrupt_mode": "signal",
        "metadata": { "debugger": false }
    })
}

/// The data directory the target names.
pub fn data_dir(target: &InstallTarget) -> Result<PathBuf> {
    Ok(match target {
        InstallTarget::Prefix(p) => p.join("share").join("jupyter"),
        InstallTarget::User => jupyter_zmq_client::user_data_dir()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("finding the Jupyter user data directory (set JUPYTER_DATA_DIR)")?,
    })
}

/// Writes the kernelspec for the running program into `target`; returns the
/// kernelspec directory.
pub fn install(target: &InstallTarget) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the sparselab executable")?;
    // A kernelspec outlives the shell it was written from: the absolute path.
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = data_dir(target)?.join("kernels").join(KERNEL_NAME);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("kernel.json");
    let text = serde_json::to_string_pretty(&kernel_json(&exe))? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_a_kernelspec_under_a_prefix() {
        let tmp = std::env::temp_dir().join(format!("sparselab-spec-{}", std::process::id()));
        let dir = install(&InstallTarget::Prefix(tmp.clone())).unwrap();
        assert_eq!(dir, tmp.join("share/jupyter/kernels/sparselab-rhai"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("kernel.json")).unwrap())
                .unwrap();
        assert_eq!(v["display_name"], "sparselab (Rhai)");
        let argv: Vec<&str> = v["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(Path::new(argv[0]).is_absolute());
        assert_eq!(
            &argv[1..],
            ["kernel", "--connection-file", "{connection_file}"]
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
