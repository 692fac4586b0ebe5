//! Backward passes for the fused operations. Each keeps the least it can: GELU keeps its
//! input only, and the head's log-sum-exp keeps `softmax(x Wᵀ) W` `[n, d]` for a frozen `W`
//! (or `x`, `W` and the `[n, 1]` result, recomputing a block's logits when the gradient arrives,
//! where `W` trains) instead of the `[n, v]` logits; the
//! attention keeps `q`, `k`, `v`, its output and two numbers per query row, and recomputes the
//! scores; the layer norm keeps its input and recomputes the rows' statistics.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IndexingUpdateOp, IntTensor};
use burn::backend::{Backend, Shape, TensorMetadata};

use burn::backend::AutodiffBackend;
use burn::tensor::FloatDType;

use crate::ops::{
    autocast_matmul, chunk_4bit, in_precision, joined, label_rows, linear_logits, log_sum_exp_and_input_gradient,
    logit_chunks, rounded_like, row_slice, weight_chunks, FusedOps,
};

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

    fn weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct WeightMatmul;

        impl<B: Backend + FusedOps> Backward<B, 2> for WeightMatmul {
            /// `W` (alive anyway), and `x` only where `W` trains: as burn's matmul keeps them.
            type State = (Option<FloatTensor<B>>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                if let (Some(node), Some(x)) = (node_w, x) {
                    grads.register::<B>(node.id, B::matmul(B::float_transpose(grad.clone()), x));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, autocast_matmul::<B>(grad, w));
                }
            }
        }

        let w_trains = <Self as FloatTensorOps<Self>>::float_is_require_grad(&w);
        match WeightMatmul.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let out = B::weight_matmul(x.clone(), w.clone());
                prep.finish((w_trains.then_some(x), w), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::weight_matmul(x.into_primitive(), w.into_primitive())),
        }
    }

    fn linear_log_sum_exp(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        /// What the backward pass starts from.
        #[derive(Debug, Clone)]
        enum Kept<B: Backend> {
            /// The gradient with respect to `x` for an incoming gradient of one per row,
            /// `softmax(x Wᵀ) W` `[n, d]`, worked out in the forward pass while the block's
            /// logits were at hand; the backward pass scales its rows. For a frozen `W` (LoRA's
            /// head): two matmuls per block in all instead of three.
            InputGradient(FloatTensor<B>),
            /// `x`, `W` and the log-sum-exp, to recompute the logits when `W` needs a gradient.
            Inputs(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
        }

        #[derive(Debug)]
        struct LinearLogSumExp;

        impl<B: Backend + FusedOps> Backward<B, 2> for LinearLogSumExp {
            type State = Kept<B>;

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w, lse) = match ops.state {
                    Kept::InputGradient(g) => {
                        if let Some(node) = node_x {
                            grads.register::<B>(node.id, B::float_mul(g, grad));
                        }
                        return;
                    }
                    Kept::Inputs(x, w, lse) => (x, w, lse),
                };
                let (mut dx, mut dw) = (Vec::new(), None);
                for rows in logit_chunks::<B>(&x, &w) {
                    let xc = row_slice::<B>(&x, rows.clone());
                    // d lse_i / d logits_ij = softmax_ij: the block's probabilities, recomputed.
                    let logits = linear_logits::<B>(xc.clone(), w.clone());
                    let p = B::softmax_times(logits, row_slice::<B>(&lse, rows.clone()), row_slice::<B>(&grad, rows));
                    if node_w.is_some() {
                        let part = B::matmul(B::float_transpose(p.clone()), xc);
                        dw = Some(match dw {
                            Some(sum) => B::float_add(sum, part),
                            None => part,
                        });
                    }
                    if node_x.is_some() {
                        dx.push(autocast_matmul::<B>(p, w.clone()));
                    }
                }
                if let (Some(node), Some(dw)) = (node_w, dw) {
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, joined::<B>(dx, 0));
                }
            }
        }

        let w_trains = <Self as FloatTensorOps<Self>>::float_is_require_grad(&w);
        let guards = [x.node(), w.node()];
        match LinearLogSumExp.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) if !w_trains => {
                let (lse, g) = log_sum_exp_and_input_gradient::<B>(x.into_primitive(), w.into_primitive());
                prep.finish(Kept::InputGradient(g), lse)
            }
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let lse = B::linear_log_sum_exp(x.clone(), w.clone());
                prep.finish(Kept::Inputs(x, w, lse.clone()), lse)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_log_sum_exp(x.into_primitive(), w.into_primitive())),
        }
    }

    fn label_logit(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        ids: IntTensor<Self>,
        inside: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
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
                    let dw = B::float_select_assign(
                        zeros,
                        0,
                        ids,
                        B::float_mul(rounded_like::<B>(x, &w), g.clone()),
                        IndexingUpdateOp::Add,
                    );
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
            OpsKind::UnTracked(prep) => {
                prep.finish(B::label_logit(x.into_primitive(), w.into_primitive(), ids, inside))
            }
        }
    }

    fn alibi_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        alibi: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Attention;

        impl<B: Backend + FusedOps> Backward<B, 3> for Attention {
            /// `q`, `k`, `v`, `alibi`, `mask`, and the forward's output and row statistics.
            type State = [FloatTensor<B>; 7];

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let [q, k, v, alibi, mask, out, stats] = ops.state;
                let (dq, dk, dv) = B::alibi_attention_backward(q, k, v, alibi, mask, out, stats, grad);
                for (node, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let guards = [q.node(), k.node(), v.node()];
        let (alibi, mask) = (alibi.into_primitive(), mask.into_primitive());
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match Attention.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, stats) =
                    B::alibi_attention_forward(q.clone(), k.clone(), v.clone(), alibi.clone(), mask.clone());
                prep.finish([q, k, v, alibi, mask, out.clone(), stats], out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::alibi_attention(q, k, v, alibi, mask)),
        }
    }

    fn row_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNorm;

        impl<B: Backend + FusedOps> Backward<B, 3> for LayerNorm {
            /// `x`, `γ` and `eps`: the rows' statistics are recomputed.
            type State = (FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, eps) = ops.state;
                let h = gamma.shape()[0];
                let column_sums = |t: FloatTensor<B>| B::float_reshape(B::float_sum_dim(t, 0), Shape::new([h]));
                if let Some(node) = node_gamma {
                    let (normed, _) = crate::ops::composed::normalized::<B>(x.clone(), eps);
                    grads.register::<B>(node.id, column_sums(B::float_mul(grad.clone(), normed)));
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, column_sums(grad.clone()));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::row_layer_norm_backward(x, gamma, grad, eps));
                }
            }
        }

        let guards = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
        match LayerNorm.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::row_layer_norm(x.clone(), gamma.clone(), beta, eps);
                prep.finish((x, gamma, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::row_layer_norm(x, gamma, beta, eps)),
        }
    }

    fn dropout_mask(like: FloatTensor<Self>, keep: f64) -> FloatTensor<Self> {
        // A mask is a constant of the graph: the inner backend draws it, untracked.
        Self::from_inner(B::dropout_mask(like.into_primitive(), keep))
    }

    fn dequantize_4bit(
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
    ) -> FloatTensor<Self> {
        // A frozen weight: nothing to track.
        Self::from_inner(B::dequantize_4bit(words, absmax.into_primitive(), code.into_primitive(), shape))
    }

    fn linear_4bit(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        shape: [usize; 2],
        compute: FloatDType,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Linear4bit;

        impl<B: Backend + FusedOps> Backward<B, 1> for Linear4bit {
            /// The weight as stored (alive anyway): it is dequantized again for `dx = grad · W`.
            type State = (IntTensor<B>, FloatTensor<B>, FloatTensor<B>, [usize; 2], FloatDType);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (words, absmax, code, shape, compute) = ops.state;
                if let Some(node) = node_x {
                    // dx = Σ over row ranges of W: grad[:, range] · W[range], one range dequantized at a time.
                    let mut dx: Option<FloatTensor<B>> = None;
                    for rows in weight_chunks(shape) {
                        let (w, a, chunk_shape) = chunk_4bit::<B>(&words, &absmax, shape, rows.clone());
                        let w = in_precision::<B>(B::dequantize_4bit(w, a, code.clone(), chunk_shape), compute);
                        let g = B::float_slice(grad.clone(), &[(..).into(), rows.into()]);
                        let part = autocast_matmul::<B>(g, w);
                        dx = Some(match dx {
                            Some(sum) => B::float_add(sum, part),
                            None => part,
                        });
                    }
                    grads.register::<B>(node.id, dx.expect("at least one row range"));
                }
            }
        }

        let (absmax, code) = (absmax.into_primitive(), code.into_primitive());
        match Linear4bit.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out =
                    B::linear_4bit(x.into_primitive(), words.clone(), absmax.clone(), code.clone(), shape, compute);
                prep.finish((words, absmax, code, shape, compute), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::linear_4bit(x.into_primitive(), words, absmax, code, shape, compute))
            }
        }
    }
}
