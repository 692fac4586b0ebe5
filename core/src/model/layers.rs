//! The three layer kinds BLOOM is made of, with Hugging Face's parameter names (`weight`,
//! `bias`) and PyTorch's layouts, so a checkpoint tensor maps onto a field unchanged.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor};

use ember_shaders::Kernels;

use super::precision::widened;
use super::vocab::{rows_per_block, VocabMatrix};
use super::{Scope, WeightSource};
use crate::lora::LoraAdapter;
use crate::quant::QuantizedWeight;
use crate::Result;

/// A Linear layer's weight `[out_features, in_features]`: full precision (f32, f16 or bf16),
/// or 4-bit (QLoRA's frozen base, [`crate::quant`]).
// A model has a few hundred of these, so the dense variant's unused bytes do not matter; boxing
// the 4-bit one would need a Module impl for Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LinearWeight {
    Dense(Param<Tensor<2>>),
    Quantized(QuantizedWeight),
}

impl LinearWeight {
    /// A frozen full-precision weight.
    pub fn dense(weight: Tensor<2>) -> Self {
        LinearWeight::Dense(frozen(weight))
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            LinearWeight::Dense(w) => w.dims(),
            LinearWeight::Quantized(q) => [q.out_features, q.in_features],
        }
    }

    /// The weight's values: as stored, or dequantized to f32 (bitsandbytes' values exactly).
    pub fn val(&self) -> Tensor<2> {
        match self {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Quantized(q) => q.dequantize(),
        }
    }

    /// The parameter of a full-precision weight.
    pub fn dense_mut(&mut self) -> Option<&mut Param<Tensor<2>>> {
        match self {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Quantized(_) => None,
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, LinearWeight::Quantized(_))
    }
}

/// `torch.nn.Linear`: `y = x Wᵀ + b`, with `weight` stored `[out_features, in_features]`,
/// plus an optional LoRA adapter beside it.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Linear { weight: LinearWeight::dense(weight), bias: bias.map(frozen), lora: None }
    }

    /// `weight` `[out, in]` and `bias` `[out]` from the module's scope.
    pub fn load<W: WeightSource>(s: &mut Scope<W>, out_features: usize, in_features: usize) -> Result<Self> {
        let weight = s.linear_weight("weight", [out_features, in_features])?;
        Ok(Linear { weight, bias: Some(frozen(s.tensor("bias", [out_features])?)), lora: None })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // As one 2-D matmul over all rows: a batched matmul would broadcast the weight.
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat: Tensor<2> = x.reshape([rows, dims[D - 1]]);
        let bias = self.bias.as_ref().map(|b| b.val());
        let mut y = match &self.weight {
            LinearWeight::Dense(w) => frozen_linear(flat.clone(), w.val(), bias),
            LinearWeight::Quantized(q) => with_bias(q.forward(flat.clone()), bias),
        };
        if let Some(lora) = self.lora.as_ref().filter(|l| !l.merged) {
            y = y + lora.delta(flat);
        }
        dims[D - 1] = self.out_features();
        y.reshape(dims)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// `x Wᵀ + b` in the weight's stored precision, as PyTorch's autocast runs a matmul
/// ([`ember_shaders::weight_matmul`]).
pub fn frozen_linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    with_bias(ember_shaders::weight_matmul(x, weight), bias)
}

/// `y + b` over the rows of `y`, the bias widened to f32.
fn with_bias(y: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    match bias {
        Some(b) => y + widened(b).unsqueeze(),
        None => y,
    }
}

/// `torch.nn.LayerNorm` over the last dimension (biased variance, `eps` inside the root).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Self {
        LayerNorm { weight: frozen(weight), bias: frozen(bias), eps }
    }

    /// `weight` and `bias` `[width]` from the module's scope.
    pub fn load<W: WeightSource>(s: &mut Scope<W>, width: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm::new(s.tensor("weight", [width])?, s.tensor("bias", [width])?, eps))
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>, kernels: &Kernels) -> Tensor<D> {
        kernels.layer_norm(x, widened(self.weight.val()), widened(self.bias.val()), self.eps)
    }
}

/// `torch.nn.Embedding`: rows of `weight` (`[num_embeddings, dim]`) picked by token id.
/// Listed in `modules_to_save`, it gets a trainable copy that replaces `weight` in the forward
/// pass, as peft's `ModulesToSaveWrapper` does (the frozen original stays, as in peft).
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: VocabMatrix,
    pub trainable_copy: Option<VocabMatrix>,
}

impl Embedding {
    pub fn new(weight: VocabMatrix) -> Self {
        Embedding { weight, trainable_copy: None }
    }

    /// `weight` `[rows, width]` from the module's scope, in blocks ([`super::vocab`]).
    pub fn load<W: WeightSource>(s: &mut Scope<W>, rows: usize, width: usize) -> Result<Self> {
        Ok(Embedding::new(s.vocab_matrix("weight", [rows, width], rows_per_block(width))?))
    }

    /// The weight the forward pass uses: the trainable copy if there is one.
    pub fn active_weight(&self) -> &VocabMatrix {
        self.trainable_copy.as_ref().unwrap_or(&self.weight)
    }

    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.active_weight().rows(ids)
    }
}

/// Base-model weights are never trained (LoRA trains adapters beside them), so they are created
/// without gradient tracking: no gradient and no optimizer state is ever allocated for them.
pub fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}
