//! The three layer kinds BLOOM is made of, with Hugging Face's parameter names (`weight`,
//! `bias`) and PyTorch's layouts, so a checkpoint tensor maps onto a field unchanged.

use burn::module::{Module, Param};
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Int, Tensor};

/// `torch.nn.Linear`: `y = x Wᵀ + b`, with `weight` stored `[out_features, in_features]`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Linear { weight: frozen(weight), bias: bias.map(frozen) }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // As one 2-D matmul over all rows: a batched matmul would broadcast the weight.
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat: Tensor<2> = x.reshape([rows, dims[D - 1]]);
        let y = linear(flat, self.weight.val().transpose(), self.bias.as_ref().map(|b| b.val()));
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

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let centered = x.clone() - x.mean_dim(D - 1);
        let variance = centered.clone().square().mean_dim(D - 1);
        let normed = centered / (variance + self.eps).sqrt();
        normed * self.weight.val().unsqueeze() + self.bias.val().unsqueeze()
    }
}

/// `torch.nn.Embedding`: rows of `weight` (`[num_embeddings, dim]`) picked by token id.
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    pub fn new(weight: Tensor<2>) -> Self {
        Embedding { weight: frozen(weight) }
    }

    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.weight.val(), ids)
    }
}

/// Base-model weights are never trained (LoRA trains adapters beside them), so they are created
/// without gradient tracking: no gradient and no optimizer state is ever allocated for them.
pub fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}
