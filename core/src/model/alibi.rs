//! ALiBi position biases and the attention mask, built on the host from the 0/1 attention
//! mask exactly as transformers' `build_alibi_tensor` and eager causal mask do.
//!
//! Positions come from the mask (`cumsum(mask) - 1`, zero on padding), so a left-padded row
//! gets the same biases as the same row unpadded.

use burn::tensor::{Device, Tensor, TensorData};

/// The 0/1 attention mask of a batch over all positions seen so far (cached ones included).
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMask {
    rows: Vec<Vec<bool>>,
}

impl AttentionMask {
    pub fn new(rows: Vec<Vec<bool>>) -> Self {
        assert!(rows.windows(2).all(|w| w[0].len() == w[1].len()), "mask rows differ in length");
        AttentionMask { rows }
    }

    /// A mask with every position attended (no padding).
    pub fn full(batch: usize, len: usize) -> Self {
        AttentionMask { rows: vec![vec![true; len]; batch] }
    }

    pub fn from_ints(rows: &[Vec<i64>]) -> Self {
        Self::new(rows.iter().map(|r| r.iter().map(|&m| m != 0).collect()).collect())
    }

    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    pub fn len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rows(&self) -> &[Vec<bool>] {
        &self.rows
    }

    /// Appends one position to every row (`attended` per row), as generation does each step.
    pub fn push(&mut self, attended: &[bool]) {
        for (row, &a) in self.rows.iter_mut().zip(attended) {
            row.push(a);
        }
    }
}

/// ALiBi slopes per head, computed in f32 like transformers (so 16 heads give 0.49999997 for the
/// second slope, not 0.5), including its rule for head counts that are not powers of two.
pub fn alibi_slopes(num_heads: usize) -> Vec<f32> {
    let closest_power_of_2 = 1usize << (usize::BITS - 1 - num_heads.leading_zeros());
    let base_for = |n: usize| (2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))))) as f32;
    let base = base_for(closest_power_of_2);
    let mut slopes: Vec<f32> = (1..=closest_power_of_2).map(|p| base.powi(p as i32)).collect();
    if closest_power_of_2 != num_heads {
        let extra_base = base_for(2 * closest_power_of_2);
        let remaining = closest_power_of_2.min(num_heads - closest_power_of_2);
        slopes.extend((0..remaining).map(|i| extra_base.powi((2 * i + 1) as i32)));
    }
    slopes
}

/// What every attention layer adds to its scores for one forward pass.
#[derive(Debug, Clone)]
pub struct AttentionBias {
    /// `slope[h] * position[b, j]`, shape `[batch, heads, 1, keys]`.
    pub alibi: Tensor<4>,
    /// 0 where query `i` may attend key `j`, `f32::MIN` elsewhere, shape `[batch, 1, queries, keys]`.
    pub mask: Tensor<4>,
}

impl AttentionBias {
    /// The same biases off the autodiff device (for a graph-free pass).
    pub fn inner(&self) -> Self {
        AttentionBias { alibi: self.alibi.clone().inner(), mask: self.mask.clone().inner() }
    }

    /// Biases for `queries` new positions at the end of `mask` (whose length counts the cached
    /// positions plus the new ones).
    pub fn new(mask: &AttentionMask, num_heads: usize, queries: usize, device: &Device) -> Self {
        let (batch, keys) = (mask.batch(), mask.len());
        assert!(queries <= keys, "more queries ({queries}) than positions in the mask ({keys})");
        let past = keys - queries;
        let slopes = alibi_slopes(num_heads);

        let mut alibi = Vec::with_capacity(batch * num_heads * keys);
        let mut additive = Vec::with_capacity(batch * queries * keys);
        for row in mask.rows() {
            let positions = positions_from_mask(row);
            for &slope in &slopes {
                alibi.extend(positions.iter().map(|&p| slope * p as f32));
            }
            for i in 0..queries {
                additive.extend(
                    row.iter().enumerate().map(|(j, &attended)| if attended && j <= past + i { 0.0 } else { f32::MIN }),
                );
            }
        }
        AttentionBias {
            alibi: Tensor::from_data(TensorData::new(alibi, [batch, num_heads, 1, keys]), device),
            mask: Tensor::from_data(TensorData::new(additive, [batch, 1, queries, keys]), device),
        }
    }
}

/// `(cumsum(mask) - 1) * mask`: the position of each attended token, 0 on padding.
fn positions_from_mask(row: &[bool]) -> Vec<i64> {
    let mut count = 0i64;
    row.iter()
        .map(|&m| {
            count += m as i64;
            if m {
                count - 1
            } else {
                0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_match_transformers_f32_values() {
        // torch: build_alibi_tensor slopes for 16 heads start 0.70710677, 0.49999997.
        let s = alibi_slopes(16);
        assert_eq!(s[0], 0.70710677f32);
        assert_eq!(s[1], 0.49999997f32);
        // 6 heads: 4 from base 2^-2, then 2 from base 2^-1 with odd powers.
        let s = alibi_slopes(6);
        assert_eq!(s.len(), 6);
        assert_eq!(&s[..4], &[0.25, 0.0625, 0.015625, 0.00390625]);
        assert_eq!(&s[4..], &[0.5, 0.125]);
    }

    #[test]
    fn positions_skip_left_padding() {
        assert_eq!(positions_from_mask(&[false, false, true, true, true]), vec![0, 0, 0, 1, 2]);
    }
}
