//! Backward passes for the fused operations. Each keeps the least it can: GELU keeps its
//! input only, and the head's log-sum-exp keeps `x`, `W` (both alive anyway) and the `[n, 1]`
//! result, recomputing a block's logits when the gradient arrives instead of keeping them.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::Backend;

use crate::ops::{linear_logits, times_weight, FusedOps};

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn bloom_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Gelu;

        impl<B: Backend + FusedOps> Backward<B, 1> for Gelu {
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(parent) = parent {
                    grads.register::<B>(parent.id, B::bloom_gelu_backward(ops.state, grad));
                }
            }
        }

        let guard = x.node();
        match Gelu.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let out = B::bloom_gelu(x.clone());
                prep.finish(x, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bloom_gelu(x.into_primitive())),
        }
    }

    fn linear_log_sum_exp(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearLogSumExp;

        impl<B: Backend + FusedOps> Backward<B, 2> for LinearLogSumExp {
            /// `x`, `w` and the forward's log-sum-exp.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w, lse) = ops.state;
                // d lse_i / d logits_ij = softmax_ij: the block's probabilities, recomputed.
                let p = B::softmax_times(linear_logits::<B>(x.clone(), w.clone()), lse, grad);
                if let Some(node) = node_w {
                    grads.register::<B>(node.id, B::float_matmul(B::float_transpose(p.clone()), x));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, times_weight::<B>(p, w));
                }
            }
        }

        let guards = [x.node(), w.node()];
        match LinearLogSumExp.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let lse = B::linear_log_sum_exp(x.clone(), w.clone());
                prep.finish((x, w, lse.clone()), lse)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_log_sum_exp(x.into_primitive(), w.into_primitive())),
        }
    }
}
