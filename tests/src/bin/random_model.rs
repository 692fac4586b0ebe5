//! Writes a model folder of a published BLOOM shape with random weights (what is in it:
//! [`ember_tests::random_model`]):
//!
//! ```sh
//! random_model --shape bloom-560m [--layers N] [--dtype f16|bf16|f32] [--shard-mb N] --out DIR
//! ```

use std::io::BufWriter;
use std::path::PathBuf;

use ember_core::BloomConfig;
use ember_tests::random_model::{tokenizer_json, write_sharded, write_weights};

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
    match flag("--shard-mb") {
        Some(mb) => write_sharded(&config, &dtype, &out, mb.parse::<usize>().expect("--shard-mb N") << 20),
        None => {
            let file = std::fs::File::create(out.join("model.safetensors")).unwrap();
            write_weights(&config, &dtype, BufWriter::with_capacity(1 << 22, file));
        }
    }
}
