//! `ember train`'s settings: flags (every one optional), a TOML or JSON config file under the same
//! names, and transformers' / peft's defaults underneath — merged defaults ← file ← flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ember_core::data::Columns;
use ember_core::model::WeightDType;
use ember_core::template::Template;
use ember_core::train::{SchedulerType, TrainingArgs};
use ember_shaders::Kernels;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lora_args::{finite, LoraArgs};
use super::quant_args::QuantArgs;
use crate::device::{Api, DeviceChoice};

/// Every flag is optional: unset flags fall back to the config file, then to transformers'
/// defaults. Names are transformers' / peft's. (Serialized for the merge: an unset flag is
/// `null` or `false` and is dropped there.)
#[derive(clap::Args, Serialize, Default, Debug)]
pub struct Args {
    /// A TOML or JSON file with any of the settings below (under the same names, with `_`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Base model directory (Hugging Face format), or a Hub id (org/name[@revision]).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data (.json, .jsonl, .parquet, .csv, a datasets save_to_disk directory, or a Hub dataset id).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    split: Option<String>,
    /// Column names if not instruction/input/output, e.g. instruction=prompt,output=answer.
    #[arg(long)]
    columns: Option<String>,
    /// human-assistant (the reference recipe), alpaca, or a string with {instruction} and {input}.
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    max_length: Option<usize>,
    /// Evaluation data, evaluated every --eval-steps and at the end.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long)]
    eval_steps: Option<usize>,
    #[arg(long)]
    output_dir: Option<String>,
    #[arg(long)]
    per_device_train_batch_size: Option<usize>,
    #[arg(long)]
    gradient_accumulation_steps: Option<usize>,
    #[arg(long, value_parser = finite)]
    learning_rate: Option<f64>,
    #[arg(long, value_parser = finite)]
    num_train_epochs: Option<f64>,
    /// Total optimizer steps (overrides --num-train-epochs).
    #[arg(long)]
    max_steps: Option<i64>,
    /// linear, cosine, constant or constant_with_warmup.
    #[arg(long)]
    lr_scheduler_type: Option<SchedulerType>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long, value_parser = finite)]
    warmup_ratio: Option<f64>,
    #[arg(long, value_parser = finite)]
    weight_decay: Option<f64>,
    #[arg(long, value_parser = finite)]
    adam_beta1: Option<f64>,
    #[arg(long, value_parser = finite)]
    adam_beta2: Option<f64>,
    #[arg(long, value_parser = finite)]
    adam_epsilon: Option<f64>,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, value_parser = finite)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    logging_steps: Option<usize>,
    #[arg(long)]
    save_steps: Option<usize>,
    #[arg(long)]
    save_total_limit: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the dataset order (transformers shuffles every epoch).
    #[arg(long)]
    no_shuffle: bool,
    #[command(flatten)]
    #[serde(flatten)]
    lora: LoraArgs,
    /// Continue from an existing PEFT adapter, a directory or Hub id (its config replaces the LoRA flags).
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// A checkpoint directory, or `latest` for the newest in --output-dir.
    #[arg(long)]
    resume_from_checkpoint: Option<String>,
    /// auto, gpu, gpu:N (from `ember devices`) or cpu.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Graphics API for the GPU: vulkan, metal, dx12 or gl.
    #[arg(long, value_enum)]
    backend: Option<Api>,
    /// Stored precision of the frozen base weights: f32, f16 or bf16 (LoRA weights, gradients
    /// and optimizer state stay f32).
    #[arg(long)]
    dtype: Option<WeightDType>,
    /// Keep only each block's input and run the blocks again in the backward pass (much less
    /// memory, about a third more compute).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Fused kernels (shaders/): all, none, or a list of gelu, cross-entropy, attention, layer-norm.
    #[arg(long)]
    kernels: Option<Kernels>,
    /// Load model and adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    #[command(flatten)]
    #[serde(flatten)]
    quant: QuantArgs,
}

impl Args {
    /// Whether nothing names a model, data or config: the bundled demo.
    pub fn is_demo(&self) -> bool {
        self.model.is_none() && self.data.is_none() && self.config.is_none()
    }
}

/// The merged settings. Those without a default here (the LoRA ones) take peft's when the
/// adapter config is built ([`ember_core::lora::LoraSettings::build`]).
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
    #[serde(flatten)]
    pub lora: LoraArgs,
    pub no_shuffle: bool,
    pub init_adapter: Option<PathBuf>,
    pub resume_from_checkpoint: Option<String>,
    pub device: DeviceChoice,
    pub backend: Option<Api>,
    pub dtype: WeightDType,
    pub kernels: Kernels,
    pub allow_nonfinite: bool,
    #[serde(flatten)]
    pub quant: QuantArgs,
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
            lora: LoraArgs::default(),
            no_shuffle: false,
            init_adapter: None,
            resume_from_checkpoint: None,
            device: DeviceChoice::Auto,
            backend: None,
            dtype: WeightDType::F32,
            kernels: Kernels::default(),
            allow_nonfinite: false,
            quant: QuantArgs::default(),
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
                let table: toml::Table =
                    toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
                serde_json::to_value(table)?
            };
            let known = serde_json::to_value(Settings::default())?;
            for (key, v) in value.as_object().context("the config file must hold a table of settings")? {
                anyhow::ensure!(known.get(key).is_some(), "{}: unknown setting \"{key}\"", path.display());
                // JSON has no infinity or NaN: TOML's `inf` and `nan` arrive as null.
                anyhow::ensure!(
                    !v.is_null() || known[key].is_null(),
                    "{}: {key} must be a finite number",
                    path.display()
                );
                merged[key] = v.clone();
            }
        }
        // A flag that was not given is `null` (or `false`, for switches): it overrides nothing.
        for (key, v) in serde_json::to_value(flags)?.as_object().expect("flags serialise to an object") {
            if !v.is_null() && *v != Value::Bool(false) {
                merged[key] = v.clone();
            }
        }
        let mut settings: Settings = serde_json::from_value(merged).context("invalid training settings")?;
        settings.training.shuffle = !settings.no_shuffle;
        Ok(settings)
    }

    pub fn template(&self) -> anyhow::Result<Template> {
        Template::parse(&self.template).map_err(anyhow::Error::msg)
    }

    pub fn columns(&self) -> anyhow::Result<Columns> {
        Ok(Columns::parse(&self.columns)?)
    }
}
