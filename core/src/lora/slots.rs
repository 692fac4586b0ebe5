//! Every tensor an adapter file holds, named as peft names it, with access to the model
//! parameter behind it. Saving reads through these slots and loading writes through them, so
//! the two can never disagree on a key.

use burn::module::Param;
use burn::tensor::{Gradients, Tensor};

use super::config::LoraConfig;
use super::inject::select_modules;
use crate::error::Result;
use crate::model::bloom::{block_of, LM_HEAD, WORD_EMBEDDINGS};
use crate::model::{BloomForCausalLM, ModuleKind, ModuleTree, VocabMatrix};

/// peft prefixes every key with the wrapper path of the base model.
pub const PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    LoraA(String),
    LoraB(String),
    EmbeddingCopy(String),
    LmHead,
    LinearWeight(String),
    /// `wrapped`: the layer carries LoRA, so peft calls its bias `base_layer.bias`.
    LinearBias {
        name: String,
        wrapped: bool,
    },
    NormWeight(String),
    NormBias(String),
}

impl Slot {
    /// The module the parameter belongs to (`lm_head` for the head's copy).
    pub fn module(&self) -> &str {
        match self {
            Slot::LoraA(n) | Slot::LoraB(n) | Slot::EmbeddingCopy(n) | Slot::LinearWeight(n) => n,
            Slot::NormWeight(n) | Slot::NormBias(n) | Slot::LinearBias { name: n, .. } => n,
            Slot::LmHead => LM_HEAD,
        }
    }

    /// Where in the forward pass the parameter acts, as gradient checkpointing stages it: 0 for
    /// the embeddings, `i + 1` for block `i`, `None` for the final norm and the head.
    pub fn stage(&self) -> Option<usize> {
        let module = self.module();
        if let Some(block) = block_of(module) {
            return Some(block + 1);
        }
        module.starts_with(WORD_EMBEDDINGS).then_some(0)
    }

    pub fn key(&self) -> String {
        let rest = match self {
            Slot::LoraA(n) => format!("{n}.lora_A.weight"),
            Slot::LoraB(n) => format!("{n}.lora_B.weight"),
            Slot::EmbeddingCopy(n) | Slot::LinearWeight(n) | Slot::NormWeight(n) => format!("{n}.weight"),
            Slot::LmHead => format!("{LM_HEAD}.weight"),
            Slot::LinearBias { name, wrapped: true } => format!("{name}.base_layer.bias"),
            Slot::LinearBias { name, wrapped: false } | Slot::NormBias(name) => format!("{name}.bias"),
        };
        format!("{PREFIX}{rest}")
    }

    /// The current value, flattened, with its shape.
    pub fn read(&self, model: &BloomForCausalLM) -> (Vec<usize>, Tensor<1>) {
        let flat2 = |t: Tensor<2>| {
            let dims = t.dims();
            (dims.to_vec(), t.reshape([dims[0] * dims[1]]))
        };
        let flat1 = |t: Tensor<1>| (t.dims().to_vec(), t);
        let linear = |n: &str| model.linear(n).expect("linear");
        let norm = |n: &str| model.layer_norm(n).expect("layer norm");
        let adapter = |n: &str| linear(n).lora.as_ref().expect("LoRA layer exists");
        match self {
            Slot::LoraA(n) => flat2(adapter(n).lora_a.val()),
            Slot::LoraB(n) => flat2(adapter(n).lora_b.val()),
            Slot::EmbeddingCopy(_) => flat2(model.transformer.word_embeddings.active_weight().full()),
            Slot::LmHead => flat2(model.lm_head_weight().full()),
            Slot::LinearWeight(n) => flat2(linear(n).weight.val()),
            Slot::LinearBias { name, .. } => flat1(linear(name).bias.as_ref().expect("bias").val()),
            Slot::NormWeight(n) => flat1(norm(n).weight.val()),
            Slot::NormBias(n) => flat1(norm(n).bias.val()),
        }
    }

    /// The gradient of this slot's parameter in `grads`, flattened.
    pub fn grad(&self, model: &BloomForCausalLM, grads: &Gradients) -> Option<Tensor<1>> {
        let linear = |n: &str| model.linear(n).expect("linear");
        let norm = |n: &str| model.layer_norm(n).expect("layer norm");
        let adapter = |n: &str| linear(n).lora.as_ref().expect("LoRA layer exists");
        let flatten = |g: Tensor<2>| {
            let [a, b] = g.dims();
            g.reshape([a * b])
        };
        let flat2 = |t: Tensor<2>| t.grad(grads).map(flatten);
        match self {
            Slot::LoraA(n) => flat2(adapter(n).lora_a.val()),
            Slot::LoraB(n) => flat2(adapter(n).lora_b.val()),
            Slot::EmbeddingCopy(_) => model.transformer.word_embeddings.active_weight().grad(grads).map(flatten),
            Slot::LmHead => model.lm_head_weight().grad(grads).map(flatten),
            Slot::LinearWeight(n) => flat2(linear(n).weight.val()),
            Slot::LinearBias { name, .. } => linear(name).bias.as_ref().expect("bias").val().grad(grads),
            Slot::NormWeight(n) => norm(n).weight.val().grad(grads),
            Slot::NormBias(n) => norm(n).bias.val().grad(grads),
        }
    }

