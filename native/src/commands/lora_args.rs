//! The LoRA flags shared by `ember info` and `ember train`, turned into a peft `LoraConfig`.

use ember_core::lora::{LoraConfig, TargetModules};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoraArgs {
    /// Modules to adapt, by name (peft list semantics: a full name, or its last segments).
    #[arg(long, value_delimiter = ',', conflicts_with = "target_modules_regex")]
    pub target_modules: Option<Vec<String>>,
    /// Modules to adapt, by a regex that must match the whole module name (peft string semantics).
    #[arg(long)]
    pub target_modules_regex: Option<String>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 8.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Scale by alpha / sqrt(r) (rsLoRA).
    #[arg(long)]
    pub use_rslora: bool,
    /// Modules trained in full and saved with the adapter (e.g. word_embeddings).
    #[arg(long, value_delimiter = ',')]
    pub modules_to_save: Option<Vec<String>>,
}

impl LoraArgs {
    /// The config these flags describe, or `None` when no target was given.
    pub fn config(&self, base_model: Option<String>) -> Option<LoraConfig> {
        let target_modules = match (&self.target_modules, &self.target_modules_regex) {
            (Some(names), _) => TargetModules::Names(names.clone()),
            (None, Some(re)) => TargetModules::Regex(re.clone()),
            (None, None) => return None,
        };
        Some(LoraConfig {
            task_type: Some("CAUSAL_LM".into()),
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: Some(target_modules),
            modules_to_save: self.modules_to_save.clone(),
            use_rslora: self.use_rslora,
            base_model_name_or_path: base_model,
            ..LoraConfig::default()
        })
    }
}
