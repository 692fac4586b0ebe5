//! The attention kernels: the forward pass and the two halves of the backward pass, each tiled
//! over the other side's rows. A cube holds `ROWS` query rows (or key rows), one per unit, and
//! walks the keys (or queries) a tile at a time through shared memory, so no `[queries, keys]`
//! array exists anywhere. Each unit keeps its own row, and its accumulators, in registers.
//!
//! Scores are computed as the plain path computes them, `(q·k)·scale + alibi + mask`, with the
//! mask's `f32::MIN` added, not skipped: a row whose keys are all masked gets the same uniform
//! average as in transformers, and the three kernels recompute bit-identical scores. The loops
//! over the head dimension are unrolled (it is a compile-time constant), so a unit's rows stay
//! in registers rather than in indexed local memory.
//!
//! WebGPU guarantees only 8 storage buffers per kernel, and CubeCL takes one for its scalars, so
//! the kernels read the ALiBi bias and the mask from one buffer (`bias`), the row statistics from
//! one (`rows`), and the key kernel writes `dk` and `dv` into one.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{all_f32, empty_like, MAX_CUBES};
use crate::ops::composed;

/// Rows per cube, one unit each.
const ROWS: usize = 64;
/// Floats per tile of one tensor in shared memory (4 KiB; WebGPU guarantees 16 KiB in all).
const TILE_FLOATS: usize = 1024;
/// The largest head size the kernels hold in registers; larger heads take the composed path.
const MAX_HEAD_DIM: usize = 256;

/// Where one unit's row and its scores' biases are.
#[derive(CubeType)]
struct Place {
    bh: usize,
    /// The unit's own row (a query row, or a key row in the key kernel).
    own: usize,
    valid: bool,
    /// `bias` offset of the ALiBi row `[bh, ·]` and of row 0 of this batch's mask.
    alibi_at: usize,
    mask_at: usize,
}

#[cube]
fn place(heads: usize, lq: usize, lk: usize, own_rows: usize, mask_offset: usize) -> Place {
    let bh = CUBE_POS_Y as usize;
    let own = CUBE_POS_X as usize * ROWS + UNIT_POS as usize;
    Place { bh, own, valid: own < own_rows, alibi_at: bh * lk, mask_at: mask_offset + (bh / heads) * lq * lk }
}

/// `out = softmax(scores) v` for one query row per unit, with the online softmax: a running
/// maximum `m` and sum `l` of `exp(score − m)`, the accumulator rescaled when `m` grows.
/// `stats[row] = (m, l)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    out: &mut [f32],
    stats: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    mask_offset: usize,
    scale: f32,
    lowest: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let at = place(heads, lq, lk, lq, mask_offset);
    let (bh, i) = (at.bh, at.own);
    let row = (bh * lq + i) * dim;
    let mut ks = Shared::<[f32]>::new_slice(tile * dim);
    let mut vs = Shared::<[f32]>::new_slice(tile * dim);
    let qr = row_or_zeros(q, row, at.valid, dim);
    let mut acc = row_or_zeros(q, 0, false, dim);
    // f32::MIN (the lowest score there is; passed in, as a literal at the edge of f32 may not
    // survive every shader compiler), not −∞: the first score then starts the sums right.
    let mut m = lowest;
    let mut l = 0.0f32.runtime();
    let mut t0 = 0usize.runtime();
    while t0 < lk {
        load_tile(k, &mut ks, bh * lk + t0, lk - t0, dim, tile);
        load_tile(v, &mut vs, bh * lk + t0, lk - t0, dim, tile);
        sync_cube();
        if at.valid {
            for jj in 0..tile_len(lk - t0, tile) {
                let j = t0 + jj;
                let s =
                    biased_score(&qr, &ks, jj * dim, dim, scale, bias[at.alibi_at + j], bias[at.mask_at + i * lk + j]);
                // One of `c`, `p` is exp(0) = 1: no branch, the same sums as one.
                let grown = f32::max(m, s);
                let c = f32::exp(m - grown);
                let p = f32::exp(s - grown);
                l = l * c + p;
                #[unroll]
                for d in 0..dim {
                    acc[d] = acc[d] * c + p * vs[jj * dim + d];
                }
                m = grown;
            }
        }
        sync_cube();
        t0 += tile;
    }
    if at.valid {
        #[unroll]
        for d in 0..dim {
            out[row + d] = acc[d] / l;
        }
        stats[(bh * lq + i) * 2] = m;
        stats[(bh * lq + i) * 2 + 1] = l;
    }
}

