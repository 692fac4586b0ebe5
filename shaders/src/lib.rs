//! Hand-written kernels for the hot paths of LoRA training, each with the plain burn
//! computation beside it (what the tests check the kernel against, and what runs when the
//! kernel is switched off).
//!
//! - [`gelu`]: BLOOM's tanh-GELU, forward and backward in one pass each.
//! - [`cross_entropy`]: the log-sum-exp of the head's logits without keeping them.
//! - [`attention`]: attention with ALiBi and the masks without keeping the scores.
//! - [`layer_norm`]: the layer norm in one pass forward and one backward.
//! - [`linear_4bit`]: the matmul with a 4-bit (QLoRA) weight, dequantized in one pass.
//! - [`weight_matmul`]: the matmul of every linear layer, `x Wᵀ` with `W` as stored; on the CPU
//!   a single row (decoding) is split across the cores.
//!
//! They are one burn backend extension ([`ops::FusedOps`]): CubeCL kernels on the wgpu
//! backend (`cube/`, feature `wgpu`), multi-core loops on the CPU backend (`flex.rs`), and
//! hand-written backward passes under autodiff (`autodiff.rs`).
//!
//! [`Kernels`] is the one place that chooses: the model holds one and calls its methods
//! (`gelu`, `layer_norm`, `attention`, `head_block`), each of which runs the fused kernel when it
//! is switched on and the tensor's backend has it, and the plain computation otherwise.

pub mod attention;
mod autodiff;
mod cpu_math;
pub mod cross_entropy;
#[cfg(feature = "wgpu")]
mod cube;
mod flex;
pub mod gelu;
pub mod layer_norm;
pub mod linear_4bit;
pub mod ops;

use burn::tensor::{Device, Int, Tensor};

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
        [
            ("gelu", self.gelu),
            ("cross-entropy", self.cross_entropy),
            ("attention", self.attention),
            ("layer-norm", self.layer_norm),
        ]
    }
}

impl Kernels {
    /// Whether a kernel that is `on` runs fused on `device`: only where the backend has the
    /// kernels (elsewhere the plain computation runs, never an unimplemented backend).
    fn fused(on: bool, device: &Device) -> bool {
        on && has_kernels(device)
    }

    /// BLOOM's tanh-GELU ([`gelu`]).
    pub fn gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if Self::fused(self.gelu, &x.device()) {
            gelu::fused(x)
        } else {
            gelu::plain(x)
        }
    }

    /// `torch.nn.LayerNorm` over the last dimension ([`layer_norm`]).
    pub fn layer_norm<const D: usize>(&self, x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
        if Self::fused(self.layer_norm, &x.device()) {
            layer_norm::fused(x, gamma, beta, eps)
        } else {
            layer_norm::plain(x, gamma, beta, eps)
        }
    }

    /// ALiBi attention with the causal and padding masks ([`attention`]).
    pub fn attention(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, alibi: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
        if Self::fused(self.attention, &q.device()) {
            attention::fused(q, k, v, alibi, mask)
        } else {
            attention::plain(q, k, v, alibi, mask)
        }
    }

    /// One block of the language-model head's loss terms ([`cross_entropy`]): the log-sum-exp of
    /// `x` `[n, d]` against the block `w` `[v, d]`, and the label's logit for `ids` `[n, 1]`
    /// (indices into the block) where `inside` `[n, 1]` is 1 — both `[n, 1]`. Plain, the block's
    /// logits are computed once and kept for the backward pass; fused, never kept.
    pub fn head_block(
        &self,
        x: Tensor<2>,
        w: Tensor<2>,
        ids: Tensor<2, Int>,
        inside: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        if Self::fused(self.cross_entropy, &x.device()) {
            (cross_entropy::linear_log_sum_exp(x.clone(), w.clone()), cross_entropy::label_logit(x, w, ids, inside))
        } else {
            let logits = autocast_matmul(x, w.transpose());
            (cross_entropy::log_sum_exp(logits.clone()), logits.gather(1, ids) * inside)
        }
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
                _ => {
                    return Err(format!(
                    "unknown kernel `{name}`: use all, none, or a list of gelu, cross-entropy, attention, layer-norm"
                ))
                }
            }
        }
        Ok(k)
    }
}

/// In settings files as on the command line: `"all"`, `"none"` or a list.
impl serde::Serialize for Kernels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Kernels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
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
    use burn::backend::{ops::FloatTensorOps, Dispatch};
    let kernels = has_kernels(&x.device());
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(if kernels {
        ops::autocast_matmul::<Dispatch>(x, w)
    } else {
        ops::autocast_with::<Dispatch>(x, w, Dispatch::float_matmul)
    })
}

/// `x Wᵀ` for a weight `w` stored `[out, in]` (f32, or f16/bf16 multiplied as autocast does):
/// the matmul of the linear layers and of the head. On the CPU a single row (decoding) is split
/// across the cores, which gemm's matrix-vector path does not do.
pub fn weight_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if !has_kernels(&x.device()) {
        return autocast_matmul(x, w.transpose());
    }
    let out = <burn::backend::Dispatch as ops::FusedOps>::weight_matmul(x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(out)
}

/// Dropout's mask for `x`: each element `1/keep` with probability `keep`, else 0 (see
/// [`ops::FusedOps::dropout_mask`]); `x · mask` is dropout.
pub fn dropout_mask<const D: usize>(x: &Tensor<D>, keep: f64) -> Tensor<D> {
    use burn::backend::Dispatch;
    let kernels = has_kernels(&x.device());
    let like = x.clone().into_dispatch();
    Tensor::from_dispatch(if kernels {
        <Dispatch as ops::FusedOps>::dropout_mask(like, keep)
    } else {
        ops::composed::dropout_mask::<Dispatch>(like, keep)
    })
}

/// Whether `device`'s backend has the kernels: the CPU backend always, wgpu when this crate was
/// built with its `wgpu` feature.
pub fn has_kernels(device: &Device) -> bool {
    cfg!(feature = "wgpu") || device.clone().inner() == Device::flex()
}
