//! `model.safetensors` files, memory-mapped on native so loading reads each tensor once and
//! never holds a second copy of the whole file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
        let (header_len, tensors) = read_header(&buffer).map_err(|e| match e {
            HeaderError::Corrupt(e) => {
                Error::file(&path, format!("not a valid safetensors file ({e}); re-download or re-save it"))
            }
            HeaderError::Unsupported(e) => Error::file(&path, e),
        })?;
        Ok(SafetensorsFile { path, buffer, data_start: 8 + header_len, tensors })
    }
}

/// The most header bytes read (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

enum HeaderError {
    Corrupt(String),
    Unsupported(String),
}

/// The header of a safetensors file, checked as the `safetensors` crate checks it (every tensor's
/// bytes match its dtype and shape, the tensors tile the data section exactly) but with sizes in
/// u64: the crate counts bits in `usize`, which overflows on wasm32 for a tensor over 512 MiB of
/// f32 or 256 Mi f16 values (bloom-1b1's embedding), refusing files that are fine.
fn read_header(buffer: &[u8]) -> std::result::Result<(usize, HashMap<String, StoredTensor>), HeaderError> {
    let corrupt = |what: String| HeaderError::Corrupt(what);
    let len_bytes: [u8; 8] =
        buffer.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("shorter than 8 bytes".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let total = buffer.len() as u64;
    if header_len > MAX_HEADER_BYTES || 8 + header_len > total {
        return Err(corrupt(format!("header length {header_len} does not fit the file of {total} bytes")));
    }
    let header_len = header_len as usize;
    let data_len = total - 8 - header_len as u64;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&buffer[8..8 + header_len])
        .map_err(|e| corrupt(format!("header is not a JSON object: {e}")))?;
    let mut tensors = HashMap::new();
    let mut ranges = Vec::new();
    for (name, info) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let bad = |what: &str| corrupt(format!("tensor `{name}`: {what}"));
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let (dtype, width) = match dtype {
            "F32" => (StoredDType::F32, 4),
            "F16" => (StoredDType::F16, 2),
            "BF16" => (StoredDType::BF16, 2),
            "U8" => (StoredDType::U8, 1),
            other => {
                return Err(HeaderError::Unsupported(format!(
                    "tensor `{name}` has dtype {other}; only F32, F16 and BF16 weights (and the U8 bytes of \
                     bitsandbytes 4-bit weights) are supported"
                )))
            }
        };
        let numbers = |key: &str| -> Option<Vec<u64>> {
            info.get(key)?.as_array()?.iter().map(serde_json::Value::as_u64).collect()
        };
        let shape = numbers("shape").ok_or_else(|| bad("no shape of whole numbers"))?;
        let offsets = numbers("data_offsets").filter(|o| o.len() == 2).ok_or_else(|| bad("no data_offsets pair"))?;
        let (start, end) = (offsets[0], offsets[1]);
        let bytes =
            shape.iter().try_fold(width, |n: u64, &d| n.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
        if start > end || end > data_len || end - start != bytes {
            return Err(bad(&format!(
                "bytes {start}..{end} do not hold {shape:?} {dtype:?} in {data_len} bytes of data"
            )));
        }
        // A dimension beside a zero one can be anything: each must still be a usize here.
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a dimension too large for this platform"))?;
        tensors.insert(name.clone(), (dtype, shape, (start as usize, end as usize)));
        ranges.push((start, end));
    }
    ranges.sort_unstable();
    let mut at = 0;
    for (start, end) in ranges {
        if start != at {
            return Err(corrupt(format!("tensors overlap or leave a gap at byte {at} of the data")));
        }
        at = end;
    }
    if at != data_len {
        return Err(corrupt(format!("the tensors end at byte {at} of {data_len} bytes of data")));
    }
    Ok((header_len, tensors))
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

    fn read_as_stored(&self, name: &str, dtype: StoredDType) -> Result<Option<(Vec<usize>, Vec<u8>)>> {
        let (stored, shape, bytes) = self.stored(name)?;
        if stored != dtype {
            return Ok(None);
        }
        let copy = (shape.to_vec(), bytes.to_vec());
        self.release(name);
        Ok(Some(copy))
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
