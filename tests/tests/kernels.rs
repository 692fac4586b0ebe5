//! The fused kernels (shaders/) against the plain burn computations they replace: values and
//! gradients on random inputs of several shapes (sizes that are not multiples of any tile or
//! cube width), on the CPU backend and on wgpu (lavapipe in CI), within 1e-4 relative in f32;
//! and a whole model's loss and gradients with the kernels on equal those with them off.

use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor, TensorData};
use ember_core::checkpoint::ModelDir;
use ember_core::data::Batch;
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::loss::loss_sum;
use ember_core::model::{AttentionBias, AttentionMask};
use ember_shaders::Kernels;
use ember_shaders::{attention, cross_entropy, gelu, layer_norm};
use ember_tests::{model_dir, test_devices};

use ember_tests::tolerance::{KERNEL as TOLERANCE, KERNEL_F16};

/// Every element within `tolerance` relative to the reference's scale (its largest
/// magnitude, so values near zero are held to the same absolute precision as the rest).
fn assert_close(ours: Tensor<2>, reference: Tensor<2>, tolerance: f32, what: &str) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let a = ours.try_into_vec_as::<f32>().unwrap();
    let b = reference.try_into_vec_as::<f32>().unwrap();
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let (worst, at) =
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .zip(0..)
            .fold((0.0, 0), |m, (d, i)| if d > m.0 { (d, i) } else { m });
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    assert!(worst <= tolerance, "{what}: relative error {worst:e} at {at} ({} vs {}, scale {scale})", a[at], b[at]);
}

fn random(shape: [usize; 2], std: f64, device: &Device) -> Tensor<2> {
    Tensor::random(shape, Distribution::Normal(0.0, std), device)
}

/// `t` as `[elements / last dimension, last dimension]`, for comparing.
fn rows<const D: usize>(t: Tensor<D>) -> Tensor<2> {
    let dims = t.dims();
    let last = dims[D - 1];
    t.reshape([dims.iter().product::<usize>() / last.max(1), last])
}

/// `fused` and `plain` applied to the same leaves give the same output (within `forward`) and
/// the same gradient for every leaf (within `backward`) under one random upstream gradient.
fn assert_same_op<const D: usize>(
    what: &str,
    leaves: &[(&str, Tensor<D>)],
    fused: impl Fn(Vec<Tensor<D>>) -> Tensor<D>,
    plain: impl Fn(Vec<Tensor<D>>) -> Tensor<D>,
    (forward, backward): (f32, f32),
) {
    let tracked = || leaves.iter().map(|(_, t)| t.clone().require_grad()).collect::<Vec<_>>();
    let (lf, lp) = (tracked(), tracked());
    let (yf, yp) = (fused(lf.clone()), plain(lp.clone()));
    assert_close(rows(yf.clone()), rows(yp.clone()), forward, &format!("{what} forward"));
    let upstream = Tensor::<D>::random(yf.dims(), Distribution::Normal(0.0, 1.0), &yf.device());
    let gf = (yf * upstream.clone()).sum().backward();
    let gp = (yp * upstream).sum().backward();
    for (((name, _), f), p) in leaves.iter().zip(&lf).zip(&lp) {
        assert_close(rows(f.grad(&gf).unwrap()), rows(p.grad(&gp).unwrap()), backward, &format!("{what} d{name}"));
    }
}

#[test]
fn layer_norm_kernel_equals_plain_layer_norm_forward_and_backward() {
    for (name, base) in test_devices() {
        let device = base.clone().autodiff();
        // One element per row; odd widths; wider than a cube's 128 units; BLOOM's widths.
        for [rows, h] in [[3, 1], [1, 7], [37, 129], [64, 1024], [5, 2048]] {
            let what = format!("{name} layer_norm [{rows}, {h}]");
            // Rows far from zero mean and unit variance, and γ, β away from 1 and 0, all trained.
            let x = random([rows, h], 2.0, &device) + 3.0;
            let leaves =
                [("x", x), ("gamma", random([1, h], 0.5, &device) + 1.0), ("beta", random([1, h], 0.5, &device))];
            let call = |f: fn(Tensor<2>, Tensor<1>, Tensor<1>, f64) -> Tensor<2>| {
                move |l: Vec<Tensor<2>>| f(l[0].clone(), l[1].clone().reshape([h]), l[2].clone().reshape([h]), 1e-5)
            };
            assert_same_op(&what, &leaves, call(layer_norm::fused), call(layer_norm::plain), (TOLERANCE, TOLERANCE));
        }
    }
}

