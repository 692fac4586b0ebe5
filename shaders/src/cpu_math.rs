//! Vector math for the CPU kernels (`flex.rs`): `e^x` and row sums written so that loops over
//! slices vectorize, and [`fastest`], which compiles them for the processor's widest vectors.
//!
//! `e^x`: libm's `expf` is one call per element and was the largest cost of a training step
//! after the matmuls (the softmaxes of the head and the attention, and the GELU's sigmoid); this
//! one has no branches and no calls, so the compiler runs it as many lanes at a time as the
//! vectors hold.
//!
//! Cody–Waite range reduction `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, and Cephes' `expf`
//! polynomial for `e^r`: within 2 ulp of libm where the result is a normal f32. Below the
//! smallest normal result it gives 0 (libm gives subnormals), above the largest +∞; NaN stays NaN.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts, so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2²³ rounds an f32 below 2²² to the nearest integer without a call
/// (`round` is a libm call on x86-64's baseline instruction set).
const ROUNDER: f32 = 12_582_912.0;
/// `ln(f32::MIN_POSITIVE)` and `ln(f32::MAX)`: the inputs whose result is a normal f32.
const LOWEST: f32 = -87.336_55;
const HIGHEST: f32 = 88.376_26;

/// `e^x` (see the module's notes for its accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Written as selects so that they vectorize; NaN becomes LOWEST here (and NaN again below).
    let clamped = if x > LOWEST { x } else { LOWEST };
    let clamped = if clamped < HIGHEST { clamped } else { HIGHEST };
    let n = (clamped * LOG2_E + ROUNDER) - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly =
        (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
            + 0.5)
            * r
            * r
            + r
            + 1.0;
    // SAFETY: `n` is a whole number in [-126, 127] (from the clamped input), so the conversion
    // is exact; a checked `as` would not vectorize.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let two_to_n = f32::from_bits(((n + 127) << 23) as u32);
    let y = poly * two_to_n;
    let y = if x < LOWEST { 0.0 } else { y };
    let y = if x > HIGHEST { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Runs `f` compiled for the widest vector instructions this processor has (AVX-512F, else
/// AVX2), where `f` inlines into it, as the kernels' loops do: the binary is built for x86-64's
/// baseline (SSE2, 4 lanes), so without this the loops above run 4 lanes at a time even on a
/// processor with 16. Results do not depend on the width: lanes are independent, the
/// reductions keep [`LANES`] running values whatever the width, and no multiply-add is fused.
#[inline(always)]
pub fn fastest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has the feature.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Lanes of the row reductions below: independent running values the compiler keeps in one
/// vector register (a single running value is a chain it must not reorder).
const LANES: usize = 8;

/// The largest value of a row (−∞ for an empty row).
#[inline(always)]
pub fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ_j f(a_j, b_j)` over two rows of the same length, in [`LANES`] running sums.
#[inline(always)]
pub fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *s += f(x, y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ_j f(row_j)`, in [`LANES`] running sums.
#[inline(always)]
pub fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    lane_sum2(row, row, |x, _| f(x))
}

/// `Σ_j e^(row_j − shift)`.
#[inline(always)]
pub fn sum_exp(row: &[f32], shift: f32) -> f32 {
    lane_sum(row, |v| exp(v - shift))
}

/// `Σ_j row_j`.
#[inline(always)]
pub fn row_sum(row: &[f32]) -> f32 {
    lane_sum(row, |v| v)
}

/// The `i`-th output of SplitMix64 started at `seed`: 64 random bits for element `i` of a draw,
/// computed from the index alone, so any chunk of a mask is drawn independently of the others.
#[inline(always)]
pub fn random_bits(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::exp;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn within_two_ulp_of_libm_over_the_normal_range() {
        let mut worst = (0, 0.0f32);
        let mut x = super::LOWEST;
        while x < super::HIGHEST {
            let d = ulps(exp(x), x.exp());
            if d > worst.0 {
                worst = (d, x);
            }
            x += 1.0e-3 + x.abs() * 1.0e-5;
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        for x in [0.0f32, -0.0, 1.0, -1.0, 1e-8, -1e-8, 0.5, 10.0, -10.0] {
            assert!(ulps(exp(x), x.exp()) <= 2, "x = {x}: {} vs {}", exp(x), x.exp());
        }
    }

    #[test]
    fn row_reductions_equal_the_plain_ones() {
        let row: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 * 0.37 - 15.0).collect();
        for len in [0, 1, 7, 8, 9, 37] {
            let part = &row[..len];
            let max = part.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(super::row_max(part), max);
            let sum: f32 = part.iter().map(|&v| (v - 3.0).exp()).sum();
            let fast = super::sum_exp(part, 3.0);
            assert!((fast - sum).abs() <= 1e-5 * sum.abs().max(1.0), "len {len}: {fast} vs {sum}");
        }
    }

    #[test]
    fn the_edges_are_zero_infinity_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }
}
