//! What the worker does with ember-core: load a base model and adapters from file bytes,
//! generate with tokens streamed to the page, fine-tune one step at a time. Nothing here is
//! re-implemented: it is the same code `ember` runs natively, on the browser's device.

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::Device;
use ember_core::budget::{
    check_file_size, check_fits, smaller_runs, what_fits, ModelBudget, Need, Placement, TrainingShape,
};
use ember_core::checkpoint::{
    build_model, shard_names, tensor_file_from_bytes, Checkpoint, LoadOptions, SafetensorsFile, WEIGHT_FILES,
};
use ember_core::data::TokenizedDataset;
use ember_core::generate::{generate_async, GenerationConfig, Sampling};
use ember_core::lora::adapter_file::{adapter_safetensors_bytes_async, load_adapter_tensors};
use ember_core::lora::{apply_lora, lora_report, LoraConfig, LoraSettings, TargetModules};
use ember_core::model::bloom::{LM_HEAD, LORA_TARGET_MODULES};
use ember_core::model::{BloomForCausalLM, ModelShape, ModuleKind, WeightDType};
use ember_core::quant::{QuantConfig, QuantType};
use ember_core::template::{human_assistant, Template};
use ember_core::text::thousands;
use ember_core::tokenizer::{TextStream, Tokenizer};
use ember_core::train::{Event, Flow, Sink, Trainer, TrainingArgs};
use ember_core::{BloomConfig, Error, Result};
use ember_shaders::ops::DEQUANTIZE_CHUNK_VALUES;
use wasm_bindgen::JsCast;
use web_sys::Blob;

use super::blob::BlobFile;
use super::{now_ms, post, stop_requested, yield_now};
use crate::backend;
use crate::message::{buffer, bytes, Attached};
use crate::protocol::{GenerateRequest, Reply, Request, Side, TrainRequest, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

pub struct Session {
    device: Device,
    pub backend: String,
    gpu: bool,
    /// The adapter's `maxStorageBufferBindingSize`: no single tensor may be larger on this GPU.
    max_binding: Option<f64>,
    base: Option<Base>,
    /// The base model with the current adapter (loaded or trained).
    adapted: Option<BloomForCausalLM>,
}

struct Base {
    config: BloomConfig,
    tokenizer: Tokenizer,
    /// The model for inference; training puts the same weights on the autodiff graph
    /// ([`BloomForCausalLM::for_training`]), so the file's bytes are not kept after loading.
    model: BloomForCausalLM,
    /// Bytes its weights take on the device.
    weight_bytes: u64,
    /// What it needs in memory, phase by phase (training is checked against it).
    budget: ModelBudget,
}

/// `navigator.deviceMemory` (GiB; Chromium only, rounded, at most 8): a hint, not a limit.
fn device_memory() -> Option<f64> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    js_sys::Reflect::get(&navigator, &"deviceMemory".into()).ok()?.as_f64()
}

/// The precision the checkpoint says its weights are saved in (`torch_dtype`; f32 if unsaid).
fn saved_dtype(config: &BloomConfig) -> WeightDType {
    config.torch_dtype.as_deref().and_then(|d| d.parse().ok()).unwrap_or(WeightDType::F32)
}

/// The page's 4-bit option: QLoRA's settings (nf4, double quantization, f32 compute).
fn page_quantization(four_bit: bool) -> Option<QuantConfig> {
    four_bit.then(|| QuantConfig {
        bnb_4bit_quant_type: QuantType::Nf4,
        bnb_4bit_use_double_quant: true,
        ..QuantConfig::default()
    })
}

impl Session {
    pub async fn start(force_cpu: bool) -> Session {
        if !force_cpu {
            if let Some(device) = backend::webgpu().await {
                let adapter = backend::webgpu_adapter().await;
                let name = adapter.as_ref().map_or("WebGPU".to_string(), |a| format!("WebGPU: {}", a.name));
                let max_binding = adapter.map(|a| a.max_storage_binding);
                return Session { device, backend: name, gpu: true, max_binding, base: None, adapted: None };
            }
        }
        let why = if force_cpu { "chosen" } else { "no WebGPU adapter in this browser" };
        Session {
            device: backend::cpu(),
            backend: format!("CPU (WebAssembly) — {why}"),
            gpu: false,
            max_binding: None,
            base: None,
            adapted: None,
        }
    }

