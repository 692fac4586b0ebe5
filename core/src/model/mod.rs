//! The BLOOM model: layers, ALiBi and masks, the KV cache, and the model itself.

pub mod alibi;
pub mod bloom;
pub mod cache;
pub mod layers;
pub mod names;
pub mod precision;
pub mod vocab;

pub use alibi::{AttentionBias, AttentionMask};
pub use bloom::{BloomForCausalLM, Kernels};
pub use cache::KvCache;
pub use precision::WeightDType;
pub use vocab::VocabMatrix;

use burn::tensor::Tensor;

/// Where model weights come from: a checkpoint on disk or a random initialiser. Names are
/// `BloomForCausalLM`'s (`transformer.h.0.mlp.dense_h_to_4h.weight`).
pub trait WeightSource {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> crate::Result<Tensor<D>>;

    /// A `[vocab, hidden]` matrix as blocks of `rows` rows (see [`vocab`]); sources that can,
    /// build each block directly so the whole matrix never sits on the device at once.
    fn vocab_matrix(&mut self, name: &str, shape: [usize; 2], rows: usize) -> crate::Result<VocabMatrix> {
        Ok(VocabMatrix::split(self.tensor(name, shape)?, rows, false))
    }
}