/// `dq` for one query row per unit: `dq_i = scale · Σ_j p_ij (grad_i · v_j − δ_i) k_j`, with
/// `rows[i] = (m_i, l_i, δ_i = grad_i · out_i)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn query_grads_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    rows: &[f32],
    grad: &[f32],
    dq: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    mask_offset: usize,
    scale: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let at = place(heads, lq, lk, lq, mask_offset);
    let (bh, i) = (at.bh, at.own);
    let row = (bh * lq + i) * dim;
    let mut ks = Shared::<[f32]>::new_slice(tile * dim);
    let mut vs = Shared::<[f32]>::new_slice(tile * dim);
    let qr = row_or_zeros(q, row, at.valid, dim);
    let gr = row_or_zeros(grad, row, at.valid, dim);
    let mut acc = row_or_zeros(q, 0, false, dim);
    let mut m = 0.0f32.runtime();
    let mut l = 1.0f32.runtime();
    let mut delta = 0.0f32.runtime();
    if at.valid {
        m = rows[(bh * lq + i) * 3];
        l = rows[(bh * lq + i) * 3 + 1];
        delta = rows[(bh * lq + i) * 3 + 2];
    }
    let mut t0 = 0usize.runtime();
    while t0 < lk {
        load_tile(k, &mut ks, bh * lk + t0, lk - t0, dim, tile);
        load_tile(v, &mut vs, bh * lk + t0, lk - t0, dim, tile);
        sync_cube();
        if at.valid {
            for jj in 0..tile_len(lk - t0, tile) {
                let j = t0 + jj;
                let s =
                    biased_score(&qr, &ks, jj * dim, dim, scale, bias[at.alibi_at + j], bias[at.mask_at + i * lk + j]);
                let p = f32::exp(s - m) / l;
                let ds = p * (score(&gr, &vs, jj * dim, dim, 1.0) - delta);
                #[unroll]
                for d in 0..dim {
                    acc[d] += ds * ks[jj * dim + d];
                }
            }
        }
        sync_cube();
        t0 += tile;
    }
    if at.valid {
        #[unroll]
        for d in 0..dim {
            dq[row + d] = acc[d] * scale;
        }
    }
}

/// `dk` and `dv` for one key row per unit, walking the queries a tile at a time:
/// `dv_j = Σ_i p_ij grad_i`, `dk_j = scale · Σ_i p_ij (grad_i · v_j − δ_i) q_i`. `dkv` holds
/// `dk` and then, from `half`, `dv`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn key_grads_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    rows: &[f32],
    grad: &[f32],
    dkv: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    mask_offset: usize,
    half: usize,
    scale: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let at = place(heads, lq, lk, lk, mask_offset);
    let (bh, j) = (at.bh, at.own);
    let row = (bh * lk + j) * dim;
    let mut qs = Shared::<[f32]>::new_slice(tile * dim);
    let mut gs = Shared::<[f32]>::new_slice(tile * dim);
    let mut stats = Shared::<[f32]>::new_slice(tile * 3);
    let kr = row_or_zeros(k, row, at.valid, dim);
    let vr = row_or_zeros(v, row, at.valid, dim);
    let mut dkr = row_or_zeros(k, 0, false, dim);
    let mut dvr = row_or_zeros(v, 0, false, dim);
    let mut alibi = 0.0f32.runtime();
    if at.valid {
        alibi = bias[at.alibi_at + j];
    }
    let mut t0 = 0usize.runtime();
    while t0 < lq {
        load_tile(q, &mut qs, bh * lq + t0, lq - t0, dim, tile);
        load_tile(grad, &mut gs, bh * lq + t0, lq - t0, dim, tile);
        load_tile(rows, &mut stats, bh * lq + t0, lq - t0, 3usize, tile);
        sync_cube();
        if at.valid {
            for ii in 0..tile_len(lq - t0, tile) {
                let i = t0 + ii;
                // The same products, summed in the same order, as the forward's score.
                let s = biased_score(&kr, &qs, ii * dim, dim, scale, alibi, bias[at.mask_at + i * lk + j]);
                let p = f32::exp(s - stats[ii * 3]) / stats[ii * 3 + 1];
                let ds = p * (score(&vr, &gs, ii * dim, dim, 1.0) - stats[ii * 3 + 2]);
                #[unroll]
                for d in 0..dim {
                    dvr[d] += p * gs[ii * dim + d];
                    dkr[d] += ds * qs[ii * dim + d];
                }
            }
        }
        sync_cube();
        t0 += tile;
    }
    if at.valid {
        #[unroll]
        for d in 0..dim {
            dkv[row + d] = dkr[d] * scale;
            dkv[half + row + d] = dvr[d];
        }
    }
}

