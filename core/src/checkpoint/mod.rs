//! Loading a Hugging Face model directory: `config.json` and the weights, whichever of the
//! four layouts transformers writes (`model.safetensors`, sharded safetensors with an index,
//! `pytorch_model.bin`, sharded `.bin` with an index), with or without the `transformer.`
//! key prefix, in f32, f16 or bf16.

pub mod host;
pub mod safetensors_file;
pub mod torch_pickle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::config::BloomConfig;
use crate::error::{Error, Result};
use crate::model::precision::StoredAs;
use crate::model::vocab::block_ranges;
use crate::model::{BloomForCausalLM, VocabMatrix, WeightDType, WeightSource};
pub use host::{check_finite, HostTensor};
pub use safetensors_file::SafetensorsFile;
pub use torch_pickle::TorchFile;

/// One file of tensors.
pub trait TensorFile: Send + Sync {
    fn path(&self) -> &Path;
    fn names(&self) -> Vec<String>;
    fn read(&self, name: &str) -> Result<HostTensor>;
}

/// Weight files in the order transformers looks for them.
pub const WEIGHT_FILES: [&str; 4] =
    ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"];

/// The tensors of a checkpoint, possibly spread over shards, under `BloomForCausalLM` names.
pub struct Checkpoint {
    origin: PathBuf,
    files: Vec<Box<dyn TensorFile>>,
    /// Canonical name → (file index, name as stored).
    names: HashMap<String, (usize, String)>,
    device: Device,
    /// Load tensors holding NaN or infinities instead of refusing them.
    pub allow_nonfinite: bool,
}

/// BLOOM checkpoints saved from `BloomModel` (bigscience's own) have no `transformer.` prefix;
/// those saved from `BloomForCausalLM` do. Both map to the prefixed name.
pub fn canonical_name(stored: &str) -> String {
    if stored.starts_with("transformer.") || stored.starts_with("lm_head.") {
        stored.to_owned()
    } else {
        format!("transformer.{stored}")
    }
}

impl Checkpoint {
    pub fn from_files(origin: impl Into<PathBuf>, files: Vec<Box<dyn TensorFile>>, device: &Device) -> Self {
        let mut names = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for stored in file.names() {
                names.insert(canonical_name(&stored), (i, stored));
            }
        }
        Checkpoint { origin: origin.into(), files, names, device: device.clone(), allow_nonfinite: false }
    }

    /// Opens the weights of a model directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let found = WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(|| {
            Error::file(dir, format!("no weights found: expected one of {}", WEIGHT_FILES.join(", ")))
        })?;
        let name = found.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let shard_paths = if name.ends_with(".index.json") { shards_of_index(&found)? } else { vec![found.clone()] };
        let files = shard_paths.iter().map(|p| open_tensor_file(p)).collect::<Result<Vec<_>>>()?;
        Ok(Self::from_files(found, files, device))
    }

    pub fn num_tensors(&self) -> usize {
        self.names.len()
    }

    /// Reads one tensor by canonical name, widened to f32, checking its shape.
    pub fn host_tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (index, stored) = self.names.get(name).ok_or_else(|| {
            let mut some: Vec<&String> = self.names.keys().collect();
            some.sort();
            let some: Vec<&str> = some.iter().take(4).map(|s| s.as_str()).collect();
            Error::file(
                &self.origin,
                format!(
                    "tensor `{name}` is missing (the checkpoint has {} tensors, e.g. {}); does config.json describe these weights?",
                    self.names.len(),
                    some.join(", ")
                ),
            )
        })?;
        let file = &self.files[*index];
        let tensor = file.read(stored)?;
        if tensor.shape != shape {
            return Err(Error::file(
                file.path(),
                format!("tensor `{stored}` has shape {:?} but config.json implies {shape:?}", tensor.shape),
            ));
        }
        if !self.allow_nonfinite {
            check_finite(file.path(), stored, &tensor.data)?;
        }
        Ok(tensor)
    }
}

