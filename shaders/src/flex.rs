//! The CPU kernels (burn's flex backend): one pass per operation over contiguous f32 memory,
//! split across the cores with rayon. burn's plain element-wise operations run one libm call
//! per pass on a single core, and the GELU alone takes five passes forward.
//! Non-f32 inputs take the composed path.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{DType, Flex, Shape, TensorMetadata};
use burn::tensor::{Distribution, FloatDType, TensorData};

use crate::cpu_math::{exp, fastest, lane_sum, lane_sum2, random_bits, row_max, row_sum, sum_exp};
use crate::gelu::{GELU_A_F32 as A, GELU_B_F32 as B};
use crate::linear_4bit::{nibble_shift, BLOCK, PER_WORD};
use crate::ops::{autocast_matmul, composed, FusedOps};

/// Elements per parallel task: large enough that scheduling costs nothing next to the work.
const CHUNK: usize = 1 << 14;

/// The fewest weight elements worth a task of their own in a matrix-vector product (a LoRA
/// adapter's `[r, in]` and `[out, r]` are not).
#[cfg(not(target_arch = "wasm32"))]
const MIN_SPLIT_ELEMENTS: usize = 256 * 256;

/// `x` as contiguous f32 memory, if it is f32.
fn f32_contiguous(x: FlexTensor) -> Option<FlexTensor> {
    if x.dtype() != DType::F32 {
        return None;
    }
    Some(if x.as_slice::<f32>().is_some() { x } else { x.to_contiguous() })
}

fn slice(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("contiguous f32")
}

/// A new f32 tensor of `shape` whose chunks `fill(start, chunk)` writes, in parallel, each
/// chunk compiled for the processor's widest vectors ([`fastest`]: the kernels pass `fill` as an
/// `#[inline(always)]` closure, or it would stay a baseline-instruction call).
fn filled(shape: Shape, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Send + Sync) -> FlexTensor {
    // A Vec<f32> becomes the tensor's storage as it is; `FlexTensor::empty` zeroes a byte vector
    // and then copies it into a 16-byte-aligned one, which is two more passes over the output.
    let mut values = vec![0.0f32; shape.num_elements()];
    let data = values.as_mut_slice();
    // (A tensor with no elements has no chunks; a chunk length of 0 would panic.)
    let chunk = chunk.max(1);
    let run = |(i, c): (usize, &mut [f32])| {
        fastest(
            #[inline(always)]
            || fill(i * chunk, c),
        )
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk).enumerate().for_each(run);
    }
    #[cfg(target_arch = "wasm32")]
    data.chunks_mut(chunk).enumerate().for_each(run);
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// 64 bits from the backend's generator (two uniform f64 draws, 32 bits each), so that seeding
/// the device fixes everything drawn from them.
fn drawn_seed() -> u64 {
    let draw = Flex::float_random(Shape::new([2]), Distribution::Default, &Default::default(), FloatDType::F64);
    let halves = draw.as_slice::<f64>().expect("a fresh tensor is contiguous");
    let bits = |u: f64| (u * 4_294_967_296.0) as u64;
    (bits(halves[0]) << 32) | bits(halves[1])
}

fn sigmoid(t: f32) -> f32 {
    1.0 / (1.0 + exp(-t))
}

