//! The causal language-model loss as transformers computes it: position `t` predicts token
//! `t + 1` (the label shift), positions labelled -100 are ignored, and the cross-entropy is
//! summed so callers can divide by exactly the token count they mean (a batch, a whole
//! accumulated optimizer step, or a whole dataset).
//!
//! The logits are never put together as one `[positions, vocab]` tensor: each block of the
//! vocabulary matrix gives its log-sum-exp, and the blocks' log-sum-exps combine into the full
//! one. Only the positions that predict a label are projected (the last position of each row
//! predicts nothing). With the fused kernel (`ember_shaders::cross_entropy`, on by default) no
//! block's logits are kept for the backward pass, and the label's logit is the dot product of
//! the hidden state with the label's row of the matrix (looked up again in the backward pass);
//! in plain burn each block's logits are kept and the label's logit gathered from them.

use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_shaders::cross_entropy::log_sum_exp;
use ember_shaders::Kernels;

use crate::data::{Batch, IGNORE_INDEX};
use crate::model::vocab::{ids_in_block, VocabMatrix};
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
pub fn shifted_cross_entropy_sum(
    model: &BloomForCausalLM,
    hidden: Tensor<3>,
    labels: &[Vec<i64>],
    device: &Device,
) -> (Tensor<1>, usize) {
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

    let (log_sum_exps, picked) = block_terms(model.lm_head_weight(), x, &targets, &model.kernels);
    let log_sum_exp = if log_sum_exps.len() == 1 {
        log_sum_exps.into_iter().next().expect("one block")
    } else {
        log_sum_exp(Tensor::cat(log_sum_exps, 1))
    };
    let nll = (log_sum_exp - picked).reshape([n]);
    ((nll * weights).sum(), count)
}

/// Each block's log-sum-exp `[n, 1]`, and the label's logit (from the block that holds it,
/// zero from the others).
fn block_terms(
    head: &VocabMatrix,
    x: Tensor<2>,
    targets: &Tensor<2, Int>,
    kernels: &Kernels,
) -> (Vec<Tensor<2>>, Tensor<2>) {
    let mut log_sum_exps = Vec::new();
    let mut picked: Option<Tensor<2>> = None;
    let mut start = 0;
    for block in &head.blocks {
        let w = block.val();
        let size = w.dims()[0];
        let (local, inside) = ids_in_block(targets, start..start + size);
        let (lse, here) = kernels.head_block(x.clone(), w, local, inside);
        log_sum_exps.push(lse);
        picked = Some(match picked {
            Some(p) => p + here,
            None => here,
        });
        start += size;
    }
    (log_sum_exps, picked.expect("at least one block"))
}
