//! `LoraConfig`, whose JSON form is peft's `adapter_config.json`, and peft's rules for which
//! modules a config selects.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::layer::{lora_scale, LoraInit};
use crate::error::{Error, Result};
use crate::model::ModuleKind;

/// peft's `target_modules`: a JSON list of names, or a JSON string that is a regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "target_modules must be a list of module names or a regex string")]
pub enum TargetModules {
    Regex(String),
    Names(Vec<String>),
}

/// peft's `bias`: which biases train beside the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// None (peft's default).
    #[default]
    None,
    /// Every bias outside the `modules_to_save` copies (Linear layers and LayerNorms).
    All,
    /// The biases of the layers LoRA adapts.
    LoraOnly,
}

impl Bias {
    /// Whether the bias of a module of `kind` trains, given whether LoRA adapts it and whether
    /// `modules_to_save` copies it (a copy trains whole, bias included, either way).
    pub fn trains(self, kind: &ModuleKind, adapted: bool, saved: bool) -> bool {
        match self {
            Bias::None => false,
            Bias::All => !saved && kind.bias_params() > 0,
            Bias::LoraOnly => adapted && matches!(kind, ModuleKind::Linear { bias: true, .. }),
        }
    }
}

/// peft's `init_lora_weights`: `true`, `false` or a method name such as `"gaussian"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Flag(bool),
    Method(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: PartialEq> OneOrMany<T> {
    fn contains(&self, x: &T) -> bool {
        match self {
            OneOrMany::One(v) => v == x,
            OneOrMany::Many(v) => v.contains(x),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, OneOrMany::Many(v) if v.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha", serialize_with = "number")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub bias: Bias,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub layers_to_transform: Option<OneOrMany<usize>>,
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
    #[serde(default)]
    pub rank_pattern: Map<String, Value>,
    #[serde(default)]
    pub alpha_pattern: Map<String, Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    /// Every other field peft writes, kept as read so a saved config round-trips.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Flag(true)
}

/// Writes whole numbers as JSON integers, as Python writes `lora_alpha=16`.
fn number<S: serde::Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

/// Fields of peft's config whose non-default values ask for something ember does not do.
const UNSUPPORTED: [(&str, &str); 8] = [
    ("use_dora", "DoRA"),
    ("use_qalora", "QALoRA"),
    ("lora_bias", "lora_bias"),
    ("target_parameters", "target_parameters"),
    ("trainable_token_indices", "trainable_token_indices"),
    ("layer_replication", "layer_replication"),
    ("alora_invocation_tokens", "aLoRA"),
    ("megatron_config", "Megatron layers"),
];

impl Default for LoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl LoraConfig {
    /// Parses `adapter_config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let config: LoraConfig =
            serde_json::from_str(text).map_err(|e| Error::file(origin, format!("not a valid adapter config: {e}")))?;
        config.validate().map_err(|e| Error::file(origin, e))?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }

    /// Checks the values ember can honour; the message says which field is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!(
                "peft_type is \"{}\"; ember loads LoRA adapters (peft_type \"LORA\") only",
                self.peft_type
            ));
        }
        if let Some(task) = self.task_type.as_deref().filter(|t| *t != "CAUSAL_LM") {
            return Err(format!(
                "task_type is \"{task}\"; ember runs causal language models (task_type \"CAUSAL_LM\")"
            ));
        }
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return Err(format!("lora_alpha must be a finite number, got {}", self.lora_alpha));
        }
        for (key, value) in &self.rank_pattern {
            if value.as_u64().is_none_or(|r| r == 0) {
                return Err(format!("rank_pattern entry \"{key}\" is {value}; a rank is a whole number of at least 1"));
            }
        }
        for (key, value) in &self.alpha_pattern {
            if !value.as_f64().is_some_and(f64::is_finite) {
                return Err(format!("alpha_pattern entry \"{key}\" is {value}; an alpha is a finite number"));
            }
        }
        for (field, patterns) in [("rank_pattern", &self.rank_pattern), ("alpha_pattern", &self.alpha_pattern)] {
            for key in patterns.keys() {
                Regex::new(key).map_err(|e| format!("{field} key \"{key}\" is not a valid regex: {e}"))?;
            }
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!("lora_dropout must be in [0, 1), got {}", self.lora_dropout));
        }
        if let InitLoraWeights::Method(m) = &self.init_lora_weights {
            if m != "gaussian" {
                return Err(format!("init_lora_weights \"{m}\" is not supported (true, false or \"gaussian\")"));
            }
        }
        for (field, what) in UNSUPPORTED {
            match self.other.get(field) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    return Err(format!("{field} = {v}: {what} is not supported by ember; remove it or use plain LoRA"))
                }
            }
        }
        if self.target_modules.is_none() {
            return Err(format!(
                "target_modules is missing: name the layers to adapt (e.g. {:?})",
                crate::model::bloom::LORA_TARGET_MODULES
            ));
        }
        if let Some(TargetModules::Regex(re)) = &self.target_modules {
            Regex::new(re).map_err(|e| format!("target_modules is not a valid regex: {e}"))?;
        }
        Ok(())
    }

    pub fn init(&self) -> LoraInit {
        match &self.init_lora_weights {
            InitLoraWeights::Flag(true) => LoraInit::Kaiming,
            InitLoraWeights::Flag(false) => LoraInit::Random,
            InitLoraWeights::Method(_) => LoraInit::Gaussian,
        }
    }

    /// Whether peft's LoRA would wrap the module called `name` (peft's `check_target_module_exists`).
    pub fn targets(&self, name: &str) -> bool {
        if self.is_excluded(name) || self.is_saved_module_or_inside(name) {
            return false;
        }
        match &self.target_modules {
            None => false,
            Some(TargetModules::Regex(re)) => full_match(re, name),
            Some(TargetModules::Names(names)) if names.iter().any(|n| n == name) => true,
            Some(TargetModules::Names(names)) => {
                names.iter().any(|n| name.ends_with(&format!(".{n}"))) && self.in_selected_layers(name)
            }
        }
    }

    fn is_excluded(&self, name: &str) -> bool {
        match &self.exclude_modules {
            None => false,
            Some(TargetModules::Regex(re)) => full_match(re, name),
            Some(TargetModules::Names(names)) => names.iter().any(|n| n == name || name.ends_with(&format!(".{n}"))),
        }
    }

    /// peft never puts LoRA on a module (or inside one) that `modules_to_save` copies.
    fn is_saved_module_or_inside(&self, name: &str) -> bool {
        self.modules_to_save
            .iter()
            .flatten()
            .any(|m| Regex::new(&format!(r"^(?:|.*\.){m}(?:$|\..*)$")).is_ok_and(|re| re.is_match(name)))
    }

    /// `layers_to_transform` / `layers_pattern`: the layer index is the first number after a
    /// `<pattern>.` (or after any name, without a pattern).
    fn in_selected_layers(&self, name: &str) -> bool {
        let Some(layers) = self.layers_to_transform.as_ref().filter(|l| !l.is_empty()) else { return true };
        let patterns: Vec<String> = match &self.layers_pattern {
            None => vec![],
            Some(OneOrMany::One(p)) => vec![p.clone()],
            Some(OneOrMany::Many(p)) => p.clone(),
        };
        let index = if patterns.iter().all(String::is_empty) {
            capture_index(r"^.*?\.[^.]*\.(\d+)\.", name)
        } else {
            patterns.iter().find_map(|p| capture_index(&format!(r"^(?:.*?\.)?{p}\.(\d+)\."), name))
        };
        index.is_some_and(|i| layers.contains(&i))
    }

    /// Whether `name` is one of the `modules_to_save` (peft: the name ends with an entry).
    pub fn saves(&self, name: &str) -> bool {
        self.modules_to_save.iter().flatten().any(|m| name.ends_with(m.as_str()))
    }

    /// Rank and scale for the module `name`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_scale(&self, name: &str) -> (usize, f64) {
        // `validate` made every rank_pattern value a whole number ≥ 1.
        let r = pattern_value(&self.rank_pattern, name).map_or(self.r, |v| v as usize);
        let alpha = pattern_value(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        (r, lora_scale(alpha, r, self.use_rslora))
    }
}

