//! Text generation as transformers' `generate` does it: left-padded batches, a KV cache so each
//! step computes one new position, greedy or sampled choice after the same logits processors
//! in the same order (repetition penalty, then temperature, top-k, top-p), stopping at eos.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{AttentionMask, BloomForCausalLM, KvCache};
use crate::readback::{blocking, values};

/// How to pick each next token when sampling (`do_sample=True`). Defaults are transformers'.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: 50, top_p: 1.0, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// New tokens to generate at most (transformers' `max_new_tokens`).
    pub max_new_tokens: Option<usize>,
    /// Total length at most, prompt included (transformers' `max_length`); used when
    /// `max_new_tokens` is not set.
    pub max_length: Option<usize>,
    /// `None` = greedy decoding.
    pub sampling: Option<Sampling>,
    pub repetition_penalty: f32,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: u32,
    /// Prompt and generated tokens together stop here: the model's context
    /// ([`crate::BloomConfig::context_limit`]), so generation never runs on without end when
    /// eos never comes.
    pub context_limit: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: Some(128),
            max_length: None,
            sampling: None,
            repetition_penalty: 1.0,
            eos_token_id: Some(2),
            pad_token_id: 3,
            context_limit: crate::config::DEFAULT_CONTEXT,
        }
    }
}

impl GenerationConfig {
    /// How many tokens may be added to prompts padded to `prompt_len`.
    pub fn new_token_budget(&self, prompt_len: usize) -> usize {
        self.requested_tokens(prompt_len).min(self.context_limit.saturating_sub(prompt_len))
    }

    /// Whether the model's context, rather than what was asked for, ends generation.
    pub fn stops_at_context(&self, prompt_len: usize) -> bool {
        self.requested_tokens(prompt_len) > self.context_limit.saturating_sub(prompt_len)
    }

    fn requested_tokens(&self, prompt_len: usize) -> usize {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => n,
            (None, Some(total)) => total.saturating_sub(prompt_len),
            (None, None) => 20usize.saturating_sub(prompt_len), // transformers' max_length default
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(s) = &self.sampling {
            if !(s.temperature.is_finite() && s.temperature > 0.0) {
                return Err(Error::invalid(format!(
                    "`temperature` must be a finite number > 0 (got {})",
                    s.temperature
                )));
            }
            if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                return Err(Error::invalid(format!("`top_p` must be in (0, 1] (got {})", s.top_p)));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::invalid(format!(
                "`repetition_penalty` must be a finite number > 0 (got {})",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// Incremental decoding over a KV cache: `prefill` feeds the (left-padded) prompts, each
/// `step` feeds one token per row; both return the last position's logits per row.
pub struct Decoder<'a> {
    model: &'a BloomForCausalLM,
    device: Device,
    mask: AttentionMask,
    cache: KvCache,
    batch: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(model: &'a BloomForCausalLM, device: &Device) -> Self {
        Decoder {
            model,
            device: device.clone(),
            mask: AttentionMask::new(Vec::new()),
            cache: KvCache::new(model.num_layers()),
            batch: 0,
        }
    }

    /// Feeds `prompts` left-padded with `pad_id`; returns `batch * vocab` logits.
    pub fn prefill(&mut self, prompts: &[Vec<u32>], pad_id: u32) -> Result<Vec<f32>> {
        blocking(self.prefill_async(prompts, pad_id))
    }

    /// Feeds one token per row (every row attends to it, as transformers does).
    pub fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        blocking(self.step_async(ids))
    }

    /// [`Self::prefill`] for platforms that cannot block on the device (the browser).
    pub async fn prefill_async(&mut self, prompts: &[Vec<u32>], pad_id: u32) -> Result<Vec<f32>> {
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let padded: Vec<u32> =
            prompts.iter().flat_map(|p| std::iter::repeat_n(pad_id, len - p.len()).chain(p.iter().copied())).collect();
        self.batch = prompts.len();
        self.cache = KvCache::new(self.model.num_layers());
        self.mask =
            AttentionMask::new(prompts.iter().map(|p| (0..len).map(|i| i >= len - p.len()).collect()).collect());
        self.run(&padded, len).await
    }

    /// [`Self::step`] for platforms that cannot block on the device (the browser).
    pub async fn step_async(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.mask.push(&vec![true; self.batch]);
        self.run(ids, 1).await
    }

    async fn run(&mut self, ids: &[u32], len: usize) -> Result<Vec<f32>> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [self.batch, len]), &self.device);
        let hidden = self.model.hidden_states(input, &self.mask, Some(&mut self.cache));
        let logits = self.model.lm_head(hidden.slice_dim(1, len - 1..len));
        let vocab = logits.dims()[2];
        values(logits.reshape([self.batch * vocab]), "reading logits").await
    }
}

/// Generates continuations of `prompts` (token ids, unpadded). Returns each row's new tokens,
/// up to and including eos. `on_step` sees each step's token per row (`None` once a row ended).
pub fn generate(
    model: &BloomForCausalLM,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    mut on_step: impl FnMut(&[Option<u32>]),
) -> Result<Vec<Vec<u32>>> {
    blocking(generate_async(model, prompts, config, device, async |step: &[Option<u32>]| {
        on_step(step);
        true
    }))
}

