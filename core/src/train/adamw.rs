//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay; `eps` added to
//! the bias-corrected root), over flat parameter tensors. Its state is two tensors (first and
//! second moments) per trainable parameter and nothing for frozen ones.

use burn::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (for the bias corrections).
    pub step: u64,
    /// `(exp_avg, exp_avg_sq)` per parameter, created at the first update.
    pub moments: Vec<Option<(Tensor<1>, Tensor<1>)>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, num_params: usize) -> Self {
        AdamW { config, step: 0, moments: vec![None; num_params] }
    }

    /// Advances the step counter; call once per optimizer step, before [`AdamW::update`].
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// The new value of parameter `index` (`param`) after one update with gradient `grad`.
    pub fn update(&mut self, index: usize, param: Tensor<1>, grad: Tensor<1>, lr: f64, decay: bool) -> Tensor<1> {
        let c = self.config;
        let (m, v) = self.moments[index].take().unwrap_or_else(|| (grad.zeros_like(), grad.zeros_like()));
        let m = m * c.beta1 + grad.clone() * (1.0 - c.beta1);
        let v = v * c.beta2 + grad.clone() * grad * (1.0 - c.beta2);
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2 = 1.0 - c.beta2.powi(t);
        let param = if decay && c.weight_decay != 0.0 { param * (1.0 - lr * c.weight_decay) } else { param };
        let denom = v.clone().sqrt() / bias_correction2.sqrt() + c.eps;
        let new = param - m.clone() / denom * (lr / bias_correction1);
        self.moments[index] = Some((m, v));
        new
    }

    /// Numbers held as optimizer state (to show it is 2x the trainable parameters).
    pub fn state_len(&self) -> usize {
        self.moments.iter().flatten().map(|(m, v)| m.dims()[0] + v.dims()[0]).sum()
    }
}