/// Rows per parallel task for a row-wise operation on rows `cols` long.
fn row_chunk(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

/// [`filled`] by rows `cols` long, several to a task: `fill_row(i, row)` writes row `i` (pass
/// it `#[inline(always)]`, as for [`filled`]).
#[inline(always)]
fn rows_filled(shape: Shape, cols: usize, fill_row: impl Fn(usize, &mut [f32]) + Send + Sync) -> FlexTensor {
    // (Rows of no columns: no elements, but `chunks_mut(0)` would panic.)
    let cols = cols.max(1);
    filled(
        shape,
        row_chunk(cols) * cols,
        #[inline(always)]
        |start, out| {
            for (i, row) in (start / cols..).zip(out.chunks_mut(cols)) {
                fill_row(i, row);
            }
        },
    )
}

/// `lhs · rhs` for 2-D f32 operands of any strides, written by gemm straight into the product's
/// storage; `None` for other shapes and dtypes. burn-flex's matmul makes its output with
/// `FlexTensor::empty`, which zeroes a byte vector and copies it into an aligned one: two more
/// passes over every product, about 5% of a small model's training step.
fn matmul_2d_f32(lhs: &FlexTensor, rhs: &FlexTensor) -> Option<FlexTensor> {
    let (ls, rs) = (lhs.shape(), rhs.shape());
    let all_f32 = lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32;
    if !all_f32 || ls.num_dims() != 2 || rs.num_dims() != 2 || ls[1] != rs[0] {
        return None;
    }
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    let len = m.checked_mul(n)?;
    if m == 0 || n == 0 || k == 0 {
        return None; // gemm writes nothing when there is nothing to sum
    }
    let (l, r) = (lhs.layout(), rhs.layout());
    let (l_strides, r_strides) = (l.strides(), r.strides());
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: the operands' pointers and strides are their layouts' (in bounds for `m × k` and
    // `k × n`); with `read_dst` false gemm writes every one of the `m × n` outputs, so the
    // vector's length is set only over written values.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.storage::<f32>().as_ptr().add(l.start_offset()),
            l_strides[1],
            l_strides[0],
            rhs.storage::<f32>().as_ptr().add(r.start_offset()),
            r_strides[1],
            r_strides[0],
            0.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(m, n, k),
        );
        out.set_len(len);
    }
    Some(FlexTensor::from_data(TensorData::new(out, [m, n])))
}

/// Both cores for products worth splitting (burn-flex's threshold, 192³ multiply-adds).
fn gemm_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = (m, n, k);
    gemm::Parallelism::None
}

