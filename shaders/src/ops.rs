//! The fused operations as one burn backend extension: each backend gets its kernels
//! (`flex.rs` for the CPU, `cube/` for wgpu), and autodiff gets hand-written backward passes
//! (`autodiff.rs`) that keep only what they need.
//!
//! The default bodies compose plain backend operations; they define what each operation
//! computes, and a backend without a kernel of its own runs them.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, DType, Shape, TensorMetadata};
use burn::tensor::{Distribution, FloatDType};

use crate::gelu::{GELU_A, GELU_B};

#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait FusedOps: Backend {
    /// BLOOM's tanh-GELU, `x·σ(t)` with `t = (A·x² + B)·x` (see `gelu.rs`), element-wise, f32.
    fn bloom_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu::<Self>(x)
    }

    /// `grad · d gelu(x)/dx`, element-wise: `σ(t) + x·σ(t)(1 − σ(t))·(3A·x² + B)`.
    fn bloom_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_backward::<Self>(x, grad)
    }

    /// `log Σ_j exp(logits_ij)` per row: `[n, v]` → `[n, 1]`, f32.
    fn row_log_sum_exp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::row_log_sum_exp::<Self>(logits)
    }

    /// `exp(logits − lse) · grad` (softmax times the incoming gradient of the log-sum-exp):
    /// `[n, v]`, `[n, 1]`, `[n, 1]` → `[n, v]`.
    fn softmax_times(logits: FloatTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::softmax_times::<Self>(logits, lse, grad)
    }

    /// `lhs · rhs` for operands of one dtype: every matmul of the kernels and of the linear
    /// layers. burn's matmul by default; the CPU writes 2-D f32 products straight into their
    /// storage.
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// Dropout's mask for `like` (its shape and device): each element `1/keep` with probability
    /// `keep`, else 0, f32. Drawn from the device's generator, so a seeded device draws the same
    /// masks again (gradient checkpointing's recomputation, a resumed run).
    fn dropout_mask(like: FloatTensor<Self>, keep: f64) -> FloatTensor<Self> {
        composed::dropout_mask::<Self>(like, keep)
    }

    /// `x Wᵀ` for a weight stored `[out, in]`, as checkpoints store it: `x` `[m, in]` (f32),
    /// `w` `[out, in]` (any float dtype, multiplied in its precision as autocast does) →
    /// `[m, out]`. The matmul of every linear layer and of the head's blocks.
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        autocast_matmul::<Self>(x, Self::float_transpose(w))
    }

    /// `log Σ_j exp((x Wᵀ)_ij)`: `x` `[n, d]` (f32), `w` `[v, d]` (any float dtype) → `[n, 1]`.
    /// The logits exist only inside the call; under autodiff the backward recomputes them.
    fn linear_log_sum_exp(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let chunks = logit_chunks::<Self>(&x, &w);
        if chunks.len() == 1 {
            return Self::row_log_sum_exp(linear_logits::<Self>(x, w));
        }
        let parts = chunks
            .into_iter()
            .map(|rows| Self::row_log_sum_exp(linear_logits::<Self>(row_slice::<Self>(&x, rows), w.clone())));
        Self::float_cat(parts.collect(), 0)
    }

    /// The label's logit without the logits: `(x_i · w[ids_i]) · inside_i`, `x` `[n, d]`, `w`
    /// `[v, d]`, `ids` `[n, 1]` (indices into `w`), `inside` `[n, 1]` (1 where the label is in
    /// this block, else 0) → `[n, 1]`. `x` is rounded to `w`'s precision as for the logits.
    fn label_logit(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        ids: IntTensor<Self>,
        inside: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = rounded_like::<Self>(x, &w);
        let rows = label_rows::<Self>(w, ids);
        Self::float_mul(Self::float_sum_dim(Self::float_mul(x, rows), 1), inside)
    }

    /// Layer norm over the rows of `x` `[n, h]` with `gamma`, `beta` `[h]` (see `layer_norm.rs`), f32.
    fn row_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::layer_norm::<Self>(x, gamma, beta, eps)
    }

    /// The layer norm's input gradient for the incoming `grad`: with `x̂` the normalised rows and
    /// `ĝ = grad·γ`, `dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / √(var + eps)`, per row.
    fn row_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::layer_norm_backward::<Self>(x, gamma, grad, eps)
    }

    /// `softmax(q kᵀ·scale + alibi + mask) v` (see `attention.rs` for the shapes), f32.
    fn alibi_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::alibi_attention_forward(q, k, v, alibi, mask).0
    }

    /// `softmax(raw · scale + alibi + mask)` over the keys, for the raw scores `raw = q kᵀ`
    /// `[batch, heads, queries, keys]`, `alibi` `[batch, heads, 1, keys]` and `mask`
    /// `[batch, 1, queries, keys]` (the composed attention's probabilities), f32.
    fn scores_softmax(
        raw: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed::scores_softmax::<Self>(raw, alibi, mask, scale)
    }

    /// The attention's output and what the backward pass needs besides the inputs: the CubeCL
    /// kernels give each query row's score maximum and sum of `exp(score − maximum)`
    /// (`[batch, heads, queries, 2]`); the composed path recomputes the probabilities with the
    /// backend's softmax instead and gives a placeholder.
    fn alibi_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_forward::<Self>(q, k, v, alibi, mask)
    }

    /// `(dq, dk, dv)` for the incoming gradient `grad` of the output `out`, the scores
    /// recomputed from `q`, `k` and the biases and normalised with the forward's `stats`.
    #[allow(clippy::too_many_arguments)]
    fn alibi_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        out: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_backward::<Self>(q, k, v, alibi, mask, out, stats, grad)
    }

    /// A 4-bit weight `[rows, cols]` in f32 (see `linear_4bit.rs` for the layout): value `i` is
    /// `code[nibble_i] · absmax[i / 64]`.
    fn dequantize_4bit(
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> FloatTensor<Self> {
        composed::dequantize_4bit::<Self>(words, absmax, code, shape)
    }

    /// `x Wᵀ` for `x` `[n, cols]` (f32) and a 4-bit `W` `[rows, cols]`, computed in `compute`'s
    /// precision: `W` dequantized into a transient, the matmul as autocast runs it.
    fn linear_4bit(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
        compute: FloatDType,
    ) -> FloatTensor<Self> {
        let parts: Vec<FloatTensor<Self>> = weight_chunks(shape)
            .into_iter()
            .map(|rows| {
                let (w, a, shape) = chunk_4bit::<Self>(&words, &absmax, shape, rows);
                dequantized_linear::<Self>(x.clone(), Self::dequantize_4bit(w, a, code.clone(), shape), compute)
            })
            .collect();
        joined::<Self>(parts, 1)
    }
}

