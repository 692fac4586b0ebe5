//! Fuzz targets: one per parser of a file that may come from a stranger (docs/SECURITY.md).
//! Each takes arbitrary bytes and must end in an error or a success — never a panic, an abort,
//! more memory than [`memory_bound`] or more time than [`TIME_BOUND`].
//!
//! They run three ways: `tests/fuzz.rs` replays the seeds ([`seeds`]), the hand-written nasty
//! cases ([`nasty`]) and every file under `fuzz/corpus/<target>/` as regular tests, and mutates
//! the seeds for a bounded time ([`mutate`]; CI); `fuzz/libfuzzer.sh` runs the same targets under
//! cargo-fuzz (coverage-guided, a pinned nightly) for longer sessions by hand.

pub mod mutate;
pub mod nasty;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_core::checkpoint::{SafetensorsFile, TensorFile, TorchFile};
use ember_core::data::formats::examples_from_reader;
use ember_core::data::Columns;
use ember_core::lora::inject::lora_report;
use ember_core::lora::LoraConfig;
use ember_core::model::ModelShape;
use ember_core::tokenizer::Tokenizer;
use ember_core::BloomConfig;

/// A fuzz target: a name (its corpus folder) and the function that takes the bytes.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target { name: "safetensors", run: safetensors },
    Target { name: "pytorch_bin", run: pytorch_bin },
    Target { name: "tokenizer_json", run: tokenizer_json },
    Target { name: "tokenizer_config", run: tokenizer_config },
    Target { name: "model_config", run: model_config },
    Target { name: "adapter_config", run: adapter_config },
    Target { name: "dataset_jsonl", run: |b| dataset(b, "jsonl") },
    Target { name: "dataset_json", run: |b| dataset(b, "json") },
    Target { name: "dataset_csv", run: |b| dataset(b, "csv") },
    Target { name: "dataset_parquet", run: |b| dataset(b, "parquet") },
    Target { name: "dataset_arrow", run: |b| dataset(b, "arrow") },
    Target { name: "tokenized_cache", run: tokenized_cache },
];

/// The most time one input may take (in the release profile the tests use).
pub const TIME_BOUND: Duration = Duration::from_secs(2);

/// The most heap one input may hold at once: a fixed allowance for the parsers' own tables plus
/// a multiple of the input, so memory follows the file, never what the file claims.
pub fn memory_bound(input_len: usize) -> usize {
    (64 << 20) + 64 * input_len
}

pub fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no fuzz target {name}"))
}

fn safetensors(bytes: &[u8]) {
    if let Ok(file) = SafetensorsFile::from_bytes("fuzz.safetensors", bytes.to_vec()) {
        read_all(&file);
    }
    // The page's way: the header, then each tensor, read in ranges.
    if let Ok(file) = SafetensorsFile::from_reader("fuzz.safetensors", Box::new(Ranges(bytes.to_vec()))) {
        read_all(&file);
    }
}

/// A file read a range at a time (as the page reads a `File`), refusing ranges past its end.
struct Ranges(Vec<u8>);

impl ember_core::checkpoint::ReadAt for Ranges {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> ember_core::Result<()> {
        let range = usize::try_from(offset).ok().and_then(|start| Some(start..start.checked_add(out.len())?));
        match range.and_then(|r| self.0.get(r)) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(ember_core::Error::invalid(format!("read past the end: {offset} + {}", out.len()))),
        }
    }
}

fn pytorch_bin(bytes: &[u8]) {
    if let Ok(file) = TorchFile::from_bytes("pytorch_model.bin", bytes.to_vec()) {
        read_all(&file);
    }
}

fn read_all(file: &dyn TensorFile) {
    for name in file.names() {
        let _ = file.read(&name);
    }
}

/// A config whose vocabulary admits any tokenizer, so the tokenizer itself is what is tested.
fn roomy_config() -> BloomConfig {
    BloomConfig::with_shape(ember_core::config::MAX_VOCAB, 64, 2, 4)
}

