use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ember_core::generate::{generate, GenerationConfig, Sampling};
use ember_core::template;
use ember_core::tokenizer::TextStream;

use super::load;
use crate::device::Placement;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// `Human: {prompt}` + blank line + `Assistant: `, as the reference recipe's inference code.
    HumanAssistant,
    /// The prompt as given.
    None,
}

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json, tokenizer.json, weights), or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format) or Hub id to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (no template is applied).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// How to wrap --prompt.
    #[arg(long, value_enum, default_value = "human-assistant")]
    template: Template,
    /// New tokens to generate at most.
    #[arg(long, conflicts_with = "max_length")]
    max_new_tokens: Option<usize>,
    /// Total length at most, prompt included (transformers' max_length).
    #[arg(long)]
    max_length: Option<usize>,
    /// Always take the most likely token (otherwise sample).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed"])]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Penalty (>1) for tokens already in the text.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    placement: Placement,
    /// Print one JSON object {"prompt_ids", "generated_ids", "text"} instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args.model, args.adapter.as_deref(), &args.placement, args.json)?;
    let tokenizer = &loaded.tokenizer;
    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => {
            let text = match args.template {
                Template::HumanAssistant => template::human_assistant(text),
                Template::None => text.clone(),
            };
            tokenizer.encode(&text)?
        }
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    let vocab = loaded.model.vocab_size();
    if let Some(bad) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        anyhow::bail!("--prompt-ids: token id {bad} is outside the model's vocabulary (size {vocab})");
    }
    let config = &loaded.dir.config;
    let generation = GenerationConfig {
        max_new_tokens: args.max_new_tokens.or(if args.max_length.is_none() { Some(128) } else { None }),
        max_length: args.max_length,
        sampling: (!args.greedy).then_some(Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        }),
        repetition_penalty: args.repetition_penalty,
        eos_token_id: tokenizer.eos_id(config),
        pad_token_id: tokenizer.pad_id(config),
        context_limit: config.context_limit().0,
    };
    if generation.stops_at_context(prompt_ids.len()) && !args.json {
        let (limit, from_config) = config.context_limit();
        let whose = if from_config {
            "its config.json's seq_length"
        } else {
            "BLOOM's training length; config.json names no limit"
        };
        eprintln!("note: generation stops at {limit} tokens in all, the model's context ({whose})");
    }

    let mut stream = TextStream::new();
    let mut stdout = std::io::stdout();
    let mut stream_error = None;
    let generated = generate(&loaded.model, std::slice::from_ref(&prompt_ids), &generation, &loaded.device, |step| {
        if args.json {
            return;
        }
        if let Some(id) = step[0] {
            match stream.push(tokenizer, id) {
                Ok(text) => {
                    let _ = write!(stdout, "{text}");
                    let _ = stdout.flush();
                }
                Err(e) => stream_error = Some(e),
            }
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e).context("decoding generated tokens");
    }
    let generated = &generated[0];
    if args.json {
        let text = tokenizer.decode(generated, true)?;
        println!("{}", serde_json::json!({ "prompt_ids": prompt_ids, "generated_ids": generated, "text": text }));
    } else {
        println!();
    }
    Ok(())
}
