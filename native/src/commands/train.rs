//! `ember train`: LoRA fine-tuning with transformers' Trainer semantics, from flags and/or a
//! TOML/JSON config file (flags win), with a progress bar, checkpoints, resume, Ctrl-C, a loss
//! curve and a summary. Without arguments it runs the bundled demo.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ember_core::checkpoint::ModelDir;
use ember_core::model::Kernels;
use ember_core::data::dataset::{check_not_empty, load_or_build};
use ember_core::data::{Columns, TokenizedDataset};
use ember_core::lora::adapter_file::{load_adapter, read_adapter_config};
use ember_core::lora::inject::{lora_report, ModelShape};
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::template::Template;
use ember_core::tokenizer::Tokenizer;
use ember_core::train::checkpoint::{resolve_checkpoint, resume, save_final};
use ember_core::train::plot::loss_svg;
use ember_core::train::{Event, Trainer, TrainingArgs};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bench::peak_rss_mb;
use super::data_args::cache_dir;
use super::lora_args::LoraArgs;
use crate::device::{self, Api, DeviceArgs, DeviceChoice, Placement};
use ember_core::model::WeightDType;

/// Every flag is optional: unset flags fall back to the config file, then to transformers'
/// defaults. Names are transformers' / peft's.
#[derive(clap::Args, Serialize, Default, Debug)]
pub struct Args {
    /// A TOML or JSON file with any of the settings below (under the same names, with `_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Base model directory (Hugging Face format).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] model: Option<PathBuf>,
    /// Training data (.json, .jsonl, .parquet, .csv, or a datasets save_to_disk directory).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] data: Option<PathBuf>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] split: Option<String>,
    /// Column names if not instruction/input/output, e.g. instruction=prompt,output=answer.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] columns: Option<String>,
    /// human-assistant (the reference recipe), alpaca, or a string with {instruction} and {input}.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] template: Option<String>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] max_length: Option<usize>,
    /// Evaluation data, evaluated every --eval-steps and at the end.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] eval_data: Option<PathBuf>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] eval_steps: Option<usize>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] output_dir: Option<String>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] per_device_train_batch_size: Option<usize>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] gradient_accumulation_steps: Option<usize>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] learning_rate: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] num_train_epochs: Option<f64>,
    /// Total optimizer steps (overrides --num-train-epochs).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] max_steps: Option<i64>,
    /// linear, cosine, constant or constant_with_warmup.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] lr_scheduler_type: Option<String>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] warmup_steps: Option<usize>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] warmup_ratio: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] weight_decay: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] adam_beta1: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] adam_beta2: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] adam_epsilon: Option<f64>,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] max_grad_norm: Option<f64>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] logging_steps: Option<usize>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] save_steps: Option<usize>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] save_total_limit: Option<usize>,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] seed: Option<u64>,
    /// Keep the dataset order (transformers shuffles every epoch).
    #[arg(long)] #[serde(skip_serializing_if = "std::ops::Not::not")] no_shuffle: bool,
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] lora_r: Option<usize>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] lora_alpha: Option<f64>,
    #[arg(long, value_parser = finite)] #[serde(skip_serializing_if = "Option::is_none")] lora_dropout: Option<f64>,
    /// Modules to adapt by name (default: query_key_value, as peft does for BLOOM).
    #[arg(long, value_delimiter = ',')] #[serde(skip_serializing_if = "Option::is_none")] target_modules: Option<Vec<String>>,
    /// Modules to adapt by a regex matching the whole module name.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] target_modules_regex: Option<String>,
    #[arg(long, value_delimiter = ',')] #[serde(skip_serializing_if = "Option::is_none")] modules_to_save: Option<Vec<String>>,
    #[arg(long)] #[serde(skip_serializing_if = "std::ops::Not::not")] use_rslora: bool,
    /// Continue from an existing PEFT adapter (its config replaces the LoRA flags).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] init_adapter: Option<PathBuf>,
    /// A checkpoint directory, or `latest` for the newest in --output-dir.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] resume_from_checkpoint: Option<String>,
    /// auto, gpu, gpu:N (from `ember devices`) or cpu.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] device: Option<DeviceChoice>,
    /// Graphics API for the GPU: vulkan, metal, dx12 or gl.
    #[arg(long, value_enum)] #[serde(skip_serializing_if = "Option::is_none")] backend: Option<Api>,
    /// Stored precision of the frozen base weights: f32, f16 or bf16 (LoRA weights, gradients
    /// and optimizer state stay f32).
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] dtype: Option<WeightDType>,
    /// Recompute memory-bound activations in the backward pass instead of keeping them.
    #[arg(long)] #[serde(skip_serializing_if = "std::ops::Not::not")] gradient_checkpointing: bool,
    /// Fused kernels (shaders/): all, none, or a list of gelu, cross-entropy, attention, layer-norm.
    #[arg(long)] #[serde(skip_serializing_if = "Option::is_none")] kernels: Option<String>,
    /// Load model and adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)] #[serde(skip_serializing_if = "std::ops::Not::not")] allow_nonfinite: bool,
}

