//! The LoRA flags of `ember info` and `ember train`, and the same settings in `ember train`'s
//! config files (where `target_modules` may also be a regex string, as in peft). Unset ones
//! take peft's defaults when the config is built ([`LoraSettings::build`]).

use ember_core::lora::{LoraSettings, TargetModules};

#[derive(clap::Args, serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct LoraArgs {
    /// Modules to adapt, by name, comma-separated (peft list semantics: a full name, or its
    /// last segments; default: query_key_value, as peft does for BLOOM).
    #[arg(long, value_parser = module_names, conflicts_with = "target_modules_regex")]
    pub target_modules: Option<TargetModules>,
    /// Modules to adapt, by a regex that must match the whole module name (peft string semantics).
    #[arg(long)]
    pub target_modules_regex: Option<String>,
    /// LoRA rank (default 8, as peft's).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / r (default 8).
    #[arg(long, value_parser = finite)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter's input while training (default 0).
    #[arg(long, value_parser = finite)]
    pub lora_dropout: Option<f64>,
    /// Scale by alpha / sqrt(r) (rsLoRA).
    #[arg(long)]
    pub use_rslora: bool,
    /// Modules trained in full and saved with the adapter (e.g. word_embeddings).
    #[arg(long, value_delimiter = ',')]
    pub modules_to_save: Option<Vec<String>>,
}

impl LoraArgs {
    /// The settings given. A regex wins over names: flags cannot give both, and in a merged
    /// config the regex key exists only to be set.
    pub fn settings(&self) -> LoraSettings {
        let target_modules = match (&self.target_modules_regex, &self.target_modules) {
            (Some(re), _) => Some(TargetModules::Regex(re.clone())),
            (None, names) => names.clone(),
        };
        LoraSettings {
            target_modules,
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            modules_to_save: self.modules_to_save.clone(),
        }
    }
}

/// `--target-modules a,b`: names, never a regex (that is `--target-modules-regex`).
fn module_names(text: &str) -> Result<TargetModules, String> {
    Ok(TargetModules::Names(text.split(',').map(str::to_string).collect()))
}

/// A flag's number, refused unless finite (JSON, which the settings pass through, has no
/// infinity or NaN, and no setting means one).
pub fn finite(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err("must be a finite number".into())
    }
}
