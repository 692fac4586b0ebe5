use std::path::PathBuf;

use ember_core::eval::evaluate;

use super::data_args::DataArgs;
use super::load;
use crate::device::Placement;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory, or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format) or Hub id to evaluate with.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    placement: Placement,
    /// End with one JSON line: {"eval_loss", "perplexity", "num_tokens", "num_examples"}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args.model, args.adapter.as_deref(), &args.placement, false)?;
    let dataset = args.data.load(&loaded.tokenizer)?;
    let pad = loaded.dir.config.pad_token_id.unwrap_or(0);
    let result = evaluate(
        &loaded.model,
        &dataset,
        args.batch_size,
        pad,
        loaded.tokenizer.padding_side,
        &loaded.device,
        |done, total| {
            eprint!("\revaluating {done}/{total}");
        },
    )?;
    eprintln!();
    println!(
        "eval_loss  {:.6}\nperplexity {:.4}\nlabel tokens {}\nexamples   {}",
        result.eval_loss, result.perplexity, result.num_tokens, result.num_examples
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "eval_loss": result.eval_loss, "perplexity": result.perplexity, "num_tokens": result.num_tokens, "num_examples": result.num_examples })
        );
    }
    Ok(())
}
