//! Adapters on disk in peft's format: `adapter_config.json` and `adapter_model.safetensors`
//! (peft's key names, f32), so peft loads ember's adapters and ember loads peft's.

use std::borrow::Cow;
use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, View};
use serde_json::{Map, Value};

use super::config::LoraConfig;
use super::inject::{apply_lora, LoraReport};
use super::slots::adapter_slots;
use crate::checkpoint::TensorFile;
use crate::error::{Error, Result};
use crate::model::BloomForCausalLM;
use crate::readback::{blocking, values};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Written by older peft versions; read for compatibility.
pub const LEGACY_WEIGHTS_FILE: &str = "adapter_model.bin";

/// The `adapter_config.json` peft 0.21 writes for `config`: every field peft writes, with
/// peft's defaults for those ember does not model, keys sorted as peft sorts them.
pub fn config_json(config: &LoraConfig) -> String {
    let mut out: Map<String, Value> =
        serde_json::from_str(include_str!("peft_adapter_config.json")).expect("valid template");
    if let Value::Object(ours) = serde_json::to_value(config).expect("config serialises") {
        out.extend(ours);
    }
    out.insert("inference_mode".into(), Value::Bool(true));
    let sorted: std::collections::BTreeMap<String, Value> = out.into_iter().collect();
    serde_json::to_string_pretty(&sorted).expect("serialises")
}

/// A model tensor read from the device only when the file writer reaches it, so saving a large
/// adapter or merged model never holds a second full copy in memory.
pub struct LazyTensor {
    shape: Vec<usize>,
    dtype: Dtype,
    /// The tensor's little-endian bytes.
    read: Box<dyn Fn() -> Result<Vec<u8>>>,
}

impl LazyTensor {
    /// An f32 tensor whose values `read` gives when it is written.
    pub fn new(shape: Vec<usize>, read: impl Fn() -> Result<Vec<f32>> + 'static) -> Self {
        let read = move || read().map(|values| values.iter().flat_map(|v| v.to_le_bytes()).collect());
        LazyTensor { shape, dtype: Dtype::F32, read: Box::new(read) }
    }

    /// An f32 tensor of known values.
    pub fn floats(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self::new(shape, move || Ok(values.clone()))
    }

    /// A U8 tensor of known bytes (the packed codes of a 4-bit weight).
    pub fn bytes(shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        LazyTensor { shape, dtype: Dtype::U8, read: Box::new(move || Ok(bytes.clone())) }
    }
}

impl View for &LazyTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // `View` cannot fail, so a device failure here ends the process with its message; the
        // file being written is a temporary one and is never renamed into place.
        Cow::Owned((self.read)().unwrap_or_else(|e| panic!("{e}")))
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

pub fn to_host(tensor: Tensor<1>) -> Result<Vec<f32>> {
    blocking(values(tensor, "reading weights"))
}

/// The adapter's tensors under peft's keys.
pub fn adapter_tensors(model: &BloomForCausalLM, config: &LoraConfig) -> Result<Vec<(String, LazyTensor)>> {
    adapter_slots(config, model)?
        .into_iter()
        .map(|slot| {
            let (shape, value) = slot.read(model);
            Ok((slot.key(), LazyTensor::new(shape, move || to_host(value.clone()))))
        })
        .collect()
}

fn metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_owned(), "pt".to_owned())]))
}

/// `adapter_model.safetensors` as bytes (for the browser, which has no file system).
pub fn adapter_safetensors_bytes(model: &BloomForCausalLM, config: &LoraConfig) -> Result<Vec<u8>> {
    blocking(adapter_safetensors_bytes_async(model, config))
}

/// [`adapter_safetensors_bytes`] for platforms that cannot block on the device (the browser):
/// every tensor is read back first, then serialised.
pub async fn adapter_safetensors_bytes_async(model: &BloomForCausalLM, config: &LoraConfig) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for slot in adapter_slots(config, model)? {
        let (shape, value) = slot.read(model);
        let data = values(value, "reading the adapter").await?;
        tensors.push((slot.key(), LazyTensor::new(shape, move || Ok(data.clone()))));
    }
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.clone(), t)), metadata())
        .map_err(|e| Error::invalid(format!("cannot serialise the adapter: {e}")))
}