/// (positions, hidden, block rows): one row, odd sizes, more columns than a cube's units, and
/// logits over `ember_shaders::ops::LOGITS_CHUNK_BYTES` (done in chunks of rows).
const HEAD_SHAPES: [(usize, usize, usize); 4] = [(1, 8, 5), (37, 64, 300), (255, 96, 4099), (1100, 16, 2000)];

#[test]
fn gelu_kernel_equals_plain_gelu_forward_and_backward() {
    for (name, base) in test_devices() {
        let device = base.clone().autodiff();
        for shape in [[1, 1], [3, 7], [129, 257], [64, 4100]] {
            let what = format!("{name} gelu {shape:?}");
            // std 3 reaches both tails, where the sigmoid saturates.
            let x = random(shape, 3.0, &device);
            let tolerances = (TOLERANCE, TOLERANCE);
            assert_same_op(
                &what,
                &[("x", x.clone())],
                |l| gelu::fused(l[0].clone()),
                |l| gelu::plain(l[0].clone()),
                tolerances,
            );

            // Inference (no autodiff) runs the kernel directly.
            let x = x.inner();
            assert_close(gelu::fused(x.clone()), gelu::plain(x), TOLERANCE, &format!("{what} without autodiff"));
        }
    }
}

#[test]
fn linear_log_sum_exp_kernel_equals_plain_forward_and_backward() {
    for (name, base) in test_devices() {
        for checkpointing in [false, true] {
            let device =
                if checkpointing { base.clone().autodiff().gradient_checkpointing() } else { base.clone().autodiff() };
            for (n, d, v) in HEAD_SHAPES {
                let what = format!(
                    "{name}{} linear_log_sum_exp n={n} d={d} v={v}",
                    if checkpointing { " checkpointed" } else { "" }
                );
                let leaves = [("x", random([n, d], 1.0, &device)), ("W", random([v, d], 0.5, &device))];
                let fused = |l: Vec<Tensor<2>>| cross_entropy::linear_log_sum_exp(l[0].clone(), l[1].clone());
                let plain = |l: Vec<Tensor<2>>| cross_entropy::plain(l[0].clone(), l[1].clone());
                assert_same_op(&what, &leaves, fused, plain, (TOLERANCE, TOLERANCE));

                // A frozen W, as LoRA's head: the gradient for x is worked out in the forward pass.
                let w = random([v, d], 0.5, &device);
                let fused = |l: Vec<Tensor<2>>| cross_entropy::linear_log_sum_exp(l[0].clone(), w.clone());
                let plain = |l: Vec<Tensor<2>>| cross_entropy::plain(l[0].clone(), w.clone());
                let x = [("x", random([n, d], 1.0, &device))];
                assert_same_op(&format!("{what} frozen W"), &x, fused, plain, (TOLERANCE, TOLERANCE));
            }
        }
    }
}

#[test]
fn label_logit_kernel_equals_the_gathered_logit_forward_and_backward() {
    for (name, base) in test_devices() {
        let device = base.clone().autodiff();
        for (n, d, v) in HEAD_SHAPES {
            let what = format!("{name} label_logit n={n} d={d} v={v}");
            // Repeated ids (their rows' gradients add up) and labels outside the block (masked).
            let ids: Vec<i64> = (0..n).map(|i| ((i * 7) % v.min(11)) as i64).collect();
            let inside: Vec<f32> = (0..n).map(|i| if i % 3 == 2 { 0.0 } else { 1.0 }).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
            let inside = Tensor::<2>::from_data(TensorData::new(inside, [n, 1]), &device);
            let leaves = [("x", random([n, d], 1.0, &device)), ("W", random([v, d], 0.5, &device))];
            let fused =
                |l: Vec<Tensor<2>>| cross_entropy::label_logit(l[0].clone(), l[1].clone(), ids.clone(), inside.clone());
            let plain = |l: Vec<Tensor<2>>| {
                cross_entropy::plain_label_logit(l[0].clone(), l[1].clone(), ids.clone(), inside.clone())
            };
            assert_same_op(&what, &leaves, fused, plain, (TOLERANCE, TOLERANCE));
        }
    }
}

