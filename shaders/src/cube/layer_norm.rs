//! The layer norm kernels: one cube per row (rows beyond the dispatch limit loop), each unit
//! taking a strided share of the row, the cube's sums merged in shared memory.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Cube, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use cubecl::prelude::*;

use super::{all_f32, empty_like, MAX_CUBES, ROW_UNITS};
use crate::ops::composed;

/// The sum of every unit's `value` over the cube, returned to all units.
#[cube]
fn cube_sum(value: f32, scratch: &mut Shared<[f32]>, #[comptime] units: u32) -> f32 {
    let unit = UNIT_POS as usize;
    scratch[unit] = value;
    sync_cube();
    let mut half = ((units / 2) as usize).runtime();
    while half > 0 {
        if unit < half {
            scratch[unit] += scratch[unit + half];
        }
        sync_cube();
        half /= 2;
    }
    let total = scratch[0];
    sync_cube();
    total
}

/// A row's mean and `√(var + eps)`, as the plain path computes them (two passes).
#[cube]
fn row_statistics(
    x: &[f32],
    base: usize,
    cols: usize,
    inv_cols: f32,
    eps: f32,
    scratch: &mut Shared<[f32]>,
    #[comptime] units: u32,
) -> (f32, f32) {
    let unit = UNIT_POS as usize;
    let mut s = 0.0f32.runtime();
    let mut j = unit;
    while j < cols {
        s += x[base + j];
        j += units as usize;
    }
    let mean = cube_sum(s, scratch, units) * inv_cols;
    let mut s2 = 0.0f32.runtime();
    let mut j2 = unit;
    while j2 < cols {
        let c = x[base + j2] - mean;
        s2 += c * c;
        j2 += units as usize;
    }
    let std = f32::sqrt(cube_sum(s2, scratch, units) * inv_cols + eps);
    (mean, std)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_kernel(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    out: &mut [f32],
    rows: usize,
    cols: usize,
    inv_cols: f32,
    eps: f32,
    #[comptime] units: u32,
) {
    let mut scratch = Shared::<[f32]>::new_slice(units as usize);
    let unit = UNIT_POS as usize;
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * cols;
        let (mean, std) = row_statistics(x, base, cols, inv_cols, eps, &mut scratch, units);
        let mut j = unit;
        while j < cols {
            out[base + j] = (x[base + j] - mean) / std * gamma[j] + beta[j];
            j += units as usize;
        }
        row += CUBE_COUNT;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_kernel(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    dx: &mut [f32],
    rows: usize,
    cols: usize,
    inv_cols: f32,
    eps: f32,
    #[comptime] units: u32,
) {
    let mut scratch = Shared::<[f32]>::new_slice(units as usize);
    let unit = UNIT_POS as usize;
    let mut row = CUBE_POS;
    while row < rows {
        let base = row * cols;
        let (mean, std) = row_statistics(x, base, cols, inv_cols, eps, &mut scratch, units);
        let mut sg = 0.0f32.runtime();
        let mut sgx = 0.0f32.runtime();
        let mut j = unit;
        while j < cols {
            let g = grad[base + j] * gamma[j];
            sg += g;
            sgx += g * ((x[base + j] - mean) / std);
            j += units as usize;
        }
        let mean_g = cube_sum(sg, &mut scratch, units) * inv_cols;
        let mean_gx = cube_sum(sgx, &mut scratch, units) * inv_cols;
        let mut j2 = unit;
        while j2 < cols {
            let g = grad[base + j2] * gamma[j2];
            dx[base + j2] = (g - mean_g - (x[base + j2] - mean) / std * mean_gx) / std;
            j2 += units as usize;
        }
        row += CUBE_COUNT;
    }
}

/// `[rows, cols]` of `x` if the kernels cover it (f32, 2-D, `γ` and the third input as wide).
fn covered(
    x: &FloatTensor<Cube>,
    gamma: &FloatTensor<Cube>,
    other: &FloatTensor<Cube>,
    other_is_row: bool,
) -> Option<[usize; 2]> {
    let (xs, gs) = (x.shape(), gamma.shape());
    let other_fits = if other_is_row { other.shape() == gs } else { other.shape() == xs };
    (all_f32(&[x, gamma, other]) && xs.num_dims() == 2 && gs.num_dims() == 1 && xs[1] == gs[0] && other_fits)
        .then(|| [xs[0], xs[1]])
}

fn launch_geometry(rows: usize) -> (CubeCount, CubeDim) {
    (CubeCount::Static(rows.clamp(1, MAX_CUBES) as u32, 1, 1), CubeDim::new_1d(ROW_UNITS))
}

pub fn forward(x: FloatTensor<Cube>, gamma: FloatTensor<Cube>, beta: FloatTensor<Cube>, eps: f64) -> FloatTensor<Cube> {
    let Some([rows, cols]) = covered(&x, &gamma, &beta, true) else {
        return composed::layer_norm::<Cube>(x, gamma, beta, eps);
    };
    let [x, gamma, beta] = [x, gamma, beta].map(into_contiguous);
    let out = empty_like(&x, x.shape());
    let (count, dim) = launch_geometry(rows);
    // SAFETY: `x` and `out` hold rows·cols f32, `gamma` and `beta` cols; every index is below.
    unsafe {
        layer_norm_kernel::launch_unchecked(
            &x.client.clone(),
            count,
            dim,
            x.into_buffer_arg(),
            gamma.into_buffer_arg(),
            beta.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows,
            cols,
            1.0 / cols as f32,
            eps as f32,
            ROW_UNITS,
        )
    };
    out
}

pub fn backward(
    x: FloatTensor<Cube>,
    gamma: FloatTensor<Cube>,
    grad: FloatTensor<Cube>,
    eps: f64,
) -> FloatTensor<Cube> {
    let Some([rows, cols]) = covered(&x, &gamma, &grad, false) else {
        return composed::layer_norm_backward::<Cube>(x, gamma, grad, eps);
    };
    let [x, gamma, grad] = [x, gamma, grad].map(into_contiguous);
    let dx = empty_like(&x, x.shape());
    let (count, dim) = launch_geometry(rows);
    // SAFETY: as in `forward`; `grad` has `x`'s shape.
    unsafe {
        layer_norm_backward_kernel::launch_unchecked(
            &x.client.clone(),
            count,
            dim,
            x.into_buffer_arg(),
            gamma.into_buffer_arg(),
            grad.into_buffer_arg(),
            dx.clone().into_buffer_arg(),
            rows,
            cols,
            1.0 / cols as f32,
            eps as f32,
            ROW_UNITS,
        )
    };
    dx
}
