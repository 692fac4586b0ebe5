//! The matmul with a frozen 4-bit weight (QLoRA's base layers): `y = x Wᵀ` where `W`
//! `[out, in]` is stored in bitsandbytes' 4-bit format, as `ember_core::quant::bnb` makes it.
//!
//! On the device a weight is three tensors:
//! - `words` (u32, `⌈n/8⌉`): bitsandbytes' packed bytes read as little-endian words, so value
//!   `i` (row-major over `W`) is nibble `i mod 8` of word `i / 8`: the high nibble of byte
//!   `(i mod 8) / 2` for even `i`, the low one for odd `i` (bitsandbytes puts the first of two
//!   values in the high nibble);
//! - `absmax` (f32, one per [`BLOCK`] values), already double-dequantized on the host so that
//!   the device multiplies exactly as bitsandbytes does (`code · absmax`, one f32 rounding);
//! - `code` (f32, 16): the NF4 or FP4 values the nibbles stand for.
//!
//! The matmul dequantizes `W` into a transient in the compute dtype and hands it to the
//! backend's matmul (burn's tuned kernels on wgpu and the CPU): one layer's full-precision
//! weight exists at a time, for the duration of its matmul, and none is kept for the backward
//! pass, which dequantizes again. The kernels here are the dequantization: one pass, 8 values
//! per unit of work, on wgpu (`cube/dequantize.rs`) and across the cores on the CPU (`flex.rs`).

use burn::backend::Dispatch;
use burn::tensor::{FloatDType, Int, Tensor};

use crate::ops::{composed, FusedOps};

/// Values per absmax block (bitsandbytes' default `blocksize`, which transformers uses).
pub const BLOCK: usize = 64;
/// 4-bit values per u32 word.
pub const PER_WORD: usize = 8;

/// A 4-bit weight `[out, in]` on the device (see the module documentation).
#[derive(Debug, Clone)]
pub struct Weight4bit {
    pub words: Tensor<1, Int>,
    pub absmax: Tensor<1>,
    pub code: Tensor<1>,
    pub shape: [usize; 2],
    /// The precision the matmul runs in (`bnb_4bit_compute_dtype`).
    pub compute: FloatDType,
}

/// The bit offset of value `i`'s nibble within its word.
pub fn nibble_shift(i: usize) -> u32 {
    let p = (i % PER_WORD) as u32;
    (p / 2) * 8 + (1 - p % 2) * 4
}

/// `x Wᵀ` in f32 for `x` `[n, in]`, in the weight's compute precision as autocast runs a matmul.
/// Differentiable in `x` (the weight is frozen).
pub fn linear(x: Tensor<2>, w: &Weight4bit) -> Tensor<2> {
    let args = (w.words.clone().into_dispatch(), w.absmax.clone().into_dispatch(), w.code.clone().into_dispatch());
    let out = if crate::has_kernels(&x.device()) {
        Dispatch::linear_4bit(x.into_dispatch(), args.0, args.1, args.2, w.shape, w.compute)
    } else {
        composed::linear_4bit::<Dispatch>(x.into_dispatch(), args.0, args.1, args.2, w.shape, w.compute)
    };
    Tensor::from_dispatch(out)
}

/// `W` in f32, as bitsandbytes' `dequantize_4bit` gives it (bit for bit).
pub fn dequantize(w: &Weight4bit) -> Tensor<2> {
    let args = (w.words.clone().into_dispatch(), w.absmax.clone().into_dispatch(), w.code.clone().into_dispatch());
    let out = if crate::has_kernels(&w.absmax.device()) {
        Dispatch::dequantize_4bit(args.0, args.1, args.2, w.shape)
    } else {
        composed::dequantize_4bit::<Dispatch>(args.0, args.1, args.2, w.shape)
    };
    Tensor::from_dispatch(out)
}

/// The same dequantization in plain burn operations (the reference the kernels are checked
/// against).
pub fn dequantize_plain(w: &Weight4bit) -> Tensor<2> {
    let out = composed::dequantize_4bit::<Dispatch>(
        w.words.clone().into_dispatch(),
        w.absmax.clone().into_dispatch(),
        w.code.clone().into_dispatch(),
        w.shape,
    );
    Tensor::from_dispatch(out)
}