#[test]
fn linear_log_sum_exp_with_half_precision_weights_matches_the_plain_autocast_path() {
    for (name, base) in test_devices() {
        let device = base.clone().autodiff();
        let (n, d, v) = (37, 64, 300);
        // Frozen half-precision weights, as `--dtype f16` stores the head.
        let w = random([v, d], 0.5, &device).cast(FloatDType::F16);
        let fused = |l: Vec<Tensor<2>>| cross_entropy::linear_log_sum_exp(l[0].clone(), w.clone());
        let plain = |l: Vec<Tensor<2>>| cross_entropy::plain(l[0].clone(), w.clone());
        // Both round x to f16 for the matmul; kernels may accumulate in another order.
        assert_same_op(&format!("{name} f16"), &[("x", random([n, d], 1.0, &device))], fused, plain, KERNEL_F16);
    }
}

/// (batch, heads, queries, keys, head_dim, left padding of the last row): tiny; more
/// queries than a cube's 64 rows and keys not a multiple of any tile; queries after cached keys
/// (a prompt's second chunk); one query against a padded cache (decoding); BLOOM's head size.
const ATTENTION_SHAPES: [(usize, usize, usize, usize, usize, usize); 5] =
    [(1, 1, 1, 3, 8, 0), (2, 3, 37, 37, 16, 5), (1, 2, 70, 70, 64, 0), (2, 2, 5, 12, 32, 3), (2, 2, 1, 33, 128, 4)];

