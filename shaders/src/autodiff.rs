//! Backward passes for the fused operations. Each keeps the least it can: GELU keeps its
//! input only, and the head's log-sum-exp keeps `x`, `W` (both alive anyway) and the `[n, 1]`
//! result, recomputing a block's logits when the gradient arrives instead of keeping them.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::{FloatTensor, IndexingUpdateOp, IntTensor};
use burn::backend::{Backend, Shape, TensorMetadata};

use crate::ops::{autocast_matmul, label_rows, linear_logits, rounded_like, FusedOps};

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
                    grads.register::<B>(node.id, autocast_matmul::<B>(p, w));
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

    fn label_logit(x: FloatTensor<Self>, w: FloatTensor<Self>, ids: IntTensor<Self>, inside: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LabelLogit;

        impl<B: Backend + FusedOps> Backward<B, 2> for LabelLogit {
            /// `x`, `w`, the ids and the in-block mask: the label rows are looked up again.
            type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let (x, w, ids, inside) = ops.state;
                let g = B::float_mul(grads.consume::<B>(&ops.node), inside); // [n, 1]
                if let Some(node) = node_w {
                    // Each label row gets g_i · x_i, added where ids repeat.
                    let n = ids.shape().num_elements();
                    let zeros = B::float_zeros(w.shape(), &w.device(), w.dtype().into());
                    let ids = B::int_reshape(ids.clone(), Shape::new([n]));
                    let dw = B::float_select_assign(zeros, 0, ids, B::float_mul(rounded_like::<B>(x, &w), g.clone()), IndexingUpdateOp::Add);
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::float_mul(label_rows::<B>(w, ids), g));
                }
            }
        }

        let guards = [x.node(), w.node()];
        let inside = inside.into_primitive();
        match LabelLogit.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let out = B::label_logit(x.clone(), w.clone(), ids.clone(), inside.clone());
                prep.finish((x, w, ids, inside), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::label_logit(x.into_primitive(), w.into_primitive(), ids, inside)),
        }
    }
}