    /// Whether transformers' Trainer applies weight decay here: not to biases or LayerNorm weights.
    pub fn decays(&self) -> bool {
        !matches!(self, Slot::LinearBias { .. } | Slot::NormWeight(_) | Slot::NormBias(_))
    }

    /// Expected shape of the value in `model`.
    pub fn shape(&self, model: &BloomForCausalLM) -> Vec<usize> {
        self.shape_and_leaf(model).0
    }

    /// The shape, and a tensor in the same graph context as the value (autodiff, trainability,
    /// checkpointing strategy): for a vocabulary matrix its first block, so the blocks are not
    /// joined just to learn these.
    fn shape_and_leaf(&self, model: &BloomForCausalLM) -> (Vec<usize>, Tensor<1>) {
        let first_block = |m: &VocabMatrix| {
            let block = m.blocks[0].val();
            let [a, b] = block.dims();
            (m.dims().to_vec(), block.reshape([a * b]))
        };
        match self {
            Slot::EmbeddingCopy(_) => first_block(model.transformer.word_embeddings.active_weight()),
            Slot::LmHead => first_block(model.lm_head_weight()),
            _ => self.read(model),
        }
    }

    /// Replaces the value; `value` has the slot's shape, flattened. Trainability is kept, and on
    /// a training (autodiff) model the new value becomes a fresh leaf of the graph.
    pub fn write(&self, model: &mut BloomForCausalLM, value: Tensor<1>) {
        let (shape, old) = self.shape_and_leaf(model);
        // The new leaf joins the old one's graph context, gradient-checkpointing strategy included.
        let value = match old.gradient_checkpointing_strategy() {
            Some(strategy) => {
                let value = value.autodiff().with_gradient_checkpointing_strategy(strategy);
                if old.is_require_grad() {
                    value.require_grad()
                } else {
                    value
                }
            }
            None => value,
        };
        let as2 = |v: Tensor<1>| -> Tensor<2> { v.reshape([shape[0], shape[1]]) };
        let set2 =
            |p: &mut Param<Tensor<2>>, v: Tensor<2>| *p = Param::from_tensor(v).set_require_grad(p.is_require_grad());
        let set1 =
            |p: &mut Param<Tensor<1>>, v: Tensor<1>| *p = Param::from_tensor(v).set_require_grad(p.is_require_grad());
        match self {
            Slot::LoraA(n) => set2(&mut lora(model, n).lora_a, as2(value)),
            Slot::LoraB(n) => set2(&mut lora(model, n).lora_b, as2(value)),
            Slot::EmbeddingCopy(_) => {
                model.transformer.word_embeddings.trainable_copy.as_mut().expect("copy exists").set(as2(value))
            }
            Slot::LmHead => model.lm_head.as_mut().expect("lm_head copy exists").set(as2(value)),
            Slot::LinearWeight(n) => {
                let weight = model.linear_mut(n).expect("linear").weight.dense_mut();
                set2(weight.expect("modules_to_save copies are full precision"), as2(value))
            }
            Slot::LinearBias { name, .. } => {
                set1(model.linear_mut(name).expect("linear").bias.as_mut().expect("bias"), value)
            }
            Slot::NormWeight(n) => set1(&mut model.layer_norm_mut(n).expect("norm").weight, value),
            Slot::NormBias(n) => set1(&mut model.layer_norm_mut(n).expect("norm").bias, value),
        }
    }
}

fn lora<'m>(model: &'m mut BloomForCausalLM, name: &str) -> &'m mut super::LoraAdapter {
    model.linear_mut(name).and_then(|l| l.lora.as_mut()).expect("LoRA layer exists")
}

/// The slots of an adapter for `config` on `model`, in the order peft's state dict lists them.
pub fn adapter_slots(config: &LoraConfig, model: &BloomForCausalLM) -> Result<Vec<Slot>> {
    let modules = model.modules();
    let selection = select_modules(config, &modules)?;
    let mut slots = Vec::new();
    for m in &selection.targeted {
        slots.push(Slot::LoraA(m.name.clone()));
        slots.push(Slot::LoraB(m.name.clone()));
    }
    for m in &selection.saved {
        let name = m.name.clone();
        match m.kind {
            ModuleKind::Embedding { .. } => slots.push(Slot::EmbeddingCopy(name)),
            ModuleKind::Linear { .. } if name == LM_HEAD => slots.push(Slot::LmHead),
            ModuleKind::Linear { .. } => {
                slots.extend([Slot::LinearWeight(name.clone()), Slot::LinearBias { name, wrapped: false }])
            }
            ModuleKind::LayerNorm { .. } => slots.extend([Slot::NormWeight(name.clone()), Slot::NormBias(name)]),
            ModuleKind::Container | ModuleKind::Stateless => {}
        }
    }
    for m in &modules {
        let (adapted, saved) = (selection.is_targeted(&m.name), selection.is_saved(&m.name));
        if config.bias.trains(&m.kind, adapted, saved) {
            match m.kind {
                ModuleKind::Linear { .. } => slots.push(Slot::LinearBias { name: m.name.clone(), wrapped: adapted }),
                ModuleKind::LayerNorm { .. } => slots.push(Slot::NormBias(m.name.clone())),
                _ => {}
            }
        }
    }
    slots.sort_by_key(Slot::key);
    Ok(slots)
}