/// The most logits the head's log-sum-exp holds at once (forward or backward): `x`'s rows go
/// through in chunks whose `[rows, block]` logits fit, so a small model's wide vocabulary block
/// (32 MiB of weights is 32,768 rows at hidden 256) does not make a large transient.
pub const LOGITS_CHUNK_BYTES: usize = 8 << 20;

/// `log Σ_j exp((x Wᵀ)_ij)` `[n, 1]` and its gradient with respect to `x` for an incoming
/// gradient of one per row, `softmax(x Wᵀ) W` `[n, d]`, from one pass over the logits (a chunk of
/// rows at a time, as [`FusedOps::linear_log_sum_exp`]).
pub fn log_sum_exp_and_input_gradient<B: Backend + FusedOps>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (mut lse, mut grad) = (Vec::new(), Vec::new());
    for rows in logit_chunks::<B>(&x, &w) {
        let logits = linear_logits::<B>(row_slice::<B>(&x, rows.clone()), w.clone());
        let part = B::row_log_sum_exp(logits.clone());
        let ones = B::float_ones(Shape::new([rows.len(), 1]), &x.device(), FloatDType::F32);
        let p = B::softmax_times(logits, part.clone(), ones);
        grad.push(autocast_matmul::<B>(p, w.clone()));
        lse.push(part);
    }
    (joined::<B>(lse, 0), joined::<B>(grad, 0))
}

/// The parts concatenated along `dim`; a single part as it is, without a copy.
pub fn joined<B: Backend>(mut parts: Vec<FloatTensor<B>>, dim: usize) -> FloatTensor<B> {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        B::float_cat(parts, dim)
    }
}

