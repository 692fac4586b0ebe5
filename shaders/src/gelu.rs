//! BLOOM's tanh approximation of GELU, `x·½(1 + tanh(0.79788456·x·(1 + 0.044715·x²)))` with
//! transformers' constants, written as `x·σ(t)` with `t = (A·x² + B)·x` (the same function,
//! since `½(1 + tanh z) = σ(2z)`).
//!
//! Fused, it is one pass forward and one backward, and autodiff keeps only `x`; the plain
//! version is five element-wise passes, each kept for (and run again by) the backward pass.

use burn::tensor::Tensor;

/// `2 · √(2/π) · 0.044715`.
pub const GELU_A: f64 = 2.0 * 0.797_884_56 * 0.044715;
/// `2 · √(2/π)`.
pub const GELU_B: f64 = 2.0 * 0.797_884_56;
pub(crate) const GELU_A_F32: f32 = GELU_A as f32;
pub(crate) const GELU_B_F32: f32 = GELU_B as f32;

/// The fused GELU, on a backend that has the kernels ([`crate::Kernels::gelu`] chooses).
pub fn fused<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as crate::ops::FusedOps>::bloom_gelu(x.into_dispatch()))
}

/// The same function in plain burn operations (the reference the kernels are checked against).
pub fn plain<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let t = (x.clone() * x.clone() * GELU_A + GELU_B) * x.clone();
    x * burn::tensor::activation::sigmoid(t)
}
