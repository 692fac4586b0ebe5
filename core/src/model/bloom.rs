//! BLOOM (`BloomForCausalLM`), written to follow transformers' `modeling_bloom.py` line by line.
//! Field names are the checkpoint's, so `transformer.h.3.self_attention.query_key_value` is
//! `model.transformer.h[3].self_attention.query_key_value` here. This file is the one place
//! BLOOM's module names are spelled: each module loads itself by its own names (a prefix-scoped
//! [`Scope`]), and [`ModelShape::modules`] lists them all, with shapes, as `named_modules()`
//! does; [`ModuleTree`] derives access by name from that list.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use ember_shaders::Kernels;

use super::alibi::{AttentionBias, AttentionMask};
use super::cache::{KvCache, LayerCache};
use super::layers::{Embedding, LayerNorm, Linear};
use super::modules::{Layer, LayerMut, ModuleKind, ModuleTree, NamedModule};
use super::vocab::{rows_per_block, VocabMatrix};
use super::WeightDType;
use super::{Scope, WeightSource};
use crate::config::BloomConfig;
use crate::quant::{QuantConfig, QuantizedWeight};
use crate::Result;

/// peft's default LoRA target for BLOOM (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
pub const LORA_TARGET_MODULES: [&str; 1] = ["query_key_value"];

// The module names code outside this file needs (as the checkpoint spells them); every other
// name is written only in the `load` functions and `ModelShape::modules` below.
pub const TRANSFORMER: &str = "transformer";
pub const WORD_EMBEDDINGS: &str = "transformer.word_embeddings";
/// The language-model head: a Linear layer that LoRA never adapts, 4-bit never quantizes (by
/// default), and `modules_to_save` copies as a vocabulary matrix.
pub const LM_HEAD: &str = "lm_head";
const BLOCKS: &str = "transformer.h";
/// Module names for messages that suggest what `modules_to_save` can name.
pub const SAVABLE_EXAMPLES: &str = "word_embeddings, ln_f, lm_head, dense";

/// The block a module belongs to (`transformer.h.3.mlp.dense_h_to_4h` → 3).
pub fn block_of(module: &str) -> Option<usize> {
    let rest = module.strip_prefix(BLOCKS)?.strip_prefix('.')?;
    rest.split('.').next()?.parse().ok()
}

/// Whether a weight (`transformer.h.0.input_layernorm.weight`, `transformer.ln_f.bias`) is a
/// layer norm's.
pub fn is_layer_norm(weight: &str) -> bool {
    weight.contains("layernorm") || weight.contains("ln_f")
}

#[derive(Module, Debug)]
pub struct BloomAttention {
    /// Projects to queries, keys and values at once; its output is laid out per head as
    /// `[head, (q|k|v), head_dim]`, which is how BLOOM was trained.
    pub query_key_value: Linear,
    pub dense: Linear,
    pub num_heads: usize,
}

impl BloomAttention {
    fn load<W: WeightSource>(s: &mut Scope<W>, config: &BloomConfig) -> Result<Self> {
        let h = config.hidden_size;
        Ok(BloomAttention {
            query_key_value: Linear::load(&mut s.pp("query_key_value"), 3 * h, h)?,
            dense: Linear::load(&mut s.pp("dense"), h, h)?,
            num_heads: config.n_head,
        })
    }

    /// `x`: `[batch, queries, hidden]`; returns `dense(attention) + residual`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        residual: Tensor<3>,
        bias: &AttentionBias,
        kernels: &Kernels,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [batch, queries, hidden] = x.dims();
        let (heads, head_dim) = (self.num_heads, hidden / self.num_heads);

        let fused = self.query_key_value.forward(x).reshape([batch, queries, heads, 3, head_dim]);
        let part =
            |i: usize| fused.clone().slice_dim(3, i..i + 1).reshape([batch, queries, heads, head_dim]).swap_dims(1, 2);
        let (query, mut key, mut value) = (part(0), part(1), part(2));
        if let Some(cache) = cache {
            (key, value) = cache.append(key, value);
        }

        let context = kernels.attention(query, key, value, bias.alibi.clone(), bias.mask.clone());
        let context = context.swap_dims(1, 2).reshape([batch, queries, hidden]);
        self.dense.forward(context) + residual
    }
}

#[derive(Module, Debug)]
pub struct BloomMlp {
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
}