#[test]
fn attention_kernel_equals_plain_attention_forward_and_backward() {
    for (name, base) in test_devices() {
        for checkpointing in [false, true] {
            let device =
                if checkpointing { base.clone().autodiff().gradient_checkpointing() } else { base.clone().autodiff() };
            for (b, h, lq, lk, d, pad) in ATTENTION_SHAPES {
                let what = format!(
                    "{name}{} attention b={b} h={h} queries={lq} keys={lk} d={d} pad={pad}",
                    if checkpointing { " checkpointed" } else { "" }
                );
                // The last row is left-padded: its first queries see no key at all (all masked).
                let mask =
                    AttentionMask::new((0..b).map(|r| (0..lk).map(|j| r + 1 < b || j >= pad).collect()).collect());
                let bias = AttentionBias::new(&mask, h, lq, &device);
                let random4 = |l: usize| Tensor::<4>::random([b, h, l, d], Distribution::Normal(0.0, 1.0), &device);
                let leaves = [("q", random4(lq)), ("k", random4(lk)), ("v", random4(lk))];
                let call = |f: fn(Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| {
                    let bias = bias.clone();
                    move |l: Vec<Tensor<4>>| {
                        f(l[0].clone(), l[1].clone(), l[2].clone(), bias.alibi.clone(), bias.mask.clone())
                    }
                };
                assert_same_op(&what, &leaves, call(attention::fused), call(attention::plain), (TOLERANCE, TOLERANCE));

                // Inference (no autodiff, as with the KV cache) runs the forward kernel directly.
                let [q, k, v] = leaves.map(|(_, t)| t.inner());
                let base_bias = AttentionBias::new(&mask, h, lq, &base);
                let fused =
                    attention::fused(q.clone(), k.clone(), v.clone(), base_bias.alibi.clone(), base_bias.mask.clone());
                let plain = attention::plain(q, k, v, base_bias.alibi, base_bias.mask);
                assert_close(rows(fused), rows(plain), TOLERANCE, &format!("{what} without autodiff"));
            }
        }
    }
}

/// A batch with padding and prompt tokens masked out (-100), as the data pipeline makes.
fn batch() -> Batch {
    Batch {
        input_ids: vec![vec![5, 9, 14, 3, 77, 2], vec![3, 3, 8, 41, 0, 0]],
        attention_mask: vec![vec![1; 6], vec![1, 1, 1, 1, 0, 0]],
        labels: vec![vec![-100, -100, 14, 3, 77, 2], vec![-100, 3, 8, 41, -100, -100]],
    }
}

#[test]
fn model_loss_and_gradients_are_the_same_with_and_without_kernels() {
    // LoRA on every linear layer with a non-zero start (so every adapter gets a gradient), and
    // trainable copies of the embeddings and the head cut into 7-row blocks (several blocks).
    let lora = LoraConfig::from_json(
        r#"{"r": 4, "lora_alpha": 8, "init_lora_weights": false,
            "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
            "modules_to_save": ["word_embeddings", "lm_head"]}"#,
        "test LoRA",
    )
    .unwrap();
    for (name, base) in test_devices() {
        for checkpointing in [false, true] {
            let device =
                if checkpointing { base.clone().autodiff().gradient_checkpointing() } else { base.clone().autodiff() };
            let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
            apply_lora(&mut model, &lora, &device).unwrap();
            model.set_vocab_block_rows(7);
            let mut results = Vec::new();
            for kernels in [Kernels::NONE, Kernels::ALL] {
                model.kernels = kernels;
                let (loss, count) = loss_sum(&model, &batch(), &device);
                let grads = loss.clone().backward();
                let block = &model.transformer.h[0];
                let first_a = block.self_attention.query_key_value.lora.as_ref().unwrap().lora_a.val();
                let last = model.transformer.h.last().unwrap();
                let mlp_b = last.mlp.dense_4h_to_h.lora.as_ref().unwrap().lora_b.val();
                let head = model.lm_head.as_ref().expect("lm_head copy").grad(&grads).unwrap();
                let embeddings =
                    model.transformer.word_embeddings.trainable_copy.as_ref().unwrap().grad(&grads).unwrap();
                let loss = loss.inner().reshape([1, 1]);
                results.push((
                    count,
                    loss,
                    first_a.grad(&grads).unwrap(),
                    mlp_b.grad(&grads).unwrap(),
                    head,
                    embeddings,
                ));
            }
            let what = format!("{name}{}", if checkpointing { " checkpointed" } else { "" });
            let (plain, fused) = (results.remove(0), results.remove(0));
            assert_eq!(plain.0, fused.0);
            assert_close(fused.1, plain.1, TOLERANCE, &format!("{what} loss"));
            assert_close(fused.2, plain.2, TOLERANCE, &format!("{what} first qkv lora_A grad"));
            assert_close(fused.3, plain.3, TOLERANCE, &format!("{what} last dense_4h_to_h lora_B grad"));
            assert_close(fused.4, plain.4, TOLERANCE, &format!("{what} lm_head copy grad"));
            assert_close(fused.5, plain.5, TOLERANCE, &format!("{what} word_embeddings copy grad"));
        }
    }
}

#[test]
fn kernels_switch_parses_names_and_says_what_is_on() {
    assert_eq!("all".parse::<Kernels>().unwrap(), Kernels::ALL);
    assert_eq!("none".parse::<Kernels>().unwrap(), Kernels::NONE);
    assert_eq!("gelu".parse::<Kernels>().unwrap(), Kernels { gelu: true, ..Kernels::NONE });
    assert_eq!(
        "cross-entropy, gelu".parse::<Kernels>().unwrap(),
        Kernels { gelu: true, cross_entropy: true, ..Kernels::NONE }
    );
    assert_eq!("attention,ce,gelu,layer-norm".parse::<Kernels>().unwrap(), Kernels::ALL);
    assert_eq!(Kernels { cross_entropy: true, ..Kernels::NONE }.to_string(), "cross-entropy");
    assert_eq!(Kernels { gelu: false, layer_norm: false, ..Kernels::ALL }.to_string(), "cross-entropy,attention");
    assert_eq!(Kernels::ALL.to_string(), "all");
    assert_eq!(Kernels::NONE.to_string(), "none");
    let err = "flash".parse::<Kernels>().unwrap_err();
    assert!(err.contains("flash") && err.contains("gelu"), "{err}");
}