/// Row ranges of `x` `[n, d]` whose logits against `w` `[v, d]` fit in [`LOGITS_CHUNK_BYTES`].
pub fn logit_chunks<B: Backend>(x: &FloatTensor<B>, w: &FloatTensor<B>) -> Vec<std::ops::Range<usize>> {
    let (n, v) = (x.shape()[0], w.shape()[0]);
    let rows = (LOGITS_CHUNK_BYTES / (4 * v.max(1))).max(1);
    (0..n.div_ceil(rows).max(1)).map(|i| i * rows..((i + 1) * rows).min(n)).collect()
}

/// Rows `rows` of a 2-D tensor.
pub fn row_slice<B: Backend>(x: &FloatTensor<B>, rows: std::ops::Range<usize>) -> FloatTensor<B> {
    B::float_slice(x.clone(), &[rows.into(), (..).into()])
}

/// `x` rounded to `w`'s precision and widened back (a no-op for f32 weights).
pub fn rounded_like<B: Backend>(x: FloatTensor<B>, w: &FloatTensor<B>) -> FloatTensor<B> {
    let dtype = w.dtype();
    if dtype == DType::F32 {
        return x;
    }
    B::float_cast(B::float_cast(x, dtype.into()), burn::tensor::FloatDType::F32)
}

/// The rows `w[ids]` in f32: `[v, d]`, `[n, 1]` → `[n, d]`.
pub fn label_rows<B: Backend>(w: FloatTensor<B>, ids: IntTensor<B>) -> FloatTensor<B> {
    let n = ids.shape().num_elements();
    let rows = B::float_select(w, 0, B::int_reshape(ids, Shape::new([n])));
    if rows.dtype() == DType::F32 {
        rows
    } else {
        B::float_cast(rows, burn::tensor::FloatDType::F32)
    }
}

/// The operations as chains of plain backend operations: what a backend without a kernel of
/// its own runs, and what the kernels fall back to for inputs they do not cover.
pub mod composed {
    use super::*;

    /// As burn's `Dropout` draws it: a Bernoulli draw per element, scaled.
    pub fn dropout_mask<B: Backend>(like: FloatTensor<B>, keep: f64) -> FloatTensor<B> {
        let kept = B::float_random(like.shape(), Distribution::Bernoulli(keep), &like.device(), FloatDType::F32);
        B::float_mul_scalar(kept, (1.0 / keep).into())
    }

