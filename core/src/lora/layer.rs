//! LoRA (Hu et al., 2021) on one linear layer, as peft computes it:
//!
//! ```text
//! y = W x + b + scale · B (A (dropout(x)))      scale = alpha / r   (rsLoRA: alpha / √r)
//! ```
//!
//! `W` and `b` stay frozen; only `A` (`[r, in]`, peft's `lora_A.weight`) and `B` (`[out, r]`,
//! `lora_B.weight`) train. `B` starts at zero, so training starts from the base model exactly.
//! Merging folds `scale · B A` into `W`, after which inference costs nothing extra.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Distribution, Tensor};

/// How `A` and `B` start (peft's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// `A` kaiming-uniform (a = √5, i.e. U(±1/√in)), `B` zero — peft's default.
    Kaiming,
    /// `A` ~ N(0, 1/r), `B` zero.
    Gaussian,
    /// Both as a fresh `nn.Linear` (kaiming-uniform): the adapter changes the output at once.
    Random,
}

#[derive(Module, Debug)]
pub struct LoraAdapter {
    pub lora_a: Param<Tensor<2>>,
    pub lora_b: Param<Tensor<2>>,
    pub scale: f64,
    pub dropout: Dropout,
    /// Set while `scale · B A` is folded into the base weight.
    pub merged: bool,
    /// Drop inputs off the autodiff device too (dropout only drops where a backward
    /// pass can follow): the first, graph-free pass of gradient checkpointing must draw the masks
    /// its recomputation will ([`crate::train::recompute`]).
    #[module(skip)]
    pub drop_without_autodiff: bool,
}

impl LoraAdapter {
    pub fn new(
        in_features: usize,
        out_features: usize,
        r: usize,
        scale: f64,
        dropout: f64,
        init: LoraInit,
        device: &Device,
    ) -> Self {
        let uniform = |fan_in: usize, shape: [usize; 2]| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
        };
        let lora_a = match init {
            LoraInit::Gaussian => Tensor::random([r, in_features], Distribution::Normal(0.0, 1.0 / r as f64), device),
            _ => uniform(in_features, [r, in_features]),
        };
        let lora_b = match init {
            LoraInit::Random => uniform(r, [out_features, r]),
            _ => Tensor::zeros([out_features, r], device),
        };
        Self::from_weights(lora_a, lora_b, scale, dropout)
    }

    pub fn from_weights(lora_a: Tensor<2>, lora_b: Tensor<2>, scale: f64, dropout: f64) -> Self {
        LoraAdapter {
            lora_a: Param::from_tensor(lora_a).set_require_grad(true),
            lora_b: Param::from_tensor(lora_b).set_require_grad(true),
            scale,
            dropout: DropoutConfig::new(dropout).init(),
            merged: false,
            drop_without_autodiff: false,
        }
    }

    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `scale · B (A (dropout(x)))` for `x`: `[rows, in]`.
    pub fn delta(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.dropped(x);
        // The scale on the `[rows, r]` product rather than the `[rows, out]` one: a pass over
        // `r` columns instead of `out`, forward and backward (exact for peft's default
        // power-of-two scales, one rounding apart otherwise).
        let down = ember_shaders::weight_matmul(x, self.lora_a.val()) * self.scale;
        ember_shaders::weight_matmul(down, self.lora_b.val())
    }

    /// `dropout(x)`: while training, where a backward pass can follow (or the first pass of
    /// gradient checkpointing, [`Self::drop_without_autodiff`]), as burn's `Dropout` decides.
    fn dropped(&self, x: Tensor<2>) -> Tensor<2> {
        let Dropout { prob, training } = &self.dropout;
        let on_graph = x.device().is_autodiff() || self.drop_without_autodiff;
        if !training.is_enabled() || !on_graph || *prob == 0.0 {
            return x;
        }
        let mask = ember_shaders::dropout_mask(&x, 1.0 - prob);
        x * mask
    }

    /// `scale · B A`, the change to the base weight (`[out, in]`).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_b.val().matmul(self.lora_a.val()) * self.scale
    }
}

/// peft's scaling: `alpha / r`, or `alpha / √r` with rsLoRA.
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}
