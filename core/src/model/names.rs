//! BLOOM's module names, as PyTorch's `named_modules()` lists them for `BloomForCausalLM`, and
//! access to a layer by name. LoRA targets and `modules_to_save` are written against these names.

use super::bloom::BloomForCausalLM;
use super::layers::{Embedding, LayerNorm, Linear};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    Linear,
    Embedding,
    LayerNorm,
    /// A module holding other modules (`transformer`, `transformer.h.3`, ...).
    Container,
    /// Dropout, activation: no weights.
    Stateless,
}

/// Every module name of a BLOOM model with `num_layers` blocks, in `named_modules()` order
/// (the root, named "", is left out).
pub fn module_names(num_layers: usize) -> Vec<(String, ModuleKind)> {
    use ModuleKind::*;
    let mut names = vec![
        ("transformer".to_owned(), Container),
        ("transformer.word_embeddings".to_owned(), Embedding),
        ("transformer.word_embeddings_layernorm".to_owned(), LayerNorm),
        ("transformer.h".to_owned(), Container),
    ];
    for i in 0..num_layers {
        let p = format!("transformer.h.{i}");
        names.extend([
            (p.clone(), Container),
            (format!("{p}.input_layernorm"), LayerNorm),
            (format!("{p}.self_attention"), Container),
            (format!("{p}.self_attention.query_key_value"), Linear),
            (format!("{p}.self_attention.dense"), Linear),
            (format!("{p}.self_attention.attention_dropout"), Stateless),
            (format!("{p}.post_attention_layernorm"), LayerNorm),
            (format!("{p}.mlp"), Container),
            (format!("{p}.mlp.dense_h_to_4h"), Linear),
            (format!("{p}.mlp.gelu_impl"), Stateless),
            (format!("{p}.mlp.dense_4h_to_h"), Linear),
        ]);
    }
    names.push(("transformer.ln_f".to_owned(), LayerNorm));
    names.push(("lm_head".to_owned(), Linear));
    names
}

/// `transformer.h.{i}.{rest}` → `(i, rest)`.
fn block_path(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("transformer.h.")?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Resolves a Linear layer's name to the layer (`&` or `&mut`), without listing every layer.
macro_rules! linear_by_name {
    ($model:expr, $name:expr, $get:ident $(, $m:tt)?) => {{
        let (i, rest) = block_path($name)?;
        let block = $model.transformer.h.$get(i)?;
        match rest {
            "self_attention.query_key_value" => Some(& $($m)? block.self_attention.query_key_value),
            "self_attention.dense" => Some(& $($m)? block.self_attention.dense),
            "mlp.dense_h_to_4h" => Some(& $($m)? block.mlp.dense_h_to_4h),
            "mlp.dense_4h_to_h" => Some(& $($m)? block.mlp.dense_4h_to_h),
            _ => None,
        }
    }};
}

/// Resolves a LayerNorm's name to the layer (`&` or `&mut`).
macro_rules! layer_norm_by_name {
    ($model:expr, $name:expr, $get:ident $(, $m:tt)?) => {{
        match $name {
            "transformer.word_embeddings_layernorm" => Some(& $($m)? $model.transformer.word_embeddings_layernorm),
            "transformer.ln_f" => Some(& $($m)? $model.transformer.ln_f),
            _ => {
                let (i, rest) = block_path($name)?;
                let block = $model.transformer.h.$get(i)?;
                match rest {
                    "input_layernorm" => Some(& $($m)? block.input_layernorm),
                    "post_attention_layernorm" => Some(& $($m)? block.post_attention_layernorm),
                    _ => None,
                }
            }
        }
    }};
}

impl BloomForCausalLM {
    /// The Linear layer called `name` (`lm_head` is not one here: it is the tied embedding).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        linear_by_name!(self, name, get)
    }

    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        linear_by_name!(self, name, get_mut, mut)
    }

    pub fn layer_norm(&self, name: &str) -> Option<&LayerNorm> {
        layer_norm_by_name!(self, name, get)
    }

    pub fn layer_norm_mut(&mut self, name: &str) -> Option<&mut LayerNorm> {
        layer_norm_by_name!(self, name, get_mut, mut)
    }

    pub fn embedding_mut(&mut self, name: &str) -> Option<&mut Embedding> {
        (name == "transformer.word_embeddings").then_some(&mut self.transformer.word_embeddings)
    }

    /// All Linear layers with their names, in model order.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, block) in self.transformer.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            out.push((format!("{p}.self_attention.query_key_value"), &block.self_attention.query_key_value));
            out.push((format!("{p}.self_attention.dense"), &block.self_attention.dense));
            out.push((format!("{p}.mlp.dense_h_to_4h"), &block.mlp.dense_h_to_4h));
            out.push((format!("{p}.mlp.dense_4h_to_h"), &block.mlp.dense_4h_to_h));
        }
        out
    }

    /// All LayerNorms with their names, in model order.
    pub fn layer_norms(&self) -> Vec<(String, &LayerNorm)> {
        let t = &self.transformer;
        let mut out = vec![("transformer.word_embeddings_layernorm".to_owned(), &t.word_embeddings_layernorm)];
        for (i, block) in t.h.iter().enumerate() {
            out.push((format!("transformer.h.{i}.input_layernorm"), &block.input_layernorm));
            out.push((format!("transformer.h.{i}.post_attention_layernorm"), &block.post_attention_layernorm));
        }
        out.push(("transformer.ln_f".to_owned(), &t.ln_f));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_named_modules() {
        let names = module_names(2);
        assert_eq!(names.len(), 4 + 2 * 11 + 2);
        assert_eq!(names[7].0, "transformer.h.0.self_attention.query_key_value");
        assert_eq!(block_path("transformer.h.12.mlp.dense_4h_to_h"), Some((12, "mlp.dense_4h_to_h")));
    }
}
