//! ember-core compiled to wasm32, run in a real browser (headless Chromium, `web/test.sh`):
//! forward parity with transformers on a fixture model, one training step against transformers'
//! Trainer, and an adapter save/load round trip, on WebGPU when the browser offers an adapter
//! and on the CPU (WebAssembly) always. Fixture files are compiled in: a browser test has no
//! file system.
#![cfg(target_arch = "wasm32")]

use std::io::Cursor;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_core::checkpoint::{build_model, Checkpoint, LoadOptions, SafetensorsFile, TensorFile};
use ember_core::data::formats::examples_from_reader;
use ember_core::data::{Columns, TokenizedDataset};
use ember_core::lora::adapter_file::{adapter_safetensors_bytes_async, load_adapter_tensors};
use ember_core::lora::LoraConfig;
use ember_core::model::{AttentionMask, BloomForCausalLM};
use ember_core::quant::{QuantConfig, QuantType};
use ember_core::readback::values;
use ember_core::template::Template;
use ember_core::tokenizer::{PaddingSide, Tokenizer};
use ember_core::train::{Trainer, TrainingArgs};
use ember_core::BloomConfig;
use serde_json::Value;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/", $path))
    };
}

const CONFIG: &[u8] = fixture!("models/a/config.json");
const WEIGHTS: &[u8] = fixture!("models/a/model.safetensors");
const GOLDEN: &[u8] = fixture!("models/a/golden.safetensors");
const TOKENIZER: &[u8] = fixture!("models/a/tokenizer.json");
const TRAIN_DATA: &[u8] = fixture!("data/train.jsonl");
const RUN_A: &[u8] = fixture!("train/run_a.json");
const INIT_ADAPTER_CONFIG: &[u8] = fixture!("train/init_adapter/adapter_config.json");
const INIT_ADAPTER: &[u8] = fixture!("train/init_adapter/adapter_model.safetensors");
const QUANT_CONFIG: &[u8] = fixture!("quant/base/config.json");
const QUANT_WEIGHTS: &[u8] = fixture!("quant/base/model.safetensors");
const QUANT_GOLDEN: &[u8] = fixture!("quant/a-nf4-dq/golden.safetensors");
const QUANT_ADAPTER_CONFIG: &[u8] = fixture!("quant/init_adapter/adapter_config.json");
const QUANT_ADAPTER: &[u8] = fixture!("quant/init_adapter/adapter_model.safetensors");

/// WebGPU if this browser offers an adapter, and the CPU always; says which it found.
async fn devices() -> Vec<(&'static str, Device)> {
    let mut found = vec![("cpu (WebAssembly)", ember_web::backend::cpu())];
    match ember_web::backend::webgpu().await {
        Some(device) => found.push(("webgpu", device)),
        None => web_sys_log("no WebGPU adapter in this browser: the CPU fallback only"),
    }
    found
}

fn web_sys_log(message: &str) {
    wasm_bindgen_test::console_log!("{message}");
}

fn config() -> BloomConfig {
    BloomConfig::from_json(std::str::from_utf8(CONFIG).unwrap(), "config.json").unwrap()
}

fn model(device: &Device) -> BloomForCausalLM {
    let file = SafetensorsFile::from_bytes("model.safetensors", WEIGHTS.to_vec()).unwrap();
    let mut checkpoint = Checkpoint::from_files("models/a", vec![Box::new(file)], device);
    BloomForCausalLM::from_weights(&config(), &mut checkpoint).unwrap()
}

/// The QLoRA fixture base loaded as the page's "4-bit base" option loads it (nf4, double
/// quantization).
fn model_4bit(device: &Device) -> BloomForCausalLM {
    let config = BloomConfig::from_json(std::str::from_utf8(QUANT_CONFIG).unwrap(), "config.json").unwrap();
    let file = SafetensorsFile::from_bytes("model.safetensors", QUANT_WEIGHTS.to_vec()).unwrap();
    let mut checkpoint = Checkpoint::from_files("quant/base", vec![Box::new(file)], device);
    let quant =
        QuantConfig { bnb_4bit_quant_type: QuantType::Nf4, bnb_4bit_use_double_quant: true, ..QuantConfig::default() };
    let options = LoadOptions { quant: Some(quant), ..LoadOptions::default() };
    build_model(&config, &mut checkpoint, device, &options).unwrap()
}

