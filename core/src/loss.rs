//! The causal language-model loss as transformers computes it: position `t` predicts token
//! `t + 1` (the label shift), positions labelled -100 are ignored, and the cross-entropy is
//! summed so callers can divide by exactly the token count they mean (a batch, a whole
//! accumulated optimizer step, or a whole dataset).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::{Batch, IGNORE_INDEX};
use crate::model::{AttentionMask, BloomForCausalLM};

/// Summed cross-entropy over the label tokens of `batch` (a one-element tensor, so it can be
/// back-propagated), and how many label tokens that is.
pub fn loss_sum(model: &BloomForCausalLM, batch: &Batch, device: &Device) -> (Tensor<1>, usize) {
    let (b, t) = (batch.len(), batch.seq_len());
    let ids: Vec<i64> = batch.input_ids.iter().flatten().copied().collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let logits = model.forward(input, &AttentionMask::from_ints(&batch.attention_mask), None);
    shifted_cross_entropy_sum(logits, &batch.labels, device)
}

/// `logits`: `[batch, seq, vocab]`; `labels`: `[batch][seq]` with -100 for ignored positions.
pub fn shifted_cross_entropy_sum(logits: Tensor<3>, labels: &[Vec<i64>], device: &Device) -> (Tensor<1>, usize) {
    let [b, t, vocab] = logits.dims();
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
    let log_probs = log_softmax(logits.slice_dim(1, 0..t - 1).reshape([n, vocab]), 1);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), device);
    let picked = log_probs.gather(1, targets).reshape([n]);
    (-(picked * weights).sum(), count)
}
