//! Putting LoRA adapters into a BLOOM model as peft's `get_peft_model` does: select modules by
//! `target_modules`, add adapters beside them, give `modules_to_save` trainable copies, set
//! the bias mode, and count parameters the way `print_trainable_parameters()` does.

use burn::module::Param;
use burn::tensor::Device;

use super::config::LoraConfig;
use super::layer::LoraAdapter;
use crate::error::{Error, Result};
use crate::model::names::{module_names, ModuleKind};
use crate::model::BloomForCausalLM;

/// What applying a config did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraReport {
    /// Modules that got a LoRA adapter, in model order.
    pub targeted: Vec<String>,
    /// Modules that got a trainable copy (`modules_to_save`).
    pub saved: Vec<String>,
    pub trainable_params: u64,
    pub all_params: u64,
}

impl LoraReport {
    /// The line peft's `print_trainable_parameters()` prints, number for number.
    pub fn trainable_line(&self) -> String {
        format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            commas(self.trainable_params),
            commas(self.all_params),
            100.0 * self.trainable_params as f64 / self.all_params as f64
        )
    }
}

/// `1234567` → `1,234,567` (Python's `{:,d}`).
pub fn commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Which modules `config` selects in a model with `num_layers` blocks, checked as peft checks
/// them: something must match, and only Linear layers can carry LoRA.
pub fn select_modules(config: &LoraConfig, num_layers: usize) -> Result<(Vec<String>, Vec<(String, ModuleKind)>)> {
    config.validate().map_err(Error::invalid)?;
    let names = module_names(num_layers);
    let targeted: Vec<&(String, ModuleKind)> = names.iter().filter(|(n, _)| config.targets(n)).collect();
    if targeted.is_empty() {
        let examples: Vec<&str> = names
            .iter()
            .filter(|(n, k)| *k == ModuleKind::Linear && n.starts_with("transformer.h.0."))
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(Error::invalid(format!(
            "target_modules {} matched no module of the model; its Linear layers are named like {}",
            describe_targets(config),
            examples.join(", ")
        )));
    }
    for (name, kind) in &targeted {
        if *kind != ModuleKind::Linear || name == "lm_head" {
            return Err(Error::invalid(format!(
                "target_modules selects `{name}`, a {kind:?} module; LoRA applies to the Linear layers \
                 query_key_value, dense, dense_h_to_4h and dense_4h_to_h"
            )));
        }
    }
    let saved: Vec<(String, ModuleKind)> = names.iter().filter(|(n, _)| config.saves(n)).cloned().collect();
    for (name, kind) in &saved {
        if matches!(kind, ModuleKind::Container | ModuleKind::Stateless) {
            return Err(Error::invalid(format!(
                "modules_to_save selects `{name}`, which has no weights of its own; name a Linear, LayerNorm or word_embeddings"
            )));
        }
    }
    if let Some(missing) = config.modules_to_save.iter().flatten().find(|m| !saved.iter().any(|(n, _)| n.ends_with(m.as_str()))) {
        return Err(Error::invalid(format!(
            "modules_to_save entry \"{missing}\" matches no module (e.g. word_embeddings, ln_f, lm_head, dense)"
        )));
    }
    Ok((targeted.into_iter().map(|(n, _)| n.clone()).collect(), saved))
}

fn describe_targets(config: &LoraConfig) -> String {
    serde_json::to_string(&config.target_modules).unwrap_or_default()
}

/// The sizes that parameter counts depend on.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
}

impl ModelShape {
    pub fn of_config(config: &crate::BloomConfig) -> Self {
        ModelShape { vocab: config.vocab_size, hidden: config.hidden_size, layers: config.n_layer }
    }

    pub fn of_model(model: &BloomForCausalLM) -> Self {
        let [vocab, hidden] = model.transformer.word_embeddings.weight.dims();
        ModelShape { vocab, hidden, layers: model.num_layers() }
    }

    /// `(out, in, has_bias)` of a Linear module, by name.
    fn linear(&self, name: &str) -> (u64, u64, bool) {
        let h = self.hidden as u64;
        match name.rsplit('.').next().unwrap_or_default() {
            "query_key_value" => (3 * h, h, true),
            "dense_h_to_4h" => (4 * h, h, true),
            "dense_4h_to_h" => (h, 4 * h, true),
            "lm_head" => (self.vocab as u64, h, false),
            _ => (h, h, true),
        }
    }

    /// Parameters of a module (`Linear`, `Embedding` or `LayerNorm`), by name and kind.
    fn params(&self, name: &str, kind: ModuleKind) -> u64 {
        match kind {
            ModuleKind::Linear => {
                let (out_f, in_f, bias) = self.linear(name);
                out_f * in_f + if bias { out_f } else { 0 }
            }
            ModuleKind::Embedding => self.vocab as u64 * self.hidden as u64,
            ModuleKind::LayerNorm => 2 * self.hidden as u64,
            _ => 0,
        }
    }

