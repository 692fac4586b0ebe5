//! Checks made before long work starts, so that a run never trains for hours and then fails to
//! write its result: the output directory is writable and has room for a checkpoint, the cache
//! directory is writable, and what killed runs left behind there is cleared away.

use std::path::Path;

use anyhow::Context;

/// Bytes a checkpoint of `trainable` f32 parameters takes: the adapter and AdamW's two moments.
pub fn checkpoint_bytes(trainable: u64) -> u64 {
    trainable.saturating_mul(3 * 4).saturating_add(1 << 20)
}

/// `dir` exists (or is created), can be written, and has room for `needed` bytes; `flag` is
/// what the user changes to pick another. Returns the temporaries of killed runs it removed.
pub fn writable_dir(dir: &Path, flag: &str, needed: u64) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let elsewhere = || format!("choose another directory with {flag}");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create it ({})", dir.display(), elsewhere()))?;
    let probe = ember_core::io::temporary_path(&dir.join("write-test"));
    std::fs::write(&probe, b"ember")
        .with_context(|| format!("{}: cannot write there ({})", dir.display(), elsewhere()))?;
    let _ = std::fs::remove_file(&probe);
    let removed = ember_core::io::remove_stale_temporaries(dir);
    if let Some(free) = free_bytes(dir) {
        anyhow::ensure!(
            free >= needed,
            "{}: {:.1} MiB free, but this run needs about {:.1} MiB for its checkpoints and adapter: free some space or {}",
            dir.display(),
            free as f64 / 1048576.0,
            needed as f64 / 1048576.0,
            elsewhere()
        );
    }
    Ok(removed)
}

/// Free bytes for an unprivileged user on the file system holding `dir` (`None` where unknown).
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn a_directory_without_room_for_the_checkpoints_is_refused_by_flag() {
        let dir = std::env::temp_dir().join(format!("ember-preflight-{}", std::process::id()));
        assert!(writable_dir(&dir, "--output-dir", checkpoint_bytes(1000)).is_ok(), "a small run fits");
        let message = writable_dir(&dir, "--output-dir", u64::MAX).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(message.contains("MiB free") && message.contains("--output-dir"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }
}
