//! Tests that seed the device's random generator and then draw from it. The generator is one
//! per process (burn's backends keep it in a static), so a test in another thread drawing
//! between the seed and the draw changes the masks: these run in their own test binary, one
//! at a time under `SEEDED`, away from the tests that draw random weights.

use std::sync::{Mutex, MutexGuard};

use burn::tensor::{Device, Tensor};
use ember_core::checkpoint::ModelDir;
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::tokenizer::PaddingSide;
use ember_tests::trainer_runs::{self, close};
use ember_tests::{max_abs_diff, model_dir, special_ids, test_devices};

static SEEDED: Mutex<()> = Mutex::new(());

/// The generator to this test alone (a failed test poisons the lock; the next still runs).
fn seeded() -> MutexGuard<'static, ()> {
    SEEDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Dropout's mask: only `0` and `1/keep`, the kept share within 10 standard deviations of
/// `keep`, and the same mask again after the same seed, on and off the autodiff device (the
/// graph-free pass of gradient checkpointing and its recomputation draw alike).
#[test]
fn dropout_mask_keeps_the_asked_share_and_repeats_under_a_seed() {
    let _alone = seeded();
    for (name, device) in test_devices() {
        let x = Tensor::<2>::ones([1000, 1000], &device);
        for keep in [0.95, 0.5] {
            let draw = |seed: u64, x: &Tensor<2>| {
                x.device().seed(seed);
                ember_shaders::dropout_mask(x, keep).try_into_vec_as::<f32>().unwrap()
            };
            let mask = draw(7, &x);
            let value = (1.0 / keep) as f32;
            assert!(mask.iter().all(|&m| m == 0.0 || m == value), "{name}: a mask value other than 0 and {value}");
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
            let sd = (keep * (1.0 - keep) / mask.len() as f64).sqrt();
            assert!((kept - keep).abs() < 10.0 * sd, "{name}: kept {kept} of the elements, asked {keep}");
            assert_eq!(draw(7, &x.clone().autodiff()), mask, "{name}: the same seed on the autodiff device");
            assert_ne!(draw(8, &x), mask, "{name}: another seed, the same mask");
        }
    }
}

/// With dropout on, the recomputed blocks draw the masks of the graph-free pass: the gradients
/// equal those of one graph over the same forward pass (the device seeded per block alike).
#[test]
fn gradient_checkpointing_recomputes_the_same_dropout_masks() {
    use ember_core::data::collate;
    use ember_core::lora::slots::adapter_slots;
    use ember_core::loss::shifted_cross_entropy_sum;
    use ember_core::model::{AttentionBias, AttentionMask};
    use ember_core::train::recompute::{loss_and_grads, stage_seed};

    let _alone = seeded();
    let data = trainer_runs::dataset(&model_dir("a"));
    let device = Device::flex().autodiff();
    let lora = LoraConfig::from_json(
        r#"{"r": 4, "lora_alpha": 8, "lora_dropout": 0.3, "target_modules": ["query_key_value", "dense_4h_to_h"], "modules_to_save": ["word_embeddings"]}"#,
        "test",
    )
    .unwrap();
    let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
    apply_lora(&mut model, &lora, &device).unwrap();
    let slots = adapter_slots(&lora, &model).unwrap();
    let examples: Vec<_> = (0..3).map(|i| data.get(i)).collect();
    let batch = collate(&examples.iter().collect::<Vec<_>>(), special_ids("a").pad, PaddingSide::Left, None);
    let (seed, micro) = (11, 2);
    let ours = burn::tensor::try_read_sync(loss_and_grads(&model, &batch, 7.0, &slots, &device, seed, micro))
        .unwrap()
        .unwrap();

    let (b, t) = (batch.len(), batch.seq_len());
    let ids: Vec<i64> = batch.input_ids.iter().flatten().copied().collect();
    let ids =
        burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(ids, [b, t]), &device);
    let bias = AttentionBias::new(&AttentionMask::from_ints(&batch.attention_mask), model.num_heads, t, &device);
    let tr = &model.transformer;
    let mut x = tr.word_embeddings_layernorm.forward(tr.word_embeddings.forward(ids), &model.kernels);
    for (i, block) in tr.h.iter().enumerate() {
        device.seed(stage_seed(seed, micro, i + 1));
        x = block.forward(x, &bias, &model.kernels, None);
    }
    let hidden = tr.ln_f.forward(x, &model.kernels);
    let loss = shifted_cross_entropy_sum(&model, hidden, &batch.labels, &device).0 / 7.0;
    let plain_loss = loss.clone().into_scalar::<f32>() as f64;
    let grads = loss.backward();
    assert!(close(ours.loss, plain_loss, 1e-6), "loss {} vs {plain_loss}", ours.loss);
    for (slot, g) in slots.iter().zip(&ours.grads) {
        let want = slot.grad(&model, &grads).unwrap().try_into_vec_as::<f32>().unwrap();
        let got = g.clone().expect("a gradient for every slot").try_into_vec_as::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        assert!(max_abs_diff(&got, &want) / scale < 1e-4, "{}: gradients differ", slot.key());
    }
}
