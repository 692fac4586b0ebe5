//! Putting LoRA adapters into a model as peft's `get_peft_model` does: select modules by
//! `target_modules`, add adapters beside them, give `modules_to_save` trainable copies, set
//! the bias mode, and count parameters the way `print_trainable_parameters()` does. Everything
//! works on the model's list of named modules ([`crate::model::ModuleTree`]).

use burn::module::Param;
use burn::tensor::Device;

use super::config::LoraConfig;
use super::layer::LoraAdapter;
use crate::error::{Error, Result};
use crate::model::bloom::{LM_HEAD, SAVABLE_EXAMPLES};
use crate::model::{BloomForCausalLM, LayerMut, LinearWeight, ModelShape, ModuleKind, ModuleTree, NamedModule};
use crate::text::thousands;

/// What applying a config did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraReport {
    /// Modules that got a LoRA adapter, in model order.
    pub targeted: Vec<String>,
    /// Modules that got a trainable copy (`modules_to_save`).
    pub saved: Vec<String>,
    pub trainable_params: u64,
    /// Of those, the `modules_to_save` copies'.
    pub saved_params: u64,
    pub all_params: u64,
}

impl LoraReport {
    /// The line peft's `print_trainable_parameters()` prints, number for number.
    pub fn trainable_line(&self) -> String {
        format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable_params),
            thousands(self.all_params),
            100.0 * self.trainable_params as f64 / self.all_params as f64
        )
    }
}

/// The modules a config selects: those that get LoRA, and the `modules_to_save` copies.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub targeted: Vec<NamedModule>,
    pub saved: Vec<NamedModule>,
}

impl Selection {
    pub fn is_targeted(&self, name: &str) -> bool {
        self.targeted.iter().any(|m| m.name == name)
    }

    pub fn is_saved(&self, name: &str) -> bool {
        self.saved.iter().any(|m| m.name == name)
    }
}

/// Which of `modules` `config` selects, checked as peft checks them: something must match, only
/// Linear layers can carry LoRA, and every `modules_to_save` entry must name a module with
/// weights.
pub fn select_modules(config: &LoraConfig, modules: &[NamedModule]) -> Result<Selection> {
    config.validate().map_err(Error::invalid)?;
    let targeted: Vec<NamedModule> = modules.iter().filter(|m| config.targets(&m.name)).cloned().collect();
    // The first block's adaptable layers, to show what the names look like.
    let first_block: Vec<&str> =
        modules.iter().filter(|m| adaptable(m) && m.name.contains(".0.")).map(|m| m.name.as_str()).collect();
    if targeted.is_empty() {
        return Err(Error::invalid(format!(
            "target_modules {} matched no module of the model; its Linear layers are named like {}",
            serde_json::to_string(&config.target_modules).unwrap_or_default(),
            first_block.join(", ")
        )));
    }
    if let Some(m) = targeted.iter().find(|m| !adaptable(m)) {
        let short: Vec<&str> = first_block.iter().filter_map(|n| n.rsplit('.').next()).collect();
        return Err(Error::invalid(format!(
            "target_modules selects `{}`, a {} module; LoRA applies to the Linear layers {}",
            m.name,
            m.kind.class(),
            short.join(", ")
        )));
    }
    let saved: Vec<NamedModule> = modules.iter().filter(|m| config.saves(&m.name)).cloned().collect();
    if let Some(m) = saved.iter().find(|m| !m.kind.has_weights()) {
        return Err(Error::invalid(format!(
            "modules_to_save selects `{}`, which has no weights of its own; name a module with weights (e.g. {SAVABLE_EXAMPLES})",
            m.name
        )));
    }
    if let Some(missing) =
        config.modules_to_save.iter().flatten().find(|entry| !saved.iter().any(|m| m.name.ends_with(entry.as_str())))
    {
        return Err(Error::invalid(format!(
            "modules_to_save entry \"{missing}\" matches no module (e.g. {SAVABLE_EXAMPLES})"
        )));
    }
    Ok(Selection { targeted, saved })
}

/// Whether LoRA can go on a module: a Linear layer other than the language-model head.
fn adaptable(module: &NamedModule) -> bool {
    matches!(module.kind, ModuleKind::Linear { .. }) && module.name != LM_HEAD
}

