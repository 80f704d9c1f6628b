//! The Hugging Face hub: the local cache (Python's layout, shared with
//! `huggingface_hub`) first, downloads through hf-hub otherwise.
//!
//! `HF_HUB_OFFLINE=1` turns every lookup into a cache-only one, as it does for the
//! Python tools; hf-hub itself does not read that variable.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::{Repo, RepoType};

/// Where hub files are looked up.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Cache root (the folder holding `models--…` / `datasets--…`).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    /// Hub endpoint for downloads (`HF_ENDPOINT`); `None` is huggingface.co.
    pub endpoint: Option<String>,
}

impl HubOptions {
    /// From the environment, with `huggingface_hub`'s precedence: `HF_HUB_CACHE`,
    /// else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; offline when
    /// `HF_HUB_OFFLINE` is 1/true/yes/on; `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_dir = if let Some(p) = var("HF_HUB_CACHE") {
            PathBuf::from(p)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            hf_hub::Cache::from_env().path().clone()
        };
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        Self {
            cache_dir,
            offline,
            endpoint,
        }
    }
}

/// A hub repository id with an optional revision: `org/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `org/name`.
    pub id: String,
    /// Branch, tag or commit (`main` by default).
    pub revision: String,
}

impl RepoSpec {
    /// Parses `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => bail!("empty revision in `{spec}`"),
            None => (spec, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            bail!("`{spec}` is not a hub id of the form org/name[@revision]");
        }
        Ok(Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    fn folder(&self, kind: RepoType) -> String {
        let prefix = match kind {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
        };
        format!("{prefix}--{}", self.id.replace('/', "--"))
    }
}

/// Whether a model spec is a hub id rather than a local path: it names nothing
/// that exists, does not start with `/`, `.` or `~`, and has exactly one `/`
/// (and no backslash).
pub fn looks_like_hub_id(spec: &str) -> bool {
    !Path::new(spec).exists()
        && !spec.starts_with(['/', '.', '~'])
        && spec.matches('/').count() == 1
        && !spec.contains('\\')
}

/// Splits `org/name[@revision]:FILE` into the repository part and the file it
/// names (a file of the repository, or a quantization tag such as `Q4_K_M`, as
/// llama.cpp's `-hf org/name:quant` takes it); no file without a `:`.
pub fn split_file(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((repo, file)) if !file.is_empty() => (repo, Some(file)),
        Some((repo, _)) => (repo, None),
        None => (spec, None),
    }
}

/// The snapshot folder of `repo` in the cache, if that revision was downloaded.
/// A revision is a ref name (`refs/<revision>` holds the commit) or a commit hash.
pub fn cached_snapshot(cache_dir: &Path, kind: RepoType, repo: &RepoSpec) -> Option<PathBuf> {
    let root = cache_dir.join(repo.folder(kind));
    let commit = std::fs::read_to_string(root.join("refs").join(&repo.revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| repo.revision.clone());
    let snap = root.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

/// A file of a cached snapshot, if present.
pub fn cached_file(
    cache_dir: &Path,
    kind: RepoType,
    repo: &RepoSpec,
    file: &str,
) -> Option<PathBuf> {
    let path = cached_snapshot(cache_dir, kind, repo)?.join(file);
    path.exists().then_some(path)
}

/// Downloads files of `repo` into the cache; returns the local paths. `choose`
/// picks which of the repository's files to fetch.
pub fn download(
    opts: &HubOptions,
    kind: RepoType,
    repo: &RepoSpec,
    choose: &dyn Fn(&[String]) -> Result<Vec<String>>,
) -> Result<Vec<PathBuf>> {
    let remote = api_repo(opts, kind, repo)?;
    let info = remote
        .info()
        .map_err(|e| anyhow!("cannot reach {} on the hub: {e}", repo.id))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = choose(&files).with_context(|| format!("in hub repository {}", repo.id))?;
    wanted
        .iter()
        .map(|f| {
            remote
                .get(f)
                .map_err(|e| anyhow!("downloading {f} from {}: {e}", repo.id))
        })
        .collect()
}

/// Downloads one file of `repo` into the cache; returns its local path.
pub fn download_file(
    opts: &HubOptions,
    kind: RepoType,
    repo: &RepoSpec,
    file: &str,
) -> Result<PathBuf> {
    let remote = api_repo(opts, kind, repo)?;
    remote
        .get(file)
        .map_err(|e| anyhow!("downloading {} from {}: {e}", remote.url(file), repo.id))
}

fn api_repo(
    opts: &HubOptions,
    kind: RepoType,
    repo: &RepoSpec,
) -> Result<hf_hub::api::sync::ApiRepo> {
    if opts.offline {
        bail!(
            "HF_HUB_OFFLINE is set, so nothing was downloaded from {}",
            repo.id
        );
    }
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
            .with_progress(console_is_terminal());
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder
        .build()
        .map_err(|e| anyhow!("cannot start the hub client: {e}"))?;
    Ok(api.repo(Repo::with_revision(
        repo.id.clone(),
        kind,
        repo.revision.clone(),
    )))
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        let r = RepoSpec::parse("facebook/opt-125m@abc").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("facebook/opt-125m", "abc")
        );
        assert_eq!(RepoSpec::parse("a/b").unwrap().revision, "main");
        assert!(RepoSpec::parse("opt").is_err());
        assert!(RepoSpec::parse("a/b/c").is_err());
    }

    #[test]
    fn splits_a_file_off_a_hub_id() {
        assert_eq!(
            split_file("a/b@v1:m.Q4_K_M.gguf"),
            ("a/b@v1", Some("m.Q4_K_M.gguf"))
        );
        assert_eq!(split_file("a/b:Q8_0"), ("a/b", Some("Q8_0")));
        assert_eq!(split_file("a/b"), ("a/b", None));
        assert_eq!(split_file("a/b:"), ("a/b", None));
        assert!(looks_like_hub_id("org/never-a-local-dir-xyz"));
        assert!(!looks_like_hub_id("./x/y") && !looks_like_hub_id("a/b/c"));
    }

    #[test]
    fn finds_snapshots_by_ref_or_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models--org--m");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/abc123")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(root.join("snapshots/abc123/config.json"), "{}").unwrap();
        let spec = RepoSpec::parse("org/m").unwrap();
        assert!(cached_file(dir.path(), RepoType::Model, &spec, "config.json").is_some());
        let by_commit = RepoSpec::parse("org/m@abc123").unwrap();
        assert!(cached_snapshot(dir.path(), RepoType::Model, &by_commit).is_some());
        let missing = RepoSpec::parse("org/m@v2").unwrap();
        assert!(cached_snapshot(dir.path(), RepoType::Model, &missing).is_none());
    }
}
