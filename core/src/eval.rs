//! `ember eval`: the token-weighted mean cross-entropy of a model over a whole dataset.

use burn::tensor::Device;

use crate::data::{collate, TokenizedDataset};
use crate::error::Result;
use crate::loss::loss_sum;
use crate::model::BloomForCausalLM;
use crate::readback::{blocking, scalar};
use crate::tokenizer::PaddingSide;

#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Summed cross-entropy over all label tokens / their number.
    pub eval_loss: f64,
    pub perplexity: f64,
    pub num_tokens: usize,
    pub num_examples: usize,
}

pub fn evaluate(
    model: &BloomForCausalLM,
    dataset: &TokenizedDataset,
    batch_size: usize,
    pad_id: u32,
    side: PaddingSide,
    device: &Device,
    progress: impl FnMut(usize, usize),
) -> Result<EvalResult> {
    blocking(evaluate_async(model, dataset, batch_size, pad_id, side, device, progress))
}

/// [`evaluate`] for platforms that cannot block on the device (the browser).
pub async fn evaluate_async(
    model: &BloomForCausalLM,
    dataset: &TokenizedDataset,
    batch_size: usize,
    pad_id: u32,
    side: PaddingSide,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalResult> {
    let indices = dataset.trainable_indices();
    let mut total = 0.0f64;
    let mut tokens = 0usize;
    for (done, chunk) in indices.chunks(batch_size.max(1)).enumerate() {
        let examples: Vec<_> = chunk.iter().map(|&i| dataset.get(i)).collect();
        let refs: Vec<_> = examples.iter().collect();
        let batch = collate(&refs, pad_id, side, None);
        let (sum, count) = loss_sum(model, &batch, device);
        total += scalar(sum, "evaluating").await? as f64;
        tokens += count;
        progress((done + 1) * batch_size.min(indices.len()), indices.len());
    }
    let eval_loss = if tokens > 0 { total / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { eval_loss, perplexity: eval_loss.exp(), num_tokens: tokens, num_examples: dataset.len() })
}