/// A flag's number, refused unless finite (JSON, which the settings pass through, has no
/// infinity or NaN, and no setting means one).
fn finite(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() { Ok(value) } else { Err("must be a finite number".into()) }
}

/// The merged settings.
#[derive(Deserialize, Serialize, Debug)]
#[serde(default)]
pub struct Settings {
    pub model: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub split: String,
    pub columns: String,
    pub template: String,
    pub max_length: usize,
    pub eval_data: Option<PathBuf>,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Option<Value>,
    pub target_modules_regex: Option<String>,
    pub modules_to_save: Option<Vec<String>>,
    pub use_rslora: bool,
    pub no_shuffle: bool,
    pub init_adapter: Option<PathBuf>,
    pub resume_from_checkpoint: Option<String>,
    pub device: DeviceChoice,
    pub backend: Option<Api>,
    pub dtype: WeightDType,
    pub gradient_checkpointing: bool,
    pub kernels: String,
    pub allow_nonfinite: bool,
    #[serde(flatten)]
    pub training: TrainingArgs,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            data: None,
            split: "train".into(),
            columns: String::new(),
            template: "human-assistant".into(),
            max_length: 256,
            eval_data: None,
            lora_r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            target_modules_regex: None,
            modules_to_save: None,
            use_rslora: false,
            no_shuffle: false,
            init_adapter: None,
            resume_from_checkpoint: None,
            device: DeviceChoice::Auto,
            backend: None,
            dtype: WeightDType::F32,
            gradient_checkpointing: false,
            kernels: "all".into(),
            allow_nonfinite: false,
            training: TrainingArgs::default(),
        }
    }
}

