//! One repo's folder in huggingface_hub's cache, in its layout, so that Python and Ember share
//! downloads:
//!
//! ```text
//! models--org--name/
//!   blobs/<etag>                  file contents (the LFS sha256, or the git blob id)
//!   blobs/<etag>.incomplete       a partial download, resumed by the next try
//!   refs/<revision>               the commit a branch or tag named when last resolved (no newline)
//!   snapshots/<commit>/<path>     relative symlinks into blobs/
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ember_core::hub::{cache_folder, is_commit_hash, RepoKind};

/// How deep a repo's files may sit in a snapshot (`a/b/c/file` is 3).
const SNAPSHOT_DEPTH: usize = 8;

pub struct RepoCache {
    pub kind: RepoKind,
    root: PathBuf,
}

impl RepoCache {
    pub fn new(cache: &Path, kind: RepoKind, repo: &str) -> Self {
        RepoCache { kind, root: cache.join(cache_folder(kind, repo)) }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// Where a blob's partial download is kept between tries.
    pub fn partial(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The commit `revision` names here: itself when it is a commit hash, else `refs/<revision>`.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_owned());
        }
        // huggingface_hub reads refs without stripping; they never hold a newline.
        let commit = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        is_commit_hash(&commit).then_some(commit)
    }

    /// The cached snapshot `revision` names and the files in it.
    pub fn snapshot_of(&self, revision: &str) -> anyhow::Result<(PathBuf, BTreeSet<String>)> {
        let commit = self.commit_of(revision).with_context(|| {
            format!("no revision \"{revision}\" in {} (nothing downloaded for it)", self.root.display())
        })?;
        let dir = self.snapshot(&commit);
        anyhow::ensure!(dir.is_dir(), "{}: snapshot folder missing", dir.display());
        let files = ember_core::io::files_under(&dir, SNAPSHOT_DEPTH)?;
        Ok((dir, files.into_iter().collect()))
    }

    /// Records that `revision` names `commit` (atomically; as huggingface_hub, with no newline).
    pub fn write_ref(&self, revision: &str, commit: &str) -> anyhow::Result<()> {
        let path = self.root.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
            return Ok(());
        }
        create_parent(&path)?;
        Ok(ember_core::io::write_atomic(&path, commit.as_bytes())?)
    }

    /// Links `snapshots/<commit>/<file>` to `blobs/<etag>` with a relative symlink (a copy where
    /// the file system has no symlinks, as huggingface_hub does).
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> anyhow::Result<()> {
        let at = self.snapshot(commit).join(file);
        create_parent(&at)?;
        let ups = "../".repeat(file.matches('/').count() + 2);
        let target = PathBuf::from(format!("{ups}blobs/{etag}"));
        let tmp = ember_core::io::temporary_path(&at);
        let _ = std::fs::remove_file(&tmp);
        symlink_or_copy(&target, &self.blob(etag), &tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        std::fs::rename(&tmp, &at).with_context(|| format!("{}: cannot create", at.display()))
    }
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create folder", parent.display()))
}

#[cfg(unix)]
fn symlink_or_copy(target: &Path, _blob: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn symlink_or_copy(_target: &Path, blob: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, at).map(|_| ())
}
