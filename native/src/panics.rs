//! What a panic becomes. burn and wgpu report device failures (a buffer the GPU cannot
//! allocate, a lost device) by panicking: those are the user's to act on and become the same
//! one-line error as any other failure. Every other panic is a bug in ember: it is reported as
//! an internal error with its location and how to get a backtrace, never as a device fault.

use std::sync::Mutex;

/// The first panic of the process: where it happened, its message, and a backtrace when
/// `RUST_BACKTRACE` asks for one.
struct Recorded {
    location: String,
    message: String,
    backtrace: Option<String>,
    /// `ember_core::error::caught_panics()` when it happened: a panic that core caught and
    /// turned into an error is not the one that ends the program.
    caught_before: u64,
}

static FIRST: Mutex<Option<Recorded>> = Mutex::new(None);

/// Payload texts of the failures a device reports by panicking (cubecl's `IoError` and
/// `DevicePoison`, wgpu's device-lost errors): out of memory, or a device that stopped working.
const DEVICE_FAILURES: [&str; 8] = [
    "can't allocate buffer",
    "out of device memory",
    "No room for",
    "Can't allocate",
    "OutOfMemory",
    "Out of memory",
    "evice lost",
    "DeviceLost",
];

pub enum Failure {
    Device(ember_core::Error),
    Internal(String),
}

/// The panic hook: remembers the first panic (rayon and wgpu threads panic too, and the one
/// that reaches `main` may be a consequence) and prints nothing.
pub fn record(info: &std::panic::PanicHookInfo) {
    let location = info.location().map_or_else(|| "an unknown place".into(), |l| format!("{}:{}", l.file(), l.line()));
    let backtrace = std::env::var_os("RUST_BACKTRACE")
        .filter(|v| v != "0")
        .map(|_| std::backtrace::Backtrace::force_capture().to_string());
    let caught_before = ember_core::error::caught_panics();
    if let Ok(mut first) = FIRST.lock() {
        if first.as_ref().is_none_or(|r| r.caught_before < caught_before) {
            *first = Some(Recorded { location, message: payload_text(info.payload()), backtrace, caught_before });
        }
    }
}

/// Sorts a panic that reached `main` into a device failure or an internal error.
pub fn explain(payload: Box<dyn std::any::Any + Send>) -> Failure {
    let recorded =
        FIRST.lock().ok().and_then(|mut r| r.take()).filter(|r| r.caught_before == ember_core::error::caught_panics());
    let message = recorded.as_ref().map_or_else(|| payload_text(payload.as_ref()), |r| r.message.clone());
    if DEVICE_FAILURES.iter().any(|marker| message.contains(marker)) {
        return Failure::Device(ember_core::error::device_failure(&crate::device::activity(), &message));
    }
    let location = recorded.as_ref().map_or("an unknown place", |r| r.location.as_str());
    let first_line = message.lines().next().unwrap_or_default();
    let mut report = format!(
        "internal error (a bug in ember, not in your input) at {location}: {first_line}; \
         run again with RUST_BACKTRACE=1 for a backtrace and please report it"
    );
    if let Some(backtrace) = recorded.and_then(|r| r.backtrace) {
        report = format!("{report}\n{backtrace}");
    }
    Failure::Internal(report)
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_failures_and_bugs_are_told_apart() {
        let oom: Box<dyn std::any::Any + Send> =
            Box::new("can't allocate buffer of size: 2147483648\nbacktrace".to_string());
        assert!(matches!(explain(oom), Failure::Device(e) if e.to_string().contains("2048 MiB")));
        let bug: Box<dyn std::any::Any + Send> = Box::new("index out of bounds: the len is 3 but the index is 7");
        match explain(bug) {
            Failure::Internal(report) => {
                assert!(report.starts_with("internal error (") && report.contains("index out of bounds"), "{report}");
                assert!(report.contains("RUST_BACKTRACE=1") && !report.contains("device failed"), "{report}");
                assert_eq!(report.lines().count(), 1, "one line: {report}");
            }
            Failure::Device(e) => panic!("a bug reported as a device failure: {e}"),
        }
    }
}