/// `src[at..at + dim]` in registers where `valid`, else zeros (the accumulators' start).
#[cube]
fn row_or_zeros(src: &[f32], at: usize, valid: bool, #[comptime] dim: usize) -> Array<f32> {
    let mut row = Array::<f32>::new(dim);
    #[unroll]
    for d in 0..dim {
        row[d] = 0.0;
    }
    if valid {
        #[unroll]
        for d in 0..dim {
            row[d] = src[at + d];
        }
    }
    row
}

/// Rows of the tile that starts `left` rows before the end.
#[cube]
fn tile_len(left: usize, #[comptime] tile: usize) -> usize {
    let mut n = left;
    if n > tile {
        n = tile;
    }
    n
}

/// A score as the plain path computes it, `(q·k)·scale + alibi + mask`, in that order: the
/// three kernels must recompute the same bits.
#[cube]
fn biased_score(
    own: &Array<f32>,
    tile: &Shared<[f32]>,
    at: usize,
    #[comptime] dim: usize,
    scale: f32,
    alibi: f32,
    mask: f32,
) -> f32 {
    score(own, tile, at, dim, scale) + alibi + mask
}

/// `(Σ_d own_d · tile[at + d]) · scale`.
#[cube]
fn score(own: &Array<f32>, tile: &Shared<[f32]>, at: usize, #[comptime] dim: usize, scale: f32) -> f32 {
    let mut dot = 0.0f32.runtime();
    #[unroll]
    for d in 0..dim {
        dot += own[d] * tile[at + d];
    }
    dot * scale
}

/// Copies rows `first..first + min(left, rows)` of a `[·, width]` tensor into `tile`, the
/// cube's units taking every `ROWS`-th float.
#[cube]
fn load_tile(
    src: &[f32],
    tile: &mut Shared<[f32]>,
    first: usize,
    left: usize,
    #[comptime] width: usize,
    #[comptime] rows: usize,
) {
    let mut idx = UNIT_POS as usize;
    while idx < rows * width {
        if idx / width < left {
            tile[idx] = src[first * width + idx];
        }
        idx += ROWS;
    }
}

/// Rows of a tile: `TILE_FLOATS / head_dim`, at most `ROWS`.
fn tile_rows(dim: usize) -> usize {
    (TILE_FLOATS / dim).clamp(1, ROWS)
}

/// `[b, h, lq, lk, d]`, if the kernels cover these inputs.
fn covered(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    alibi: &CubeTensor,
    mask: &CubeTensor,
) -> Option<[usize; 5]> {
    if !all_f32(&[q, k, v, alibi, mask]) {
        return None;
    }
    let (qs, ks) = (q.shape(), k.shape());
    if qs.num_dims() != 4 || ks.num_dims() != 4 {
        return None;
    }
    let [b, h, lq, d] = [qs[0], qs[1], qs[2], qs[3]];
    let lk = ks[2];
    let shapes_fit = ks.dims::<4>() == [b, h, lk, d]
        && v.shape() == ks
        && alibi.shape().dims::<4>() == [b, h, 1, lk]
        && mask.shape().dims::<4>() == [b, 1, lq, lk];
    (shapes_fit && lq <= lk && d > 0 && d <= MAX_HEAD_DIM && b * h <= MAX_CUBES).then_some([b, h, lq, lk, d])
}

/// The ALiBi bias and then the mask, as one flat buffer: `(bias, offset of the mask)`.
fn packed_bias<B: Backend>(alibi: FloatTensor<B>, mask: FloatTensor<B>) -> (FloatTensor<B>, usize) {
    let flat = |t: FloatTensor<B>| {
        let n = t.shape().num_elements();
        B::float_reshape(t, Shape::new([n]))
    };
    let offset = alibi.shape().num_elements();
    (B::float_cat(vec![flat(alibi), flat(mask)], 0), offset)
}

/// Each query row's `(m, l, δ)`, `δ_i = grad_i · out_i`: `[b, h, lq, 3]`.
fn row_terms<B: Backend>(stats: FloatTensor<B>, grad: FloatTensor<B>, out: FloatTensor<B>) -> FloatTensor<B> {
    let delta = B::float_sum_dim(B::float_mul(grad, out), 3);
    B::float_cat(vec![stats, delta], 3)
}

