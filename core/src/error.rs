//! One error type for the whole core: every variant names the file (or field) at fault and
//! says what to do, because these messages are what a user sees instead of a panic trace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}

/// A one-line explanation of a failure reported by the device (burn/wgpu), with advice for the
/// known causes, instead of burn's multi-line execution trace.
pub fn device_failure(what: &str, report: &str) -> Error {
    if let Some(size) = report.split("can't allocate buffer of size: ").nth(1) {
        let bytes: f64 = size.split(|c: char| !c.is_ascii_digit()).next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        return Error::invalid(format!(
            "{what}: the GPU could not allocate a buffer of {:.0} MiB (out of memory, or larger than the adapter's \
             buffer limit shown by `ember devices`); lower --per-device-train-batch-size or --max-length, store the base \
             weights with --dtype f16, add --gradient-checkpointing, use a smaller model, or run with --device cpu",
            bytes / 1048576.0
        ));
    }
    let first: Vec<&str> = report.lines().map(str::trim).filter(|l| !l.is_empty()).take(3).collect();
    Error::invalid(format!("{what}: the device failed: {}", first.join(" / ")))
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
        for advice in ["--per-device-train-batch-size", "--max-length", "--dtype f16", "--gradient-checkpointing"] {
            assert!(message.contains(advice), "{message} lacks {advice}");
        }
    }
}