fn exercise(tokenizer: &Tokenizer) {
    let text = "Human: 考试有哪些技巧？ hello  world\n\nAssistant: </s>";
    if let Ok(ids) = tokenizer.encode(text) {
        let _ = tokenizer.decode(&ids, true);
    }
    let _ = tokenizer.encode_prefix(&text.repeat(50), 8);
}

fn tokenizer_json(bytes: &[u8]) {
    if let Ok(tokenizer) = Tokenizer::from_parts(bytes, "tokenizer.json", None, None, &roomy_config()) {
        exercise(&tokenizer);
    }
}

fn tokenizer_config(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let json = std::fs::read(fixtures().join("models/a/tokenizer.json")).expect("fixture tokenizer");
    let config = BloomConfig::from_json(
        &std::fs::read_to_string(fixtures().join("models/a/config.json")).expect("fixture"),
        "config.json",
    )
    .expect("fixture config");
    if let Ok(tokenizer) = Tokenizer::from_parts(&json, "tokenizer.json", Some(&text), Some(&text), &config) {
        exercise(&tokenizer);
    }
}

fn model_config(bytes: &[u8]) {
    if let Ok(config) = BloomConfig::from_json(&String::from_utf8_lossy(bytes), "config.json") {
        let _ = (ModelShape::of_config(&config).base_params(), config.context_limit(), config.head_dim());
        let _ = lora_report(
            &LoraConfig {
                target_modules: Some(ember_core::lora::TargetModules::Names(vec!["dense".into()])),
                ..Default::default()
            },
            ModelShape::of_config(&config),
        );
    }
}

fn adapter_config(bytes: &[u8]) {
    if let Ok(config) = LoraConfig::from_json(&String::from_utf8_lossy(bytes), "adapter_config.json") {
        let _ = lora_report(&config, ModelShape { vocab: 608, hidden: 64, layers: 2, tied: true });
    }
}

fn dataset(bytes: &[u8], extension: &str) {
    let origin = PathBuf::from(format!("fuzz.{extension}"));
    if let Ok(examples) = examples_from_reader(&origin, Cursor::new(bytes.to_vec()), &Columns::default()) {
        // As the pipeline reads them: up to the first error.
        for example in examples {
            if example.is_err() {
                break;
            }
        }
    }
}

fn tokenized_cache(bytes: &[u8]) {
    let _ = ember_core::data::dataset::parse_cache(bytes, 608);
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Valid files to start mutating from, per target: the project's own fixtures.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let f = fixtures();
    let files: Vec<PathBuf> = match target {
        "safetensors" => {
            vec![f.join("adapters/list/adapter_model.safetensors"), f.join("models/a/incremental.safetensors")]
        }
        "pytorch_bin" => vec![f.join("models/a-bin/pytorch_model.bin")],
        "tokenizer_json" => vec![f.join("models/a/tokenizer.json")],
        "tokenizer_config" => {
            vec![f.join("models/a/tokenizer_config.json"), f.join("models/a/special_tokens_map.json")]
        }
        "model_config" => vec![f.join("models/a/config.json"), f.join("models/a-bin/config.json")],
        "adapter_config" => ["list", "regex-embed", "bias-all", "rslora"]
            .iter()
            .map(|a| f.join(format!("adapters/{a}/adapter_config.json")))
            .collect(),
        "dataset_jsonl" => vec![f.join("data/train.jsonl"), f.join("data/columns.jsonl")],
        "dataset_json" => vec![f.join("data/train.json")],
        "dataset_csv" => vec![f.join("data/train.csv")],
        "dataset_parquet" => vec![f.join("data/train.parquet")],
        "dataset_arrow" => std::fs::read_dir(f.join("data/saved"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
            .collect(),
        "tokenized_cache" => return vec![nasty::valid_cache()],
        other => panic!("no seeds for {other}"),
    };
    files.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect()
}

/// Files found by fuzzing (or written by hand) under `fuzz/corpus/<target>/`.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}
