//! Writes a model folder of a published BLOOM shape with random weights, for tests and
//! measurements at real size without committing gigabytes:
//!
//! ```sh
//! random_model --shape bloom-560m [--layers N] [--dtype f16|bf16|f32] --out DIR
//! ```
//!
//! `config.json` (the shape, `torch_dtype`), `tokenizer.json` (a word-level tokenizer with as
//! many tokens as the vocabulary: ids 0-3 are `<unk> <s> </s> <pad>`, then some English words,
//! then `t{id}`) and `model.safetensors` (the embedding uniform in ±0.035, about transformers'
//! normal(0, 0.02) spread; the blocks' matrices in ±0.1, so that each block changes the
//! residual stream and greedy tokens are not just the tied head echoing the last input token;
//! layer norms 1 and 0; biases 0), written tensor by tensor.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let shape = flag("--shape").unwrap_or_else(|| "bloom-560m".into());
    let dtype = flag("--dtype").unwrap_or_else(|| "f16".into());
    let out = PathBuf::from(flag("--out").expect("--out DIR"));
    let mut config = BloomConfig::named_shape(&shape).unwrap_or_else(|| panic!("unknown shape {shape}"));
    if let Some(layers) = flag("--layers") {
        config.n_layer = layers.parse().expect("--layers N");
    }
    config.torch_dtype = Some(
        match dtype.as_str() {
            "f16" => "float16",
            "bf16" => "bfloat16",
            "f32" => "float32",
            other => panic!("--dtype {other}: f16, bf16 or f32"),
        }
        .into(),
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    std::fs::write(out.join("tokenizer.json"), tokenizer_json(config.vocab_size)).unwrap();
    write_weights(&config, &dtype, &out.join("model.safetensors"));
}

fn tokenizer_json(vocab: usize) -> String {
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

fn write_weights(config: &BloomConfig, dtype: &str, path: &std::path::Path) {
    let tensors = tensors(config);
    let width = if dtype == "f32" { 4 } else { 2 };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &tensors {
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
    let mut file = BufWriter::with_capacity(1 << 22, std::fs::File::create(path).unwrap());
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut buffer = Vec::with_capacity(1 << 20);
    for (_, shape, fill) in &tensors {
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
