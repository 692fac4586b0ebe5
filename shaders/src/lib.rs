//! Hand-written kernels for the hot paths of LoRA training, each with the plain burn
//! computation beside it (what the tests check the kernel against, and what runs when the
//! kernel is switched off).
//!
//! - [`gelu`]: BLOOM's tanh-GELU, forward and backward in one pass each.
//! - [`cross_entropy`]: the log-sum-exp of the head's logits without keeping them.
//! - [`attention`]: attention with ALiBi and the masks without keeping the scores.
//! - [`layer_norm`]: the layer norm in one pass forward and one backward.
//!
//! They are one burn backend extension ([`ops::FusedOps`]): CubeCL kernels on the wgpu
//! backend (`cube/`, feature `wgpu`), multi-core loops on the CPU backend (`flex.rs`), and
//! hand-written backward passes under autodiff (`autodiff.rs`). [`Kernels`] says which are on.

pub mod attention;
mod autodiff;
pub mod cross_entropy;
#[cfg(feature = "wgpu")]
mod cube;
mod flex;
pub mod gelu;
pub mod layer_norm;
pub mod ops;

use burn::tensor::{DType, Device, FloatDType, Tensor};

/// Which fused kernels the model uses (`ember ... --kernels`); the others run as plain burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub gelu: bool,
    pub cross_entropy: bool,
    pub attention: bool,
    pub layer_norm: bool,
}

impl Kernels {
    pub const ALL: Kernels = Kernels { gelu: true, cross_entropy: true, attention: true, layer_norm: true };
    pub const NONE: Kernels = Kernels { gelu: false, cross_entropy: false, attention: false, layer_norm: false };

    /// Each kernel's name (as `--kernels` takes it) and whether it is on.
    fn named(&self) -> [(&'static str, bool); 4] {
        [("gelu", self.gelu), ("cross-entropy", self.cross_entropy), ("attention", self.attention), ("layer-norm", self.layer_norm)]
    }
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels::ALL
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    /// `all`, `none`, or a comma-separated list of kernel names.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(Kernels::ALL),
            "none" | "plain" => return Ok(Kernels::NONE),
            _ => {}
        }
        let mut k = Kernels::NONE;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "gelu" => k.gelu = true,
                "cross-entropy" | "ce" => k.cross_entropy = true,
                "attention" => k.attention = true,
                "layer-norm" => k.layer_norm = true,
                _ => return Err(format!("unknown kernel `{name}`: use all, none, or a list of gelu, cross-entropy, attention, layer-norm")),
            }
        }
        Ok(k)
    }
}

impl std::fmt::Display for Kernels {
    /// What `--kernels` takes back: `all`, `none`, or the list of those that are on.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<&str> = self.named().iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        f.write_str(match on.len() {
            0 => "none",
            n if n == self.named().len() => "all",
            _ => return f.write_str(&on.join(",")),
        })
    }
}

/// `x · w` in f32 for a weight `w` of any float dtype, in the weight's precision as PyTorch's
/// autocast runs a matmul: with f16 weights `x` is rounded to f16 and the product widened back.
/// (Widening the weight instead would make autodiff keep an f32 copy of every weight.)
pub fn autocast_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let dtype = w.dtype();
    if dtype == DType::F32 {
        return x.matmul(w);
    }
    x.cast(dtype).matmul(w).cast(FloatDType::F32)
}

/// Whether `device`'s backend has the kernels: the CPU backend always, wgpu when this crate was
/// built with its `wgpu` feature. Elsewhere the wrappers run the plain computation.
pub fn has_kernels(device: &Device) -> bool {
    cfg!(feature = "wgpu") || device.clone().inner() == Device::flex()
}
