//! The 4-bit dequantization kernel: one unit per u32 word, writing its 8 values (all in one
//! absmax block, since a block is 64 values). One f32 multiplication per value, as
//! bitsandbytes does, so the result is bit for bit bitsandbytes'.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Cube, DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::{all_f32, empty_like};
use crate::linear_4bit::{BLOCK, PER_WORD};
use crate::ops::composed;

#[cube(launch_unchecked)]
fn dequantize_4bit_kernel(words: &[u32], absmax: &[f32], code: &[f32], out: &mut [f32]) {
    let w = ABSOLUTE_POS;
    if w < words.len() {
        let word = words[w];
        let scale = absmax[w / (BLOCK / PER_WORD)];
        let base = w * PER_WORD;
        #[unroll]
        for p in 0..PER_WORD {
            let i = base + p;
            if i < out.len() {
                // Even positions are a byte's high nibble (bitsandbytes' order).
                let shift = (p / 2) * 8 + (1 - p % 2) * 4;
                out[i] = code[((word >> shift as u32) & 15) as usize] * scale;
            }
        }
    }
}

pub fn dequantize_4bit(
    words: IntTensor<Cube>,
    absmax: FloatTensor<Cube>,
    code: FloatTensor<Cube>,
    [rows, cols]: [usize; 2],
) -> FloatTensor<Cube> {
    let n = rows * cols;
    let m = words.shape().num_elements();
    if words.dtype != DType::U32 || !all_f32(&[&absmax, &code]) || m != n.div_ceil(PER_WORD) {
        return composed::dequantize_4bit::<Cube>(words, absmax, code, [rows, cols]);
    }
    let (words, absmax, code) = (into_contiguous(words), into_contiguous(absmax), into_contiguous(code));
    let out = empty_like(&absmax, [rows, cols].into());
    let dim = CubeDim::new(&words.client, m);
    let count = calculate_cube_count_elemwise(&words.client, m, dim);
    // SAFETY: unit `w < m` reads word `w`, absmax `w / 8` (< ⌈n/64⌉, the block count) and
    // codes below 16, and writes values `8w..8w+8` below `n`.
    unsafe {
        dequantize_4bit_kernel::launch_unchecked(
            &words.client.clone(),
            count,
            dim,
            words.into_buffer_arg(),
            absmax.into_buffer_arg(),
            code.into_buffer_arg(),
            out.clone().into_buffer_arg(),
        )
    };
    out
}
