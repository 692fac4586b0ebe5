//! `ember`: BLOOM + LoRA fine-tuning from the command line.

mod commands;
mod device;
mod hub;
mod messages;
mod panics;
mod preflight;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Fine-tune and run BLOOM models with LoRA, on any GPU (wgpu) or the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a LoRA adapter (transformers' Trainer semantics). With no arguments: the bundled demo.
    Train(Box<commands::train::Args>),
    /// Generate text from a prompt (greedy or sampled), streaming it as it comes.
    Generate(commands::generate::Args),
    /// Show a model's architecture and parameter count, and what a LoRA config would adapt.
    Info(commands::info::Args),
    /// Fold a LoRA adapter into its base model and write a complete model directory.
    Merge(commands::merge::Args),
    /// Show how a dataset is templated, tokenized and masked, with statistics.
    Data(commands::data::Args),
    /// Mean token cross-entropy and perplexity of a model (and adapter) on a dataset.
    Eval(commands::eval::Args),
    /// List the GPU adapters wgpu sees and which one `--device auto` picks.
    Devices {
        /// Only this graphics API's adapters: vulkan, metal, dx12 or gl.
        #[arg(long, value_enum)]
        backend: Option<device::Api>,
    },
    /// Measure training and generation speed and memory on random weights of a named shape (no checkpoint needed).
    Bench(commands::bench::Args),
    /// Serve the browser page (web/dist, built by web/build.sh) on 127.0.0.1.
    Web(commands::web::Args),
}

/// Exit codes: 1 for errors in what the user gave (files, flags, data), 3 for device failures
/// (out of memory, a lost GPU), 101 for internal errors (a bug in ember: Rust's own panic code).
/// clap exits with 2 for malformed command lines.
const EXIT_ERROR: i32 = 1;
const EXIT_DEVICE: i32 = 3;
const EXIT_INTERNAL: i32 = 101;

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    std::panic::set_hook(Box::new(panics::record));
    let result = std::panic::catch_unwind(|| run(cli));
    let code = match result {
        Ok(Ok(())) => return,
        Ok(Err(error)) => {
            eprintln!("error: {}", messages::with_flags(&format!("{error:#}")));
            let device = error
                .chain()
                .any(|e| matches!(e.downcast_ref::<ember_core::Error>(), Some(ember_core::Error::Device(_))));
            if device {
                EXIT_DEVICE
            } else {
                EXIT_ERROR
            }
        }
        Err(payload) => match panics::explain(payload) {
            panics::Failure::Device(error) => {
                eprintln!("error: {}", messages::with_flags(&error.to_string()));
                EXIT_DEVICE
            }
            panics::Failure::Internal(report) => {
                eprintln!("{report}");
                EXIT_INTERNAL
            }
        },
    };
    exit_now(code);
}

/// Ends the process with `code` after a failure, without the C library's exit handlers: a GPU
/// driver's (likely Mesa's thread-pool teardown) may race its own threads still at work after a
/// device error, turning a clear error into a signal (seen once, not confirmed). Every file is already written
/// atomically, so nothing is lost by skipping them.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    // SAFETY: `_exit` only ends the process; the standard streams were flushed above.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Devices { backend } => {
            device::print_devices(backend);
            Ok(())
        }
        Command::Bench(args) => commands::bench::run(args),
        Command::Web(args) => commands::web::run(args),
    }
}

/// burn's CPU backend allocates a fresh buffer for every intermediate tensor. glibc hands
/// buffers above its mmap threshold back to the OS when they are freed (and trims the heap),
/// so the next step's buffers are page-faulted and zeroed again: about 12% of a training
/// step's time. Raising the threshold to its maximum (32 MiB) and never trimming keeps that
/// memory for reuse; the peak is unchanged. (`bench train` on bloom-560m: 11.8 → 11.1 s.)
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