/// Part `index` of a tensor of `parts` stacked along a new first dimension, as `shape`.
fn part<B: Backend>(t: FloatTensor<B>, index: usize, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(B::float_slice(t, &[(index..index + 1).into()]), shape)
}

fn cubes(rows: usize, bh: usize) -> CubeCount {
    CubeCount::Static(rows.div_ceil(ROWS) as u32, bh as u32, 1)
}

pub fn forward(
    q: FloatTensor<Cube>,
    k: FloatTensor<Cube>,
    v: FloatTensor<Cube>,
    alibi: FloatTensor<Cube>,
    mask: FloatTensor<Cube>,
) -> (CubeTensor, CubeTensor) {
    let Some([b, h, lq, lk, d]) = covered(&q, &k, &v, &alibi, &mask) else {
        return composed::attention_forward::<Cube>(q, k, v, alibi, mask);
    };
    let (bias, mask_offset) = packed_bias::<Cube>(alibi, mask);
    let [q, k, v, bias] = [q, k, v, bias].map(into_contiguous);
    let out = empty_like(&q, q.shape());
    let stats = empty_like(&q, [b, h, lq, 2].into());
    // SAFETY: every read and write is bounds-checked against the shapes checked in `covered`.
    unsafe {
        forward_kernel::launch_unchecked(
            &q.client.clone(),
            cubes(lq, b * h),
            CubeDim::new_1d(ROWS as u32),
            q.into_buffer_arg(),
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            stats.clone().into_buffer_arg(),
            h,
            lq,
            lk,
            mask_offset,
            crate::attention::scale(d) as f32,
            f32::MIN,
            d,
            tile_rows(d),
        )
    };
    (out, stats)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: FloatTensor<Cube>,
    k: FloatTensor<Cube>,
    v: FloatTensor<Cube>,
    alibi: FloatTensor<Cube>,
    mask: FloatTensor<Cube>,
    out: FloatTensor<Cube>,
    stats: FloatTensor<Cube>,
    grad: FloatTensor<Cube>,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let fits =
        covered(&q, &k, &v, &alibi, &mask).filter(|_| all_f32(&[&out, &stats, &grad]) && grad.shape() == q.shape());
    let Some([b, h, lq, lk, d]) = fits else {
        return composed::attention_backward::<Cube>(q, k, v, alibi, mask, out, stats, grad);
    };
    let (bias, mask_offset) = packed_bias::<Cube>(alibi, mask);
    let rows = row_terms::<Cube>(stats, grad.clone(), out);
    let [q, k, v, bias, rows, grad] = [q, k, v, bias, rows, grad].map(into_contiguous);
    let dq = empty_like(&q, q.shape());
    let dkv = empty_like(&k, [2, b, h, lk, d].into());
    let scale = crate::attention::scale(d) as f32;
    let client = q.client.clone();
    // SAFETY: as in `forward`; `grad` has `q`'s shape, `rows` is `[b, h, lq, 3]`, `dkv` two of `k`.
    unsafe {
        query_grads_kernel::launch_unchecked(
            &client,
            cubes(lq, b * h),
            CubeDim::new_1d(ROWS as u32),
            q.clone().into_buffer_arg(),
            k.clone().into_buffer_arg(),
            v.clone().into_buffer_arg(),
            bias.clone().into_buffer_arg(),
            rows.clone().into_buffer_arg(),
            grad.clone().into_buffer_arg(),
            dq.clone().into_buffer_arg(),
            h,
            lq,
            lk,
            mask_offset,
            scale,
            d,
            tile_rows(d),
        );
        key_grads_kernel::launch_unchecked(
            &client,
            cubes(lk, b * h),
            CubeDim::new_1d(ROWS as u32),
            q.into_buffer_arg(),
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            bias.into_buffer_arg(),
            rows.into_buffer_arg(),
            grad.into_buffer_arg(),
            dkv.clone().into_buffer_arg(),
            h,
            lq,
            lk,
            mask_offset,
            b * h * lk * d,
            scale,
            d,
            tile_rows(d),
        );
    }
    let shape = Shape::new([b, h, lk, d]);
    (dq, part::<Cube>(dkv.clone(), 0, shape.clone()), part::<Cube>(dkv, 1, shape))
}