    pub async fn handle(&mut self, request: Request, files: Attached) -> Result<()> {
        match request {
            Request::LoadModelFiles { four_bit } => self.load_base(ModelFiles::from_attached(&files, true)?, four_bit),
            Request::LoadModelUrl { url, four_bit } => self.load_base(super::fetch::model_files(&url).await?, four_bit),
            Request::LoadAdapter { origin } => self.load_adapter(ModelFiles::from_attached(&files, false)?, &origin),
            Request::LoadAdapterUrl { url } => self.load_adapter(super::fetch::adapter_files(&url).await?, &url),
            Request::Generate(request) => self.generate(&request).await,
            Request::Train(request) => self.train(&request).await,
            Request::Start { .. } | Request::Stop => Ok(()),
        }
    }

    pub fn memory_line(&self) -> String {
        match &self.base {
            Some(base) => format!(
                ", model weights {:.1} MiB on the {}",
                base.weight_bytes as f64 / 1048576.0,
                if self.gpu { "GPU" } else { "CPU" }
            ),
            None => String::new(),
        }
    }

    fn base(&self) -> Result<&Base> {
        self.base
            .as_ref()
            .ok_or_else(|| Error::invalid("no model loaded: load the demo model, a model folder or a URL first"))
    }

    fn load_base(&mut self, files: ModelFiles, four_bit: bool) -> Result<()> {
        let config = BloomConfig::from_json(files.text("config.json")?, "config.json")?;
        let tokenizer = Tokenizer::from_parts(
            files.need("tokenizer.json")?,
            "tokenizer.json",
            files.optional_text("tokenizer_config.json")?,
            files.optional_text("special_tokens_map.json")?,
            &config,
        )?;
        let weights = files.weights()?;
        let options = LoadOptions {
            dtype: self.stored_dtype(&config),
            quant: page_quantization(four_bit),
            ..LoadOptions::default()
        };
        let quant = options.quantization(&config);
        let in_ranges = weights.iter().all(|w| matches!(w, Weights::Ranges(_)));
        let budget_of = |quant: Option<&QuantConfig>| {
            let budget = ModelBudget::new(&config, files.held_bytes(), saved_dtype(&config), options.dtype, quant);
            if in_ranges {
                budget.read_in_ranges()
            } else {
                budget
            }
        };
        let budget = budget_of(quant.as_ref());
        let loading = ("loading this model".to_string(), budget.need(self.placement(), budget.loaded()));
        let four_bit_instead = quant.is_none().then(|| {
            let packed = page_quantization(true);
            let in_4bit = budget_of(packed.as_ref());
            ("loading it in 4-bit (tick \"4-bit\")".to_string(), in_4bit.need(self.placement(), in_4bit.loaded()))
        });
        check_fits(self.placement(), &loading, four_bit_instead.as_slice())?;
        self.check_binding(&config, options.dtype, quant.as_ref())?;
        let shape = ModelShape::of_config(&config);
        let weight_bytes = shape.weight_bytes(options.dtype, quant.as_ref());
        post(
            &Reply::Progress {
                what: format!(
                    "{} {} to the {}",
                    if quant.is_some() { "quantizing and uploading" } else { "uploading" },
                    weights_name(&weights),
                    self.backend
                ),
                done: 0.0,
                total: 1.0,
            },
            Vec::new(),
        );
        self.base = None;
        self.adapted = None;
        let model = model_from(&config, &weights, &self.device, &options)?;
        let stored = match &quant {
            Some(q) => format!(
                "4-bit {}{}",
                q.bnb_4bit_quant_type,
                if q.bnb_4bit_use_double_quant { ", double quant" } else { "" }
            ),
            None => options.dtype.to_string(),
        };
        let summary = format!(
            "BLOOM: {} layers, hidden size {}, vocabulary {}; {} parameters ({:.1} MiB, {stored})",
            config.n_layer,
            config.hidden_size,
            config.vocab_size,
            thousands(shape.base_params()),
            weight_bytes as f64 / 1048576.0
        );
        let fits = self.what_fits(&budget)?;
        self.base = Some(Base { config, tokenizer, model, weight_bytes, budget });
        post(&Reply::ModelLoaded { summary, budget: fits }, Vec::new());
        Ok(())
    }

