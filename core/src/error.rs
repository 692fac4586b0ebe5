//! One error type for the whole core: every variant names the file (or field) at fault and
//! says what to do, because these messages are what a user sees instead of a panic trace.
//!
//! Messages name settings by their snake_case names in backticks (`max_length`), the names the
//! config files use too; each front end shows them as its own controls (the CLI as flags,
//! `--max-length`: `native/src/messages.rs`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        /// "read" or "write".
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Invalid(String),

    /// The device failed (out of memory, a lost GPU): nothing wrong with the input, but the
    /// work cannot go on here (see [`device_failure`]).
    #[error("{0}")]
    Device(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }

    /// A file that could not be read.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), action: "read", source }
    }

    /// A file or directory that could not be written (created, renamed, removed).
    pub fn io_write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), action: "write", source }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}

/// A one-line explanation of a failure reported by the device (burn/wgpu), with advice for the
/// known causes, instead of burn's multi-line execution trace.
pub fn device_failure(what: &str, report: &str) -> Error {
    if let Some(size) = report.split("can't allocate buffer of size: ").nth(1) {
        let bytes: f64 =
            size.split(|c: char| !c.is_ascii_digit()).next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        return Error::Device(format!(
            "{what}: the GPU could not allocate a buffer of {:.0} MiB (out of memory, or larger than the adapter's \
             buffer limit shown by `ember devices`); lower `per_device_train_batch_size` or `max_length`, store the \
             base weights with `dtype` f16, add `gradient_checkpointing`, use a smaller model, or run with `device` cpu",
            bytes / 1048576.0
        ));
    }
    let first: Vec<&str> = report.lines().map(str::trim).filter(|l| !l.is_empty()).take(3).collect();
    Error::Device(format!("{what}: the device failed: {}", first.join(" / ")))
}

/// Panics caught by [`catch_panic`] so far: a panic hook compares it with the count when a panic
/// was recorded, to tell a caught panic from one that ends the program.
static CAUGHT_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn caught_panics() -> u64 {
    CAUGHT_PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Runs a third-party parser that may panic on malformed input instead of returning an error
/// (tokenizers 0.22's decoder deserializer does: `expect("Helper")`), turning the panic into a
/// message. On wasm32, where panics abort, it just runs `f`.
pub fn catch_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::result::Result<T, String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::panic::catch_unwind(f).map_err(|payload| {
            CAUGHT_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into())
        })
    }
    #[cfg(target_arch = "wasm32")]
    Ok(f())
}

/// Reads a whole file, naming it in the error.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_memory_names_the_size_the_activity_and_what_to_lower() {
        let report = "panicked: can't allocate buffer of size: 2147483648 on device";
        let message = super::device_failure("training (batch 8 x up to 256 tokens)", report).to_string();
        assert!(message.starts_with("training (batch 8 x up to 256 tokens): "), "{message}");
        assert!(message.contains("2048 MiB"), "{message}");
        for advice in ["`per_device_train_batch_size`", "`max_length`", "`dtype` f16", "`gradient_checkpointing`"] {
            assert!(message.contains(advice), "{message} lacks {advice}");
        }
    }
}
