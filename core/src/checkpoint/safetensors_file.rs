//! `model.safetensors` files, memory-mapped on native so loading reads each tensor once and
//! never holds a second copy of the whole file; in the browser read a tensor at a time from a
//! [`ReadAt`] (a `File` or a download kept outside the WebAssembly heap).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::host::{check_len, to_f32, FileBytes, HostTensor, ReadAt, StoredDType};
use super::{StoredRows, TensorFile};
use crate::error::{Error, Result};

/// Dtype, shape and byte range within the data section (u64: a file read in ranges can be
/// larger than wasm32's `usize`).
type StoredTensor = (StoredDType, Vec<usize>, (u64, u64));

/// A tensor's dtype, shape and bytes as read.
type Stored<'a> = (StoredDType, &'a [usize], Cow<'a, [u8]>);

/// Where a file's bytes are.
enum Source {
    Bytes(FileBytes),
    Reader(Box<dyn ReadAt>),
}

pub struct SafetensorsFile {
    path: PathBuf,
    source: Source,
    data_start: u64,
    /// Name → (dtype, shape, byte range within the data section).
    tensors: HashMap<String, StoredTensor>,
}

impl SafetensorsFile {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse_bytes(path.to_path_buf(), FileBytes::map(path)?)
    }

    /// A safetensors file already in memory (the browser gets its files this way).
    pub fn from_bytes(origin: impl Into<PathBuf>, bytes: impl Into<std::sync::Arc<Vec<u8>>>) -> Result<Self> {
        Self::parse_bytes(origin.into(), FileBytes::Owned(bytes.into()))
    }

    /// A safetensors file read a range at a time: the header now, each tensor when it is asked for.
    pub fn from_reader(origin: impl Into<PathBuf>, reader: Box<dyn ReadAt>) -> Result<Self> {
        let path = origin.into();
        let total = reader.size();
        let first = reader.read_at(0, total.min(8) as usize)?;
        let claimed = first.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        // The header is read only once its length is known to be sane; otherwise the first
        // bytes alone make the error.
        let start = match claimed {
            Some(n) if n <= MAX_HEADER_BYTES && 8 + n <= total => reader.read_at(0, (8 + n) as usize)?,
            _ => first,
        };
        let (header_len, tensors) = header(&path, &start, total)?;
        Ok(SafetensorsFile { path, source: Source::Reader(reader), data_start: 8 + header_len, tensors })
    }

    fn parse_bytes(path: PathBuf, buffer: FileBytes) -> Result<Self> {
        let (header_len, tensors) = header(&path, &buffer, buffer.len() as u64)?;
        Ok(SafetensorsFile { path, source: Source::Bytes(buffer), data_start: 8 + header_len, tensors })
    }
}