    /// The precision the frozen weights are kept in: the checkpoint's own (`torch_dtype`: f16
    /// stays f16, as transformers' `dtype="auto"`) where this backend stores it, else f32.
    fn stored_dtype(&self, config: &BloomConfig) -> WeightDType {
        let saved = saved_dtype(config);
        if self.device.supports_dtype(saved.float_dtype()) {
            saved
        } else {
            WeightDType::F32
        }
    }

    fn placement(&self) -> Placement {
        if self.gpu {
            Placement::Gpu
        } else {
            Placement::Heap
        }
    }

    /// What fits with `budget`: inference, the page's fine-tuning at two batch sizes, and with
    /// the embedding trained too.
    fn what_fits(&self, budget: &ModelBudget) -> Result<String> {
        let lora = |saved: &[&str]| {
            let settings = LoraSettings {
                target_modules: Some(TargetModules::Names(LORA_TARGET_MODULES.map(String::from).to_vec())),
                modules_to_save: Some(saved.iter().map(|m| m.to_string()).collect()),
                ..LoraSettings::default()
            };
            lora_report(&settings.build(None)?, budget.shape())
        };
        let (adapters, embeddings) = (lora(&[])?, lora(&["word_embeddings"])?);
        let phase = |what: String, work| (what, budget.need(self.placement(), work));
        let length = 256;
        let phases = [
            phase(format!("inference ({length} + {length} tokens)"), budget.inference(2 * length)),
            phase(
                format!("fine-tuning at batch 1 × {length}"),
                budget.training(&TrainingShape::new(1, length, &adapters)),
            ),
            phase(format!("at batch 4 × {length}"), budget.training(&TrainingShape::new(4, length, &adapters))),
            phase(
                "with word_embeddings in modules_to_save".to_string(),
                budget.training(&TrainingShape::new(1, length, &embeddings)),
            ),
        ];
        Ok(what_fits(self.placement(), &phases, device_memory()))
    }

    /// On WebGPU no single tensor may be over the adapter's storage-binding limit.
    fn check_binding(&self, config: &BloomConfig, dtype: WeightDType, quant: Option<&QuantConfig>) -> Result<()> {
        let shape = ModelShape::of_config(config);
        // The largest matrix bound at once: the biggest Linear weight (the vocabulary matrix is
        // cut into blocks that fit); a 4-bit one is bound packed, and dequantized a slice at a time.
        let width = if dtype == WeightDType::F32 { 4.0 } else { 2.0 };
        let largest = shape
            .modules()
            .iter()
            .filter_map(|m| match m.kind {
                ModuleKind::Linear { out_features, in_features, .. } if m.name != LM_HEAD => {
                    let values = out_features as f64 * in_features as f64;
                    let four_bit = quant.is_some_and(|q| q.quantizes(&m.name));
                    Some(if four_bit {
                        (values / 2.0).max(4.0 * DEQUANTIZE_CHUNK_VALUES as f64)
                    } else {
                        width * values
                    })
                }
                _ => None,
            })
            .fold(0.0, f64::max);
        if let Some(limit) = self.max_binding.filter(|&limit| largest > limit) {
            return Err(Error::invalid(format!(
                "the model's largest weight matrix ({:.0} MiB) is over this GPU's storage-buffer limit ({:.0} MiB): tick \"Use CPU\" or use a smaller model",
                largest / 1048576.0,
                limit / 1048576.0
            )));
        }
        Ok(())
    }

    fn load_adapter(&mut self, files: ModelFiles, origin: &str) -> Result<()> {
        let base = self.base()?;
        let config = LoraConfig::from_json(files.text(ADAPTER_CONFIG)?, &format!("{origin}/{ADAPTER_CONFIG}"))?;
        let weights = files.need(ADAPTER_WEIGHTS)?;
        let file = SafetensorsFile::from_bytes(format!("{origin}/{ADAPTER_WEIGHTS}"), weights.clone())?;
        let mut model = base.model.clone();
        let report = load_adapter_tensors(&mut model, &config, &file, &self.device, false)?;
        self.adapted = Some(model);
        let summary =
            format!("{origin}: LoRA r={}, alpha={}; {}", config.r, config.lora_alpha, report.trainable_line());
        let files = vec![
            (ADAPTER_CONFIG.to_string(), buffer(config.to_json().as_bytes())),
            (ADAPTER_WEIGHTS.to_string(), buffer(weights)),
        ];
        post(&Reply::AdapterReady { summary, config_json: config.to_json() }, files);
        Ok(())
    }