/// What `config` selects and how many parameters it trains, for a model of `shape`, counted as
/// peft's `get_nb_trainable_parameters` counts them: `all` includes the adapters and the
/// `modules_to_save` copies beside the frozen originals. Every rank is checked against its
/// layer here, before anything is allocated.
pub fn lora_report(config: &LoraConfig, shape: ModelShape) -> Result<LoraReport> {
    let modules = shape.modules();
    let selection = select_modules(config, &modules)?;
    let mut lora_params = 0u64;
    for m in &selection.targeted {
        let ModuleKind::Linear { out_features, in_features, .. } = m.kind else { continue };
        let (r, (out_f, in_f)) = (config.rank_and_scale(&m.name).0 as u64, (out_features as u64, in_features as u64));
        if r > out_f.min(in_f) {
            return Err(Error::invalid(format!(
                "LoRA rank r = {r} for `{}` is larger than that layer's smaller side ({in_f} in, {out_f} out), which \
                 makes no sense for a low-rank update: lower r (or its rank_pattern entry)",
                m.name
            )));
        }
        lora_params += r * (in_f + out_f);
    }
    let saved_params: u64 = selection.saved.iter().map(|m| m.kind.params()).sum();
    let bias_params: u64 = modules
        .iter()
        .filter(|m| config.bias.trains(&m.kind, selection.is_targeted(&m.name), selection.is_saved(&m.name)))
        .map(|m| m.kind.bias_params())
        .sum();
    Ok(LoraReport {
        targeted: selection.targeted.into_iter().map(|m| m.name).collect(),
        saved: selection.saved.into_iter().map(|m| m.name).collect(),
        trainable_params: lora_params + saved_params + bias_params,
        saved_params,
        all_params: shape.base_params() + lora_params + saved_params,
    })
}

/// Adds adapters (initialised per `init_lora_weights`) and trainable copies to `model`.
pub fn apply_lora(model: &mut BloomForCausalLM, config: &LoraConfig, device: &Device) -> Result<LoraReport> {
    let report = lora_report(config, ModelShape::of_model(model))?;
    let selection = select_modules(config, &model.modules())?;
    if let Some(m) = selection.saved.iter().find(|m| model.linear(&m.name).is_some_and(|l| l.weight.is_quantized())) {
        let short = m.name.rsplit('.').next().unwrap_or(&m.name);
        return Err(Error::invalid(format!(
            "`modules_to_save` names `{}`, a 4-bit Linear layer, which cannot be trained (nor can it in peft); \
             keep it in full precision by adding \"{short}\" to `llm_int8_skip_modules`",
            m.name
        )));
    }
    // The head's copy is of the matrix it uses now (the word embeddings' when tied).
    let head_copy = selection.is_saved(LM_HEAD).then(|| model.lm_head_weight().trainable_copy());
    let mut head_copy = head_copy.into_iter();
    model.visit_mut(|module, layer| {
        let (adapted, saved) = (selection.is_targeted(&module.name), selection.is_saved(&module.name));
        match layer {
            LayerMut::Linear(linear) => {
                if adapted {
                    let (r, scale) = config.rank_and_scale(&module.name);
                    let (in_f, out_f) = (linear.in_features(), linear.out_features());
                    linear.lora =
                        Some(LoraAdapter::new(in_f, out_f, r, scale, config.lora_dropout, config.init(), device));
                }
                if saved {
                    linear.weight = LinearWeight::Dense(trainable(linear.weight.val()));
                }
                if saved || config.bias.trains(&module.kind, adapted, saved) {
                    linear.bias = linear.bias.take().map(|b| trainable(b.val()));
                }
            }
            LayerMut::LayerNorm(norm) => {
                if saved {
                    norm.weight = trainable(norm.weight.val());
                }
                if saved || config.bias.trains(&module.kind, adapted, saved) {
                    norm.bias = trainable(norm.bias.val());
                }
            }
            LayerMut::Embedding(embedding) if saved => {
                embedding.trainable_copy = Some(embedding.weight.trainable_copy())
            }
            LayerMut::Head(head) if saved => *head = head_copy.next(),
            LayerMut::Embedding(_) | LayerMut::Head(_) => {}
        }
    });
    Ok(report)
}

/// Trained weights are f32 whatever the base weights are stored in.
fn trainable<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Param<burn::tensor::Tensor<D>> {
    Param::from_tensor(crate::model::precision::widened(tensor)).set_require_grad(true)
}
