//! The bundled demo behind a bare `ember train`: a tiny BLOOM model and a small Chinese
//! instruction set shipped inside the binary (made by demo/make_demo.py), unpacked to the
//! cache directory and fine-tuned with demo/train.toml, answering a bundled question before and
//! after training.

use std::path::PathBuf;

use burn::tensor::Device;
use ember_core::generate::{generate, GenerationConfig};
use ember_core::model::BloomForCausalLM;
use ember_core::template::human_assistant;
use ember_core::tokenizer::Tokenizer;

use super::train::{Args, Settings};

const FILES: [(&str, &[u8]); 6] = [
    ("model/config.json", include_bytes!("../../../demo/model/config.json")),
    ("model/tokenizer.json", include_bytes!("../../../demo/model/tokenizer.json")),
    ("model/tokenizer_config.json", include_bytes!("../../../demo/model/tokenizer_config.json")),
    ("model/special_tokens_map.json", include_bytes!("../../../demo/model/special_tokens_map.json")),
    ("model/model.safetensors", include_bytes!("../../../demo/model/model.safetensors")),
    ("data.jsonl", include_bytes!("../../../demo/data.jsonl")),
];
const TRAIN_TOML: &str = include_str!("../../../demo/train.toml");
const QUESTION: &str = include_str!("../../../demo/question.txt");

/// Writes the demo files under the cache directory (once per version of them).
fn unpack() -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    FILES.hash(&mut h);
    let dir = super::data_args::cache_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(format!("demo-{:016x}", h.finish()));
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if !path.is_file() {
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            ember_core::io::write_atomic(&path, bytes)?;
        }
    }
    Ok(dir)
}

/// The demo's settings: demo/train.toml, the unpacked model and data, and any flags given.
pub fn settings(flags: &Args) -> anyhow::Result<(Settings, Option<String>)> {
    let dir = unpack()?;
    let toml_path = dir.join("train.toml");
    ember_core::io::write_atomic(&toml_path, TRAIN_TOML.as_bytes())?;
    let mut defaults = serde_json::to_value(Settings::default())?;
    defaults["model"] = dir.join("model").display().to_string().into();
    defaults["data"] = dir.join("data.jsonl").display().to_string().into();
    defaults["output_dir"] = "ember-demo-output".into();
    let settings = Settings::merge(Some(&toml_path), flags, defaults)?;
    println!("Ember demo: fine-tuning a tiny bundled BLOOM model on {} (run `ember train --help` for your own model and data)", dir.join("data.jsonl").display());
    Ok((settings, Some(QUESTION.trim().to_owned())))
}

/// Prints the model's greedy answer to `question` (in the recipe's template).
pub fn show_answer(
    label: &str,
    model: &BloomForCausalLM,
    tokenizer: &Tokenizer,
    question: &str,
    device: &Device,
) -> anyhow::Result<()> {
    let model = model.clone().valid_model();
    let prompt = tokenizer.encode(&human_assistant(question))?;
    let config = GenerationConfig {
        max_new_tokens: Some(40),
        eos_token_id: tokenizer.eos.as_ref().map(|t| t.id),
        pad_token_id: tokenizer.pad.as_ref().map_or(0, |t| t.id),
        ..GenerationConfig::default()
    };
    let ids = generate(&model, &[prompt], &config, device, |_| {})?;
    println!("{label}:\n  Human: {question}\n  Assistant: {}", tokenizer.decode(&ids[0], true)?.trim());
    Ok(())
}
