//! A model's named modules, as PyTorch's `named_modules()` lists them, and access to the loaded
//! layers by those names. A model family gives its list once (BLOOM: `bloom.rs`,
//! [`ModuleTree`]); what LoRA targets, what `modules_to_save` copies, parameter counts and
//! merging are all derived from it.

use super::layers::{Embedding, LayerNorm, Linear};
use super::vocab::VocabMatrix;

/// What a named module is, with the sizes its parameters have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `nn.Linear`: `weight` `[out_features, in_features]`, and `bias` `[out_features]` if any.
    Linear { out_features: usize, in_features: usize, bias: bool },
    /// `nn.Embedding`: `weight` `[rows, width]`.
    Embedding { rows: usize, width: usize },
    /// `nn.LayerNorm`: `weight` and `bias` `[width]`.
    LayerNorm { width: usize },
    /// A module holding other modules (`transformer`, `transformer.h.3`, ...).
    Container,
    /// Dropout, activation: no weights.
    Stateless,
}

impl ModuleKind {
    /// Parameters of the module itself.
    pub fn params(&self) -> u64 {
        match *self {
            ModuleKind::Linear { out_features, in_features, bias } => {
                out_features as u64 * in_features as u64 + if bias { out_features as u64 } else { 0 }
            }
            ModuleKind::Embedding { rows, width } => rows as u64 * width as u64,
            ModuleKind::LayerNorm { width } => 2 * width as u64,
            ModuleKind::Container | ModuleKind::Stateless => 0,
        }
    }

    /// Parameters of its bias (0 without one).
    pub fn bias_params(&self) -> u64 {
        match *self {
            ModuleKind::Linear { out_features, bias: true, .. } => out_features as u64,
            ModuleKind::LayerNorm { width } => width as u64,
            _ => 0,
        }
    }

    /// Whether it holds weights of its own.
    pub fn has_weights(&self) -> bool {
        !matches!(self, ModuleKind::Container | ModuleKind::Stateless)
    }

    /// PyTorch's class name, for messages.
    pub fn class(&self) -> &'static str {
        match self {
            ModuleKind::Linear { .. } => "Linear",
            ModuleKind::Embedding { .. } => "Embedding",
            ModuleKind::LayerNorm { .. } => "LayerNorm",
            ModuleKind::Container => "container",
            ModuleKind::Stateless => "weightless",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedModule {
    pub name: String,
    pub kind: ModuleKind,
}

/// A layer with weights of a loaded model.
pub enum Layer<'a> {
    Linear(&'a Linear),
    LayerNorm(&'a LayerNorm),
    Embedding(&'a Embedding),
    /// The language-model head's matrix (the word embeddings' when tied).
    Head(&'a VocabMatrix),
}

/// A layer with weights, to change.
pub enum LayerMut<'a> {
    Linear(&'a mut Linear),
    LayerNorm(&'a mut LayerNorm),
    Embedding(&'a mut Embedding),
    /// The untied head matrix, if any (`None`: the head is the word embeddings').
    Head(&'a mut Option<VocabMatrix>),
}

/// A model family's module tree: its list of named modules, and its layers with weights in the
/// same order. Everything else is derived here.
pub trait ModuleTree {
    /// Every named module in `named_modules()` order (the root, named "", left out).
    fn modules(&self) -> Vec<NamedModule>;

    /// The layers of the modules that have weights, in [`Self::modules`] order.
    fn layers(&self) -> Vec<Layer<'_>>;

    /// The same, to change.
    fn layers_mut(&mut self) -> Vec<LayerMut<'_>>;

    /// The modules with weights, with their layers.
    fn named_layers(&self) -> Vec<(NamedModule, Layer<'_>)> {
        self.modules().into_iter().filter(|m| m.kind.has_weights()).zip(self.layers()).collect()
    }

    /// The layer called `name`.
    fn layer(&self, name: &str) -> Option<Layer<'_>> {
        self.named_layers().into_iter().find(|(m, _)| m.name == name).map(|(_, l)| l)
    }

    /// The layer called `name`, to change.
    fn layer_mut(&mut self, name: &str) -> Option<LayerMut<'_>> {
        let index = self.modules().into_iter().filter(|m| m.kind.has_weights()).position(|m| m.name == name)?;
        self.layers_mut().into_iter().nth(index)
    }

    /// Calls `f` with every module with weights and its layer, to change.
    fn visit_mut(&mut self, mut f: impl FnMut(&NamedModule, LayerMut<'_>)) {
        let names: Vec<NamedModule> = self.modules().into_iter().filter(|m| m.kind.has_weights()).collect();
        for (module, layer) in names.iter().zip(self.layers_mut()) {
            f(module, layer);
        }
    }

    /// Whether any Linear layer holds a 4-bit weight (QLoRA).
    fn has_4bit_weights(&self) -> bool {
        self.layers().iter().any(|l| matches!(l, Layer::Linear(linear) if linear.weight.is_quantized()))
    }

    /// The Linear layer called `name`.
    fn linear(&self, name: &str) -> Option<&Linear> {
        match self.layer(name)? {
            Layer::Linear(l) => Some(l),
            _ => None,
        }
    }

    /// The Linear layer called `name`, to change.
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        match self.layer_mut(name)? {
            LayerMut::Linear(l) => Some(l),
            _ => None,
        }
    }

    /// The LayerNorm called `name`.
    fn layer_norm(&self, name: &str) -> Option<&LayerNorm> {
        match self.layer(name)? {
            Layer::LayerNorm(n) => Some(n),
            _ => None,
        }
    }

    /// The LayerNorm called `name`, to change.
    fn layer_norm_mut(&mut self, name: &str) -> Option<&mut LayerNorm> {
        match self.layer_mut(name)? {
            LayerMut::LayerNorm(n) => Some(n),
            _ => None,
        }
    }
}