impl BloomMlp {
    fn load<W: WeightSource>(s: &mut Scope<W>, config: &BloomConfig) -> Result<Self> {
        let h = config.hidden_size;
        Ok(BloomMlp {
            dense_h_to_4h: Linear::load(&mut s.pp("dense_h_to_4h"), 4 * h, h)?,
            dense_4h_to_h: Linear::load(&mut s.pp("dense_4h_to_h"), h, 4 * h)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>, kernels: &Kernels) -> Tensor<3> {
        let h = kernels.gelu(self.dense_h_to_4h.forward(x));
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
    fn load<W: WeightSource>(s: &mut Scope<W>, config: &BloomConfig) -> Result<Self> {
        let (h, eps) = (config.hidden_size, config.layer_norm_epsilon);
        Ok(BloomBlock {
            input_layernorm: LayerNorm::load(&mut s.pp("input_layernorm"), h, eps)?,
            self_attention: BloomAttention::load(&mut s.pp("self_attention"), config)?,
            post_attention_layernorm: LayerNorm::load(&mut s.pp("post_attention_layernorm"), h, eps)?,
            mlp: BloomMlp::load(&mut s.pp("mlp"), config)?,
            apply_residual_connection_post_layernorm: config.apply_residual_connection_post_layernorm,
        })
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        bias: &AttentionBias,
        kernels: &Kernels,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone(), kernels);
        let residual = if self.apply_residual_connection_post_layernorm { normed.clone() } else { x };
        let attended = self.self_attention.forward(normed, residual, bias, kernels, cache);

        let normed = self.post_attention_layernorm.forward(attended.clone(), kernels);
        let residual = if self.apply_residual_connection_post_layernorm { normed.clone() } else { attended };
        self.mlp.forward(normed, residual, kernels)
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
    fn load<W: WeightSource>(s: &mut Scope<W>, config: &BloomConfig) -> Result<Self> {
        let (h, eps) = (config.hidden_size, config.layer_norm_epsilon);
        let word_embeddings = Embedding::load(&mut s.pp("word_embeddings"), config.vocab_size, h)?;
        let word_embeddings_layernorm = LayerNorm::load(&mut s.pp("word_embeddings_layernorm"), h, eps)?;
        let mut blocks = s.pp("h");
        let h_blocks =
            (0..config.n_layer).map(|i| BloomBlock::load(&mut blocks.pp(i), config)).collect::<Result<_>>()?;
        Ok(BloomModel {
            word_embeddings,
            word_embeddings_layernorm,
            h: h_blocks,
            ln_f: LayerNorm::load(&mut s.pp("ln_f"), h, eps)?,
        })
    }

    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        bias: &AttentionBias,
        kernels: &Kernels,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut x = self.embed(input_ids, kernels);
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(x, bias, kernels, cache.as_deref_mut().map(|c| c.layer(i)));
        }
        self.ln_f.forward(x, kernels)
    }

    /// The first stage of [`Self::forward`] (the blocks' input); gradient checkpointing runs
    /// the stages one at a time.
    pub fn embed(&self, input_ids: Tensor<2, Int>, kernels: &Kernels) -> Tensor<3> {
        self.word_embeddings_layernorm.forward(self.word_embeddings.forward(input_ids), kernels)
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
    /// Whether the checkpoint ties `lm_head` to the word embeddings (config.json).
    pub tie_word_embeddings: bool,
    /// Which operations run as the fused kernels of `ember_shaders` (all by default); the one
    /// place the choice is made, passed down with the attention bias.
    #[module(skip)]
    pub kernels: Kernels,
}

impl BloomForCausalLM {
    /// Builds the module tree from a weight source (a checkpoint or random init), each module
    /// loading itself by its own names.
    pub fn from_weights(config: &BloomConfig, weights: &mut impl WeightSource) -> Result<Self> {
        let mut root = Scope::new(weights);
        let transformer = BloomModel::load(&mut root.pp(TRANSFORMER), config)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            let shape = [config.vocab_size, config.hidden_size];
            Some(root.pp(LM_HEAD).vocab_matrix("weight", shape, rows_per_block(config.hidden_size))?)
        };
        Ok(BloomForCausalLM {
            transformer,
            num_heads: config.n_head,
            lm_head,
            tie_word_embeddings: config.tie_word_embeddings,
            kernels: Kernels::default(),
        })
    }

    /// Logits `[batch, new positions, vocab]` for `input_ids` (`[batch, new positions]`).
    /// `mask` covers the cached positions and the new ones; with a cache, only new ids are fed.
    pub fn forward(&self, input_ids: Tensor<2, Int>, mask: &AttentionMask, cache: Option<&mut KvCache>) -> Tensor<3> {
        let hidden = self.hidden_states(input_ids, mask, cache);
        self.lm_head(hidden)
    }

    /// Final hidden states `[batch, positions, hidden]` (before the language-model head).
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [batch, queries] = input_ids.dims();
        assert_eq!(batch, mask.batch(), "attention mask has {} rows for a batch of {batch}", mask.batch());
        let bias = AttentionBias::new(mask, self.num_heads, queries, &input_ids.device());
        self.transformer.forward(input_ids, &bias, &self.kernels, cache)
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

    pub fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.transformer.word_embeddings.weight.dims()[0]
    }

