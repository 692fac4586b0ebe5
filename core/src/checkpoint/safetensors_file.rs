//! `model.safetensors` files, memory-mapped on native so loading reads each tensor once and
//! never holds a second copy of the whole file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use super::host::{check_len, to_f32, FileBytes, HostTensor, StoredDType};
use super::TensorFile;
use crate::error::{Error, Result};

type StoredTensor = (StoredDType, Vec<usize>, (usize, usize));

pub struct SafetensorsFile {
    path: PathBuf,
    buffer: FileBytes,
    data_start: usize,
    /// Name → (dtype, shape, byte range within the data section).
    tensors: HashMap<String, StoredTensor>,
}

impl SafetensorsFile {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse(path.to_path_buf(), FileBytes::map(path)?)
    }

    /// A safetensors file already in memory (the browser gets its files this way).
    pub fn from_bytes(origin: impl Into<PathBuf>, bytes: impl Into<std::sync::Arc<Vec<u8>>>) -> Result<Self> {
        Self::parse(origin.into(), FileBytes::Owned(bytes.into()))
    }

    fn parse(path: PathBuf, buffer: FileBytes) -> Result<Self> {
        let corrupt = |e: &dyn std::fmt::Display| {
            Error::file(&path, format!("not a valid safetensors file ({e}); re-download or re-save it"))
        };
        SafeTensors::deserialize(&buffer).map_err(|e| corrupt(&e))?;
        let (header_len, metadata): (usize, Metadata) = SafeTensors::read_metadata(&buffer).map_err(|e| corrupt(&e))?;
        let mut tensors = HashMap::new();
        for (name, info) in metadata.tensors() {
            let dtype = match info.dtype {
                Dtype::F32 => StoredDType::F32,
                Dtype::F16 => StoredDType::F16,
                Dtype::BF16 => StoredDType::BF16,
                Dtype::U8 => StoredDType::U8,
                other => {
                    return Err(Error::file(
                        &path,
                        format!(
                            "tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 weights (and the U8 bytes of \
                             bitsandbytes 4-bit weights) are supported"
                        ),
                    ))
                }
            };
            tensors.insert(name, (dtype, info.shape.clone(), info.data_offsets));
        }
        Ok(SafetensorsFile { path, buffer, data_start: 8 + header_len, tensors })
    }
}

impl TensorFile for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (dtype, shape, bytes) = self.stored(name)?;
        let data = to_f32(bytes, dtype);
        self.release(name);
        Ok(HostTensor { shape: shape.to_vec(), data })
    }

    fn read_bytes(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let (dtype, shape, bytes) = self.stored(name)?;
        if dtype != StoredDType::U8 {
            return Err(Error::file(
                &self.path,
                format!("tensor `{name}` is {}, not the U8 bytes expected", dtype.name()),
            ));
        }
        let out = (shape.to_vec(), bytes.to_vec());
        self.release(name);
        Ok(out)
    }
}

impl SafetensorsFile {
    /// A tensor's dtype, shape and bytes, their length checked against the shape.
    fn stored(&self, name: &str) -> Result<(StoredDType, &[usize], &[u8])> {
        let (dtype, shape, (begin, end)) =
            self.tensors.get(name).ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}`")))?;
        let bytes = &self.buffer[self.data_start + begin..self.data_start + end];
        check_len(&self.path, name, bytes.len(), shape, *dtype)?;
        Ok((*dtype, shape, bytes))
    }

    fn release(&self, name: &str) {
        if let Some((_, _, (begin, end))) = self.tensors.get(name) {
            self.buffer.release(self.data_start + begin, end - begin);
        }
    }
}