impl FusedOps for Flex {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul_2d_f32(&lhs, &rhs).unwrap_or_else(|| Flex::float_matmul(lhs, rhs))
    }

    /// A single row against a weight: gemm's matrix-vector path runs on one core and decoding
    /// is bound by reading the weights, so the weight's rows are split across the cores (each
    /// output is the same dot product either way).
    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            let (rows, [out, inner]) = (x.shape()[0], [w.shape()[0], w.shape()[1]]);
            let parts = rayon::current_num_threads().min(out.saturating_mul(inner) / MIN_SPLIT_ELEMENTS);
            if rows == 1 && parts > 1 {
                let per = out.div_ceil(parts);
                let ranges: Vec<_> = (0..parts).map(|i| i * per..((i + 1) * per).min(out)).collect();
                let outs: Vec<FlexTensor> = ranges
                    .into_par_iter()
                    .map(|r| {
                        let part = Flex::float_slice(w.clone(), &[r.into(), (..).into()]);
                        autocast_matmul::<Flex>(x.clone(), Flex::float_transpose(part))
                    })
                    .collect();
                return Flex::float_cat(outs, 1);
            }
        }
        autocast_matmul::<Flex>(x, Flex::float_transpose(w))
    }

    /// The mask from 64-bit hashes of each element's index (SplitMix64), seeded by one draw
    /// from the backend's generator: burn draws a ChaCha float per element on one core.
    fn dropout_mask(like: FloatTensor<Self>, keep: f64) -> FloatTensor<Self> {
        let seed = drawn_seed();
        // Kept where the hash's top 32 bits fall below keep · 2³².
        let threshold = (keep * 4_294_967_296.0) as u64;
        let value = (1.0 / keep) as f32;
        filled(
            like.shape(),
            CHUNK,
            #[inline(always)]
            |start, out| {
                for (i, o) in out.iter_mut().enumerate() {
                    let kept = random_bits(seed, (start + i) as u64) >> 32 < threshold;
                    *o = if kept { value } else { 0.0 };
                }
            },
        )
    }

    fn bloom_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(x) = f32_contiguous(x.clone()) else { return composed::gelu::<Self>(x) };
        let src = slice(&x);
        filled(
            x.shape(),
            CHUNK,
            #[inline(always)]
            |start, out| {
                for (o, &v) in out.iter_mut().zip(&src[start..]) {
                    *o = v * sigmoid((v * v * A + B) * v);
                }
            },
        )
    }

    fn bloom_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(gc)) = (f32_contiguous(x.clone()), f32_contiguous(grad.clone())) else {
            return composed::gelu_backward::<Self>(x, grad);
        };
        if xc.shape() != gc.shape() {
            return composed::gelu_backward::<Self>(x, grad);
        }
        let (xs, gs) = (slice(&xc), slice(&gc));
        filled(
            xc.shape(),
            CHUNK,
            #[inline(always)]
            |start, out| {
                for ((o, &v), &g) in out.iter_mut().zip(&xs[start..]).zip(&gs[start..]) {
                    let s = sigmoid((v * v * A + B) * v);
                    *o = g * (s + v * s * (1.0 - s) * (v * v * (3.0 * A) + B));
                }
            },
        )
    }

    fn row_log_sum_exp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = logits.shape();
        let Some(l) = f32_contiguous(logits.clone()).filter(|_| shape.num_dims() == 2) else {
            return composed::row_log_sum_exp::<Self>(logits);
        };
        let (rows, cols) = (shape[0], shape[1]);
        let src = slice(&l);
        filled(
            Shape::new([rows, 1]),
            row_chunk(cols),
            #[inline(always)]
            |start, out| {
                for (r, o) in out.iter_mut().enumerate() {
                    let row = &src[(start + r) * cols..(start + r + 1) * cols];
                    let max = row_max(row);
                    *o = max + sum_exp(row, max).ln();
                }
            },
        )
    }

    fn softmax_times(logits: FloatTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = logits.shape();
        let inputs = (f32_contiguous(logits.clone()), f32_contiguous(lse.clone()), f32_contiguous(grad.clone()));
        let (Some(l), Some(s), Some(g)) = inputs else { return composed::softmax_times::<Self>(logits, lse, grad) };
        if shape.num_dims() != 2 {
            return composed::softmax_times::<Self>(logits, lse, grad);
        }
        let cols = shape[1];
        let (ls, ss, gs) = (slice(&l), slice(&s), slice(&g));
        rows_filled(
            shape,
            cols,
            #[inline(always)]
            |i, out_row| {
                let (row, shift, scale) = (&ls[i * cols..][..cols], ss[i], gs[i]);
                for (o, &v) in out_row.iter_mut().zip(row) {
                    *o = exp(v - shift) * scale;
                }
            },
        )
    }

    fn scores_softmax(
        raw: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let shape = raw.shape();
        let inputs = (f32_contiguous(raw.clone()), f32_contiguous(alibi.clone()), f32_contiguous(mask.clone()));
        let (Some(r), Some(a), Some(m)) = inputs else {
            return composed::scores_softmax::<Self>(raw, alibi, mask, scale);
        };
        let [batch, heads, queries, keys] = [shape[0], shape[1], shape[2], shape[3]];
        if a.shape().dims::<4>() != [batch, heads, 1, keys] || m.shape().dims::<4>() != [batch, 1, queries, keys] {
            return composed::scores_softmax::<Self>(raw, alibi, mask, scale);
        }
        let (rs, al, ms, scale) = (slice(&r), slice(&a), slice(&m), scale as f32);
        rows_filled(
            shape,
            keys,
            #[inline(always)]
            |i, row| {
                // Row i is query i % queries of head (i / queries) % heads of batch item i / (heads · queries).
                let (b, bh, q) = (i / (heads * queries), i / queries, i % queries);
                let (bias, masked) = (&al[bh * keys..][..keys], &ms[(b * queries + q) * keys..][..keys]);
                let scores = &rs[i * keys..][..keys];
                for (((o, &s), &a), &m) in row.iter_mut().zip(scores).zip(bias).zip(masked) {
                    *o = s * scale + a + m;
                }
                let max = row_max(row);
                row.iter_mut().for_each(|o| *o = exp(*o - max));
                let inv = 1.0 / row_sum(row);
                row.iter_mut().for_each(|o| *o *= inv);
            },
        )
    }

    fn row_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let inputs = (f32_contiguous(x.clone()), f32_contiguous(gamma.clone()), f32_contiguous(beta.clone()));
        let (Some(xc), Some(g), Some(b)) = inputs else { return composed::layer_norm::<Self>(x, gamma, beta, eps) };
        let cols = g.shape()[0];
        let (xs, gs, bs) = (slice(&xc), slice(&g), slice(&b));
        rows_filled(
            xc.shape(),
            cols,
            #[inline(always)]
            |i, out_row| {
                let row = &xs[i * cols..][..cols];
                let (mean, rstd) = row_statistics(row, eps);
                for (((o, &v), &g), &b) in out_row.iter_mut().zip(row).zip(gs).zip(bs) {
                    *o = (v - mean) * rstd * g + b;
                }
            },
        )
    }

    fn row_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let inputs = (f32_contiguous(x.clone()), f32_contiguous(gamma.clone()), f32_contiguous(grad.clone()));
        let (Some(xc), Some(g), Some(dc)) = inputs else {
            return composed::layer_norm_backward::<Self>(x, gamma, grad, eps);
        };
        let cols = g.shape()[0];
        let (xs, gs, ds) = (slice(&xc), slice(&g), slice(&dc));
        rows_filled(
            xc.shape(),
            cols,
            #[inline(always)]
            |i, out_row| {
                let (row, grad) = (&xs[i * cols..][..cols], &ds[i * cols..][..cols]);
                let (mean, rstd) = row_statistics(row, eps);
                // ĝ = grad·γ lands in `out_row` first; then dx over it.
                for ((o, &d), &g) in out_row.iter_mut().zip(grad).zip(gs) {
                    *o = d * g;
                }
                let inv = 1.0 / cols as f32;
                let mean_g = row_sum(out_row) * inv;
                let mean_gx = lane_sum2(out_row, row, |gh, v| gh * ((v - mean) * rstd)) * inv;
                for (o, &v) in out_row.iter_mut().zip(row) {
                    *o = (*o - mean_g - (v - mean) * rstd * mean_gx) * rstd;
                }
            },
        )
    }

    fn dequantize_4bit(
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> FloatTensor<Self> {
        let n = shape[0] * shape[1];
        let contiguous_words = (words.dtype() == DType::U32).then(|| {
            if words.as_slice::<u32>().is_some() {
                words.clone()
            } else {
                words.to_contiguous()
            }
        });
        let inputs = (contiguous_words, f32_contiguous(absmax.clone()), f32_contiguous(code.clone()));
        let (Some(w), Some(a), Some(c)) = inputs else {
            return composed::dequantize_4bit::<Self>(words, absmax, code, shape);
        };
        let ws = w.as_slice::<u32>().expect("contiguous u32");
        let table: Option<[f32; 16]> = slice(&c).try_into().ok();
        match table {
            Some(table) if ws.len() == n.div_ceil(PER_WORD) && slice(&a).len() == n.div_ceil(BLOCK) => {
                dequantize_words(ws, slice(&a), &table, shape)
            }
            _ => composed::dequantize_4bit::<Self>(words, absmax, code, shape),
        }
    }
}

