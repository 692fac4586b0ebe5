//! `BloomConfig`: the fields of a Hugging Face BLOOM `config.json`, under HF's own names.
//!
//! Real checkpoints use two spellings for the sizes (bigscience's original `n_embed`, `n_head`,
//! `n_layer`, and transformers' `hidden_size`, `num_attention_heads`, `num_hidden_layers`);
//! both are accepted through serde aliases.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BloomConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "default_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
    /// Tensor parallelism degree used in pre-training; BLOOM's maths is the same for any value
    /// as long as `slow_but_exact` is false, which is how transformers runs it too.
    #[serde(default = "default_one")]
    pub pretraining_tp: usize,
    /// The dtype the weights were saved in (`torch_dtype`; transformers 5 writes `dtype`).
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
    /// The context length, where a config gives one (`seq_length`; other families'
    /// `max_position_embeddings` / `n_positions`).
    #[serde(default, alias = "max_position_embeddings", alias = "n_positions")]
    pub seq_length: Option<usize>,
    /// A model saved already quantized (transformers' `quantization_config`, bitsandbytes
    /// 4-bit only): its settings, which loading the model uses. Checked by [`Self::from_json`].
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<crate::quant::QuantConfig>,
}

/// Bounds on a config's sizes, far above any published BLOOM (bloom-176b: vocabulary 250,880,
/// hidden 14,336, 70 layers), so that every size derived from them fits in 64 bits and token
/// ids fit in the 32-bit integers tensors index with.
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_LAYERS: usize = 1 << 10;

/// Tokens BLOOM was trained on at once; generation stops there unless the config names
/// another limit (BLOOM's ALiBi has no hard position limit, but text beyond it is untested).
pub const DEFAULT_CONTEXT: usize = 2048;

fn default_model_type() -> String {
    "bloom".into()
}
fn default_layer_norm_epsilon() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_bos() -> Option<u32> {
    Some(1)
}
fn default_eos() -> Option<u32> {
    Some(2)
}
fn default_pad() -> Option<u32> {
    Some(3)
}
fn default_one() -> usize {
    1
}

impl BloomConfig {
    /// Parses `config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::file(origin, format!("not valid JSON: {e}")))?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("bloom");
        if model_type != "bloom" {
            return Err(Error::file(
                origin,
                format!("unsupported model_type \"{model_type}\": ember runs BLOOM models (model_type \"bloom\") only"),
            ));
        }
        let quantization_config = crate::quant::QuantConfig::of_checkpoint(&value, origin)?;
        let mut config: BloomConfig =
            serde_json::from_value(value).map_err(|e| Error::file(origin, format!("not a BLOOM config: {e}")))?;
        config.quantization_config = quantization_config;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |message: String| Err(Error::file(origin, message));
        for (field, value, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("n_layer", self.n_layer, MAX_LAYERS),
        ] {
            if value == 0 || value > max {
                return bad(format!("{field} is {value}; expected 1 to {max} (no BLOOM model is larger): the file is damaged or not a BLOOM config"));
            }
        }
        if self.n_head == 0 || !self.hidden_size.is_multiple_of(self.n_head) {
            return bad(format!("hidden_size {} is not a multiple of n_head {}", self.hidden_size, self.n_head));
        }
        if !self.layer_norm_epsilon.is_finite() || self.layer_norm_epsilon < 0.0 {
            return bad(format!("layer_norm_epsilon is {}; expected a small positive number", self.layer_norm_epsilon));
        }
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= self.vocab_size) {
                return bad(format!("{field} {id} is outside the vocabulary (vocab_size {})", self.vocab_size));
            }
        }
        Ok(())
    }

    /// The longest text (prompt and generated tokens) the model runs on, and whether the config
    /// gave it (else [`DEFAULT_CONTEXT`]).
    pub fn context_limit(&self) -> (usize, bool) {
        match self.seq_length.filter(|&n| n > 0) {
            Some(n) => (n, true),
            None => (DEFAULT_CONTEXT, false),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head
    }

    /// A config of the given shape with transformers' defaults for everything else; used for
    /// random-weight models in benchmarks and tests.
    pub fn with_shape(vocab_size: usize, hidden_size: usize, n_layer: usize, n_head: usize) -> Self {
        BloomConfig {
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            n_layer,
            n_head,
            layer_norm_epsilon: default_layer_norm_epsilon(),
            apply_residual_connection_post_layernorm: false,
            tie_word_embeddings: true,
            hidden_dropout: 0.0,
            attention_dropout: 0.0,
            bos_token_id: default_bos(),
            eos_token_id: default_eos(),
            pad_token_id: default_pad(),
            pretraining_tp: 1,
            torch_dtype: Some("float32".into()),
            seq_length: None,
            quantization_config: None,
        }
    }

    /// Named shapes of published BLOOM checkpoints (for benchmarks).
    pub fn named_shape(name: &str) -> Option<Self> {
        Some(match name {
            "tiny" => Self::with_shape(1024, 64, 2, 4),
            "bloom-560m" => Self::with_shape(250_880, 1024, 24, 16),
            "bloom-1b4" | "bloom-1b4-zh" => Self::with_shape(46_145, 2048, 24, 16),
            "bloom-1b1" => Self::with_shape(250_880, 1536, 24, 16),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_parse_to_the_same_config() {
        let old = r#"{"model_type":"bloom","vocab_size":10,"n_embed":8,"n_layer":2,"n_head":2}"#;
        let new =
            r#"{"model_type":"bloom","vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2}"#;
        let a = BloomConfig::from_json(old, "old").unwrap();
        let b = BloomConfig::from_json(new, "new").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.head_dim(), 4);
    }

    #[test]
    fn other_model_types_are_refused_by_name() {
        let err = BloomConfig::from_json(r#"{"model_type":"llama","vocab_size":10}"#, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.json") && err.contains("llama"), "{err}");
    }
}
