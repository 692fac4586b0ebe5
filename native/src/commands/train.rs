//! `ember train`: LoRA fine-tuning with transformers' Trainer semantics, from flags and/or a
//! TOML/JSON config file (`train_args.rs`), with a progress bar, checkpoints, resume, Ctrl-C, a
//! loss curve and a summary. Without arguments it runs the bundled demo. The loop is core's
//! (`Trainer::run`); this file is its terminal and file-system side ([`Terminal`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ember_core::checkpoint::ModelDir;
use ember_core::data::dataset::{check_not_empty, load_or_build};
use ember_core::data::TokenizedDataset;
use ember_core::lora::adapter_file::{load_adapter, read_adapter_config};
use ember_core::lora::apply_lora;
use ember_core::lora::inject::lora_report;
use ember_core::model::ModelShape;
use ember_core::tokenizer::Tokenizer;
use ember_core::train::checkpoint::{resolve_checkpoint, resume, save_checkpoint, save_final};
use ember_core::train::plot::loss_svg;
use ember_core::train::{Event, Flow, Sink, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use super::bench::peak_rss_mb;
use super::data_args::cache_dir;
pub use super::train_args::{Args, Settings};
use crate::device::{self, weights_description, DeviceArgs, Placement};
use crate::hub::{self, Want};

pub fn run(args: Args) -> anyhow::Result<()> {
    let (settings, demo_question) = if args.is_demo() {
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

fn dataset(settings: &Settings, path: &Path, tokenizer: &Tokenizer) -> anyhow::Result<TokenizedDataset> {
    let (template, columns) = (settings.template()?, settings.columns()?);
    let dataset =
        load_or_build(path, &settings.split, &columns, tokenizer, &template, settings.max_length, &cache_dir())?;
    if let Some(notice) = &dataset.notice {
        eprintln!("note: {notice}");
    }
    check_not_empty(&dataset, &path.display().to_string())?;
    Ok(dataset)
}

pub fn train(mut settings: Settings, demo_question: Option<&str>) -> anyhow::Result<()> {
    let model_path =
        settings.model.clone().context("--model is required (or run `ember train` with no arguments for the demo)")?;
    // peft records the base as it was named (a Hub id stays an id, not a cache path).
    let base_name = model_path.display().to_string();
    let model_path = hub::local(&model_path, Want::Model)?;
    let data_path = settings.data.clone().context("--data is required")?;
    let split = settings.split.clone();
    let data_path = hub::local(&data_path, Want::Dataset { split: &split })?;
    settings.eval_data = hub::local_opt(settings.eval_data.as_deref(), Want::Dataset { split: &split })?;
    settings.init_adapter = hub::local_opt(settings.init_adapter.as_deref(), Want::Adapter)?;
    settings.training.validate()?;
    let dir = ModelDir::open(&model_path)?;
    let tokenizer = Tokenizer::open(&model_path, &dir.config)?;
    let lora = match &settings.init_adapter {
        Some(adapter) => read_adapter_config(adapter)?,
        None => settings.lora.settings().build(Some(base_name)).context("the LoRA flags")?,
    };
    let planned = lora_report(&lora, ModelShape::of_config(&dir.config)).context("the LoRA settings")?;
    preflight(&settings, planned.trainable_params)?;
    let device_args = DeviceArgs { device: settings.device, backend: settings.backend };
    let placement = Placement {
        device: device_args,
        dtype: settings.dtype,
        kernels: settings.kernels,
        allow_nonfinite: settings.allow_nonfinite,
        quant: settings.quant.clone(),
    };
    let selected = placement.select()?;
    eprintln!("device: {}", selected.description);

    let train_data = dataset(&settings, &data_path, &tokenizer)?;
    let eval_data = settings.eval_data.as_ref().map(|p| dataset(&settings, p, &tokenizer)).transpose()?;
    let stats = train_data.stats();
    eprintln!(
        "data: {} examples ({} without a label token after truncation at {}, skipped), {} tokens",
        stats.examples, stats.without_labels, settings.max_length, stats.tokens
    );

    let options = placement.load_options()?;
    device::doing(format!(
        "training on {} (batch {} x up to {} tokens, base weights {})",
        selected.description,
        settings.training.per_device_train_batch_size,
        settings.max_length,
        weights_description(settings.dtype, options.quantization(&dir.config).as_ref())
    ));
    let device = device::training_device(&selected.device);
    let mut model = dir.load(&device, &options)?;
    if let Some(q) = options.quantization(&dir.config) {
        eprintln!("base weights: {}", weights_description(settings.dtype, Some(&q)));
    }
    model.kernels = settings.kernels;
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
    let mut trainer =
        Trainer::new(model, lora, settings.training.clone(), &train_data, pad, tokenizer.padding_side, &device)?;
    if let Some(spec) = &settings.resume_from_checkpoint {
        let checkpoint = resolve_checkpoint(spec, Path::new(&settings.training.output_dir))?;
        resume(&mut trainer, &checkpoint)?;
        eprintln!("resumed from {} at step {}", checkpoint.display(), trainer.global_step);
    }

    let mut terminal = Terminal::new(&trainer, &selected.device);
    let finished = trainer.run(&train_data, eval_data.as_ref(), &mut terminal)?;
    terminal.bar.finish_and_clear();
    if !finished {
        println!(
            "interrupted at step {}: checkpoint written; continue with --resume-from-checkpoint latest --output-dir {}",
            trainer.global_step, settings.training.output_dir
        );
        return Ok(());
    }

    let out = save_final(&trainer, terminal.last_epoch)?;
    let eval_points: Vec<(usize, f64)> = trainer
        .log_history
        .iter()
        .filter_map(|e| Some((e.get("step")?.as_u64()? as usize, e.get("eval_loss")?.as_f64()?)))
        .collect();
    ember_core::io::write_atomic(&out.join("loss.svg"), loss_svg(&trainer.step_losses, &eval_points).as_bytes())?;
    let seconds = terminal.start.elapsed().as_secs_f64();
    let first = trainer.step_losses.first().map_or(f64::NAN, |s| s.1);
    let last = trainer.step_losses.last().map_or(f64::NAN, |s| s.1);
    println!(
        "done: {} steps in {seconds:.1} s ({:.0} tokens/s); loss {first:.4} → {last:.4}",
        trainer.global_step,
        terminal.tokens as f64 / seconds
    );
    match terminal.peak_pool_mb {
        Some(gpu) => println!(
            "peak memory: {gpu:.0} MiB on the device (allocator reserve), {:.0} MiB process RSS",
            peak_rss_mb()
        ),
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

/// The training loop's terminal side: a progress bar with rate and ETA, log lines, checkpoints
/// written to the output directory, and Ctrl-C turned into an early stop.
struct Terminal {
    bar: ProgressBar,
    start: Instant,
    stop: Arc<AtomicBool>,
    device: burn::tensor::Device,
    tokens: usize,
    last_epoch: f64,
    peak_pool_mb: Option<f64>,
}

impl Terminal {
    fn new(trainer: &Trainer, device: &burn::tensor::Device) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
        }
        let bar = ProgressBar::new(trainer.total_steps as u64).with_position(trainer.global_step as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        Terminal {
            bar,
            start: Instant::now(),
            stop,
            device: device.clone(),
            tokens: 0,
            last_epoch: 0.0,
            peak_pool_mb: None,
        }
    }

    /// indicatif draws nothing when stderr is not a terminal; log lines must still appear.
    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            println!("{line}")
        } else {
            self.bar.println(line)
        }
    }
}

impl Sink for Terminal {
    async fn event(&mut self, event: Event<'_>) -> ember_core::Result<Flow> {
        match event {
            Event::Step(r) => {
                self.tokens += r.tokens;
                self.last_epoch = r.epoch;
                if let Some(mb) = device::pool_mb(&self.device) {
                    self.peak_pool_mb = Some(self.peak_pool_mb.map_or(mb, |p| p.max(mb)));
                }
                let rate = self.tokens as f64 / self.start.elapsed().as_secs_f64();
                self.bar.set_message(format!(
                    "epoch {:.2} loss {:.4} lr {:.2e} {:.0} tok/s",
                    r.epoch, r.loss, r.learning_rate, rate
                ));
                self.bar.set_position(r.step as u64);
                if self.stop.load(Ordering::SeqCst) {
                    return Ok(Flow::Stop);
                }
            }
            Event::Log(entry) => self.say(format!("{entry}")),
            Event::Eval(e) => self.say(format!(
                "eval: loss {:.4}, perplexity {:.2} ({} tokens)",
                e.eval_loss, e.perplexity, e.num_tokens
            )),
            Event::Checkpoint { trainer, epoch } => {
                let path = save_checkpoint(trainer, epoch)?;
                self.say(format!("checkpoint: {}", path.display()));
            }
        }
        Ok(Flow::Continue)
    }

    fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
