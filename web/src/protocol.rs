//! The messages between the page (UI thread) and the worker that runs the model. Each message
//! is a JS array: the JSON of a [`Request`] or [`Reply`], then `name, bytes` pairs for the files
//! it carries (ArrayBuffers, transferred rather than copied).

use serde::{Deserialize, Serialize};

/// What the page asks of the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Request {
    /// Picks the device: WebGPU unless `force_cpu` is set or the browser has no adapter.
    Start {
        force_cpu: bool,
    },
    /// A base model from the attached files (`config.json`, `tokenizer.json`, weights);
    /// `four_bit`: its Linear layers 4-bit (QLoRA's nf4 with double quantization).
    LoadModelFiles {
        #[serde(default)]
        four_bit: bool,
    },
    /// A base model from a folder URL; files are kept in the browser's Cache Storage.
    LoadModelUrl {
        url: String,
        #[serde(default)]
        four_bit: bool,
    },
    /// A PEFT adapter from the attached `adapter_config.json` + `adapter_model.safetensors`.
    LoadAdapter {
        origin: String,
    },
    /// A PEFT adapter from a folder URL (or Hub id), kept in Cache Storage like models.
    LoadAdapterUrl {
        url: String,
    },
    Generate(GenerateRequest),
    Train(TrainRequest),
    /// Ends the running generation or training at the next token or step.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Wraps the prompt in the Human/Assistant template the recipe trains with.
    pub template: bool,
    /// Greedy decoding when false (transformers' `do_sample=False`).
    pub sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Also generates with the adapter, after the base model.
    pub with_adapter: bool,
}

impl Default for GenerateRequest {
    /// The page's defaults (its fields start with them; a link overrides some).
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            template: true,
            sample: true,
            temperature: 0.7,
            top_k: 50,
            top_p: 0.9,
            max_new_tokens: 64,
            seed: 42,
            with_adapter: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainRequest {
    /// JSON (an array) or JSONL text of instruction/input/output records.
    pub examples: String,
    pub r: usize,
    pub lora_alpha: f64,
    /// Comma-separated module names, or a regex (peft's two forms of `target_modules`).
    pub target_modules: String,
    /// Comma-separated, may be empty.
    pub modules_to_save: String,
    pub learning_rate: f64,
    pub steps: usize,
    pub batch_size: usize,
    pub max_length: usize,
}

/// Which model produced a generated token.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Side {
    Base,
    Adapter,
}

/// What the worker tells the page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Reply {
    /// The worker's wasm is running and listens: the page may send `Start`.
    WorkerReady,
    Started {
        backend: String,
    },
    Progress {
        what: String,
        done: f64,
        total: f64,
    },
    ModelLoaded {
        summary: String,
        /// What fits in memory with this model (inference, fine-tuning at a few sizes).
        budget: String,
    },
    /// The attached adapter files are now in use (loaded or just trained).
    AdapterReady {
        summary: String,
        config_json: String,
    },
    Token {
        side: Side,
        text: String,
    },
    Generated {
        side: Side,
        tokens: usize,
        tokens_per_s: f64,
        first_token_ms: f64,
    },
    Step {
        step: usize,
        total: usize,
        loss: f64,
        learning_rate: f64,
        steps_per_s: f64,
    },
    /// Training ended (all steps or stopped), after its adapter went out as `AdapterReady`.
    Trained {
        steps: usize,
        stopped: bool,
        /// What the memory budget said the run needs ("1.20 GiB").
        budget: String,
    },
    /// The job finished (or stopped); the worker is idle.
    Idle {
        memory: String,
    },
    Failed {
        message: String,
    },
}

/// The file names of a PEFT adapter, as peft's `save_pretrained` writes them.
pub use ember_core::lora::adapter_file::{CONFIG_FILE as ADAPTER_CONFIG, WEIGHTS_FILE as ADAPTER_WEIGHTS};