    pub fn gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let t = twice_inner::<B>(x.clone());
        B::float_mul(x, B::sigmoid(t))
    }

    pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
        let s = B::sigmoid(twice_inner::<B>(x.clone()));
        let slope = B::float_add_scalar(
            B::float_mul_scalar(B::float_mul(x.clone(), x.clone()), (3.0 * GELU_A).into()),
            GELU_B.into(),
        );
        let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
        let ds = B::float_mul(B::float_mul(B::float_mul(s.clone(), one_minus), x), slope);
        B::float_mul(B::float_add(s, ds), grad)
    }

    pub fn row_log_sum_exp<B: Backend>(logits: FloatTensor<B>) -> FloatTensor<B> {
        let max = B::float_max_dim(logits.clone(), 1);
        let shifted = B::float_exp(B::float_sub(logits, max.clone()));
        B::float_add(B::float_log(B::float_sum_dim(shifted, 1)), max)
    }

    pub fn softmax_times<B: Backend>(
        logits: FloatTensor<B>,
        lse: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::float_mul(B::float_exp(B::float_sub(logits, lse)), grad)
    }

    /// `(x − mean) / √(var + eps)` per row of `[n, h]`, and the `√(var + eps)` `[n, 1]`.
    pub fn normalized<B: Backend>(x: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
        let centered = B::float_sub(x.clone(), B::float_mean_dim(x, 1));
        let variance = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 1);
        let std = B::float_sqrt(B::float_add_scalar(variance, eps.into()));
        (B::float_div(centered, std.clone()), std)
    }

    /// `[h]` as `[1, h]`, to scale rows.
    fn as_row<B: Backend>(v: FloatTensor<B>) -> FloatTensor<B> {
        let h = v.shape()[0];
        B::float_reshape(v, Shape::new([1, h]))
    }

    pub fn layer_norm<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        let (normed, _) = normalized::<B>(x, eps);
        B::float_add(B::float_mul(normed, as_row::<B>(gamma)), as_row::<B>(beta))
    }

    pub fn layer_norm_backward<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        grad: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        let (normed, std) = normalized::<B>(x, eps);
        let g = B::float_mul(grad, as_row::<B>(gamma));
        let mean_g = B::float_mean_dim(g.clone(), 1);
        let mean_gx = B::float_mean_dim(B::float_mul(g.clone(), normed.clone()), 1);
        let centered = B::float_sub(B::float_sub(g, mean_g), B::float_mul(normed, mean_gx));
        B::float_div(centered, std)
    }

    /// `q kᵀ·scale + alibi + mask`, summed in the plain path's order: `[b, h, queries, keys]`.
    /// The attention's probabilities: the raw scores `q kᵀ` as one matmul, then the rest per row.
    fn attention_probs<B: Backend + FusedOps>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        alibi: FloatTensor<B>,
        mask: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let scale = crate::attention::scale(q.shape()[3]);
        B::scores_softmax(B::matmul(q, B::float_transpose(k)), alibi, mask, scale)
    }

    pub fn scores_softmax<B: Backend>(
        raw: FloatTensor<B>,
        alibi: FloatTensor<B>,
        mask: FloatTensor<B>,
        scale: f64,
    ) -> FloatTensor<B> {
        let scores = B::float_add(B::float_add(B::float_mul_scalar(raw, scale.into()), alibi), mask);
        B::softmax(scores, 3)
    }

    pub fn attention_forward<B: Backend + FusedOps>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        alibi: FloatTensor<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let device = q.device();
        let probs = attention_probs::<B>(q, k, alibi, mask);
        (B::matmul(probs, v), B::float_zeros(Shape::new([1]), &device, burn::tensor::FloatDType::F32))
    }

    /// The softmax's backward pass: with `p` the probabilities and `δ_i = Σ_j p_ij dp_ij =
    /// grad_i · out_i`, `d scores = p ∘ (grad vᵀ − δ)`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<B: Backend + FusedOps>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        alibi: FloatTensor<B>,
        mask: FloatTensor<B>,
        out: FloatTensor<B>,
        _stats: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let scale = crate::attention::scale(q.shape()[3]);
        let p = attention_probs::<B>(q.clone(), k.clone(), alibi, mask);
        let dv = B::matmul(B::float_transpose(p.clone()), grad.clone());
        let dp = B::matmul(grad.clone(), B::float_transpose(v));
        let delta = B::float_sum_dim(B::float_mul(grad, out), 3);
        let ds = B::float_mul(p, B::float_sub(dp, delta));
        let dq = B::float_mul_scalar(B::matmul(ds.clone(), k), scale.into());
        let dk = B::float_mul_scalar(B::matmul(B::float_transpose(ds), q), scale.into());
        (dq, dk, dv)
    }

    /// Each word's 8 nibbles picked out with one shift per position, looked up in `code`, and
    /// scaled by their block's absmax.
    pub fn dequantize_4bit<B: Backend>(
        words: IntTensor<B>,
        absmax: FloatTensor<B>,
        code: FloatTensor<B>,
        [rows, cols]: [usize; 2],
    ) -> FloatTensor<B> {
        use crate::linear_4bit::{nibble_shift, BLOCK, PER_WORD};
        let n = rows * cols;
        let device = absmax.device();
        let m = words.shape().num_elements();
        let shifts: Vec<u32> = (0..PER_WORD).map(nibble_shift).collect();
        let shifts = B::int_from_data(burn::tensor::TensorData::new(shifts, [1, PER_WORD]), &device);
        let spread = B::int_expand(B::int_reshape(words, Shape::new([m, 1])), Shape::new([m, PER_WORD]));
        let nibbles = B::bitwise_and_scalar(B::bitwise_right_shift(spread, shifts), 15u32.into());
        let nibbles = B::int_slice(B::int_reshape(nibbles, Shape::new([m * PER_WORD])), &[(0..n).into()]);
        let values = B::float_select(code, 0, B::int_cast(nibbles, burn::tensor::IntDType::I32));
        let blocks =
            B::int_div_scalar(B::int_arange(0..n as i64, &device, burn::tensor::IntDType::I32), (BLOCK as i32).into());
        let scales = B::float_select(absmax, 0, blocks);
        B::float_reshape(B::float_mul(values, scales), Shape::new([rows, cols]))
    }

    pub fn linear_4bit<B: Backend + FusedOps>(
        x: FloatTensor<B>,
        words: IntTensor<B>,
        absmax: FloatTensor<B>,
        code: FloatTensor<B>,
        shape: [usize; 2],
        compute: FloatDType,
    ) -> FloatTensor<B> {
        dequantized_linear::<B>(x, dequantize_4bit::<B>(words, absmax, code, shape), compute)
    }

    /// `t = 2·inner = (A·x² + B)·x`, the sigmoid's argument.
    fn twice_inner<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let x2 = B::float_mul(x.clone(), x.clone());
        B::float_mul(B::float_add_scalar(B::float_mul_scalar(x2, GELU_A.into()), GELU_B.into()), x)
    }
}

