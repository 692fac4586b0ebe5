//! Files the worker reads a range at a time: a `File` the user picked, or a download kept as a
//! `Blob`. Their bytes stay outside the WebAssembly heap (the browser keeps large blobs on
//! disk); a safetensors checkpoint is copied in one tensor at a time as the model is built, so a
//! page never holds a whole checkpoint beside its weights, and a file may be over the 2 GiB
//! that one allocation can be on wasm32.

use ember_core::budget::{check_file_size, WASM_LARGEST_FILE};
use ember_core::checkpoint::ReadAt;
use ember_core::{Error, Result};
use js_sys::Uint8Array;
use web_sys::{Blob, FileReaderSync};

use crate::message::js_error;

#[derive(Clone)]
pub struct BlobFile {
    pub name: String,
    blob: Blob,
}

// SAFETY: this build of the worker has one thread (no `atomics` target feature: the wasm is not
// shared), so nothing is ever sent or shared between threads. A threaded build must not compile
// these, and does not.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Send for BlobFile {}
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for BlobFile {}

impl BlobFile {
    pub fn new(name: String, blob: Blob) -> Self {
        BlobFile { name, blob }
    }

    /// All of it, in the heap (small files, and checkpoints that cannot be read in ranges).
    pub fn read_whole(&self) -> Result<Vec<u8>> {
        check_file_size(&self.name, self.size())?;
        self.read_at(0, self.size() as usize)
    }
}

impl ReadAt for BlobFile {
    fn size(&self) -> u64 {
        self.blob.size() as u64
    }

    /// Blocks until the bytes are read: `FileReaderSync` exists for workers, and the model is
    /// built synchronously, tensor after tensor.
    fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len();
        if len as u64 > WASM_LARGEST_FILE {
            return Err(Error::file(
                &self.name,
                format!("holds a tensor of {len} bytes, more than a page can hold in one piece (2 GiB)"),
            ));
        }
        let failed = |e: wasm_bindgen::JsValue| Error::file(&self.name, format!("cannot read: {}", js_error(&e)));
        let slice = self.blob.slice_with_f64_and_f64(offset as f64, (offset + len as u64) as f64).map_err(failed)?;
        let buffer = FileReaderSync::new().map_err(failed)?.read_as_array_buffer(&slice).map_err(failed)?;
        let bytes = Uint8Array::new(&buffer);
        if bytes.length() as usize != len {
            return Err(Error::file(&self.name, "changed while it was read: choose it again"));
        }
        bytes.copy_to(out);
        Ok(())
    }
}