/// The LoRA settings a user gives — flags, a config file, the page's fields — with what is
/// not given left `None`. [`LoraSettings::build`] fills the rest with peft's defaults, so they
/// are written once (`LoraConfig`'s serde defaults) for every front end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    /// Default: peft's target for the model family (BLOOM: `["query_key_value"]`).
    pub target_modules: Option<TargetModules>,
    pub r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub use_rslora: bool,
    pub modules_to_save: Option<Vec<String>>,
}

impl LoraSettings {
    /// The `LoraConfig` for a causal LM, validated; `base_model` is recorded as peft does.
    pub fn build(&self, base_model: Option<String>) -> Result<LoraConfig> {
        let defaults = LoraConfig::default();
        let target = self.target_modules.clone().unwrap_or_else(|| {
            TargetModules::Names(crate::model::bloom::LORA_TARGET_MODULES.iter().map(|s| s.to_string()).collect())
        });
        let config = LoraConfig {
            task_type: Some("CAUSAL_LM".into()),
            r: self.r.unwrap_or(defaults.r),
            lora_alpha: self.lora_alpha.unwrap_or(defaults.lora_alpha),
            lora_dropout: self.lora_dropout.unwrap_or(defaults.lora_dropout),
            target_modules: Some(target),
            modules_to_save: self.modules_to_save.clone().filter(|m| !m.is_empty()),
            use_rslora: self.use_rslora,
            base_model_name_or_path: base_model,
            ..defaults
        };
        config.validate().map_err(Error::invalid)?;
        Ok(config)
    }
}

