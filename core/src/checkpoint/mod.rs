//! Loading a Hugging Face model directory: `config.json` and the weights, whichever of the
//! four layouts transformers writes (`model.safetensors`, sharded safetensors with an index,
//! `pytorch_model.bin`, sharded `.bin` with an index), with or without the `transformer.`
//! key prefix, in f32, f16 or bf16.

pub mod host;
pub mod safetensors_file;
pub mod torch_pickle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Distribution, Tensor};

use crate::config::BloomConfig;
use crate::error::{Error, Result};
use crate::model::bloom::{is_layer_norm, LM_HEAD, TRANSFORMER};
use crate::model::precision::StoredAs;
use crate::model::vocab::block_ranges;
use crate::model::{BloomForCausalLM, VocabMatrix, WeightDType, WeightSource};
use crate::quant::{QuantConfig, Quantizing};
pub use host::{check_finite, HostTensor, ReadAt};
use host::{check_finite_half, to_f32, StoredDType};
pub use safetensors_file::SafetensorsFile;
pub use torch_pickle::TorchFile;

/// One file of tensors.
pub trait TensorFile: Send + Sync {
    fn path(&self) -> &Path;
    fn names(&self) -> Vec<String>;
    fn read(&self, name: &str) -> Result<HostTensor>;

    /// A tensor's shape and little-endian bytes when it is stored as `dtype`, else `None`: a
    /// half-precision weight kept in its precision needs no conversion through f32.
    fn read_as_stored(&self, _name: &str, _dtype: StoredDType) -> Result<Option<(Vec<usize>, Vec<u8>)>> {
        Ok(None)
    }

    /// Rows `rows` of a 2-D tensor as stored (dtype, the whole tensor's shape, the rows' bytes),
    /// for a file read in ranges; `None` where reading the whole tensor costs nothing more (a
    /// file mapped or in memory).
    fn read_rows(&self, _name: &str, _rows: std::ops::Range<usize>) -> Result<Option<StoredRows>> {
        Ok(None)
    }

    /// A U8 tensor's shape and bytes (the packed codes of a 4-bit weight).
    fn read_bytes(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        Err(Error::file(
            self.path(),
            format!("tensor `{name}` is a 4-bit weight, which ember reads from safetensors files only (save_pretrained's default)"),
        ))
    }
}