/// Values of a 4-bit weight dequantized at once (16 MiB of f32): the matmul goes through the
/// weight in row ranges of about this size, so its full-precision transient stays small.
pub const DEQUANTIZE_CHUNK_VALUES: usize = 4 << 20;

/// The row ranges of a 4-bit `[rows, cols]` weight dequantized one at a time: each a whole
/// number of absmax blocks (so its words and scales are a plain slice); the whole weight when
/// rows are not a multiple of a block long.
pub fn weight_chunks([rows, cols]: [usize; 2]) -> Vec<std::ops::Range<usize>> {
    use crate::linear_4bit::BLOCK;
    let per_chunk =
        if cols == 0 || !cols.is_multiple_of(BLOCK) { rows.max(1) } else { (DEQUANTIZE_CHUNK_VALUES / cols).max(1) };
    (0..rows.div_ceil(per_chunk).max(1)).map(|i| i * per_chunk..((i + 1) * per_chunk).min(rows)).collect()
}

/// The words, scales and shape of rows `rows` of a 4-bit weight (a range from [`weight_chunks`]).
pub fn chunk_4bit<B: Backend>(
    words: &IntTensor<B>,
    absmax: &FloatTensor<B>,
    [all_rows, cols]: [usize; 2],
    rows: std::ops::Range<usize>,
) -> (IntTensor<B>, FloatTensor<B>, [usize; 2]) {
    use crate::linear_4bit::{BLOCK, PER_WORD};
    if rows == (0..all_rows) {
        return (words.clone(), absmax.clone(), [all_rows, cols]);
    }
    let (start, end) = (rows.start * cols, rows.end * cols);
    let w = B::int_slice(words.clone(), &[(start / PER_WORD..end / PER_WORD).into()]);
    let a = B::float_slice(absmax.clone(), &[(start / BLOCK..end / BLOCK).into()]);
    (w, a, [rows.len(), cols])
}

/// `x Wᵀ` for a dequantized `w` (f32), in `compute`'s precision.
pub fn dequantized_linear<B: Backend + FusedOps>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    compute: FloatDType,
) -> FloatTensor<B> {
    autocast_matmul::<B>(x, B::float_transpose(in_precision::<B>(w, compute)))
}

/// An f32 tensor in `dtype` (rounded), unchanged for f32.
pub fn in_precision<B: Backend>(x: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    if dtype == FloatDType::F32 {
        x
    } else {
        B::float_cast(x, dtype)
    }
}

/// `x Wᵀ` in f32, in `w`'s precision, exactly like the model's frozen linear layers.
pub fn linear_logits<B: Backend + FusedOps>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    B::weight_matmul(x, w)
}

/// `lhs · rhs` in f32 for a weight `rhs` of any float dtype, computed in the weight's precision
/// as PyTorch's autocast does (`lhs` rounded to it, the product widened); the kernels call it
/// on primitives and [`crate::autocast_matmul`] on tensors.
pub fn autocast_matmul<B: Backend + FusedOps>(lhs: FloatTensor<B>, rhs: FloatTensor<B>) -> FloatTensor<B> {
    autocast_with::<B>(lhs, rhs, B::matmul)
}

/// [`autocast_matmul`] with the product taken by `matmul` (burn's own on a backend without
/// the kernels).
pub fn autocast_with<B: Backend>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
    matmul: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<B> {
    let dtype = rhs.dtype();
    if dtype == DType::F32 {
        return matmul(lhs, rhs);
    }
    B::float_cast(matmul(B::float_cast(lhs, dtype.into()), rhs), burn::tensor::FloatDType::F32)
}
