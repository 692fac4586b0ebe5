//! The BLOOM model: layers, ALiBi and masks, the KV cache, and the model itself.

pub mod alibi;
pub mod bloom;
pub mod cache;
pub mod layers;
pub mod names;

pub use alibi::{AttentionBias, AttentionMask};
pub use bloom::BloomForCausalLM;
pub use cache::KvCache;

use burn::tensor::Tensor;

/// Where model weights come from: a checkpoint on disk or a random initialiser. Names are
/// `BloomForCausalLM`'s (`transformer.h.0.mlp.dense_h_to_4h.weight`).
pub trait WeightSource {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> crate::Result<Tensor<D>>;
}