/// Some rows of a tensor as stored: its dtype, the whole tensor's shape, the rows' bytes.
pub type StoredRows = (StoredDType, Vec<usize>, Vec<u8>);

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
    let under = |module: &str| stored.strip_prefix(module).is_some_and(|rest| rest.starts_with('.'));
    if under(TRANSFORMER) || under(LM_HEAD) {
        stored.to_owned()
    } else {
        format!("{TRANSFORMER}.{stored}")
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

    /// Whether the checkpoint has a tensor of this canonical name.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The file holding `name` (the checkpoint's first file when it has no such tensor).
    pub fn origin_of(&self, name: &str) -> PathBuf {
        let index = self.names.get(name).map_or(0, |(i, _)| *i);
        self.files.get(index).map_or_else(|| self.origin.clone(), |f| f.path().to_path_buf())
    }

    /// A U8 tensor's shape and bytes, by canonical name.
    pub fn bytes(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let (index, stored) = self.entry(name)?;
        self.files[index].read_bytes(stored)
    }

    /// A 1-D float tensor of `len` values, by canonical name, checked finite.
    pub fn floats(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.host_tensor(name, &[len]).map(|t| t.data)
    }

    /// Reads one tensor by canonical name, widened to f32, checking its shape.
    pub fn host_tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        if crate::quant::checkpoint::is_stored_4bit(self, name) {
            if let &[rows, cols] = shape {
                let q = crate::quant::checkpoint::read_4bit(self, name, [rows, cols])?;
                return Ok(HostTensor { shape: shape.to_vec(), data: q.dequantize() });
            }
        }
        let (index, stored) = self.entry(name)?;
        let file = &self.files[index];
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

    /// A tensor's bytes when the file stores it in `dtype` (f16 or bf16), checked as
    /// [`host_tensor`](Self::host_tensor) checks values; `None` when it must be converted.
    fn host_as_stored(&self, name: &str, shape: &[usize], dtype: WeightDType) -> Result<Option<Vec<u8>>> {
        let stored_dtype = match dtype {
            WeightDType::F16 => StoredDType::F16,
            WeightDType::Bf16 => StoredDType::BF16,
            WeightDType::F32 => return Ok(None),
        };
        Ok(self.host_half(name, shape, &[stored_dtype])?.map(|(_, bytes)| bytes))
    }

    /// A tensor's bytes and dtype when the file stores it in one of `accept` (half precisions),
    /// checked as [`host_tensor`](Self::host_tensor) checks values (on the bits); `None`
    /// otherwise, without reading it.
    fn host_half(&self, name: &str, shape: &[usize], accept: &[StoredDType]) -> Result<Option<(StoredDType, Vec<u8>)>> {
        if crate::quant::checkpoint::is_stored_4bit(self, name) {
            return Ok(None);
        }
        let (index, stored) = self.entry(name)?;
        let file = &self.files[index];
        for &dtype in accept {
            let Some((found, bytes)) = file.read_as_stored(stored, dtype)? else { continue };
            if found != shape {
                return Err(Error::file(
                    file.path(),
                    format!("tensor `{stored}` has shape {found:?} but config.json implies {shape:?}"),
                ));
            }
            if !self.allow_nonfinite {
                check_finite_half(file.path(), stored, &bytes, dtype)?;
            }
            return Ok(Some((dtype, bytes)));
        }
        Ok(None)
    }

    /// The `[vocab, hidden]` matrix read a block of rows at a time from a file read in ranges
    /// (the page's), so the host holds one block, not the matrix; `None` for other files.
    fn vocab_blocks_read_in_ranges(
        &self,
        name: &str,
        [vocab, hidden]: [usize; 2],
        rows: usize,
        dtype: WeightDType,
    ) -> Result<Option<Vec<Tensor<2>>>> {
        if crate::quant::checkpoint::is_stored_4bit(self, name) {
            return Ok(None);
        }
        let (index, stored) = self.entry(name)?;
        let file = &self.files[index];
        let mut blocks = Vec::new();
        for range in block_ranges(vocab, rows) {
            let Some((file_dtype, found, bytes)) = file.read_rows(stored, range.clone())? else { return Ok(None) };
            if found != [vocab, hidden] {
                return Err(Error::file(
                    file.path(),
                    format!("tensor `{stored}` has shape {found:?} but config.json implies {:?}", [vocab, hidden]),
                ));
            }
            let as_stored = matches!(
                (file_dtype, dtype),
                (StoredDType::F16, WeightDType::F16) | (StoredDType::BF16, WeightDType::Bf16)
            );
            let block = if as_stored {
                if !self.allow_nonfinite {
                    check_finite_half(file.path(), stored, &bytes, file_dtype)?;
                }
                dtype.upload_bytes(bytes, [range.len(), hidden], &self.device)
            } else {
                let values = to_f32(&bytes, file_dtype);
                if !self.allow_nonfinite {
                    check_finite(file.path(), stored, &values)?;
                }
                dtype.upload(values, [range.len(), hidden], &self.device)
            };
            blocks.push(handed_off(block));
        }
        Ok(Some(blocks))
    }

    /// The file index and stored name of a tensor, or an error listing what the checkpoint has.
    fn entry(&self, name: &str) -> Result<(usize, &str)> {
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
        Ok((*index, stored.as_str()))
    }
}

