//! A model folder of a published BLOOM shape with random weights, for tests and measurements at
//! real size without committing gigabytes (the `random_model` binary writes one to disk; tests
//! that need the bytes in memory, as the page holds them, call [`write_weights`] on a `Vec`).
//!
//! `config.json` (the shape, `torch_dtype`), `tokenizer.json` (a word-level tokenizer with as
//! many tokens as the vocabulary: ids 0-3 are `<unk> <s> </s> <pad>`, then some English words,
//! then `t{id}`) and `model.safetensors` (the embedding uniform in ±0.035, about transformers'
//! normal(0, 0.02) spread; the blocks' matrices in ±0.1, so that each block changes the
//! residual stream and greedy tokens are not just the tied head echoing the last input token;
//! layer norms 1 and 0; biases 0), written tensor by tensor.

use std::io::Write;

use ember_core::model::{ModelShape, ModuleKind};
use ember_core::BloomConfig;
use half::{bf16, f16};
use rand::{Rng, SeedableRng};

/// Words the tokenizer knows by name, so prompts of tests read as text.
const WORDS: &[&str] = &[
    "Human",
    "Assistant",
    ":",
    "?",
    "!",
    ".",
    ",",
    "hello",
    "what",
    "does",
    "Ember",
    "do",
    "the",
    "a",
    "is",
    "of",
    "and",
    "to",
    "in",
    "it",
    "you",
    "I",
    "how",
    "are",
    "train",
    "model",
    "browser",
    "this",
    "that",
    "with",
];

pub fn tokenizer_json(vocab: usize) -> String {
    let specials = ["<unk>", "<s>", "</s>", "<pad>"];
    let mut words: Vec<String> = specials.iter().chain(WORDS).map(|w| w.to_string()).collect();
    words.extend((words.len()..vocab).map(|id| format!("t{id}")));
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(id, w)| (w.clone(), id.into())).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// The checkpoint's tensors: names and shapes from the module list, as transformers saves them.
fn tensors(config: &BloomConfig) -> Vec<(String, Vec<usize>, Fill)> {
    let mut out = Vec::new();
    for module in ModelShape::of_config(config).modules() {
        let name = &module.name;
        match module.kind {
            // A tied head is the embedding matrix, saved once.
            ModuleKind::Linear { .. } if config.tie_word_embeddings && name == ember_core::model::bloom::LM_HEAD => {}
            ModuleKind::Linear { out_features, in_features, bias } => {
                out.push((format!("{name}.weight"), vec![out_features, in_features], Fill::Random(0.1)));
                if bias {
                    out.push((format!("{name}.bias"), vec![out_features], Fill::Zero));
                }
            }
            ModuleKind::Embedding { rows, width } => {
                out.push((format!("{name}.weight"), vec![rows, width], Fill::Random(0.035)))
            }
            ModuleKind::LayerNorm { width } => {
                out.push((format!("{name}.weight"), vec![width], Fill::One));
                out.push((format!("{name}.bias"), vec![width], Fill::Zero));
            }
            ModuleKind::Container | ModuleKind::Stateless => {}
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Fill {
    /// Uniform in ±this.
    Random(f32),
    Zero,
    One,
}

/// `model.safetensors` of `config` in `dtype` (`f16`, `bf16` or `f32`), written to `out`.
pub fn write_weights(config: &BloomConfig, dtype: &str, out: impl Write) {
    write_tensors(&tensors(config), dtype, out, 0);
}

/// The weights in shards of at most `max_shard_bytes` of tensors (one tensor per shard where
/// a tensor is larger), named and indexed as transformers' `save_pretrained` names them.
pub fn write_sharded(config: &BloomConfig, dtype: &str, dir: &std::path::Path, max_shard_bytes: usize) {
    let width = if dtype == "f32" { 4 } else { 2 };
    let mut shards: Vec<Vec<(String, Vec<usize>, Fill)>> = vec![Vec::new()];
    let mut size = 0;
    for tensor in tensors(config) {
        let bytes = tensor.1.iter().product::<usize>() * width;
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().unwrap().push(tensor);
    }
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        for (tensor, _, _) in shard {
            weight_map.insert(tensor.clone(), name.clone().into());
        }
        let file = std::fs::File::create(dir.join(&name)).unwrap();
        write_tensors(shard, dtype, std::io::BufWriter::with_capacity(1 << 22, file), i as u64);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn write_tensors(tensors: &[(String, Vec<usize>, Fill)], dtype: &str, out: impl Write, seed: u64) {
    let width = if dtype == "f32" { 4 } else { 2 };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in tensors {
        let bytes = shape.iter().product::<usize>() * width;
        let st_dtype = match dtype {
            "f16" => "F16",
            "bf16" => "BF16",
            _ => "F32",
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = out;
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buffer = Vec::with_capacity(1 << 20);
    for (_, shape, fill) in tensors {
        let mut left: usize = shape.iter().product();
        while left > 0 {
            let n = left.min(1 << 18);
            buffer.clear();
            for _ in 0..n {
                let value: f32 = match fill {
                    Fill::Random(bound) => rng.random_range(-*bound..*bound),
                    Fill::Zero => 0.0,
                    Fill::One => 1.0,
                };
                match dtype {
                    "f16" => buffer.extend_from_slice(&f16::from_f32(value).to_le_bytes()),
                    "bf16" => buffer.extend_from_slice(&bf16::from_f32(value).to_le_bytes()),
                    _ => buffer.extend_from_slice(&value.to_le_bytes()),
                }
            }
            file.write_all(&buffer).unwrap();
            left -= n;
        }
    }
    file.flush().unwrap();
}