    /// Size of a module's bias (0 for modules without one).
    fn bias_params(&self, name: &str, kind: ModuleKind) -> u64 {
        match kind {
            ModuleKind::Linear => match self.linear(name) {
                (out_f, _, true) => out_f,
                _ => 0,
            },
            ModuleKind::LayerNorm => self.hidden as u64,
            _ => 0,
        }
    }

    pub fn base_params(&self) -> u64 {
        module_names(self.layers).iter().filter(|(n, _)| n != "lm_head").map(|(n, k)| self.params(n, *k)).sum()
    }
}

/// What `config` selects and how many parameters it trains, for a model of `shape`, counted as
/// peft's `get_nb_trainable_parameters` counts them: `all` includes the adapters and the
/// `modules_to_save` copies beside the frozen originals.
pub fn lora_report(config: &LoraConfig, shape: ModelShape) -> Result<LoraReport> {
    let (targeted, saved) = select_modules(config, shape.layers)?;
    let mut lora_params = 0u64;
    for name in &targeted {
        let (out_f, in_f, _) = shape.linear(name);
        let r = config.rank_and_scale(name).0 as u64;
        if r > out_f.min(in_f) {
            return Err(Error::invalid(format!(
                "LoRA rank r = {r} for `{name}` is larger than that layer's smaller side ({in_f} in, {out_f} out), which \
                 makes no sense for a low-rank update: lower r (or its rank_pattern entry)"
            )));
        }
        lora_params += r * (in_f + out_f);
    }
    let saved_params: u64 = saved.iter().map(|(n, k)| shape.params(n, *k)).sum();
    let is_saved = |n: &str| saved.iter().any(|(s, _)| s == n);
    let bias_params: u64 = module_names(shape.layers)
        .iter()
        .filter(|(n, k)| match config.bias.as_str() {
            "all" => !is_saved(n),
            "lora_only" => *k == ModuleKind::Linear && targeted.contains(n),
            _ => false,
        })
        .map(|(n, k)| shape.bias_params(n, *k))
        .sum();
    Ok(LoraReport {
        targeted,
        saved: saved.into_iter().map(|(n, _)| n).collect(),
        trainable_params: lora_params + saved_params + bias_params,
        all_params: shape.base_params() + lora_params + saved_params,
    })
}

/// Adds adapters (initialised per `init_lora_weights`) and trainable copies to `model`.
pub fn apply_lora(model: &mut BloomForCausalLM, config: &LoraConfig, device: &Device) -> Result<LoraReport> {
    let report = lora_report(config, ModelShape::of_model(model))?;
    for name in &report.targeted {
        let (r, scale) = config.rank_and_scale(name);
        let linear = model.linear_mut(name).expect("selected modules are Linear layers");
        let (in_f, out_f) = (linear.in_features(), linear.out_features());
        linear.lora = Some(LoraAdapter::new(in_f, out_f, r, scale, config.lora_dropout, config.init(), device));
    }
    for name in &report.saved {
        if let Some(e) = model.embedding_mut(name) {
            e.trainable_copy = Some(e.weight.trainable_copy());
        } else if name == "lm_head" {
            model.lm_head = Some(model.lm_head_weight().trainable_copy());
        } else if let Some(l) = model.linear_mut(name) {
            l.weight = trainable(l.weight.val());
            l.bias = l.bias.take().map(|b| trainable(b.val()));
        } else if let Some(n) = model.layer_norm_mut(name) {
            n.weight = trainable(n.weight.val());
            n.bias = trainable(n.bias.val());
        }
    }
    train_biases(model, config, &report.targeted, &report.saved);
    Ok(report)
}

/// Trained weights are f32 whatever the base weights are stored in.
fn trainable<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Param<burn::tensor::Tensor<D>> {
    Param::from_tensor(crate::model::precision::widened(tensor)).set_require_grad(true)
}

/// peft's `bias`: "all" trains every bias outside the saved copies, "lora_only" the biases of
/// adapted layers.
fn train_biases(model: &mut BloomForCausalLM, config: &LoraConfig, targeted: &[String], saved: &[String]) {
    let is_saved = |n: &str| saved.iter().any(|s| s == n);
    let linear_names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    for name in linear_names {
        let wanted = match config.bias.as_str() {
            "all" => !is_saved(&name),
            "lora_only" => targeted.contains(&name),
            _ => false,
        };
        if wanted {
            let l = model.linear_mut(&name).expect("linear");
            l.bias = l.bias.take().map(|b| trainable(b.val()));
        }
    }
    if config.bias == "all" {
        let norm_names: Vec<String> = model.layer_norms().into_iter().map(|(n, _)| n).collect();
        for name in norm_names.into_iter().filter(|n| !is_saved(n)) {
            let n = model.layer_norm_mut(&name).expect("layer norm");
            n.bias = trainable(n.bias.val());
        }
    }
}