    async fn generate(&self, request: &GenerateRequest) -> Result<()> {
        let base = self.base()?;
        let adapted = match (request.with_adapter, &self.adapted) {
            (true, None) => {
                return Err(Error::invalid("no adapter yet: load one or fine-tune first (or untick \"with adapter\")"))
            }
            (true, Some(model)) => Some(model),
            (false, _) => None,
        };
        let text = if request.template { human_assistant(&request.prompt) } else { request.prompt.clone() };
        let prompt = base.tokenizer.encode(&text)?;
        let config = GenerationConfig {
            max_new_tokens: Some(request.max_new_tokens),
            max_length: None,
            sampling: request.sample.then_some(Sampling {
                temperature: request.temperature,
                top_k: request.top_k,
                top_p: request.top_p,
                seed: request.seed,
            }),
            repetition_penalty: 1.0,
            eos_token_id: base.tokenizer.eos_id(&base.config),
            pad_token_id: base.tokenizer.pad_id(&base.config),
            context_limit: base.config.context_limit().0,
        };
        self.stream(Side::Base, &base.model, &base.tokenizer, &prompt, &config).await?;
        if let Some(model) = adapted {
            if !stop_requested() {
                self.stream(Side::Adapter, model, &base.tokenizer, &prompt, &config).await?;
            }
        }
        Ok(())
    }

    /// Generates from one model, posting text as tokens complete it.
    async fn stream(
        &self,
        side: Side,
        model: &BloomForCausalLM,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        config: &GenerationConfig,
    ) -> Result<()> {
        let start = now_ms();
        let mut first_token_ms = None;
        let mut count = 0usize;
        let mut text = TextStream::new();
        let mut failure = None;
        generate_async(model, &[prompt.to_vec()], config, &self.device, async |step: &[Option<u32>]| {
            if let Some(id) = step[0] {
                count += 1;
                first_token_ms.get_or_insert_with(|| now_ms() - start);
                match text.push(tokenizer, id) {
                    Ok(fresh) if !fresh.is_empty() => post(&Reply::Token { side, text: fresh }, Vec::new()),
                    Ok(_) => {}
                    Err(e) => failure = Some(e),
                }
            }
            yield_now().await;
            !stop_requested() && failure.is_none()
        })
        .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        let first_token_ms = first_token_ms.unwrap_or(0.0);
        // Decoding speed: the tokens after the first, over the time after the first.
        let decode_s = (now_ms() - start - first_token_ms) / 1000.0;
        let tokens_per_s = if count > 1 && decode_s > 0.0 { (count - 1) as f64 / decode_s } else { 0.0 };
        post(&Reply::Generated { side, tokens: count, tokens_per_s, first_token_ms }, Vec::new());
        Ok(())
    }

    async fn train(&mut self, request: &TrainRequest) -> Result<()> {
        let base = self.base()?;
        let examples = crate::examples::parse(&request.examples)?;
        let data = TokenizedDataset::from_examples(
            Box::new(examples.into_iter().map(Ok)),
            &base.tokenizer,
            &Template::HumanAssistant,
            request.max_length,
        )?;
        let lora = lora_config(request)?;
        let need = self.check_training(base, &lora, &data, request)?;
        let device = self.device.clone().autodiff();
        let mut model = base.model.clone().for_training();
        let report = apply_lora(&mut model, &lora, &device)?;
        post(&Reply::Progress { what: report.trainable_line(), done: 0.0, total: request.steps as f64 }, Vec::new());
        let args = TrainingArgs {
            per_device_train_batch_size: request.batch_size,
            learning_rate: request.learning_rate,
            max_steps: request.steps as i64,
            logging_steps: 1,
            save_steps: 0,
            ..TrainingArgs::default()
        };
        let pad = base.tokenizer.pad_id(&base.config);
        let mut trainer = Trainer::new(model, lora.clone(), args, &data, pad, base.tokenizer.padding_side, &device)?;
        let mut page = Page { start: now_ms(), total: trainer.total_steps, steps: 0 };
        trainer.run_async(&data, None, &mut page).await?;
        let steps = page.steps;
        let weights = adapter_safetensors_bytes_async(&trainer.model, &lora).await?;
        self.adapted = Some(trainer.model.valid_model());
        let summary = format!(
            "fine-tuned here: {steps} steps, LoRA r={}, alpha={}; {}",
            lora.r,
            lora.lora_alpha,
            report.trainable_line()
        );
        let config_json = ember_core::lora::adapter_file::config_json(&lora);
        let files = vec![
            (ADAPTER_CONFIG.to_string(), buffer(config_json.as_bytes())),
            (ADAPTER_WEIGHTS.to_string(), buffer(&weights)),
        ];
        post(&Reply::AdapterReady { summary, config_json }, files);
        // "done" only once the new adapter is the one in use and offered for download: before,
        // a download right after "done" could still get the previous adapter.
        let budget = need.text(self.placement());
        post(&Reply::Trained { steps, stopped: steps < trainer.total_steps, budget }, Vec::new());
        Ok(())
    }
}

