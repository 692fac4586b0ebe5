//! The BLOOM model: layers, ALiBi and masks, the KV cache, and the model itself.

pub mod alibi;
pub mod bloom;
pub mod cache;
pub mod layers;
pub mod modules;
pub mod precision;
pub mod vocab;

pub use alibi::{AttentionBias, AttentionMask};
pub use bloom::{BloomForCausalLM, ModelShape};
pub use cache::KvCache;
pub use layers::LinearWeight;
pub use modules::{Layer, LayerMut, ModuleKind, ModuleTree, NamedModule};
pub use precision::WeightDType;
pub use vocab::VocabMatrix;

use burn::tensor::Tensor;

use crate::quant::Quantized;

/// Where model weights come from: a checkpoint on disk or a random initialiser. Names are
/// `BloomForCausalLM`'s (`transformer.h.0.mlp.dense_h_to_4h.weight`).
pub trait WeightSource {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> crate::Result<Tensor<D>>;

    /// The tensor stored as `dtype`; sources that read from the host convert there, so no f32
    /// copy of the weight reaches the device (whose pool would keep its pages).
    fn tensor_as<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        dtype: WeightDType,
    ) -> crate::Result<Tensor<D>> {
        Ok(dtype.stored(self.tensor(name, shape)?))
    }

    /// A `[vocab, hidden]` matrix as blocks of `rows` rows (see [`vocab`]) stored as `dtype`;
    /// sources that can build and convert each block on its own, so the whole matrix never sits
    /// on the device at once, nor in two precisions (the largest weight of a model: an f32
    /// copy of it next to the f16 one was most of a QLoRA run's pool slack).
    fn vocab_matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        rows: usize,
        dtype: WeightDType,
    ) -> crate::Result<VocabMatrix> {
        Ok(VocabMatrix::split(self.tensor_as(name, shape, dtype)?, rows, false))
    }

    /// A Linear layer's weight `[out, in]`: full precision, unless the source quantizes it
    /// ([`crate::quant::Quantizing`]).
    fn linear_weight(&mut self, name: &str, shape: [usize; 2]) -> crate::Result<LinearWeight> {
        Ok(LinearWeight::dense(self.tensor(name, shape)?))
    }

    /// The weight as the source holds it in 4 bits (a checkpoint saved by transformers with
    /// `load_in_4bit`), if it does.
    fn stored_4bit(&mut self, _name: &str, _shape: [usize; 2]) -> crate::Result<Option<Quantized>> {
        Ok(None)
    }

    /// A weight's values in f32 on the host, which quantizing reads.
    fn host_values(&mut self, name: &str, shape: [usize; 2]) -> crate::Result<Vec<f32>> {
        let flat = self.tensor(name, shape)?.reshape([shape[0] * shape[1]]);
        crate::readback::blocking(crate::readback::values(flat, "reading a weight to quantize"))
    }
}

/// A weight source seen from inside one module, as candle's `VarBuilder::pp` sees it: names are
/// relative to the module, so each module loads itself by its own names and the full name
/// (`transformer.h.3.mlp.dense_h_to_4h.weight`) is only ever put together here.
pub struct Scope<'s, W> {
    source: &'s mut W,
    prefix: String,
}

impl<'s, W: WeightSource> Scope<'s, W> {
    pub fn new(source: &'s mut W) -> Self {
        Scope { source, prefix: String::new() }
    }

    /// The scope of the submodule `name` (a field name, or a block's index).
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_, W> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { source: &mut *self.source, prefix }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> crate::Result<Tensor<D>> {
        let full = self.full(name);
        self.source.tensor(&full, shape)
    }

    pub fn vocab_matrix(&mut self, name: &str, shape: [usize; 2], rows: usize) -> crate::Result<VocabMatrix> {
        let full = self.full(name);
        self.source.vocab_matrix(&full, shape, rows, WeightDType::F32)
    }

    pub fn linear_weight(&mut self, name: &str, shape: [usize; 2]) -> crate::Result<LinearWeight> {
        let full = self.full(name);
        self.source.linear_weight(&full, shape)
    }
}