/// An int64 or f32 tensor of the golden file, as i64 rows or f32 values.
fn golden_i64(name: &str) -> Vec<Vec<i64>> {
    golden_i64_of(GOLDEN, name)
}

fn golden_i64_of(golden: &[u8], name: &str) -> Vec<Vec<i64>> {
    let file = safetensors::SafeTensors::deserialize(golden).unwrap();
    let t = file.tensor(name).unwrap();
    let width = t.shape()[1];
    let all: Vec<i64> = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    all.chunks(width).map(|r| r.to_vec()).collect()
}

fn golden_f32(name: &str) -> Vec<f32> {
    golden_f32_of(GOLDEN, name)
}

fn golden_f32_of(golden: &[u8], name: &str) -> Vec<f32> {
    let file = safetensors::SafeTensors::deserialize(golden).unwrap();
    file.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

async fn logits(model: &BloomForCausalLM, ids: &[Vec<i64>], mask: &[Vec<i64>], device: &Device) -> Vec<f32> {
    let (b, t) = (ids.len(), ids[0].len());
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids.concat(), [b, t]), device);
    let out = model.forward(input, &AttentionMask::from_ints(mask), None);
    let n = out.dims().iter().product::<usize>();
    values(out.reshape([n]), "reading logits").await.unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[wasm_bindgen_test]
async fn logits_match_transformers_in_the_browser() {
    for (name, device) in devices().await {
        let model = model(&device);
        for batch in ["unpadded", "padded"] {
            let ids = golden_i64(&format!("{batch}.input_ids"));
            let mask = golden_i64(&format!("{batch}.attention_mask"));
            let diff =
                max_abs_diff(&logits(&model, &ids, &mask, &device).await, &golden_f32(&format!("{batch}.logits")));
            web_sys_log(&format!("{name} {batch}: max |Δlogit| = {diff}"));
            assert!(diff < 1e-4, "{name} {batch}: max |Δlogit| = {diff}");
        }
    }
}

fn run_a() -> Value {
    serde_json::from_slice(RUN_A).unwrap()
}

/// The Trainer arguments of the recorded run (as tests/tests/train.rs reads them).
fn args_of(run: &Value) -> TrainingArgs {
    let a = &run["args"];
    let f = |k: &str| a[k].as_f64().unwrap();
    TrainingArgs {
        per_device_train_batch_size: a["per_device_train_batch_size"].as_u64().unwrap() as usize,
        gradient_accumulation_steps: a["gradient_accumulation_steps"].as_u64().unwrap() as usize,
        learning_rate: f("learning_rate"),
        lr_scheduler_type: serde_json::from_value(a["lr_scheduler_type"].clone()).unwrap(),
        max_grad_norm: f("max_grad_norm"),
        weight_decay: f("weight_decay"),
        max_steps: a["max_steps"].as_i64().unwrap(),
        adam_beta1: f("adam_beta1"),
        adam_beta2: f("adam_beta2"),
        adam_epsilon: f("adam_epsilon"),
        logging_steps: 1,
        save_steps: 0,
        seed: 42,
        shuffle: false,
        ..TrainingArgs::default()
    }
}

fn dataset() -> TokenizedDataset {
    let tokenizer = Tokenizer::from_parts(TOKENIZER, "tokenizer.json", None, None, &config()).unwrap();
    let examples =
        examples_from_reader(Path::new("train.jsonl"), Cursor::new(TRAIN_DATA.to_vec()), &Columns::default()).unwrap();
    TokenizedDataset::from_examples(examples, &tokenizer, &Template::HumanAssistant, 32).unwrap()
}

fn with_adapter(device: &Device, config: &LoraConfig, bytes: Vec<u8>) -> BloomForCausalLM {
    adapted(model(device), device, config, bytes)
}

fn adapted(mut model: BloomForCausalLM, device: &Device, config: &LoraConfig, bytes: Vec<u8>) -> BloomForCausalLM {
    let file = SafetensorsFile::from_bytes("adapter_model.safetensors", bytes).unwrap();
    load_adapter_tensors(&mut model, config, &file as &dyn TensorFile, device, false).unwrap();
    model
}