impl WeightSource for Checkpoint {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.tensor_as(name, shape, WeightDType::F32)
    }

    fn tensor_as<const D: usize>(&mut self, name: &str, shape: [usize; D], dtype: WeightDType) -> Result<Tensor<D>> {
        if let Some(bytes) = self.host_as_stored(name, &shape, dtype)? {
            return Ok(handed_off(dtype.upload_bytes(bytes, shape, &self.device)));
        }
        Ok(handed_off(dtype.upload(self.host_tensor(name, &shape)?.data, shape, &self.device)))
    }

    fn stored_4bit(&mut self, name: &str, shape: [usize; 2]) -> Result<Option<crate::quant::Quantized>> {
        if !crate::quant::checkpoint::is_stored_4bit(self, name) {
            return Ok(None);
        }
        crate::quant::checkpoint::read_4bit(self, name, shape).map(Some)
    }

    fn host_values(&mut self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>> {
        Ok(self.host_tensor(name, &shape)?.data)
    }

    /// Uploads the blocks from the last one back, shrinking the host copy as it goes, so the
    /// host holds the matrix plus one block at most; each block converted to `dtype` on the host.
    fn vocab_matrix(&mut self, name: &str, shape: [usize; 2], rows: usize, dtype: WeightDType) -> Result<VocabMatrix> {
        if let Some(blocks) = self.vocab_blocks_read_in_ranges(name, shape, rows, dtype)? {
            return Ok(VocabMatrix::new(blocks, false));
        }
        let [vocab, hidden] = shape;
        let device = &self.device;
        let accept: &[StoredDType] = match dtype {
            WeightDType::F16 => &[StoredDType::F16],
            WeightDType::Bf16 => &[StoredDType::BF16],
            WeightDType::F32 => &[StoredDType::F16, StoredDType::BF16],
        };
        let blocks = match self.host_half(name, &shape, accept)? {
            Some((_, bytes)) if dtype != WeightDType::F32 => {
                blocks_from_the_end(bytes, vocab, rows, hidden * dtype.bytes(), |block, n| {
                    dtype.upload_bytes(block, [n, hidden], device)
                })
            }
            // Half-precision values kept f32 are widened a block at a time: the host holds the
            // file's matrix and one f32 block, not the whole matrix widened (twice its size).
            Some((stored, bytes)) => blocks_from_the_end(bytes, vocab, rows, hidden * stored.size(), |block, n| {
                dtype.upload(to_f32(&block, stored), [n, hidden], device)
            }),
            None => blocks_from_the_end(self.host_tensor(name, &shape)?.data, vocab, rows, hidden, |block, n| {
                dtype.upload(block, [n, hidden], device)
            }),
        };
        Ok(VocabMatrix::new(blocks, false))
    }
}

/// `tensor`, its upload handed to the device now: a GPU backend keeps an upload's host copy
/// until its queue is flushed, so without this a model's uploads pile up in host memory (the
/// page's heap on WebGPU reached the whole f32 vocabulary matrix). Nothing on the CPU.
fn handed_off<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    let _ = tensor.device().flush();
    tensor
}

/// A `[vocab, ...]` matrix held row-major in `data` (`row_len` items a row) uploaded in blocks of
/// `rows` rows, from the last block back, shrinking `data` as it goes: the host holds the matrix
/// plus one block at most.
fn blocks_from_the_end<T>(
    mut data: Vec<T>,
    vocab: usize,
    rows: usize,
    row_len: usize,
    upload: impl Fn(Vec<T>, usize) -> Tensor<2>,
) -> Vec<Tensor<2>> {
    let mut blocks = Vec::new();
    for range in block_ranges(vocab, rows).into_iter().rev() {
        let block = data.split_off(range.start * row_len);
        data.shrink_to_fit();
        blocks.push(handed_off(upload(block, range.len())));
    }
    blocks.reverse();
    blocks
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
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shard_names(&text, &index.display().to_string())?.into_iter().map(|f| dir.join(f)).collect())
}

/// The distinct files an index's `weight_map` names, sorted.
pub fn shard_names(index_json: &str, origin: &str) -> Result<std::collections::BTreeSet<String>> {
    let json: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| Error::file(origin, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(origin, "no \"weight_map\" object"))?;
    let files: std::collections::BTreeSet<String> =
        map.values().filter_map(|v| v.as_str()).map(str::to_owned).collect();
    if files.is_empty() {
        return Err(Error::file(origin, "\"weight_map\" names no files"));
    }
    Ok(files)
}

/// A Hugging Face model directory: its config, and where its weights and tokenizer are.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: BloomConfig,
}

/// How a model's weights are loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Stored precision of the frozen base weights.
    pub dtype: WeightDType,
    /// Accept weights holding NaN or infinities (refused by default: they make every output NaN).
    pub allow_nonfinite: bool,
    /// Quantize the Linear layers to 4 bits (QLoRA); a model saved 4-bit loads 4-bit without it.
    pub quant: Option<QuantConfig>,
}