impl WeightSource for Checkpoint {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let host = self.host_tensor(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(host.data, shape), &self.device))
    }

    /// Uploads the blocks from the last one back, shrinking the host copy as it goes, so the
    /// host holds the matrix plus one block at most.
    fn vocab_matrix(&mut self, name: &str, shape: [usize; 2], rows: usize) -> Result<VocabMatrix> {
        let [vocab, hidden] = shape;
        let mut data = self.host_tensor(name, &shape)?.data;
        let mut blocks = Vec::new();
        for range in block_ranges(vocab, rows).into_iter().rev() {
            let block = data.split_off(range.start * hidden);
            data.shrink_to_fit();
            blocks.push(Tensor::from_data(TensorData::new(block, [range.len(), hidden]), &self.device));
        }
        blocks.reverse();
        Ok(VocabMatrix::new(blocks, false))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn open_tensor_file(path: &Path) -> Result<Box<dyn TensorFile>> {
    if !path.is_file() {
        return Err(Error::file(path, "weight shard listed in the index is missing"));
    }
    Ok(if is_safetensors(path) { Box::new(SafetensorsFile::open(path)?) } else { Box::new(TorchFile::open(path)?) })
}

/// Weight files are safetensors by their extension, torch pickles otherwise.
fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// A weight file already in memory (the browser's files), read by the same rule as on disk.
pub fn tensor_file_from_bytes(name: &str, bytes: std::sync::Arc<Vec<u8>>) -> Result<Box<dyn TensorFile>> {
    Ok(if is_safetensors(Path::new(name)) {
        Box::new(SafetensorsFile::from_bytes(name, bytes)?)
    } else {
        Box::new(TorchFile::from_bytes(name, bytes)?)
    })
}

/// The shard files named by a `*.index.json` (transformers' `{"weight_map": {name: file}}`).
#[cfg(not(target_arch = "wasm32"))]
fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    use std::collections::BTreeSet;
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "no \"weight_map\" object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if files.is_empty() {
        return Err(Error::file(index, "\"weight_map\" names no files"));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// A Hugging Face model directory: its config, and where its weights and tokenizer are.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: BloomConfig,
}

/// How a model's weights are loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Stored precision of the frozen base weights.
    pub dtype: WeightDType,
    /// Accept weights holding NaN or infinities (refused by default: they make every output NaN).
    pub allow_nonfinite: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "model directory not found"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::file(
                &config_path,
                "missing: a model directory needs config.json (as written by save_pretrained)",
            ));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = BloomConfig::from_json(&text, &config_path.display().to_string())?;
        Ok(ModelDir { dir: dir.to_path_buf(), config })
    }

    /// Loads the model's weights onto `device`, in f32.
    pub fn load_model(&self, device: &Device) -> Result<BloomForCausalLM> {
        self.load(device, &LoadOptions::default())
    }

    /// Loads the model's weights onto `device` as `options` say.
    pub fn load(&self, device: &Device, options: &LoadOptions) -> Result<BloomForCausalLM> {
        let mut checkpoint = Checkpoint::open(&self.dir, device)?;
        checkpoint.allow_nonfinite = options.allow_nonfinite;
        BloomForCausalLM::from_weights(&self.config, &mut StoredAs { inner: &mut checkpoint, dtype: options.dtype })
    }
}

/// Random weights of a given shape, initialised as transformers' `_init_weights` does
/// (normal(0, 0.02) matrices, zero biases, unit layer-norm scales), for benchmarks and tests
/// that need no checkpoint.
pub struct RandomWeights {
    pub device: Device,
    pub std: f64,
}

impl RandomWeights {
    pub fn new(device: &Device, seed: u64) -> Self {
        device.seed(seed);
        RandomWeights { device: device.clone(), std: 0.02 }
    }
}

impl WeightSource for RandomWeights {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let is_norm = name.contains("layernorm") || name.contains("ln_f");
        Ok(match (D, is_norm, name.ends_with(".bias")) {
            (_, true, false) => Tensor::ones(shape, &self.device),
            (1, _, _) => Tensor::zeros(shape, &self.device),
            _ => Tensor::random(shape, Distribution::Normal(0.0, self.std), &self.device),
        })
    }

    fn vocab_matrix(&mut self, name: &str, [vocab, hidden]: [usize; 2], rows: usize) -> Result<VocabMatrix> {
        let blocks = block_ranges(vocab, rows).into_iter().map(|r| self.tensor(name, [r.len(), hidden]));
        Ok(VocabMatrix::new(blocks.collect::<Result<_>>()?, false))
    }
}

/// A random-weight model of `config`'s shape, its weights stored as `dtype`.
pub fn random_model(config: &BloomConfig, device: &Device, seed: u64, dtype: WeightDType) -> BloomForCausalLM {
    BloomForCausalLM::from_weights(config, &mut StoredAs { inner: &mut RandomWeights::new(device, seed), dtype })
        .expect("random weights always have the requested shapes")
}