impl Settings {
    /// Defaults ← `file` ← `flags`; unknown keys in the file are an error naming them.
    pub fn merge(file: Option<&Path>, flags: &Args, defaults: Value) -> anyhow::Result<Self> {
        let mut merged = defaults;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let value: Value = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?
            } else {
                let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
                serde_json::to_value(table)?
            };
            let known = serde_json::to_value(Settings::default())?;
            for (key, v) in value.as_object().context("the config file must hold a table of settings")? {
                anyhow::ensure!(known.get(key).is_some(), "{}: unknown setting \"{key}\"", path.display());
                // JSON has no infinity or NaN: TOML's `inf` and `nan` arrive as null.
                anyhow::ensure!(!v.is_null() || known[key].is_null(), "{}: {key} must be a finite number", path.display());
                merged[key] = v.clone();
            }
        }
        for (key, v) in serde_json::to_value(flags)?.as_object().expect("flags serialise to an object") {
            merged[key] = v.clone();
        }
        let mut settings: Settings = serde_json::from_value(merged).context("invalid training settings")?;
        settings.training.shuffle = !settings.no_shuffle;
        Ok(settings)
    }

    fn lora_config(&self, model: &Path) -> anyhow::Result<LoraConfig> {
        let (names, regex) = match (&self.target_modules_regex, &self.target_modules) {
            (Some(re), _) => (None, Some(re.clone())),
            (None, Some(Value::String(re))) => (None, Some(re.clone())),
            (None, Some(list)) => (Some(serde_json::from_value(list.clone()).context("target_modules must be a list of names or a regex string")?), None),
            // peft's default LoRA target for BLOOM
            (None, None) => (Some(vec!["query_key_value".to_owned()]), None),
        };
        let flags = LoraArgs {
            target_modules: names,
            target_modules_regex: regex,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            modules_to_save: self.modules_to_save.clone(),
        };
        Ok(flags.config(Some(model.display().to_string())).expect("a target is always set"))
    }

    fn dataset(&self, path: &Path, tokenizer: &Tokenizer) -> anyhow::Result<TokenizedDataset> {
        let template = Template::parse(&self.template).map_err(anyhow::Error::msg)?;
        let columns = Columns::parse(&self.columns)?;
        let dataset = load_or_build(path, &self.split, &columns, tokenizer, &template, self.max_length, &cache_dir())?;
        if let Some(notice) = &dataset.notice {
            eprintln!("note: {notice}");
        }
        check_not_empty(&dataset, &path.display().to_string())?;
        Ok(dataset)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let demo = args.model.is_none() && args.data.is_none() && args.config.is_none();
    let (settings, demo_question) = if demo {
        super::demo::settings(&args)?
    } else {
        (Settings::merge(args.config.as_deref(), &args, serde_json::to_value(Settings::default())?)?, None)
    };
    train(settings, demo_question.as_deref())
}

/// Fails before any work when the output or the cache directory cannot take what the run will
/// write; clears what killed runs left there.
fn preflight(settings: &Settings, trainable: u64) -> anyhow::Result<()> {
    let output = Path::new(&settings.training.output_dir);
    // A checkpoint being written beside the last one kept, and the final adapter.
    let needed = 2 * crate::preflight::checkpoint_bytes(trainable);
    for removed in crate::preflight::writable_dir(output, "--output-dir", needed)? {
        eprintln!("note: removed {}, left by an interrupted run", removed.display());
    }
    crate::preflight::writable_dir(&cache_dir(), "the EMBER_CACHE_DIR variable", 0)?;
    Ok(())
}

