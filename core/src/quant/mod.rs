//! QLoRA: frozen base weights in bitsandbytes' 4-bit format (`BitsAndBytesConfig(load_in_4bit=True,
//! ...)`), quantized when a model is loaded or read as saved by transformers, so that LoRA trains
//! over a base a quarter the size of f16. The format and its exact arithmetic are in [`bnb`]; the
//! matmul with such a weight is `ember_shaders::linear_4bit`; on the device a weight is a
//! [`QuantizedWeight`] ([`weight`]); [`load`] quantizes a model as it loads and [`checkpoint`]
//! reads and writes transformers' 4-bit checkpoints.
//!
//! Which modules are quantized follows transformers: every Linear layer of the model except
//! those `llm_int8_skip_modules` names (default: `lm_head`, which BLOOM ties to the embeddings
//! anyway); embeddings, layer norms and biases keep their dtype. LoRA weights, `modules_to_save`
//! copies, gradients and optimizer state stay f32.

pub mod bnb;
pub mod checkpoint;
pub mod load;
pub mod weight;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use bnb::{Absmax, QuantType, Quantized};
pub use load::Quantizing;
pub use weight::QuantizedWeight;

use crate::error::{Error, Result};
use crate::model::WeightDType;

/// transformers' `BitsAndBytesConfig` for 4-bit loading, under its names and with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuantConfig {
    /// `nf4` or `fp4` (transformers' default).
    pub bnb_4bit_quant_type: QuantType,
    /// Quantize the blocks' absmax values too (saves about 0.4 bits per weight).
    pub bnb_4bit_use_double_quant: bool,
    /// The dtype the matmuls with 4-bit weights run in (transformers' default: float32).
    pub bnb_4bit_compute_dtype: WeightDType,
    /// Linear layers left unquantized, matched as transformers matches them (a substring of
    /// the module's name); `None`: transformers' default, `lm_head`.
    pub llm_int8_skip_modules: Option<Vec<String>>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            bnb_4bit_quant_type: QuantType::Fp4,
            bnb_4bit_use_double_quant: false,
            bnb_4bit_compute_dtype: WeightDType::F32,
            llm_int8_skip_modules: None,
        }
    }
}

impl QuantConfig {
    /// Whether the Linear layer called `name` is quantized.
    pub fn quantizes(&self, name: &str) -> bool {
        let default = [crate::model::bloom::LM_HEAD.to_owned()];
        let skipped = self.llm_int8_skip_modules.as_deref().unwrap_or(&default);
        !skipped.iter().any(|s| name.contains(s.as_str()))
    }

    /// The 4-bit settings of a model saved by transformers already quantized, from config.json's
    /// `quantization_config` (`None` when the model is not quantized).
    pub fn of_checkpoint(config_json: &Value, origin: &str) -> Result<Option<Self>> {
        let Some(q) = config_json.get("quantization_config").filter(|q| !q.is_null()) else { return Ok(None) };
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("bitsandbytes");
        let four_bit = q.get("load_in_4bit").and_then(Value::as_bool).unwrap_or(false);
        if method != "bitsandbytes" || !four_bit {
            return Err(Error::file(
                origin,
                format!(
                    "quantization_config is {method}{}; ember reads bitsandbytes 4-bit models only (load the full-precision model and quantize with load_in_4bit)",
                    if four_bit { "" } else { " without load_in_4bit" }
                ),
            ));
        }
        let storage = q.get("bnb_4bit_quant_storage").and_then(Value::as_str).unwrap_or("uint8");
        if storage != "uint8" {
            return Err(Error::file(
                origin,
                format!("bnb_4bit_quant_storage is {storage}; ember reads uint8 storage only"),
            ));
        }
        let config: QuantConfig = serde_json::from_value(q.clone())
            .map_err(|e| Error::file(origin, format!("quantization_config is not a bitsandbytes 4-bit config: {e}")))?;
        Ok(Some(config))
    }

    /// `quantization_config` as transformers writes it into a 4-bit model's config.json.
    pub fn transformers_json(&self) -> Value {
        serde_json::json!({
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": self.bnb_4bit_compute_dtype.torch_name(),
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type.to_string(),
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": self.llm_int8_skip_modules,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes",
        })
    }

    /// The bytes a `[out, in]` weight takes in this format.
    pub fn weight_bytes(&self, out_features: usize, in_features: usize) -> u64 {
        let n = out_features as u64 * in_features as u64;
        let blocks = n.div_ceil(bnb::BLOCKSIZE as u64);
        let absmax = if self.bnb_4bit_use_double_quant {
            blocks + 4 * blocks.div_ceil(bnb::NESTED_BLOCKSIZE as u64) + 4 + 4 * 256
        } else {
            4 * blocks
        };
        n.div_ceil(2) + absmax
    }
}
