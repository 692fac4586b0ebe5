//! The causal language-model loss as transformers computes it: position `t` predicts token
//! `t + 1` (the label shift), positions labelled -100 are ignored, and the cross-entropy is
//! summed so callers can divide by exactly the token count they mean (a batch, a whole
//! accumulated optimizer step, or a whole dataset).
//!
//! The logits are never put together as one `[positions, vocab]` tensor: each block of the
//! vocabulary matrix gives its logits, its log-sum-exp and the logit of the labels that fall in
//! it, and the blocks' log-sum-exps combine into the full one. Only the positions that predict a
//! label are projected (the last position of each row predicts nothing).

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::{Batch, IGNORE_INDEX};
use crate::model::vocab::ids_in_block;
use crate::model::{AttentionMask, BloomForCausalLM};

/// Summed cross-entropy over the label tokens of `batch` (a one-element tensor, so it can be
/// back-propagated), and how many label tokens that is.
pub fn loss_sum(model: &BloomForCausalLM, batch: &Batch, device: &Device) -> (Tensor<1>, usize) {
    let (b, t) = (batch.len(), batch.seq_len());
    let ids: Vec<i64> = batch.input_ids.iter().flatten().copied().collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let hidden = model.hidden_states(input, &AttentionMask::from_ints(&batch.attention_mask), None);
    shifted_cross_entropy_sum(model, hidden, &batch.labels, device)
}

/// `hidden`: final hidden states `[batch, seq, dim]`; `labels`: `[batch][seq]` with -100 for
/// ignored positions.
pub fn shifted_cross_entropy_sum(model: &BloomForCausalLM, hidden: Tensor<3>, labels: &[Vec<i64>], device: &Device) -> (Tensor<1>, usize) {
    let [b, t, dim] = hidden.dims();
    let n = b * (t - 1);
    let mut targets = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for row in labels {
        for &label in &row[1..] {
            let counted = label != IGNORE_INDEX;
            targets.push(if counted { label } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    let x = hidden.slice_dim(1, 0..t - 1).reshape([n, dim]);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), device);

    let mut log_sum_exps = Vec::new();
    let mut picked: Option<Tensor<2>> = None;
    let mut start = 0;
    for logits in model.lm_head_weight().project_blocks(x) {
        let size = logits.dims()[1];
        log_sum_exps.push(log_sum_exp(logits.clone()));
        // The label's logit, from the block that holds it (zero from the others).
        let (local, inside) = ids_in_block(&targets, start..start + size);
        let here = logits.gather(1, local) * inside;
        picked = Some(match picked {
            Some(p) => p + here,
            None => here,
        });
        start += size;
    }
    let log_sum_exp = if log_sum_exps.len() == 1 { log_sum_exps.remove(0) } else { self::log_sum_exp(Tensor::cat(log_sum_exps, 1)) };
    let nll = (log_sum_exp - picked.expect("at least one block")).reshape([n]);
    ((nll * weights).sum(), count)
}

/// `log Σ exp` along dimension 1 (`[rows, k]` → `[rows, 1]`), shifted by the (constant) row
/// maximum so nothing overflows.
fn log_sum_exp(x: Tensor<2>) -> Tensor<2> {
    let max = x.clone().max_dim(1).detach();
    (x - max.clone()).exp().sum_dim(1).log() + max
}