pub fn train(settings: Settings, demo_question: Option<&str>) -> anyhow::Result<()> {
    let model_path = settings.model.clone().context("--model is required (or run `ember train` with no arguments for the demo)")?;
    let data_path = settings.data.clone().context("--data is required")?;
    settings.training.validate()?;
    let dir = ModelDir::open(&model_path)?;
    let tokenizer = Tokenizer::open(&model_path, &dir.config)?;
    let lora = match &settings.init_adapter {
        Some(adapter) => read_adapter_config(adapter)?,
        None => settings.lora_config(&model_path)?,
    };
    let planned = lora_report(&lora, ModelShape::of_config(&dir.config)).context("the LoRA settings")?;
    preflight(&settings, planned.trainable_params)?;
    let device_args = DeviceArgs { device: settings.device, backend: settings.backend };
    let kernels: Kernels = settings.kernels.parse().map_err(|e| anyhow::anyhow!("kernels: {e}"))?;
    let placement = Placement { device: device_args, dtype: settings.dtype, kernels, allow_nonfinite: settings.allow_nonfinite };
    let selected = placement.select()?;
    eprintln!("device: {}", selected.description);

    let train_data = settings.dataset(&data_path, &tokenizer)?;
    let eval_data = settings.eval_data.as_ref().map(|p| settings.dataset(p, &tokenizer)).transpose()?;
    let stats = train_data.stats();
    eprintln!(
        "data: {} examples ({} without a label token after truncation at {}, skipped), {} tokens",
        stats.examples, stats.without_labels, settings.max_length, stats.tokens
    );

    device::doing(format!(
        "training on {} (batch {} x up to {} tokens, base weights {})",
        selected.description, settings.training.per_device_train_batch_size, settings.max_length, settings.dtype
    ));
    let device = device::training_device(&selected.device, settings.gradient_checkpointing);
    let mut model = dir.load(&device, &placement.load_options())?;
    model.set_kernels(kernels);
    // LoRA's random initialisation is drawn from the device generator: seed it, so runs repeat.
    device.seed(settings.training.seed);
    let report = match &settings.init_adapter {
        Some(adapter) => load_adapter(&mut model, adapter, &device, settings.allow_nonfinite)?.1,
        None => apply_lora(&mut model, &lora, &device)?,
    };
    println!("{}", report.trainable_line());

    if let Some(question) = demo_question {
        super::demo::show_answer("before training", &model, &tokenizer, question, &selected.device)?;
    }

    let pad = tokenizer.pad_id(&dir.config);
    let mut trainer = Trainer::new(model, lora, settings.training.clone(), &train_data, pad, tokenizer.padding_side, &device)?;
    if let Some(spec) = &settings.resume_from_checkpoint {
        let checkpoint = resolve_checkpoint(spec, Path::new(&settings.training.output_dir))?;
        resume(&mut trainer, &checkpoint)?;
        eprintln!("resumed from {} at step {}", checkpoint.display(), trainer.global_step);
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let bar = ProgressBar::new(trainer.total_steps as u64).with_position(trainer.global_step as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    // indicatif draws nothing when stderr is not a terminal; log lines must still appear.
    let say = |line: String| if bar.is_hidden() { println!("{line}") } else { bar.println(line) };
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut last_epoch = 0.0;
    let mut peak_pool_mb: Option<f64> = None;
    let finished = trainer.run(
        &train_data,
        eval_data.as_ref(),
        &mut |event| match event {
            Event::Step(r) => {
                tokens += r.tokens;
                last_epoch = r.epoch;
                if let Some(mb) = device::pool_mb(&selected.device) {
                    peak_pool_mb = Some(peak_pool_mb.map_or(mb, |p| p.max(mb)));
                }
                let rate = tokens as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!("epoch {:.2} loss {:.4} lr {:.2e} {:.0} tok/s", r.epoch, r.loss, r.learning_rate, rate));
                bar.set_position(r.step as u64);
            }
            Event::Log(entry) => say(format!("{entry}")),
            Event::Eval(e) => say(format!("eval: loss {:.4}, perplexity {:.2} ({} tokens)", e.eval_loss, e.perplexity, e.num_tokens)),
            Event::Checkpoint(path) => say(format!("checkpoint: {}", path.display())),
        },
        &|| stop.load(Ordering::SeqCst),
    )?;
    bar.finish_and_clear();
    if !finished {
        println!(
            "interrupted at step {}: checkpoint written; continue with --resume-from-checkpoint latest --output-dir {}",
            trainer.global_step, settings.training.output_dir
        );
        return Ok(());
    }

    let out = save_final(&trainer, last_epoch)?;
    let eval_points: Vec<(usize, f64)> = trainer
        .log_history
        .iter()
        .filter_map(|e| Some((e.get("step")?.as_u64()? as usize, e.get("eval_loss")?.as_f64()?)))
        .collect();
    ember_core::io::write_atomic(&out.join("loss.svg"), loss_svg(&trainer.step_losses, &eval_points).as_bytes())?;
    let seconds = start.elapsed().as_secs_f64();
    let first = trainer.step_losses.first().map_or(f64::NAN, |s| s.1);
    let last = trainer.step_losses.last().map_or(f64::NAN, |s| s.1);
    println!("done: {} steps in {seconds:.1} s ({:.0} tokens/s); loss {first:.4} → {last:.4}", trainer.global_step, tokens as f64 / seconds);
    match peak_pool_mb {
        Some(gpu) => println!("peak memory: {gpu:.0} MiB on the device (allocator reserve), {:.0} MiB process RSS", peak_rss_mb()),
        None => println!("peak memory: {:.0} MiB (process RSS)", peak_rss_mb()),
    }
    println!("{}", report.trainable_line());
    println!("adapter, trainer_state.json and loss.svg written to {}", out.display());

    if let Some(question) = demo_question {
        let model = trainer.model.clone().valid_model();
        super::demo::show_answer("after training", &model, &tokenizer, question, &selected.device)?;
    }
    Ok(())
}
