//! `ember`: BLOOM + LoRA fine-tuning from the command line.

mod commands;
mod device;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Fine-tune and run BLOOM models with LoRA, on any GPU (wgpu) or the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (greedy or sampled), streaming it as it comes.
    Generate(commands::generate::Args),
    /// Show a model's architecture and parameter count.
    Info(commands::info::Args),
    /// List the GPU adapters wgpu sees and which one `--device auto` picks.
    Devices,
    /// Measure prefill/decode speed on random weights of a named shape (no checkpoint needed).
    Bench(commands::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Devices => {
            device::print_devices();
            Ok(())
        }
        Command::Bench(args) => commands::bench::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
