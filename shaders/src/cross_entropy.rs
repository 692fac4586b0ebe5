//! The log-sum-exp of one block of the language-model head's logits, `log Σ_j exp(x·w_j)`,
//! without keeping the logits: the cross-entropy's only `[positions, vocab]`-sized term.
//!
//! Plain, autodiff keeps each block's `[positions, block]` logits (the input of `exp`) from the
//! forward to the backward pass; across the blocks that is the full `batch × seq × vocab`
//! tensor, the largest activation of a training step at BLOOM's vocabulary. Fused, it keeps
//! the `[positions, 1]` result and recomputes a block's logits in the backward pass (one more
//! matmul per block), so only one block's logits ever exist at a time — and its rows go through
//! in chunks whose logits fit in [`crate::ops::LOGITS_CHUNK_BYTES`] (8 MiB), forward and
//! backward, so no large transient replaces the kept logits.

use burn::tensor::{Int, Tensor};

use crate::autocast_matmul;

/// `x` `[n, d]` (f32) against the block `w` `[v, d]` (f32, f16 or bf16, multiplied in its
/// precision as autocast does) → `[n, 1]`, on a backend that has the kernels
/// ([`crate::Kernels::head_block`] chooses).
pub fn linear_log_sum_exp(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let out =
        <burn::backend::Dispatch as crate::ops::FusedOps>::linear_log_sum_exp(x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(out)
}

/// The label's logit without the logits: `(x_i · w[ids_i]) · inside_i` (`[n, 1]`), for `ids`
/// `[n, 1]` indexing `w`'s rows and `inside` `[n, 1]` (1 where the label falls in this block).
/// Autodiff keeps nothing `[n, d]`: the backward pass looks the rows up again.
pub fn label_logit(x: Tensor<2>, w: Tensor<2>, ids: Tensor<2, Int>, inside: Tensor<2>) -> Tensor<2> {
    let out = <burn::backend::Dispatch as crate::ops::FusedOps>::label_logit(
        x.into_dispatch(),
        w.into_dispatch(),
        ids.into_dispatch(),
        inside.into_dispatch(),
    );
    Tensor::from_dispatch(out)
}

/// The label's logit gathered from the block's logits (plain burn).
pub fn plain_label_logit(x: Tensor<2>, w: Tensor<2>, ids: Tensor<2, Int>, inside: Tensor<2>) -> Tensor<2> {
    autocast_matmul(x, w.transpose()).gather(1, ids) * inside
}

/// The same in plain burn operations: the logits, then `log Σ exp` shifted by the (constant)
/// row maximum.
pub fn plain(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    log_sum_exp(autocast_matmul(x, w.transpose()))
}

/// `log Σ exp` along dimension 1 (`[rows, k]` → `[rows, 1]`).
pub fn log_sum_exp(x: Tensor<2>) -> Tensor<2> {
    let max = x.clone().max_dim(1).detach();
    (x - max.clone()).exp().sum_dim(1).log() + max
}