    /// This model for inference: off the autodiff graph, dropout off.
    pub fn valid_model(self) -> Self {
        Module::valid(&self)
    }

    /// This model (loaded on a plain device) on the autodiff graph, for training: the weights
    /// are the same buffers, not copies, and frozen ones stay frozen. The page trains this way
    /// instead of loading the checkpoint a second time.
    pub fn for_training(self) -> Self {
        Module::train(self)
    }
}

/// The sizes BLOOM's module tree depends on: enough to list its modules and count their
/// parameters without loading any weights (`ember info`, the page's memory budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    /// `lm_head` is the word-embedding matrix (counted once, as PyTorch counts a tied weight).
    pub tied: bool,
}

impl ModelShape {
    pub fn of_config(config: &BloomConfig) -> Self {
        ModelShape {
            vocab: config.vocab_size,
            hidden: config.hidden_size,
            layers: config.n_layer,
            tied: config.tie_word_embeddings,
        }
    }

    pub fn of_model(model: &BloomForCausalLM) -> Self {
        let [vocab, hidden] = model.transformer.word_embeddings.weight.dims();
        ModelShape { vocab, hidden, layers: model.num_layers(), tied: model.tie_word_embeddings }
    }

    /// Every module of `BloomForCausalLM` in `named_modules()` order (the root, "", left out).
    pub fn modules(&self) -> Vec<NamedModule> {
        let h = self.hidden;
        let linear = |out_features, in_features| ModuleKind::Linear { out_features, in_features, bias: true };
        let norm = ModuleKind::LayerNorm { width: h };
        let mut modules = vec![
            (TRANSFORMER.to_owned(), ModuleKind::Container),
            (WORD_EMBEDDINGS.to_owned(), ModuleKind::Embedding { rows: self.vocab, width: h }),
            (format!("{WORD_EMBEDDINGS}_layernorm"), norm),
            (BLOCKS.to_owned(), ModuleKind::Container),
        ];
        for i in 0..self.layers {
            let p = format!("{BLOCKS}.{i}");
            modules.extend([
                (p.clone(), ModuleKind::Container),
                (format!("{p}.input_layernorm"), norm),
                (format!("{p}.self_attention"), ModuleKind::Container),
                (format!("{p}.self_attention.query_key_value"), linear(3 * h, h)),
                (format!("{p}.self_attention.dense"), linear(h, h)),
                (format!("{p}.self_attention.attention_dropout"), ModuleKind::Stateless),
                (format!("{p}.post_attention_layernorm"), norm),
                (format!("{p}.mlp"), ModuleKind::Container),
                (format!("{p}.mlp.dense_h_to_4h"), linear(4 * h, h)),
                (format!("{p}.mlp.gelu_impl"), ModuleKind::Stateless),
                (format!("{p}.mlp.dense_4h_to_h"), linear(h, 4 * h)),
            ]);
        }
        modules.push((format!("{TRANSFORMER}.ln_f"), norm));
        modules
            .push((LM_HEAD.to_owned(), ModuleKind::Linear { out_features: self.vocab, in_features: h, bias: false }));
        modules.into_iter().map(|(name, kind)| NamedModule { name, kind }).collect()
    }

    /// Parameters of the model (a tied `lm_head` counted once, as PyTorch does).
    pub fn base_params(&self) -> u64 {
        self.owned_modules().map(|m| m.kind.params()).sum()
    }

    /// Bytes the base weights take on the device when stored as `dtype`, with the Linear layers
    /// `quant` quantizes in 4 bits.
    pub fn weight_bytes(&self, dtype: WeightDType, quant: Option<&QuantConfig>) -> u64 {
        let size = dtype.bytes() as u64;
        self.owned_modules()
            .map(|m| match m.kind {
                ModuleKind::Linear { out_features, in_features, bias }
                    if quant.is_some_and(|q| q.quantizes(&m.name)) =>
                {
                    QuantizedWeight::device_bytes(out_features, in_features)
                        + if bias { size * out_features as u64 } else { 0 }
                }
                kind => size * kind.params(),
            })
            .sum()
    }

    /// The modules whose weights the model holds (a tied `lm_head` holds none of its own).
    fn owned_modules(&self) -> impl Iterator<Item = NamedModule> + '_ {
        self.modules().into_iter().filter(|m| !(self.tied && m.name == LM_HEAD))
    }
}

impl ModuleTree for BloomForCausalLM {
    fn modules(&self) -> Vec<NamedModule> {
        ModelShape::of_model(self).modules()
    }