/// 4-bit values back in f32 (see `linear_4bit.rs`): word by word, 8 values each, all of a
/// word in one absmax block.
fn dequantize_words(words: &[u32], absmax: &[f32], code: &[f32; 16], [rows, cols]: [usize; 2]) -> FlexTensor {
    let per_block = BLOCK / PER_WORD;
    // A multiple of the block, so each task starts on a word.
    let chunk = CHUNK - CHUNK % BLOCK;
    filled(
        Shape::new([rows, cols]),
        chunk,
        #[inline(always)]
        |start, out| {
            for (k, values) in out.chunks_mut(PER_WORD).enumerate() {
                let w = start / PER_WORD + k;
                let (word, scale) = (words[w], absmax[w / per_block]);
                for (p, o) in values.iter_mut().enumerate() {
                    *o = code[((word >> nibble_shift(p)) & 15) as usize] * scale;
                }
            }
        },
    )
}

/// A row's mean and `1/√(var + eps)` (biased variance).
fn row_statistics(row: &[f32], eps: f64) -> (f32, f32) {
    let inv = 1.0 / row.len() as f32;
    let mean = row_sum(row) * inv;
    let variance = lane_sum(row, |v| (v - mean) * (v - mean)) * inv;
    (mean, 1.0 / (variance + eps as f32).sqrt())
}