impl LoadOptions {
    /// The 4-bit settings a model of `config` loads with: those asked for, else those it was
    /// saved with.
    pub fn quantization(&self, config: &BloomConfig) -> Option<QuantConfig> {
        self.quant.clone().or_else(|| config.quantization_config.clone())
    }
}

/// `config`'s model from `weights` stored as `options` say: 4-bit Linear layers where asked
/// (or saved so), the rest in `options.dtype`.
pub fn build_model(
    config: &BloomConfig,
    weights: &mut impl WeightSource,
    device: &Device,
    options: &LoadOptions,
) -> Result<BloomForCausalLM> {
    let mut stored = StoredAs { inner: weights, dtype: options.dtype };
    match options.quantization(config) {
        Some(quant) => BloomForCausalLM::from_weights(
            config,
            &mut Quantizing { inner: &mut stored, config: &quant, device: device.clone() },
        ),
        None => BloomForCausalLM::from_weights(config, &mut stored),
    }
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
        build_model(&self.config, &mut checkpoint, device, options)
    }
}

/// Random weights of a given shape, initialised as transformers' `_init_weights` does
/// (normal(0, 0.02) matrices, zero biases, unit layer-norm scales), for benchmarks and tests
/// that need no checkpoint.
pub struct RandomWeights {
    pub device: Device,
    pub std: f64,
    /// Draws the weights made on the host (those quantized as they load).
    host_rng: rand::rngs::StdRng,
}

impl RandomWeights {
    pub fn new(device: &Device, seed: u64) -> Self {
        use rand::SeedableRng;
        device.seed(seed);
        RandomWeights { device: device.clone(), std: 0.02, host_rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }
}

impl WeightSource for RandomWeights {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let is_norm = is_layer_norm(name);
        Ok(match (D, is_norm, name.ends_with(".bias")) {
            (_, true, false) => Tensor::ones(shape, &self.device),
            (1, _, _) => Tensor::zeros(shape, &self.device),
            _ => Tensor::random(shape, Distribution::Normal(0.0, self.std), &self.device),
        })
    }

    fn vocab_matrix(
        &mut self,
        name: &str,
        [vocab, hidden]: [usize; 2],
        rows: usize,
        dtype: WeightDType,
    ) -> Result<VocabMatrix> {
        let blocks = block_ranges(vocab, rows).into_iter().map(|r| self.tensor_as(name, [r.len(), hidden], dtype));
        Ok(VocabMatrix::new(blocks.collect::<Result<_>>()?, false))
    }

    /// Half-precision matrices are drawn on the host and converted there, as a checkpoint's are
    /// read: a benchmark's device then holds what loading a real model leaves on it.
    fn tensor_as<const D: usize>(&mut self, name: &str, shape: [usize; D], dtype: WeightDType) -> Result<Tensor<D>> {
        if dtype == WeightDType::F32 || D != 2 {
            return Ok(dtype.stored(self.tensor(name, shape)?));
        }
        let values = self.host_values(name, [shape[0], shape[1]])?;
        Ok(dtype.upload(values, shape, &self.device))
    }

    /// Made on the host, as a checkpoint's weights are read there before quantizing: a
    /// benchmark's device then holds what loading a real 4-bit model leaves on it, not an f32
    /// copy of each weight as well. Normal(0, std) by Box-Muller.
    fn host_values(&mut self, _name: &str, [rows, cols]: [usize; 2]) -> Result<Vec<f32>> {
        use rand::Rng;
        let n = rows * cols;
        let mut values = Vec::with_capacity(n + 1);
        while values.len() < n {
            let (u, v): (f64, f64) = (self.host_rng.random(), self.host_rng.random());
            let radius = self.std * (-2.0 * (1.0 - u).ln()).sqrt();
            let angle = std::f64::consts::TAU * v;
            values.extend([(radius * angle.cos()) as f32, (radius * angle.sin()) as f32]);
        }
        values.truncate(n);
        Ok(values)
    }
}

/// A random-weight model of `config`'s shape, its weights stored as `options` say.
pub fn random_model(config: &BloomConfig, device: &Device, seed: u64, options: &LoadOptions) -> BloomForCausalLM {
    build_model(config, &mut RandomWeights::new(device, seed), device, options)
        .expect("random weights always have the requested shapes")
}
