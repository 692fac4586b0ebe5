//! Writing files so that a crash, Ctrl-C or kill -9 never leaves a half-written one in place:
//! everything is written under a temporary name beside its destination (`.NAME.tmp-PID`),
//! synced, then renamed over it. What a killed run leaves behind under such names is removed
//! by the next run in the same directory ([`remove_stale_temporaries`]).

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};

    use crate::error::{Error, Result};

    /// The temporary name `path` is written under: hidden, beside it, tagged with this process.
    pub fn temporary_path(path: &Path) -> PathBuf {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        dir.join(format!(".{name}.tmp-{}", std::process::id()))
    }

    /// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).map_err(|e| Error::io_write(tmp, e)))
    }

    /// Lets `write` create the file at a temporary path, syncs it, then renames it over `path`;
    /// on failure the temporary file is removed and `path` is untouched.
    pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let tmp = temporary_path(path);
        let result = write(&tmp)
            .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io_write(&tmp, e)))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io_write(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the temporary files and directories (`.NAME.tmp-PID`) that runs which were killed
    /// left in `dir`; those of a process still running are kept. Returns what was removed.
    pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = temporary_owner(&name) else { continue };
            if pid == std::process::id() || is_running(pid) {
                continue;
            }
            let path = entry.path();
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if gone.is_ok() {
                removed.push(path);
            }
        }
        removed
    }

    /// More files than a dataset repo's listing needs; a directory beyond it is not read further.
    const MAX_LISTED_FILES: usize = 100_000;

    /// The files under `dir` as `/`-separated relative paths, hidden entries (`.git`, `.cache`) left out.
    pub fn files_under(dir: &Path, depth: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut pending = vec![(dir.to_path_buf(), String::new(), 0)];
        while let Some((at, prefix, level)) = pending.pop() {
            for entry in std::fs::read_dir(&at).map_err(|e| Error::io(&at, e))? {
                let entry = entry.map_err(|e| Error::io(&at, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() && level < depth {
                    pending.push((path, format!("{prefix}{name}/"), level + 1));
                } else if path.is_file() && out.len() < MAX_LISTED_FILES {
                    out.push(format!("{prefix}{name}"));
                }
            }
        }
        Ok(out)
    }

    /// The process id in a temporary name `.NAME.tmp-PID`, or `None` for any other name.
    pub fn temporary_owner(name: &str) -> Option<u32> {
        let (stem, pid) = name.rsplit_once(".tmp-")?;
        if !stem.starts_with('.') || stem.len() < 2 || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        pid.parse().ok()
    }

    /// Whether process `pid` exists (Linux: `/proc/PID`; elsewhere every other process counts
    /// as gone).
    fn is_running(pid: u32) -> bool {
        let proc = Path::new("/proc");
        proc.is_dir() && proc.join(pid.to_string()).exists()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_ember_temporary_names_are_recognised() {
            assert_eq!(temporary_owner(".checkpoint-20.tmp-4242"), Some(4242));
            assert_eq!(temporary_owner(".adapter_model.safetensors.tmp-7"), Some(7));
            for other in ["checkpoint-20", ".tmp-12", "notes.tmp-12", ".x.tmp-", ".x.tmp-12a", "adapter.tmp-3"] {
                assert_eq!(temporary_owner(other), None, "{other}");
            }
        }
    }
}