/// The header's length and tensors, from the file's first bytes (`start`, at least the header)
/// and its length.
fn header(path: &Path, start: &[u8], total: u64) -> Result<(u64, HashMap<String, StoredTensor>)> {
    read_header(start, total).map_err(|e| match e {
        HeaderError::Corrupt(e) => {
            Error::file(path, format!("not a valid safetensors file ({e}); re-download or re-save it"))
        }
        HeaderError::Unsupported(e) => Error::file(path, e),
    })
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
fn read_header(start: &[u8], total: u64) -> std::result::Result<(u64, HashMap<String, StoredTensor>), HeaderError> {
    let corrupt = |what: String| HeaderError::Corrupt(what);
    let len_bytes: [u8; 8] =
        start.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("shorter than 8 bytes".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > total || 8 + header_len > start.len() as u64 {
        return Err(corrupt(format!("header length {header_len} does not fit the file of {total} bytes")));
    }
    let data_len = total - 8 - header_len;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&start[8..8 + header_len as usize])
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
        tensors.insert(name.clone(), (dtype, shape, (start, end)));
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
        if let Some(tensor) = self.read_f32_in_place(name)? {
            return Ok(tensor);
        }
        let (dtype, shape, bytes) = self.stored(name)?;
        let data = to_f32(&bytes, dtype);
        self.release(name);
        Ok(HostTensor { shape: shape.to_vec(), data })
    }

    fn read_as_stored(&self, name: &str, dtype: StoredDType) -> Result<Option<(Vec<usize>, Vec<u8>)>> {
        // Asked for another dtype, the tensor is not read (in ranges that would be a real read).
        if self.tensors.get(name).is_some_and(|(stored, _, _)| *stored != dtype) {
            return Ok(None);
        }
        let (stored, shape, bytes) = self.stored(name)?;
        if stored != dtype {
            return Ok(None);
        }
        let copy = (shape.to_vec(), bytes.into_owned());
        self.release(name);
        Ok(Some(copy))
    }

    fn read_rows(&self, name: &str, rows: std::ops::Range<usize>) -> Result<Option<StoredRows>> {
        let Source::Reader(reader) = &self.source else { return Ok(None) };
        let (dtype, shape, (begin, _)) =
            self.tensors.get(name).ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}`")))?;
        let &[count, width] = shape.as_slice() else { return Ok(None) };
        if rows.start > rows.end || rows.end > count {
            return Err(Error::file(&self.path, format!("tensor `{name}` has {count} rows, not {rows:?}")));
        }
        // The header check made every size here fit the file, so none of this overflows.
        let row_bytes = width as u64 * dtype.size() as u64;
        let offset = self.data_start + begin + rows.start as u64 * row_bytes;
        let len = usize::try_from(rows.len() as u64 * row_bytes)
            .map_err(|_| Error::file(&self.path, format!("tensor `{name}` is too large for this platform")))?;
        Ok(Some((*dtype, shape.clone(), reader.read_at(offset, len)?)))
    }

    fn read_bytes(&self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let (dtype, shape, bytes) = self.stored(name)?;
        if dtype != StoredDType::U8 {
            return Err(Error::file(
                &self.path,
                format!("tensor `{name}` is {}, not the U8 bytes expected", dtype.name()),
            ));
        }
        let out = (shape.to_vec(), bytes.into_owned());
        self.release(name);
        Ok(out)
    }
}

impl SafetensorsFile {
    /// A tensor's dtype, shape and bytes (borrowed from memory, or read now), their length
    /// checked against the shape.
    fn stored(&self, name: &str) -> Result<Stored<'_>> {
        let (dtype, shape, (begin, end)) =
            self.tensors.get(name).ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}`")))?;
        let (begin, end) = (self.data_start + begin, self.data_start + end);
        let too_large = || Error::file(&self.path, format!("tensor `{name}` is too large for this platform"));
        let bytes = match &self.source {
            Source::Bytes(buffer) => {
                let range =
                    usize::try_from(begin).map_err(|_| too_large())?..usize::try_from(end).map_err(|_| too_large())?;
                Cow::Borrowed(&buffer[range])
            }
            Source::Reader(reader) => {
                Cow::Owned(reader.read_at(begin, usize::try_from(end - begin).map_err(|_| too_large())?)?)
            }
        };
        check_len(&self.path, name, bytes.len(), shape, *dtype)?;
        Ok((*dtype, shape, bytes))
    }

    /// An f32 tensor read in ranges straight into its values, so a large one is not held twice
    /// (as bytes and as values); `None` for other dtypes and for files in memory.
    fn read_f32_in_place(&self, name: &str) -> Result<Option<HostTensor>> {
        let (Source::Reader(reader), Some((StoredDType::F32, shape, (begin, end)))) =
            (&self.source, self.tensors.get(name))
        else {
            return Ok(None);
        };
        let too_large = || Error::file(&self.path, format!("tensor `{name}` is too large for this platform"));
        let len = usize::try_from(end - begin).map_err(|_| too_large())?;
        check_len(&self.path, name, len, shape, StoredDType::F32)?;
        let mut data = vec![0f32; len / 4];
        // SAFETY: the f32 values are viewed as their bytes (any bit pattern is a valid f32, and u8
        // has no alignment), exactly `len` of them.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), len) };
        reader.read_into(self.data_start + begin, bytes)?;
        // The file is little-endian; so is every target ember runs on but big-endian ones.
        if cfg!(target_endian = "big") {
            data.iter_mut().for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
        }
        Ok(Some(HostTensor { shape: shape.clone(), data }))
    }

    fn release(&self, name: &str) {
        if let (Some((_, _, (begin, end))), Source::Bytes(buffer)) = (self.tensors.get(name), &self.source) {
            buffer.release((self.data_start + begin) as usize, (end - begin) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A file in memory read through [`ReadAt`], counting the most bytes one read returned.
    struct Ranges(Vec<u8>, Arc<AtomicUsize>);

    impl ReadAt for Ranges {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()> {
            self.1.fetch_max(out.len(), Ordering::SeqCst);
            out.copy_from_slice(&self.0[offset as usize..offset as usize + out.len()]);
            Ok(())
        }
    }

    /// Two f32 tensors `a` [2, 3] and `b` [1000] as safetensors bytes.
    fn file() -> Vec<u8> {
        let header = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[1000],"data_offsets":[24,2024]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
        bytes.extend((0..1000).flat_map(|i| half::f16::from_f32(i as f32 / 8.0).to_le_bytes()));
        bytes
    }

    #[test]
    fn a_file_read_in_ranges_gives_what_the_whole_file_gives_reading_one_tensor_at_a_time() {
        let largest = Arc::new(AtomicUsize::new(0));
        let ranged = SafetensorsFile::from_reader("m.safetensors", Box::new(Ranges(file(), largest.clone()))).unwrap();
        let whole = SafetensorsFile::from_bytes("m.safetensors", file()).unwrap();
        let mut names = ranged.names();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        for name in ["a", "b"] {
            assert_eq!(ranged.read(name).unwrap().data, whole.read(name).unwrap().data);
        }
        assert_eq!(
            ranged.read_as_stored("b", StoredDType::F16).unwrap(),
            whole.read_as_stored("b", StoredDType::F16).unwrap()
        );
        // The header, or one tensor (b's 2,000 bytes): never the file (2,140 bytes).
        assert_eq!(largest.load(Ordering::SeqCst), 2000);
    }

    #[test]
    fn lying_lengths_read_in_ranges_are_refused_without_reading_what_they_claim() {
        let largest = Arc::new(AtomicUsize::new(0));
        let mut lying = file();
        lying[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = SafetensorsFile::from_reader("m.safetensors", Box::new(Ranges(lying, largest.clone())))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("header length"), "{err}");
        assert_eq!(largest.load(Ordering::SeqCst), 8);
        let short = SafetensorsFile::from_reader("m.safetensors", Box::new(Ranges(vec![1, 2, 3], largest)));
        assert!(short.err().unwrap().to_string().contains("shorter than 8 bytes"));
        // A tensor whose range runs past the data is caught by the header check, as in memory.
        let mut past = file();
        let at = past.windows(4).position(|w| w == b"2024").unwrap();
        past[at..at + 4].copy_from_slice(b"2026");
        assert!(SafetensorsFile::from_reader("m.safetensors", Box::new(Ranges(past, Arc::default()))).is_err());
    }
}
