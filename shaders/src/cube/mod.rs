//! CubeCL kernels for burn's cubecl backend (wgpu here: Vulkan, Metal, DX12, WebGPU).
//!
//! Each kernel replaces a chain of element-wise passes, each of which reads and writes the
//! whole tensor, by one pass. The matmuls stay burn's (cubek's tuned kernels). Non-f32 inputs
//! (which the model never passes to these operations) take the composed path.
//!
//! A kernel binds at most 7 tensors: WebGPU guarantees 8 storage buffers per shader stage and
//! CubeCL takes one for the kernel's scalars. (A 12-buffer attention kernel ran on lavapipe and
//! failed in Chromium's WebGPU, which allows 10; only the page's end-to-end test runs on an
//! adapter with browser limits.) So inputs that always travel together share a buffer.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Cube, DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

mod attention;
mod dequantize;
mod layer_norm;

use crate::gelu::{GELU_A_F32 as A, GELU_B_F32 as B};
use crate::ops::{composed, FusedOps};

/// Units per cube for the row kernels: enough to hide latency on a GPU, few enough for any
/// adapter (WebGPU guarantees 256).
const ROW_UNITS: u32 = 128;
/// Cubes along one dispatch dimension (WebGPU's guaranteed limit); rows beyond it loop.
const MAX_CUBES: usize = 65_535;

#[cube(launch_unchecked)]
fn gelu_kernel(x: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let v = x[i];
        let t = (v * v * A + B) * v;
        out[i] = v / (1.0 + f32::exp(-t));
    }
}

#[cube(launch_unchecked)]
fn gelu_backward_kernel(x: &[f32], grad: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let v = x[i];
        let t = (v * v * A + B) * v;
        let s = 1.0 / (1.0 + f32::exp(-t));
        let slope = v * v * (3.0 * A) + B;
        out[i] = grad[i] * (s + v * s * (1.0 - s) * slope);
    }
}

/// One cube per row: each unit folds a strided share of the row into a running (max, sum of
/// exp(x − max)), then the cube merges the units' pairs in shared memory.
#[cube(launch_unchecked)]
fn row_log_sum_exp_kernel(logits: &[f32], out: &mut [f32], rows: usize, cols: usize, #[comptime] units: u32) {
    let mut maxes = Shared::<[f32]>::new_slice(units as usize);
    let mut sums = Shared::<[f32]>::new_slice(units as usize);
    let unit = UNIT_POS as usize;
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * cols;
        let mut m = (-3.0e38f32).runtime();
        let mut s = 0.0f32.runtime();
        let mut j = unit;
        while j < cols {
            let v = logits[base + j];
            if v > m {
                s = s * f32::exp(m - v) + 1.0;
                m = v;
            } else {
                s += f32::exp(v - m);
            }
            j += units as usize;
        }
        maxes[unit] = m;
        sums[unit] = s;
        sync_cube();
        let mut half = ((units / 2) as usize).runtime();
        while half > 0 {
            if unit < half {
                let m1 = maxes[unit];
                let m2 = maxes[unit + half];
                let mm = f32::max(m1, m2);
                sums[unit] = sums[unit] * f32::exp(m1 - mm) + sums[unit + half] * f32::exp(m2 - mm);
                maxes[unit] = mm;
            }
            sync_cube();
            half /= 2;
        }
        if unit == 0 {
            out[row] = maxes[0] + f32::ln(sums[0]);
        }
        sync_cube();
        row += CUBE_COUNT;
    }
}

/// `out[i, j] = exp(logits[i, j] − lse[i]) · grad[i]`.
#[cube(launch_unchecked)]
fn softmax_times_kernel(logits: &[f32], lse: &[f32], grad: &[f32], out: &mut [f32], cols: usize) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let row = i / cols;
        out[i] = f32::exp(logits[i] - lse[row]) * grad[row];
    }
}

fn all_f32(tensors: &[&CubeTensor]) -> bool {
    tensors.iter().all(|t| t.dtype == DType::F32)
}

fn empty_like(t: &CubeTensor, shape: burn::backend::Shape) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, DType::F32)
}

/// Launch geometry for one unit per element.
fn elementwise(t: &CubeTensor) -> (CubeCount, CubeDim) {
    let n = t.shape().num_elements();
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

impl FusedOps for Cube {
    fn bloom_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return composed::gelu::<Self>(x);
        }
        let x = into_contiguous(x);
        let out = empty_like(&x, x.shape());
        let (count, dim) = elementwise(&x);
        // SAFETY: both buffers hold `out.len()` f32 and every access is bounds-checked.
        unsafe {
            gelu_kernel::launch_unchecked(
                &x.client.clone(),
                count,
                dim,
                x.into_buffer_arg(),
                out.clone().into_buffer_arg(),
            )
        };
        out
    }

    fn bloom_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x, &grad]) || x.shape() != grad.shape() {
            return composed::gelu_backward::<Self>(x, grad);
        }
        let (x, grad) = (into_contiguous(x), into_contiguous(grad));
        let out = empty_like(&x, x.shape());
        let (count, dim) = elementwise(&x);
        // SAFETY: as in `gelu`; `grad` has `x`'s shape.
        unsafe {
            gelu_backward_kernel::launch_unchecked(
                &x.client.clone(),
                count,
                dim,
                x.into_buffer_arg(),
                grad.into_buffer_arg(),
                out.clone().into_buffer_arg(),
            )
        };
        out
    }

    fn row_log_sum_exp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = logits.shape();
        if !all_f32(&[&logits]) || shape.num_dims() != 2 {
            return composed::row_log_sum_exp::<Self>(logits);
        }
        let (rows, cols) = (shape[0], shape[1]);
        let logits = into_contiguous(logits);
        let out = empty_like(&logits, [rows, 1].into());
        let cubes = rows.clamp(1, MAX_CUBES) as u32;
        // SAFETY: the kernel reads rows·cols values and writes `rows`, each index below those.
        unsafe {
            row_log_sum_exp_kernel::launch_unchecked(
                &logits.client.clone(),
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_1d(ROW_UNITS),
                logits.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows,
                cols,
                ROW_UNITS,
            )
        };
        out
    }

    fn softmax_times(logits: FloatTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = logits.shape();
        if !all_f32(&[&logits, &lse, &grad]) || shape.num_dims() != 2 {
            return composed::softmax_times::<Self>(logits, lse, grad);
        }
        let cols = shape[1];
        let (logits, lse, grad) = (into_contiguous(logits), into_contiguous(lse), into_contiguous(grad));
        let out = empty_like(&logits, shape);
        let (count, dim) = elementwise(&logits);
        // SAFETY: `logits` is [rows, cols], `lse` and `grad` [rows, 1]; indices stay below.
        unsafe {
            softmax_times_kernel::launch_unchecked(
                &logits.client.clone(),
                count,
                dim,
                logits.into_buffer_arg(),
                lse.into_buffer_arg(),
                grad.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                cols,
            )
        };
        out
    }

    fn row_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        layer_norm::forward(x, gamma, beta, eps)
    }

    fn row_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        layer_norm::backward(x, gamma, grad, eps)
    }

    fn alibi_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward(q, k, v, alibi, mask)
    }

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
        attention::backward(q, k, v, alibi, mask, out, stats, grad)
    }

    fn dequantize_4bit(
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> FloatTensor<Self> {
        dequantize::dequantize_4bit(words, absmax, code, shape)
    }
}