/// One optimizer step equals transformers' Trainer's first step (loss and the updated adapter
/// through its next-step loss), and the trained adapter, saved to bytes and loaded into a fresh
/// model, gives the trained model's logits.
#[wasm_bindgen_test]
async fn training_step_and_adapter_round_trip_in_the_browser() {
    let run = run_a();
    let data = dataset();
    let lora = LoraConfig::from_json(std::str::from_utf8(INIT_ADAPTER_CONFIG).unwrap(), "adapter_config.json").unwrap();
    for (name, base) in devices().await {
        let device = base.clone().autodiff();
        let initial = with_adapter(&device, &lora, INIT_ADAPTER.to_vec());
        let mut trainer =
            Trainer::new(initial, lora.clone(), args_of(&run), &data, 3, PaddingSide::Left, &device).unwrap();
        for expected in run["steps"].as_array().unwrap().iter().take(2) {
            let report = trainer.step_async(&data).await.unwrap();
            let want = expected["loss"].as_f64().unwrap();
            web_sys_log(&format!("{name} step {}: loss {} (transformers {want})", report.step, report.loss));
            assert!(
                (report.loss - want).abs() <= 1e-3 * want.abs(),
                "{name} step {}: loss {} vs {want}",
                report.step,
                report.loss
            );
        }

        let bytes = adapter_safetensors_bytes_async(&trainer.model, &lora).await.unwrap();
        let reloaded = with_adapter(&base, &lora, bytes);
        let trained = trainer.model.clone().valid_model();
        let ids = golden_i64("padded.input_ids");
        let mask = golden_i64("padded.attention_mask");
        let (a, b) = (logits(&trained, &ids, &mask, &base).await, logits(&reloaded, &ids, &mask, &base).await);
        assert!(max_abs_diff(&a, &b) < 1e-5, "{name}: reloaded adapter differs by {}", max_abs_diff(&a, &b));
        assert!(
            max_abs_diff(&a, &logits(&model(&base), &ids, &mask, &base).await) > 1e-4,
            "{name}: training changed nothing"
        );
    }
}

/// The page's QLoRA path: a 4-bit base gives bitsandbytes' logits in the browser, and after
/// two training steps over it the model the page generates from (`valid()` of the trained
/// one) equals its downloaded adapter loaded onto a 4-bit base, as `ember generate
/// --load-in-4bit --adapter` loads it.
#[wasm_bindgen_test]
async fn qlora_logits_and_adapter_round_trip_in_the_browser() {
    let lora =
        LoraConfig::from_json(std::str::from_utf8(QUANT_ADAPTER_CONFIG).unwrap(), "adapter_config.json").unwrap();
    let data = dataset();
    let ids = golden_i64_of(QUANT_GOLDEN, "padded.input_ids");
    let mask = golden_i64_of(QUANT_GOLDEN, "padded.attention_mask");
    for (name, base) in devices().await {
        let diff = max_abs_diff(
            &logits(&model_4bit(&base), &ids, &mask, &base).await,
            &golden_f32_of(QUANT_GOLDEN, "padded.logits"),
        );
        web_sys_log(&format!("{name} 4-bit: max |Δlogit| vs bitsandbytes = {diff}"));
        assert!(diff < 1e-4, "{name} 4-bit: max |Δlogit| vs bitsandbytes = {diff}");

        let device = base.clone().autodiff();
        let initial = adapted(model_4bit(&device), &device, &lora, QUANT_ADAPTER.to_vec());
        let args = TrainingArgs { learning_rate: 1e-2, max_steps: 2, ..args_of(&run_a()) };
        let mut trainer = Trainer::new(initial, lora.clone(), args, &data, 3, PaddingSide::Left, &device).unwrap();
        for _ in 0..2 {
            trainer.step_async(&data).await.unwrap();
        }
        let bytes = adapter_safetensors_bytes_async(&trainer.model, &lora).await.unwrap();
        let trained = logits(&trainer.model.clone().valid_model(), &ids, &mask, &base).await;
        let reloaded = logits(&adapted(model_4bit(&base), &base, &lora, bytes), &ids, &mask, &base).await;
        let untrained =
            logits(&adapted(model_4bit(&base), &base, &lora, QUANT_ADAPTER.to_vec()), &ids, &mask, &base).await;
        let diff = max_abs_diff(&trained, &reloaded);
        web_sys_log(&format!("{name} 4-bit: trained vs reloaded adapter: max |Δlogit| = {diff}"));
        assert!(diff < 1e-5, "{name} 4-bit: the reloaded adapter differs by {diff}");
        assert!(max_abs_diff(&trained, &untrained) > 1e-4, "{name} 4-bit: training changed nothing");
    }
}