impl Session {
    /// Refuses a run that cannot fit, naming smaller ones that would. Sequences are as long as
    /// the longest example (up to `max_length`): batches are padded to their longest.
    fn check_training(
        &self,
        base: &Base,
        lora: &LoraConfig,
        data: &TokenizedDataset,
        request: &TrainRequest,
    ) -> Result<Need> {
        let longest = data.stats().length_percentiles.last().map_or(0, |&(_, n)| n);
        let run = TrainingShape::new(
            request.batch_size,
            longest.min(request.max_length),
            &lora_report(lora, base.budget.shape())?,
        );
        let need = |run: &TrainingShape| base.budget.need(self.placement(), base.budget.training(run));
        let saving = if run.saved_params > 0 { " with modules_to_save" } else { "" };
        let phase = (format!("fine-tuning at batch {} × {}{saving}", run.batch, run.max_length), need(&run));
        let smaller: Vec<_> = smaller_runs(&run).iter().map(|(what, run)| (what.clone(), need(run))).collect();
        check_fits(self.placement(), &phase, &smaller)
    }
}

/// peft's `LoraConfig` from the page's fields.
fn lora_config(request: &TrainRequest) -> Result<LoraConfig> {
    let names =
        |text: &str| text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();
    let targets = request.target_modules.trim();
    // peft reads a string as a regex and a list as module names; the page's one field is a
    // regex when it holds regex syntax.
    let target_modules = if targets.chars().any(|c| "^$*+?()[]{}|\\".contains(c)) {
        TargetModules::Regex(targets.to_string())
    } else {
        TargetModules::Names(names(targets))
    };
    LoraSettings {
        target_modules: Some(target_modules),
        r: Some(request.r),
        lora_alpha: Some(request.lora_alpha),
        modules_to_save: Some(names(&request.modules_to_save)),
        ..LoraSettings::default()
    }
    .build(None)
}

/// The training loop's page side: each step goes to the page as it happens, and Stop gets
/// through between steps (the worker yields to its event loop after each).
struct Page {
    start: f64,
    total: usize,
    steps: usize,
}

impl Sink for Page {
    async fn event(&mut self, event: Event<'_>) -> Result<Flow> {
        // Checkpoints have nowhere to go in the page; logs and evaluations are not shown.
        let Event::Step(report) = event else { return Ok(Flow::Continue) };
        self.steps = report.step;
        let steps_per_s = report.step as f64 / ((now_ms() - self.start) / 1000.0);
        post(
            &Reply::Step {
                step: report.step,
                total: self.total,
                loss: report.loss,
                learning_rate: report.learning_rate,
                steps_per_s,
            },
            Vec::new(),
        );
        yield_now().await;
        Ok(if stop_requested() { Flow::Stop } else { Flow::Continue })
    }

    fn seconds(&self) -> f64 {
        now_ms() / 1000.0
    }
}

/// The model of `config` from its weight files as `options` say (4-bit: quantized one weight at
/// a time, only packed weights reaching the device).
fn model_from(
    config: &BloomConfig,
    weights: &[Weights],
    device: &Device,
    options: &LoadOptions,
) -> Result<BloomForCausalLM> {
    let files = weights
        .iter()
        .map(|weights| match weights {
            Weights::Bytes(name, bytes) => tensor_file_from_bytes(name, bytes.clone()),
            Weights::Ranges(file) => {
                Ok(Box::new(SafetensorsFile::from_reader(&file.name, Box::new(file.clone()))?) as _)
            }
        })
        .collect::<Result<_>>()?;
    let mut checkpoint = Checkpoint::from_files(weights_name(weights), files, device);
    build_model(config, &mut checkpoint, device, options)
}

