//! BLOOM's attention, `softmax(q kᵀ/√d + alibi + mask) v`, without the `[queries, keys]`
//! scores in memory (flash-attention style).
//!
//! Plain, autodiff keeps the scores' softmax (and its exponentials) of every head of every layer
//! from the forward to the backward pass: `batch × heads × seq²` floats per layer, which grows
//! with the square of the sequence. Fused, the forward pass keeps `q`, `k`, `v` and the output
//! (and on wgpu each query row's score maximum and sum of exponentials), and the backward pass
//! recomputes the scores. On wgpu the kernels (`cube/attention.rs`) never hold more than a tile
//! of keys; on the CPU the op runs as burn's matmuls and softmax, one layer's scores at a time.
//!
//! The ALiBi bias (`[batch, heads, 1, keys]`) and the additive causal-and-padding mask
//! (`[batch, 1, queries, keys]`, 0 or `f32::MIN`) are added exactly as the plain path adds them,
//! so rows whose every key is masked (queries on left padding) get the same uniform average.
//! The same call serves decoding with the KV cache: one query against all cached keys.

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

/// `q` `[batch, heads, queries, head_dim]`, `k` and `v` `[batch, heads, keys, head_dim]` (the
/// queries are the last `queries` positions), `alibi` `[batch, heads, 1, keys]`, `mask`
/// `[batch, 1, queries, keys]` → `[batch, heads, queries, head_dim]`.
/// On a backend that has the kernels ([`crate::Kernels::attention`] chooses).
pub fn fused(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, alibi: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
    let out = <burn::backend::Dispatch as crate::ops::FusedOps>::alibi_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        alibi.into_dispatch(),
        mask.into_dispatch(),
    );
    Tensor::from_dispatch(out)
}

/// The same in plain burn operations, as transformers' eager BLOOM attention computes it.
pub fn plain(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, alibi: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
    let head_dim = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)) * scale(head_dim) + alibi + mask;
    softmax(scores, 3).matmul(v)
}

/// `1/√head_dim`, the scores' scale.
pub fn scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}