    /// In [`ModelShape::modules`] order: embeddings, their norm, per block the two norms and four
    /// linear layers, the final norm, the head.
    fn layers(&self) -> Vec<Layer<'_>> {
        let t = &self.transformer;
        let mut layers = vec![Layer::Embedding(&t.word_embeddings), Layer::LayerNorm(&t.word_embeddings_layernorm)];
        for b in &t.h {
            layers.extend([
                Layer::LayerNorm(&b.input_layernorm),
                Layer::Linear(&b.self_attention.query_key_value),
                Layer::Linear(&b.self_attention.dense),
                Layer::LayerNorm(&b.post_attention_layernorm),
                Layer::Linear(&b.mlp.dense_h_to_4h),
                Layer::Linear(&b.mlp.dense_4h_to_h),
            ]);
        }
        layers.extend([Layer::LayerNorm(&t.ln_f), Layer::Head(self.lm_head_weight())]);
        layers
    }

    fn layers_mut(&mut self) -> Vec<LayerMut<'_>> {
        let BloomModel { word_embeddings, word_embeddings_layernorm, h, ln_f } = &mut self.transformer;
        let mut layers = vec![LayerMut::Embedding(word_embeddings), LayerMut::LayerNorm(word_embeddings_layernorm)];
        for b in h.iter_mut() {
            layers.extend([
                LayerMut::LayerNorm(&mut b.input_layernorm),
                LayerMut::Linear(&mut b.self_attention.query_key_value),
                LayerMut::Linear(&mut b.self_attention.dense),
                LayerMut::LayerNorm(&mut b.post_attention_layernorm),
                LayerMut::Linear(&mut b.mlp.dense_h_to_4h),
                LayerMut::Linear(&mut b.mlp.dense_4h_to_h),
            ]);
        }
        layers.extend([LayerMut::LayerNorm(ln_f), LayerMut::Head(&mut self.lm_head)]);
        layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_560m_has_its_published_parameter_count_and_module_names() {
        // bigscience/bloom-560m: 559,214,592 parameters.
        let shape = ModelShape::of_config(&BloomConfig::named_shape("bloom-560m").unwrap());
        assert_eq!(shape.base_params(), 559_214_592);
        let modules = shape.modules();
        assert_eq!(modules.len(), 4 + 24 * 11 + 2);
        assert_eq!(modules[7].name, "transformer.h.0.self_attention.query_key_value");
    }

    /// `ModuleTree` pairs `modules()` with `layers()` / `layers_mut()` by position: the walks
    /// must list the same modules, of the same kinds and shapes, untied and tied.
    #[test]
    fn the_module_list_and_the_layer_walks_line_up() {
        use crate::checkpoint::{random_model, LoadOptions};
        for tied in [false, true] {
            let config = BloomConfig { tie_word_embeddings: tied, ..BloomConfig::named_shape("tiny").unwrap() };
            let mut model = random_model(&config, &burn::tensor::Device::flex(), 0, &LoadOptions::default());
            let with_weights: Vec<NamedModule> = model.modules().into_iter().filter(|m| m.kind.has_weights()).collect();
            assert_eq!(with_weights.len(), model.layers().len(), "tied {tied}: layers()");
            assert_eq!(with_weights.len(), model.layers_mut().len(), "tied {tied}: layers_mut()");
            for (module, layer) in model.named_layers() {
                let fits = match (module.kind, layer) {
                    (ModuleKind::Linear { out_features, in_features, .. }, Layer::Linear(l)) => {
                        l.weight.dims() == [out_features, in_features]
                    }
                    (ModuleKind::Linear { out_features, in_features, .. }, Layer::Head(m)) => {
                        module.name == LM_HEAD && m.dims() == [out_features, in_features]
                    }
                    (ModuleKind::LayerNorm { width }, Layer::LayerNorm(n)) => n.weight.dims() == [width],
                    (ModuleKind::Embedding { rows, width }, Layer::Embedding(e)) => {
                        e.active_weight().dims() == [rows, width]
                    }
                    _ => false,
                };
                assert!(fits, "tied {tied}: {} ({:?}) is paired with another layer", module.name, module.kind);
            }
        }
    }

    #[test]
    fn four_bit_weights_take_about_a_quarter_of_f16_at_bloom_1b4_size() {
        let shape = ModelShape::of_config(&BloomConfig::named_shape("bloom-1b4").unwrap());
        let f16 = shape.weight_bytes(WeightDType::F16, None);
        assert_eq!(f16, 2 * shape.base_params());
        let nf4 = shape.weight_bytes(WeightDType::F16, Some(&QuantConfig::default()));
        // The embeddings (94.5M of 1.3B parameters) stay f16; every block's Linear is 4.5 bits.
        let (f16, nf4) = (f16 as f64, nf4 as f64);
        assert!(nf4 / f16 > 0.3 && nf4 / f16 < 0.4, "{nf4} / {f16}");
    }
}
