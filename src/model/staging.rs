//! Atomic output: a directory is written in full under a temporary sibling name,
//! synced, and only then renamed into place; a single file likewise. Whatever
//! fails on the way (a full disk, a bad tensor, a panic), the temporary output is
//! removed and the destination is left as it was.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

/// Whether an I/O error means the disk (or quota) is full.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    // ENOSPC (28) and EDQUOT (122 on Linux) as well as the portable kind.
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// An error for a failed write of `path`, saying plainly when the disk is full.
pub(crate) fn write_error(e: io::Error, path: &Path) -> anyhow::Error {
    if is_disk_full(&e) {
        anyhow!("the disk is full: cannot write {} ({e})", path.display())
    } else {
        anyhow!("cannot write {}: {e}", path.display())
    }
}

/// Checks that `target` may be written: absent, an empty directory, or (with
/// `overwrite`) a directory to replace. Anything else is an error saying why.
pub fn check_target(target: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("cannot inspect {}: {e}", target.display()),
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a directory; choose another destination",
            target.display()
        ),
        Ok(_) => {
            let non_empty = std::fs::read_dir(target)
                .with_context(|| format!("cannot list {}", target.display()))?
                .next()
                .is_some();
            if non_empty && !overwrite {
                bail!(
                    "{} exists and is not empty; pass overwrite (--overwrite) to replace it",
                    target.display()
                );
            }
            Ok(())
        }
    }
}

/// A simulated disk capacity shared by the files of one staging directory (for
/// tests of what a full disk does).
#[derive(Clone, Default)]
pub(crate) struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    pub fn new(bytes: Option<u64>) -> Self {
        Self(bytes.map(|b| Arc::new(AtomicU64::new(b))))
    }

    fn take(&self, n: usize) -> io::Result<()> {
        if let Some(left) = &self.0 {
            let ok = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                    l.checked_sub(n as u64)
                })
                .is_ok();
            if !ok {
                left.store(0, Ordering::SeqCst);
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "No space left on device (simulated)",
                ));
            }
        }
        Ok(())
    }
}

/// A file being written inside a staging area; [`finish`](Self::finish) flushes
/// and syncs it. Write errors name the file (and a full disk as such).
pub(crate) struct StagedFile {
    inner: BufWriter<File>,
    path: PathBuf,
    budget: Budget,
}

impl StagedFile {
    pub fn create(path: &Path, budget: Budget) -> Result<Self> {
        let f = File::create(path).map_err(|e| write_error(e, path))?;
        Ok(Self {
            inner: BufWriter::with_capacity(1 << 20, f),
            path: path.to_path_buf(),
            budget,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `buf`, with the error naming the file.
    pub fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.write_all(buf).map_err(|e| write_error(e, &self.path))
    }

    /// Flushes and fsyncs.
    pub fn finish(self) -> Result<()> {
        let path = self.path.clone();
        let f = self
            .inner
            .into_inner()
            .map_err(|e| write_error(e.into_error(), &path))?;
        f.sync_all().map_err(|e| write_error(e, &path))
    }
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.budget.take(buf.len())?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Syncs a directory's entries to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow!("cannot sync directory {}: {e}", dir.display()))
}

fn unique_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A sibling of `target` named `.{name}.{tag}-{unique}`.
fn sibling(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .with_context(|| format!("{} has no final component", target.display()))?
        .to_string_lossy();
    let parent = target.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", unique_suffix())))
}

/// A directory written under a temporary sibling name and renamed into place by
/// [`commit`](Self::commit); dropped without a commit, it removes everything it
/// created (the temporary directory and any parents it had to make).
pub(crate) struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    overwrite: bool,
    budget: Budget,
    created_parents: Vec<PathBuf>,
    committed: bool,
}

impl StagingDir {
    /// Starts writing `target` (checked with [`check_target`] now and again at
    /// commit). `fail_after` simulates a disk with that many free bytes.
    pub fn new(target: &Path, overwrite: bool, fail_after: Option<u64>) -> Result<Self> {
        check_target(target, overwrite)?;
        let target = if target.is_absolute() {
            target.to_path_buf()
        } else {
            std::env::current_dir()?.join(target)
        };
        let parent = target
            .parent()
            .with_context(|| format!("{} has no parent directory", target.display()))?;
        let mut created_parents = Vec::new();
        let mut p = parent;
        while !p.exists() {
            created_parents.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        std::fs::create_dir_all(parent).map_err(|e| write_error(e, parent))?;
        let tmp = sibling(&target, "partial")?;
        let mut me = Self {
            tmp: tmp.clone(),
            target,
            overwrite,
            budget: Budget::new(fail_after),
            created_parents,
            committed: false,
        };
        if let Err(e) = std::fs::create_dir(&tmp) {
            me.committed = true; // nothing of ours to remove but the parents
            me.remove_parents();
            return Err(write_error(e, &tmp));
        }
        Ok(me)
    }

    /// The final destination.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Creates a file inside the staging directory.
    pub fn create(&self, name: &str) -> Result<StagedFile> {
        StagedFile::create(&self.tmp.join(name), self.budget.clone())
    }

    /// Copies `src` into the staging directory as `name`.
    pub fn copy_in(&self, src: &Path, name: &str) -> Result<()> {
        let mut input =
            File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
        let mut out = self.create(name)?;
        io::copy(&mut input, &mut out).map_err(|e| write_error(e, out.path()))?;
        out.finish()
    }

    /// Syncs the directory and renames it into place, replacing an existing
    /// target when `overwrite` was given (the old one is renamed away first and
    /// deleted only after the new one is in place).
    pub fn commit(mut self) -> Result<()> {
        sync_dir(&self.tmp)?;
        check_target(&self.target, self.overwrite)?;
        let existing = self.target.exists();
        let non_empty = existing
            && std::fs::read_dir(&self.target)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true);
        if existing && !non_empty {
            std::fs::remove_dir(&self.target)
                .with_context(|| format!("cannot replace empty {}", self.target.display()))?;
        }
        let old = if non_empty {
            let old = sibling(&self.target, "old")?;
            std::fs::rename(&self.target, &old).with_context(|| {
                format!("cannot move the existing {} aside", self.target.display())
            })?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
            if let Some(old) = &old {
                let _ = std::fs::rename(old, &self.target);
            }
            bail!(
                "cannot rename {} to {}: {e}",
                self.tmp.display(),
                self.target.display()
            );
        }
        self.committed = true;
        if let Some(parent) = self.target.parent() {
            sync_dir(parent)?;
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).with_context(|| {
                format!(
                    "the new {} is in place, but the old copy {} could not be removed",
                    self.target.display(),
                    old.display()
                )
            })?;
        }
        Ok(())
    }

    fn remove_parents(&self) {
        for p in &self.created_parents {
            let _ = std::fs::remove_dir(p);
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            self.remove_parents();
        }
    }
}

/// Writes one file atomically: `write` fills a temporary sibling, which is synced
/// and renamed over `path`; on any error the temporary file is removed and
/// `path` keeps its old content.
pub(crate) fn write_file_atomic(
    path: &Path,
    budget: &Budget,
    write: impl FnOnce(&mut StagedFile) -> Result<()>,
) -> Result<()> {
    let tmp = sibling(path, "partial")?;
    let result = (|| {
        let mut f = StagedFile::create(&tmp, budget.clone())?;
        write(&mut f)?;
        f.finish()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
