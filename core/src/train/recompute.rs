//! Gradient checkpointing as transformers' `gradient_checkpointing_enable()` does it: the
//! forward pass keeps only each block's input, and the backward pass runs the blocks again,
//! from the last to the first, each with a graph of its own that lives only while its gradient
//! is taken. Activation memory is then one block's plus a `[batch, seq, hidden]` tensor per
//! block, instead of every block's.
//!
//! The chain rule is applied between blocks by hand: with `g` the loss's gradient at a block's
//! output, back-propagating `sum(output ∘ g)` through the block gives its parameters' gradients
//! and `g` at its input, exactly (`∂ sum(o ∘ g) / ∂o = g`). The head and the final layer norm
//! are one stage, the embeddings another.
//!
//! Dropout draws the same masks in both passes: the device is seeded before each block, from the
//! step's seed, the micro-batch and the block, in the forward pass and again when the block is
//! run for its gradient.

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::Batch;
use crate::lora::slots::Slot;
use crate::loss::shifted_cross_entropy_sum;
use crate::model::{AttentionBias, AttentionMask, BloomForCausalLM, LayerMut, ModuleTree};

/// One micro-batch's share of the step's loss and each slot's gradient of it.
pub struct MicroBatchGrads {
    pub loss: f64,
    pub grads: Vec<Option<Tensor<1>>>,
}

/// Where the graph-free forward pass and the recomputation seed the device before a stage.
pub fn stage_seed(seed: u64, micro_batch: usize, stage: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((micro_batch as u64) << 32) ^ stage as u64
}

/// The model off the autodiff graph, its adapters' dropout still on (so both passes drop alike).
fn graph_free(model: &BloomForCausalLM) -> BloomForCausalLM {
    let mut free = model.clone().valid_model();
    free.visit_mut(|_, layer| {
        if let LayerMut::Linear(linear) = layer {
            if let Some(lora) = linear.lora.as_mut() {
                lora.dropout.training = Param::from_bool(true);
                lora.drop_without_autodiff = true;
            }
        }
    });
    free
}

/// Adds the slots' gradients in `grads` to `acc`.
fn accumulate(
    acc: &mut [Option<Tensor<1>>],
    slots: &[Slot],
    model: &BloomForCausalLM,
    grads: &burn::tensor::Gradients,
) {
    for (sum, slot) in acc.iter_mut().zip(slots) {
        if let Some(g) = slot.grad(model, grads) {
            *sum = Some(match sum.take() {
                Some(s) => s + g,
                None => g,
            });
        }
    }
}

/// The loss of `batch` divided by `divisor` (the step's label tokens) and its gradients, with block-level recomputation.
/// `model` lives on the autodiff `device`; `seed` is the step's.
pub async fn loss_and_grads(
    model: &BloomForCausalLM,
    batch: &Batch,
    divisor: f64,
    slots: &[Slot],
    device: &Device,
    seed: u64,
    micro_batch: usize,
) -> crate::Result<MicroBatchGrads> {
    let (b, t) = (batch.len(), batch.seq_len());
    let ids: Vec<i64> = batch.input_ids.iter().flatten().copied().collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let bias = AttentionBias::new(&AttentionMask::from_ints(&batch.attention_mask), model.num_heads, t, device);
    let (blocks, kernels) = (&model.transformer.h, &model.kernels);
    let seed_stage = |stage: usize| device.seed(stage_seed(seed, micro_batch, stage));

    // Forward without a graph, keeping each block's input.
    let free = graph_free(model);
    let free_bias = bias.inner();
    let t_free = &free.transformer;
    let mut x = t_free.embed(ids.clone().inner(), kernels);
    let mut inputs = Vec::with_capacity(blocks.len());
    for (i, block) in t_free.h.iter().enumerate() {
        inputs.push(x.clone());
        seed_stage(i + 1);
        x = block.forward(x, &free_bias, kernels, None);
    }
    drop(free);

    // The head: the loss, and its gradient at the last block's output.
    let mut acc: Vec<Option<Tensor<1>>> = vec![None; slots.len()];
    let top = Tensor::from_inner(x).require_grad();
    let hidden = model.transformer.ln_f.forward(top.clone(), kernels);
    let (sum, _) = shifted_cross_entropy_sum(model, hidden, &batch.labels, device);
    let loss = sum / divisor;
    let loss_value = crate::readback::scalar(loss.clone().inner(), "training").await? as f64;
    let grads = loss.backward();
    accumulate(&mut acc, slots, model, &grads);
    let mut g = top.grad(&grads);
    drop(grads);

    // The blocks, last first; below the lowest block that trains (and the embeddings, unless
    // they train) no gradient is needed.
    let trains_embeddings = slots.iter().any(|s| s.stage() == Some(0));
    let lowest = if trains_embeddings { 0 } else { slots.iter().filter_map(Slot::stage).min().unwrap_or(usize::MAX) };
    for (i, block) in blocks.iter().enumerate().rev() {
        let (Some(grad_out), true) = (g.take(), i + 1 >= lowest) else { break };
        let input = Tensor::from_inner(inputs.pop().expect("one input per block")).require_grad();
        seed_stage(i + 1);
        let out = block.forward(input.clone(), &bias, kernels, None);
        let grads = (out * grad_out).sum().backward();
        accumulate(&mut acc, slots, model, &grads);
        g = input.grad(&grads);
    }
    if let (Some(grad_out), true) = (g, trains_embeddings) {
        let embedded = model.transformer.embed(ids, kernels);
        let grads = (embedded * grad_out).sum().backward();
        accumulate(&mut acc, slots, model, &grads);
    }
    Ok(MicroBatchGrads { loss: loss_value, grads: acc })
}
