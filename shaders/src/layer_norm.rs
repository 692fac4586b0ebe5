//! `torch.nn.LayerNorm` over the last dimension, `(x − mean)/√(var + eps)·γ + β` with the biased
//! variance, as one pass forward and one backward per row.
//!
//! Plain, it is nine element-wise passes forward (each reading and writing the whole tensor, on
//! one core on the CPU backend) and more backward; BLOOM runs it twice per layer. Fused, autodiff
//! keeps `x` (and `γ`), and the backward pass recomputes each row's mean and variance; `γ` and `β`
//! get gradients (from plain operations) only when they are trained.

use burn::tensor::Tensor;

/// `x` `[..., hidden]` (f32), `gamma` and `beta` `[hidden]` (f32), on a backend that has the
/// kernels ([`crate::Kernels::layer_norm`] chooses).
pub fn fused<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    let hidden = dims[D - 1];
    let flat: Tensor<2> = x.reshape([dims.iter().product::<usize>() / hidden.max(1), hidden]);
    let out = <burn::backend::Dispatch as crate::ops::FusedOps>::row_layer_norm(
        flat.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    );
    Tensor::<2>::from_dispatch(out).reshape(dims)
}

/// The same in plain burn operations.
pub fn plain<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    let centered = x.clone() - x.mean_dim(D - 1);
    let variance = centered.clone().square().mean_dim(D - 1);
    let normed = centered / (variance + eps).sqrt();
    normed * gamma.unsqueeze() + beta.unsqueeze()
}
