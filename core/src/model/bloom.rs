//! BLOOM (`BloomForCausalLM`), written to follow transformers' `modeling_bloom.py` line by line.
//! Field names are the checkpoint's, so `transformer.h.3.self_attention.query_key_value` is
//! `model.transformer.h[3].self_attention.query_key_value` here.

use burn::module::Module;
use burn::tensor::{Int, Tensor};

use super::alibi::{AttentionBias, AttentionMask};
use super::cache::{KvCache, LayerCache};
use super::layers::{Embedding, LayerNorm, Linear};
use super::vocab::{rows_per_block, VocabMatrix};
use crate::config::BloomConfig;
pub use ember_shaders::Kernels;

#[derive(Module, Debug)]
pub struct BloomAttention {
    /// Projects to queries, keys and values at once; its output is laid out per head as
    /// `[head, (q|k|v), head_dim]`, which is how BLOOM was trained.
    pub query_key_value: Linear,
    pub dense: Linear,
    pub num_heads: usize,
    /// The attention as the fused kernel that keeps no scores (`ember_shaders::attention`), or
    /// in plain burn.
    pub fused_attention: bool,
}

impl BloomAttention {
    /// `x`: `[batch, queries, hidden]`; returns `dense(attention) + residual`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        residual: Tensor<3>,
        bias: &AttentionBias,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [batch, queries, hidden] = x.dims();
        let (heads, head_dim) = (self.num_heads, hidden / self.num_heads);

        let fused = self.query_key_value.forward(x).reshape([batch, queries, heads, 3, head_dim]);
        let part = |i: usize| {
            fused
                .clone()
                .slice_dim(3, i..i + 1)
                .reshape([batch, queries, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (query, mut key, mut value) = (part(0), part(1), part(2));
        if let Some(cache) = cache {
            (key, value) = cache.append(key, value);
        }

        let (alibi, mask) = (bias.alibi.clone(), bias.mask.clone());
        let context = if self.fused_attention {
            ember_shaders::attention::attention(query, key, value, alibi, mask)
        } else {
            ember_shaders::attention::plain(query, key, value, alibi, mask)
        };
        let context = context.swap_dims(1, 2).reshape([batch, queries, hidden]);
        self.dense.forward(context) + residual
    }
}

#[derive(Module, Debug)]
pub struct BloomMlp {
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
    /// BLOOM's tanh-GELU as the fused kernel (`ember_shaders::gelu`) or in plain burn.
    pub fused_gelu: bool,
}

impl BloomMlp {
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let h = self.dense_h_to_4h.forward(x);
        let h = if self.fused_gelu { ember_shaders::gelu::gelu(h) } else { ember_shaders::gelu::plain(h) };
        self.dense_4h_to_h.forward(h) + residual
    }
}

#[derive(Module, Debug)]
pub struct BloomBlock {
    pub input_layernorm: LayerNorm,
    pub self_attention: BloomAttention,
    pub post_attention_layernorm: LayerNorm,
    pub mlp: BloomMlp,
    pub apply_residual_connection_post_layernorm: bool,
}

impl BloomBlock {
    pub fn forward(&self, x: Tensor<3>, bias: &AttentionBias, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let residual = if self.apply_residual_connection_post_layernorm { normed.clone() } else { x };
        let attended = self.self_attention.forward(normed, residual, bias, cache);

        let normed = self.post_attention_layernorm.forward(attended.clone());
        let residual = if self.apply_residual_connection_post_layernorm { normed.clone() } else { attended };
        self.mlp.forward(normed, residual)
    }
}

/// `BloomModel`: embeddings, blocks and the final layer norm.
#[derive(Module, Debug)]
pub struct BloomModel {
    pub word_embeddings: Embedding,
    pub word_embeddings_layernorm: LayerNorm,
    pub h: Vec<BloomBlock>,
    pub ln_f: LayerNorm,
}

impl BloomModel {
    pub fn forward(&self, input_ids: Tensor<2, Int>, bias: &AttentionBias, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let mut x = self.word_embeddings_layernorm.forward(self.word_embeddings.forward(input_ids));
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(x, bias, cache.as_deref_mut().map(|c| c.layer(i)));
        }
        self.ln_f.forward(x)
    }
}

/// `BloomForCausalLM`: the model plus the language-model head, whose weight is the word
/// embedding matrix (BLOOM ties them), unless `tie_word_embeddings` is false.
#[derive(Module, Debug)]
pub struct BloomForCausalLM {
    pub transformer: BloomModel,
    pub num_heads: usize,
    /// An untied `lm_head` weight: from a checkpoint with `tie_word_embeddings: false` (such as
    /// a merged model whose embeddings were trained), or a trainable copy when `modules_to_save`
    /// names `lm_head`. `None`: the head is the word-embedding matrix. A trainable copy of
    /// `word_embeddings` does *not* move the head: peft leaves it on the original, frozen
    /// embedding matrix, and so does ember.
    pub lm_head: Option<VocabMatrix>,
    /// The loss's log-sum-exp over the head as the fused kernel that keeps no logits
    /// (`ember_shaders::cross_entropy`), or in plain burn.
    pub fused_cross_entropy: bool,
}