/// Writes the adapter directory; each file is written to a temporary name and renamed, so an
/// interrupted save never leaves a half-written adapter.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_adapter(model: &BloomForCausalLM, config: &LoraConfig, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_write(dir, e))?;
    let tensors = adapter_tensors(model, config)?;
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, metadata())?;
    crate::io::write_atomic(&dir.join(CONFIG_FILE), config_json(config).as_bytes())
}

/// Writes `tensors` as a safetensors file, atomically (temporary file + rename), with the
/// permissions any new file gets here (the umask's, as Python's writers leave theirs):
/// safetensors writes through a temporary file of its own, which it creates 0600.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_safetensors<'a>(
    path: &std::path::Path,
    tensors: impl IntoIterator<Item = &'a (String, LazyTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    crate::io::write_atomic_with(path, |tmp| {
        let usual =
            std::fs::File::create(tmp).and_then(|f| f.metadata()).map_err(|e| Error::io_write(tmp, e))?.permissions();
        safetensors::serialize_to_file(tensors.into_iter().map(|(k, t)| (k.clone(), t)), metadata, tmp)
            .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        std::fs::set_permissions(tmp, usual).map_err(|e| Error::io_write(tmp, e))
    })
}

/// Adds the adapter described by `config` to `model` and fills it from `file`; tensors holding
/// NaN or infinities are refused unless `allow_nonfinite`.
pub fn load_adapter_tensors(
    model: &mut BloomForCausalLM,
    config: &LoraConfig,
    file: &dyn TensorFile,
    device: &Device,
    allow_nonfinite: bool,
) -> Result<LoraReport> {
    let report = apply_lora(model, config, device)?;
    let stored: std::collections::HashSet<String> = file.names().into_iter().collect();
    for slot in adapter_slots(config, model)? {
        let key = slot.key();
        if !stored.contains(&key) {
            return Err(Error::file(
                file.path(),
                format!("tensor `{key}` is missing; was this adapter saved for a different base model or config?"),
            ));
        }
        let host = file.read(&key)?;
        let expected = slot.shape(model);
        if host.shape != expected {
            return Err(Error::file(
                file.path(),
                format!(
                    "tensor `{key}` has shape {:?} but the base model needs {expected:?}: the adapter does not fit this model",
                    host.shape
                ),
            ));
        }
        if !allow_nonfinite {
            crate::checkpoint::check_finite(file.path(), &key, &host.data)?;
        }
        let n = host.data.len();
        slot.write(model, Tensor::from_data(TensorData::new(host.data, [n]), device));
    }
    Ok(report)
}

/// The `adapter_config.json` of a peft adapter directory.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_adapter_config(dir: &std::path::Path) -> Result<LoraConfig> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "adapter directory not found"));
    }
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(Error::file(
            &config_path,
            "missing: an adapter directory needs adapter_config.json (as peft's save_pretrained writes)",
        ));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    LoraConfig::from_json(&text, &config_path.display().to_string())
}

/// Loads a peft adapter directory into `model` (tensors holding NaN or infinities are refused
/// unless `allow_nonfinite`).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_adapter(
    model: &mut BloomForCausalLM,
    dir: &std::path::Path,
    device: &Device,
    allow_nonfinite: bool,
) -> Result<(LoraConfig, LoraReport)> {
    let config = read_adapter_config(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let file: Box<dyn TensorFile> = if dir.join(WEIGHTS_FILE).is_file() {
        Box::new(crate::checkpoint::SafetensorsFile::open(&dir.join(WEIGHTS_FILE))?)
    } else if dir.join(LEGACY_WEIGHTS_FILE).is_file() {
        Box::new(crate::checkpoint::TorchFile::open(&dir.join(LEGACY_WEIGHTS_FILE))?)
    } else {
        return Err(Error::file(dir.join(WEIGHTS_FILE), "missing: the adapter's weights are not there"));
    };
    let report = load_adapter_tensors(model, &config, file.as_ref(), device, allow_nonfinite).map_err(|e| match e {
        Error::Invalid(m) => Error::file(&config_path, m),
        other => other,
    })?;
    Ok((config, report))
}
