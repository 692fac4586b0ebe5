//! Tensors as stored in checkpoint files, before they reach a device.

use crate::error::{Error, Result};

/// Element types found in BLOOM checkpoints. Float weights are widened to f32 on load; bytes
/// (U8) are the packed codes of models saved 4-bit by transformers, read as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    U8,
}

impl StoredDType {
    pub fn size(self) -> usize {
        match self {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
            StoredDType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoredDType::F32 => "F32",
            StoredDType::F16 => "F16",
            StoredDType::BF16 => "BF16",
            StoredDType::U8 => "U8",
        }
    }
}

/// A tensor read from a checkpoint, widened to f32, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Little-endian `bytes` of `dtype` widened to f32.
pub fn to_f32(bytes: &[u8], dtype: StoredDType) -> Vec<f32> {
    match dtype {
        StoredDType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        StoredDType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        StoredDType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        StoredDType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
    }
}

/// Checks that a stored tensor's byte length fits its shape and dtype.
pub fn check_len(path: &std::path::Path, name: &str, bytes: usize, shape: &[usize], dtype: StoredDType) -> Result<()> {
    let expected = shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d));
    if expected != Some(bytes) {
        return Err(Error::file(
            path,
            format!(
                "tensor `{name}` holds {bytes} bytes, which its shape {shape:?} of {} does not: the file is corrupt",
                dtype.name()
            ),
        ));
    }
    Ok(())
}

/// Refuses weights holding NaN or infinities: loaded silently they make every output NaN (a
/// model that answers token 0 forever). One pass over values that were just converted anyway.
pub fn check_finite(path: &std::path::Path, name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(nonfinite(path, name, values[i], i)),
    }
}

/// [`check_finite`] on f16 or bf16 bytes, by their bits (an all-ones exponent is NaN or
/// infinity), without widening them.
pub fn check_finite_half(path: &std::path::Path, name: &str, bytes: &[u8], dtype: StoredDType) -> Result<()> {
    let exponent: u16 = if dtype == StoredDType::BF16 { 0x7F80 } else { 0x7C00 };
    match bytes.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) & exponent == exponent) {
        None => Ok(()),
        Some(i) => Err(nonfinite(path, name, to_f32(&bytes[2 * i..2 * i + 2], dtype)[0], i)),
    }
}

fn nonfinite(path: &std::path::Path, name: &str, value: f32, index: usize) -> Error {
    Error::file(
        path,
        format!(
            "tensor `{name}` holds {value} at index {index}: the weights are damaged (re-download or re-save them; \
             `allow_nonfinite` loads them anyway)"
        ),
    )
}

/// A file read a range at a time, never whole: the browser's `File`s and downloads, which stay
/// outside the WebAssembly heap until each tensor is read.
pub trait ReadAt: Send + Sync {
    /// The file's length in bytes.
    fn size(&self) -> u64;

    /// Fills `out` with the bytes from `offset` (the caller keeps the range inside the file).
    fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()>;

    /// `len` bytes from `offset`.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.read_into(offset, &mut bytes)?;
        Ok(bytes)
    }
}

/// A checkpoint file's bytes: memory-mapped on native (pages are read on demand and can be
/// dropped once their tensor is loaded), or owned (the browser hands files over as bytes).
pub enum FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    /// Shared, so the browser can load the same file bytes again (onto the training device)
    /// without a second copy.
    Owned(std::sync::Arc<Vec<u8>>),
}

impl FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn map(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is only read. A concurrent writer could change the bytes under us,
        // which (as with any reader) yields wrong values, not memory unsafety in this code.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes::Mapped(map))
    }

    /// Tells the kernel the mapped pages of `offset..offset + len` will not be needed again, so
    /// a loaded model does not also keep the file resident (which would double its memory).
    pub fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if let FileBytes::Mapped(map) = self {
            const PAGE: usize = 4096;
            let start = offset.div_ceil(PAGE) * PAGE;
            let end = offset.saturating_add(len) / PAGE * PAGE;
            if end > start {
                // SAFETY: the range lies inside a read-only, file-backed mapping; dropping its
                // pages only means they are read from the file again if touched.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
        let _ = (offset, len);
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_values_are_checked_by_their_bits() {
        let path = std::path::Path::new("w.safetensors");
        let f16s = |v: &[half::f16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bf16s = |v: &[half::bf16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let fine = f16s(&[half::f16::MAX, half::f16::MIN_POSITIVE_SUBNORMAL, half::f16::NEG_ZERO]);
        assert!(check_finite_half(path, "t", &fine, StoredDType::F16).is_ok());
        let fine = bf16s(&[half::bf16::MAX, half::bf16::MIN, half::bf16::from_f32(1e-40)]);
        assert!(check_finite_half(path, "t", &fine, StoredDType::BF16).is_ok());
        for (bytes, dtype, shown) in [
            (f16s(&[half::f16::ONE, half::f16::NEG_INFINITY]), StoredDType::F16, "-inf at index 1"),
            (bf16s(&[half::bf16::ONE, half::bf16::ONE, half::bf16::NAN]), StoredDType::BF16, "NaN at index 2"),
        ] {
            let err = check_finite_half(path, "t", &bytes, dtype).unwrap_err().to_string();
            assert!(err.contains(shown) && err.contains("tensor `t`"), "{err}");
        }
    }
}