fn full_match(pattern: &str, name: &str) -> bool {
    Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(name))
}

fn capture_index(pattern: &str, name: &str) -> Option<usize> {
    Regex::new(pattern).ok()?.captures(name)?.get(1)?.as_str().parse().ok()
}

/// peft's `get_pattern_key`: the first key `k` (in file order) with `(.*\.)?(k)$` matching `name`.
fn pattern_value(patterns: &Map<String, Value>, name: &str) -> Option<f64> {
    patterns.iter().find_map(|(k, v)| {
        Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).ok()?.is_match(name).then(|| v.as_f64()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> LoraConfig {
        LoraConfig::from_json(json, "test").unwrap()
    }

    #[test]
    fn the_recipe_regex_selects_layers_1_and_10_to_19() {
        let c = config(r#"{"target_modules": ".*\\.1.*query_key_value"}"#);
        let selected: Vec<usize> =
            (0..24).filter(|i| c.targets(&format!("transformer.h.{i}.self_attention.query_key_value"))).collect();
        assert_eq!(selected, vec![1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        assert!(!c.targets("transformer.h.1.self_attention.dense"));
    }

    #[test]
    fn list_entries_match_whole_name_segments_and_layer_selection_applies() {
        let c = config(r#"{"target_modules": ["dense"], "layers_to_transform": [0, 2]}"#);
        assert!(c.targets("transformer.h.0.self_attention.dense"));
        assert!(!c.targets("transformer.h.1.self_attention.dense"));
        assert!(!c.targets("transformer.h.0.mlp.dense_h_to_4h"));
    }

    #[test]
    fn patterns_override_rank_and_alpha() {
        let c = config(
            r#"{"target_modules": ["dense"], "r": 4, "lora_alpha": 8, "rank_pattern": {"h\\.1\\.self_attention\\.dense": 2}}"#,
        );
        assert_eq!(c.rank_and_scale("transformer.h.1.self_attention.dense"), (2, 4.0));
        assert_eq!(c.rank_and_scale("transformer.h.0.self_attention.dense"), (4, 2.0));
        let rs = config(r#"{"target_modules": ["dense"], "r": 4, "lora_alpha": 8, "use_rslora": true}"#);
        assert_eq!(rs.rank_and_scale("x.dense"), (4, 4.0));
    }

    #[test]
    fn unsupported_and_foreign_configs_are_refused() {
        let dora = LoraConfig::from_json(r#"{"target_modules": ["dense"], "use_dora": true}"#, "a.json")
            .unwrap_err()
            .to_string();
        assert!(dora.contains("a.json") && dora.contains("DoRA"), "{dora}");
        let ia3 = LoraConfig::from_json(r#"{"peft_type": "IA3", "target_modules": ["dense"]}"#, "a.json")
            .unwrap_err()
            .to_string();
        assert!(ia3.contains("peft_type is \"IA3\""), "{ia3}");
    }

    #[test]
    fn unknown_fields_round_trip() {
        let c = config(r#"{"target_modules": ["dense"], "lora_alpha": 16, "some_future_field": {"x": 1}}"#);
        let back: Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back["some_future_field"]["x"], 1);
        assert_eq!(back["lora_alpha"], 16);
    }
}