/// A checkpoint's name in messages: its file, or its first shard and how many there are.
fn weights_name(weights: &[Weights]) -> String {
    match weights {
        [one] => one.name().to_string(),
        [first, ..] => format!("{} (1 of {} shards)", first.name(), weights.len()),
        [] => "no weights".into(),
    }
}

/// A weight file: in the heap, or read a tensor at a time (safetensors from a `File` or `Blob`).
pub enum Weights {
    Bytes(String, Arc<Vec<u8>>),
    Ranges(BlobFile),
}

impl Weights {
    fn name(&self) -> &str {
        match self {
            Weights::Bytes(name, _) => name,
            Weights::Ranges(file) => &file.name,
        }
    }
}

/// The files of a model or adapter folder, by base name: small ones (and `.bin` checkpoints) in
/// the heap, safetensors checkpoints outside it, read a tensor at a time.
pub struct ModelFiles {
    bytes: HashMap<String, Arc<Vec<u8>>>,
    ranged: HashMap<String, BlobFile>,
}

impl ModelFiles {
    pub fn new(bytes: HashMap<String, Arc<Vec<u8>>>, ranged: HashMap<String, BlobFile>) -> Self {
        ModelFiles { bytes, ranged }
    }

    /// Files the page sent: buffers, or `File`s; a model's safetensors files stay `File`s
    /// (`ranged`), an adapter's are read whole.
    fn from_attached(files: &Attached, ranged: bool) -> Result<Self> {
        let mut out = ModelFiles::new(HashMap::new(), HashMap::new());
        for (path, contents) in files {
            let name = path.rsplit('/').next().unwrap_or(path).to_string();
            match contents.dyn_ref::<Blob>() {
                Some(blob) => {
                    let file = BlobFile::new(name.clone(), blob.clone());
                    if ranged && name.ends_with(".safetensors") {
                        out.ranged.insert(name, file);
                    } else {
                        out.bytes.insert(name, Arc::new(file.read_whole()?));
                    }
                }
                None => {
                    let buffer: &js_sys::ArrayBuffer = contents.unchecked_ref();
                    check_file_size(&name, buffer.byte_length() as u64)?;
                    out.bytes.insert(name, Arc::new(bytes(contents)));
                }
            }
        }
        Ok(out)
    }

    fn has(&self, name: &str) -> bool {
        self.bytes.contains_key(name) || self.ranged.contains_key(name)
    }

    fn need(&self, name: &str) -> Result<&Arc<Vec<u8>>> {
        self.bytes.get(name).ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> Error {
        let mut given: Vec<&str> = self.bytes.keys().chain(self.ranged.keys()).map(String::as_str).collect();
        given.sort();
        let given = if given.is_empty() { "no files".to_string() } else { given.join(", ") };
        Error::file(name, format!("missing (got {given}): choose the whole folder, or add this file"))
    }

    fn text(&self, name: &str) -> Result<&str> {
        std::str::from_utf8(self.need(name)?)
            .map_err(|_| Error::file(name, "is not UTF-8 text: is this the right file?"))
    }

    fn optional_text(&self, name: &str) -> Result<Option<&str>> {
        if self.bytes.contains_key(name) {
            self.text(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Bytes of the files held in the heap while the model is built from them.
    fn held_bytes(&self) -> u64 {
        self.bytes.values().map(|bytes| bytes.len() as u64).sum()
    }

    fn weight_file(&self, name: &str) -> Result<Weights> {
        match (self.ranged.get(name), self.bytes.get(name)) {
            (Some(file), _) => Ok(Weights::Ranges(file.clone())),
            (None, Some(bytes)) => Ok(Weights::Bytes(name.to_string(), bytes.clone())),
            (None, None) => Err(self.missing(name)),
        }
    }

    /// The weight files, as transformers looks for them: one file, or an index and its shards.
    fn weights(&self) -> Result<Vec<Weights>> {
        let Some(name) = WEIGHT_FILES.into_iter().find(|name| self.has(name)) else {
            return Err(self.missing(WEIGHT_FILES[0]));
        };
        if !name.ends_with(".index.json") {
            return Ok(vec![self.weight_file(name)?]);
        }
        shard_names(self.text(name)?, name)?.into_iter().map(|shard| self.weight_file(&shard)).collect()
    }
}