impl BloomForCausalLM {
    /// Logits `[batch, new positions, vocab]` for `input_ids` (`[batch, new positions]`).
    /// `mask` covers the cached positions and the new ones; with a cache, only new ids are fed.
    pub fn forward(&self, input_ids: Tensor<2, Int>, mask: &AttentionMask, cache: Option<&mut KvCache>) -> Tensor<3> {
        let hidden = self.hidden_states(input_ids, mask, cache);
        self.lm_head(hidden)
    }

    /// Final hidden states `[batch, positions, hidden]` (before the language-model head).
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>, mask: &AttentionMask, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [batch, queries] = input_ids.dims();
        assert_eq!(batch, mask.batch(), "attention mask has {} rows for a batch of {batch}", mask.batch());
        let bias = AttentionBias::new(mask, self.num_heads, queries, &input_ids.device());
        self.transformer.forward(input_ids, &bias, cache)
    }

    /// `lm_head`: hidden states times the (tied) embedding matrix.
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let weight = self.lm_head_weight();
        let [batch, positions, dim] = hidden.dims();
        let vocab = weight.dims()[0];
        weight.project(hidden.reshape([batch * positions, dim])).reshape([batch, positions, vocab])
    }

    /// The `[vocab, hidden]` matrix of the language-model head.
    pub fn lm_head_weight(&self) -> &VocabMatrix {
        self.lm_head.as_ref().unwrap_or(&self.transformer.word_embeddings.weight)
    }

    /// Re-cuts the vocabulary matrices into blocks of `rows` rows, for a device whose binding
    /// limit is below [`super::vocab::MAX_BLOCK_BYTES`] (and for tests of the block code).
    pub fn set_vocab_block_rows(&mut self, rows: usize) {
        let resplit = |m: &mut VocabMatrix| *m = VocabMatrix::split(m.full(), rows, m.is_require_grad());
        let embeddings = &mut self.transformer.word_embeddings;
        resplit(&mut embeddings.weight);
        embeddings.trainable_copy.as_mut().map(resplit);
        self.lm_head.as_mut().map(resplit);
    }

    /// Switches the fused kernels on or off (all on by default).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.fused_cross_entropy = kernels.cross_entropy;
        self.transformer.word_embeddings_layernorm.fused = kernels.layer_norm;
        self.transformer.ln_f.fused = kernels.layer_norm;
        for block in &mut self.transformer.h {
            block.mlp.fused_gelu = kernels.gelu;
            block.self_attention.fused_attention = kernels.attention;
            block.input_layernorm.fused = kernels.layer_norm;
            block.post_attention_layernorm.fused = kernels.layer_norm;
        }
    }

    pub fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.transformer.word_embeddings.weight.dims()[0]
    }

    /// Builds the module tree from a weight source (a checkpoint or random init).
    pub fn from_weights(config: &BloomConfig, weights: &mut impl super::WeightSource) -> crate::Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_epsilon;
        let mut layer_norm = |name: &str| -> crate::Result<LayerNorm> {
            Ok(LayerNorm::new(weights.tensor(&format!("{name}.weight"), [h])?, weights.tensor(&format!("{name}.bias"), [h])?, eps))
        };
        let word_embeddings_layernorm = layer_norm("transformer.word_embeddings_layernorm")?;
        let ln_f = layer_norm("transformer.ln_f")?;
        let block_rows = rows_per_block(h);
        let word_embeddings =
            Embedding::new(weights.vocab_matrix("transformer.word_embeddings.weight", [config.vocab_size, h], block_rows)?);
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("transformer.h.{i}");
            let mut linear = |name: &str, out_f: usize, in_f: usize| -> crate::Result<Linear> {
                let weight = weights.tensor(&format!("{p}.{name}.weight"), [out_f, in_f])?;
                let bias = weights.tensor(&format!("{p}.{name}.bias"), [out_f])?;
                Ok(Linear::new(weight, Some(bias)))
            };
            let query_key_value = linear("self_attention.query_key_value", 3 * h, h)?;
            let dense = linear("self_attention.dense", h, h)?;
            let dense_h_to_4h = linear("mlp.dense_h_to_4h", 4 * h, h)?;
            let dense_4h_to_h = linear("mlp.dense_4h_to_h", h, 4 * h)?;
            let mut layer_norm = |name: &str| -> crate::Result<LayerNorm> {
                Ok(LayerNorm::new(weights.tensor(&format!("{p}.{name}.weight"), [h])?, weights.tensor(&format!("{p}.{name}.bias"), [h])?, eps))
            };
            blocks.push(BloomBlock {
                input_layernorm: layer_norm("input_layernorm")?,
                post_attention_layernorm: layer_norm("post_attention_layernorm")?,
                self_attention: BloomAttention {
                    query_key_value,
                    dense,
                    num_heads: config.n_head,
                    fused_attention: Kernels::default().attention,
                },
                mlp: BloomMlp { dense_h_to_4h, dense_4h_to_h, fused_gelu: Kernels::default().gelu },
                apply_residual_connection_post_layernorm: config.apply_residual_connection_post_layernorm,
            });
        }
        Ok(BloomForCausalLM {
            transformer: BloomModel { word_embeddings, word_embeddings_layernorm, h: blocks, ln_f },
            num_heads: config.n_head,
            fused_cross_entropy: Kernels::default().cross_entropy,
            lm_head: if config.tie_word_embeddings {
                None
            } else {
                Some(weights.vocab_matrix("lm_head.weight", [config.vocab_size, h], block_rows)?)
            },
        })
    }
}
