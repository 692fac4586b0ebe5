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

use burn::backend::tensor::FloatTensor;
use burn::backend::{Cube, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{all_f32, empty_like};
use crate::ops::composed;

/// Rows per cube, one unit each.
const ROWS: usize = 64;
/// Floats per tile of one tensor in shared memory (4 KiB; WebGPU guarantees 16 KiB in all).
const TILE_FLOATS: usize = 1024;
/// The largest head size the kernels hold in registers; larger heads take the composed path.
const MAX_HEAD_DIM: usize = 256;
/// Cubes along one dispatch dimension (WebGPU's guaranteed limit).
const MAX_CUBES: usize = 65_535;

/// `out = softmax(scores) v` for one query row per unit, with the online softmax: a running
/// maximum `m` and sum `l` of `exp(score − m)`, the accumulator rescaled when `m` grows.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    alibi: &[f32],
    mask: &[f32],
    out: &mut [f32],
    maxes: &mut [f32],
    sums: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    scale: f32,
    lowest: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let bh = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let i = CUBE_POS_X as usize * ROWS + unit;
    let valid = i < lq;
    let row = (bh * lq + i) * dim;
    let mask_row = ((bh / heads) * lq + i) * lk;
    let mut ks = Shared::<[f32]>::new_slice(tile * dim);
    let mut vs = Shared::<[f32]>::new_slice(tile * dim);
    let qr = row_or_zeros(q, row, valid, dim);
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
        if valid {
            for jj in 0..tile_len(lk - t0, tile) {
                let j = t0 + jj;
                let s = score(&qr, &ks, jj * dim, dim, scale) + alibi[bh * lk + j] + mask[mask_row + j];
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
    if valid {
        #[unroll]
        for d in 0..dim {
            out[row + d] = acc[d] / l;
        }
        maxes[bh * lq + i] = m;
        sums[bh * lq + i] = l;
    }
}

/// `dq` for one query row per unit (and `δ_i = grad_i · out_i`, which `key_grads_kernel` needs):
/// `dq_i = scale · Σ_j p_ij (grad_i · v_j − δ_i) k_j`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn query_grads_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    alibi: &[f32],
    mask: &[f32],
    out: &[f32],
    maxes: &[f32],
    sums: &[f32],
    grad: &[f32],
    dq: &mut [f32],
    deltas: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    scale: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let bh = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let i = CUBE_POS_X as usize * ROWS + unit;
    let valid = i < lq;
    let row = (bh * lq + i) * dim;
    let mask_row = ((bh / heads) * lq + i) * lk;
    let mut ks = Shared::<[f32]>::new_slice(tile * dim);
    let mut vs = Shared::<[f32]>::new_slice(tile * dim);
    let qr = row_or_zeros(q, row, valid, dim);
    let gr = row_or_zeros(grad, row, valid, dim);
    let mut acc = row_or_zeros(q, 0, false, dim);
    let mut delta = 0.0f32.runtime();
    let mut m = 0.0f32.runtime();
    let mut l = 1.0f32.runtime();
    if valid {
        #[unroll]
        for d in 0..dim {
            delta += gr[d] * out[row + d];
        }
        m = maxes[bh * lq + i];
        l = sums[bh * lq + i];
    }
    let mut t0 = 0usize.runtime();
    while t0 < lk {
        load_tile(k, &mut ks, bh * lk + t0, lk - t0, dim, tile);
        load_tile(v, &mut vs, bh * lk + t0, lk - t0, dim, tile);
        sync_cube();
        if valid {
            for jj in 0..tile_len(lk - t0, tile) {
                let j = t0 + jj;
                let s = score(&qr, &ks, jj * dim, dim, scale) + alibi[bh * lk + j] + mask[mask_row + j];
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
    if valid {
        #[unroll]
        for d in 0..dim {
            dq[row + d] = acc[d] * scale;
        }
        deltas[bh * lq + i] = delta;
    }
}

/// `dk` and `dv` for one key row per unit, walking the queries a tile at a time:
/// `dv_j = Σ_i p_ij grad_i`, `dk_j = scale · Σ_i p_ij (grad_i · v_j − δ_i) q_i`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn key_grads_kernel(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    alibi: &[f32],
    mask: &[f32],
    maxes: &[f32],
    sums: &[f32],
    deltas: &[f32],
    grad: &[f32],
    dk: &mut [f32],
    dv: &mut [f32],
    heads: usize,
    lq: usize,
    lk: usize,
    scale: f32,
    #[comptime] dim: usize,
    #[comptime] tile: usize,
) {
    let bh = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let j = CUBE_POS_X as usize * ROWS + unit;
    let valid = j < lk;
    let row = (bh * lk + j) * dim;
    let mask_base = (bh / heads) * lq * lk + j;
    let mut qs = Shared::<[f32]>::new_slice(tile * dim);
    let mut gs = Shared::<[f32]>::new_slice(tile * dim);
    let mut stats = Shared::<[f32]>::new_slice(tile * 3);
    let kr = row_or_zeros(k, row, valid, dim);
    let vr = row_or_zeros(v, row, valid, dim);
    let mut dkr = row_or_zeros(k, 0, false, dim);
    let mut dvr = row_or_zeros(v, 0, false, dim);
    let mut bias = 0.0f32.runtime();
    if valid {
        bias = alibi[bh * lk + j];
    }
    let mut t0 = 0usize.runtime();
    while t0 < lq {
        load_tile(q, &mut qs, bh * lq + t0, lq - t0, dim, tile);
        load_tile(grad, &mut gs, bh * lq + t0, lq - t0, dim, tile);
        let mut u = unit;
        while u < tile {
            if t0 + u < lq {
                let at = bh * lq + t0 + u;
                stats[u * 3] = maxes[at];
                stats[u * 3 + 1] = sums[at];
                stats[u * 3 + 2] = deltas[at];
            }
            u += ROWS;
        }
        sync_cube();
        if valid {
            for ii in 0..tile_len(lq - t0, tile) {
                let i = t0 + ii;
                // The same products, summed in the same order, as the forward's score.
                let s = score(&kr, &qs, ii * dim, dim, scale) + bias + mask[mask_base + i * lk];
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
    if valid {
        #[unroll]
        for d in 0..dim {
            dk[row + d] = dkr[d] * scale;
            dv[row + d] = dvr[d];
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

/// Copies rows `first..first + min(left, tile)` of a `[rows, dim]` tensor into `tile`, the
/// cube's units taking every `ROWS`-th float.
#[cube]
fn load_tile(src: &[f32], tile: &mut Shared<[f32]>, first: usize, left: usize, #[comptime] dim: usize, #[comptime] rows: usize) {
    let mut idx = UNIT_POS as usize;
    while idx < rows * dim {
        if idx / dim < left {
            tile[idx] = src[first * dim + idx];
        }
        idx += ROWS;
    }
}

/// Rows of a tile: `TILE_FLOATS / head_dim`, at most `ROWS`.
fn tile_rows(dim: usize) -> usize {
    (TILE_FLOATS / dim).clamp(1, ROWS)
}

/// `[b, h, l, d]` of `q`, `k`, and whether the kernels cover these inputs.
fn covered(q: &CubeTensor, k: &CubeTensor, v: &CubeTensor, alibi: &CubeTensor, mask: &CubeTensor) -> Option<[usize; 5]> {
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
    (shapes_fit && lq <= lk && d <= MAX_HEAD_DIM && b * h <= MAX_CUBES && d > 0).then_some([b, h, lq, lk, d])
}

fn cubes(rows: usize, bh: usize) -> CubeCount {
    CubeCount::Static(rows.div_ceil(ROWS) as u32, bh as u32, 1)
}

fn stat_shape(b: usize, h: usize, lq: usize) -> Shape {
    [b, h, lq, 1].into()
}

pub fn forward(q: FloatTensor<Cube>, k: FloatTensor<Cube>, v: FloatTensor<Cube>, alibi: FloatTensor<Cube>, mask: FloatTensor<Cube>) -> (CubeTensor, CubeTensor, CubeTensor) {
    let Some([b, h, lq, lk, d]) = covered(&q, &k, &v, &alibi, &mask) else {
        return composed::attention_forward::<Cube>(q, k, v, alibi, mask);
    };
    let [q, k, v, alibi, mask] = [q, k, v, alibi, mask].map(into_contiguous);
    let out = empty_like(&q, q.shape());
    let (max, sum) = (empty_like(&q, stat_shape(b, h, lq)), empty_like(&q, stat_shape(b, h, lq)));
    let scale = crate::attention::scale(d) as f32;
    // SAFETY: every read and write is bounds-checked against the shapes checked in `covered`.
    unsafe {
        forward_kernel::launch_unchecked(
            &q.client.clone(),
            cubes(lq, b * h),
            CubeDim::new_1d(ROWS as u32),
            q.into_buffer_arg(),
            k.into_buffer_arg(),
            v.into_buffer_arg(),
            alibi.into_buffer_arg(),
            mask.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            max.clone().into_buffer_arg(),
            sum.clone().into_buffer_arg(),
            h,
            lq,
            lk,
            scale,
            f32::MIN,
            d,
            tile_rows(d),
        )
    };
    (out, max, sum)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: FloatTensor<Cube>,
    k: FloatTensor<Cube>,
    v: FloatTensor<Cube>,
    alibi: FloatTensor<Cube>,
    mask: FloatTensor<Cube>,
    out: FloatTensor<Cube>,
    max: FloatTensor<Cube>,
    sum: FloatTensor<Cube>,
    grad: FloatTensor<Cube>,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let fits = covered(&q, &k, &v, &alibi, &mask).filter(|_| all_f32(&[&out, &max, &sum, &grad]) && grad.shape() == q.shape());
    let Some([b, h, lq, lk, d]) = fits else {
        return composed::attention_backward::<Cube>(q, k, v, alibi, mask, out, max, sum, grad);
    };
    let [q, k, v, alibi, mask, out, max, sum, grad] = [q, k, v, alibi, mask, out, max, sum, grad].map(into_contiguous);
    let (dq, dk, dv) = (empty_like(&q, q.shape()), empty_like(&k, k.shape()), empty_like(&v, v.shape()));
    let deltas = empty_like(&q, stat_shape(b, h, lq));
    let scale = crate::attention::scale(d) as f32;
    let client = q.client.clone();
    // SAFETY: as in `forward`; `out` and `grad` have `q`'s shape, the statistics `[b, h, lq, 1]`.
    unsafe {
        query_grads_kernel::launch_unchecked(
            &client,
            cubes(lq, b * h),
            CubeDim::new_1d(ROWS as u32),
            q.clone().into_buffer_arg(),
            k.clone().into_buffer_arg(),
            v.clone().into_buffer_arg(),
            alibi.clone().into_buffer_arg(),
            mask.clone().into_buffer_arg(),
            out.into_buffer_arg(),
            max.clone().into_buffer_arg(),
            sum.clone().into_buffer_arg(),
            grad.clone().into_buffer_arg(),
            dq.clone().into_buffer_arg(),
            deltas.clone().into_buffer_arg(),
            h,
            lq,
            lk,
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
            alibi.into_buffer_arg(),
            mask.into_buffer_arg(),
            max.into_buffer_arg(),
            sum.into_buffer_arg(),
            deltas.into_buffer_arg(),
            grad.into_buffer_arg(),
            dk.clone().into_buffer_arg(),
            dv.clone().into_buffer_arg(),
            h,
            lq,
            lk,
            scale,
            d,
            tile_rows(d),
        );
    }
    (dq, dk, dv)
}
