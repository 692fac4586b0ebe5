//! The 4-bit (QLoRA) flags, under transformers' `BitsAndBytesConfig` names, for every command
//! that loads a model (and `ember train`'s config files, which take the same names).

use ember_core::model::WeightDType;
use ember_core::quant::{QuantConfig, QuantType};

#[derive(clap::Args, serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct QuantArgs {
    /// Quantize the base model's Linear layers to 4 bits as bitsandbytes does (QLoRA); LoRA
    /// weights, gradients and optimizer state stay f32.
    #[arg(long)]
    pub load_in_4bit: bool,
    /// nf4 or fp4 (transformers' default: fp4; QLoRA uses nf4).
    #[arg(long)]
    pub bnb_4bit_quant_type: Option<QuantType>,
    /// Quantize the blocks' scales too (about 0.4 bits per weight less on disk).
    #[arg(long)]
    pub bnb_4bit_use_double_quant: bool,
    /// The precision of the matmuls with 4-bit weights: f32 (transformers' default), f16 or bf16.
    #[arg(long)]
    pub bnb_4bit_compute_dtype: Option<WeightDType>,
    /// Linear layers kept in full precision, by name (default: lm_head, as transformers).
    #[arg(long, value_delimiter = ',')]
    pub llm_int8_skip_modules: Option<Vec<String>>,
}

impl QuantArgs {
    /// The 4-bit settings asked for (`None` without `--load-in-4bit`); the other flags alone
    /// are an error, since they would change nothing.
    pub fn config(&self) -> anyhow::Result<Option<QuantConfig>> {
        if !self.load_in_4bit {
            let orphan = [
                ("--bnb-4bit-quant-type", self.bnb_4bit_quant_type.is_some()),
                ("--bnb-4bit-use-double-quant", self.bnb_4bit_use_double_quant),
                ("--bnb-4bit-compute-dtype", self.bnb_4bit_compute_dtype.is_some()),
                ("--llm-int8-skip-modules", self.llm_int8_skip_modules.is_some()),
            ];
            if let Some((flag, _)) = orphan.iter().find(|(_, given)| *given) {
                anyhow::bail!("{flag} applies to 4-bit loading: add --load-in-4bit (load_in_4bit = true)");
            }
            return Ok(None);
        }
        let defaults = QuantConfig::default();
        Ok(Some(QuantConfig {
            bnb_4bit_quant_type: self.bnb_4bit_quant_type.unwrap_or(defaults.bnb_4bit_quant_type),
            bnb_4bit_use_double_quant: self.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype: self.bnb_4bit_compute_dtype.unwrap_or(defaults.bnb_4bit_compute_dtype),
            llm_int8_skip_modules: self.llm_int8_skip_modules.clone(),
        }))
    }
}