/// [`generate`] for platforms that cannot block on the device (the browser). `on_step` is
/// async so the caller can hand control back to its event loop between tokens (a stop button
/// must get through); it returns `false` to stop early.
pub async fn generate_async(
    model: &BloomForCausalLM,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    mut on_step: impl AsyncFnMut(&[Option<u32>]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    config.validate()?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::invalid("generation needs a non-empty prompt"));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= config.context_limit {
        return Err(Error::invalid(format!(
            "the prompt has {longest} tokens, and the model's context ends at {}: shorten the prompt",
            config.context_limit
        )));
    }
    let batch = prompts.len();
    let budget = config.new_token_budget(prompts.iter().map(Vec::len).max().unwrap_or(0));
    let mut rng = StdRng::seed_from_u64(config.sampling.as_ref().map_or(0, |s| s.seed));
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut generated = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    let mut decoder = Decoder::new(model, device);

    for step_index in 0..budget {
        let logits = if step_index == 0 {
            decoder.prefill_async(prompts, config.pad_token_id).await?
        } else {
            let last: Vec<u32> = (0..batch)
                .map(|r| {
                    if finished[r] && generated[r].len() < step_index {
                        config.pad_token_id
                    } else {
                        *history[r].last().unwrap()
                    }
                })
                .collect();
            decoder.step_async(&last).await?
        };
        let vocab = logits.len() / batch;
        let mut step = vec![None; batch];
        for row in 0..batch {
            if finished[row] {
                continue;
            }
            let mut scores = logits[row * vocab..(row + 1) * vocab].to_vec();
            let token = choose_token(&mut scores, &history[row], config, &mut rng);
            history[row].push(token);
            generated[row].push(token);
            step[row] = Some(token);
            finished[row] = Some(token) == config.eos_token_id;
        }
        if !on_step(&step).await || finished.iter().all(|&f| f) {
            break;
        }
    }
    Ok(generated)
}

/// Applies the logits processors to one row's `scores` and picks a token.
pub fn choose_token(scores: &mut [f32], history: &[u32], config: &GenerationConfig, rng: &mut impl Rng) -> u32 {
    apply_repetition_penalty(scores, history, config.repetition_penalty);
    match &config.sampling {
        None => argmax(scores),
        Some(s) => {
            apply_temperature(scores, s.temperature);
            apply_top_k(scores, s.top_k);
            apply_top_p(scores, s.top_p);
            sample(scores, rng)
        }
    }
}

/// `RepetitionPenaltyLogitsProcessor`: tokens already present become less likely.
pub fn apply_repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &id in history {
        let i = id as usize;
        if i < scores.len() && !seen[i] {
            seen[i] = true;
            scores[i] = if scores[i] < 0.0 { scores[i] * penalty } else { scores[i] / penalty };
        }
    }
}

pub fn apply_temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        scores.iter_mut().for_each(|s| *s /= temperature);
    }
}

/// `TopKLogitsWarper`: keeps the tokens scoring at least the k-th best score (ties kept).
pub fn apply_top_k(scores: &mut [f32], top_k: usize) {
    if top_k == 0 || top_k >= scores.len() {
        return;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let threshold = sorted[top_k - 1];
    scores.iter_mut().filter(|s| **s < threshold).for_each(|s| *s = f32::NEG_INFINITY);
}

/// `TopPLogitsWarper`: drops the least likely tokens whose probabilities add up to at most
/// `1 - top_p`, always keeping the most likely one.
pub fn apply_top_p(scores: &mut [f32], top_p: f32) {
    if top_p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b])); // ascending, as transformers sorts
    let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
    let mut cumulative = 0.0f32;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cumulative += probs[rank];
        if cumulative <= 1.0 - top_p && rank != last {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest score (the first one on ties, like `torch.argmax`).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(scores: &[f32], rng: &mut impl Rng) -> u32 {
    let probs = softmax(scores);
    let mut u: f32 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    argmax(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let mut s = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_the_nucleus() {
        let mut s = vec![1.0, 3.0, 3.0, 0.0];
        apply_top_k(&mut s, 2);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, 3.0, f32::NEG_INFINITY]);

        // probabilities ~ [0.643, 0.237, 0.087, 0.032]: top_p 0.7 keeps the first two.
        let mut s = vec![3.0, 2.0, 1.0, 0.0];
        apply_top_p(&mut s, 0.7);
        assert!(
            s[0].is_finite() && s[1].is_finite() && s[2] == f32::NEG_INFINITY && s[3] == f32::NEG_INFINITY,
            "{s:?}"
        );
    }

    #[test]
    fn sampling_is_reproducible_for_a_seed_and_respects_filters() {
        let config = GenerationConfig {
            sampling: Some(Sampling { temperature: 0.7, top_k: 2, top_p: 1.0, seed: 7 }),
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| choose_token(&mut [0.5, 2.0, 1.9, -1.0], &[], &config, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(a.iter().all(|&t| t == 1 || t == 2), "top-k 2 allows tokens 1 and 2 only: {a:?}");
        assert!(a.contains(&1) && a.contains(&2));
    }
}
