//! The trainer against transformers' Trainer runs recorded in tests/fixtures/train: same
//! micro-batches, per-step loss, grad_norm and learning rate, and the same final adapter.

use burn::tensor::Device;
use ember_core::checkpoint::ModelDir;
use ember_core::data::TokenizedDataset;
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::tokenizer::PaddingSide;
use ember_core::train::{Trainer, TrainingArgs};
use ember_tests::trainer_runs::{self, args_of, check_final_adapter, check_steps, close};
use ember_tests::{fixtures, max_abs_diff, model_dir, special_ids, test_devices, tolerance};
use serde_json::Value;

fn dataset() -> TokenizedDataset {
    trainer_runs::dataset(&model_dir("a"))
}

fn reference(run: &str) -> Value {
    trainer_runs::reference(&format!("train/{run}.json"))
}

fn trainer(device: &Device, args: TrainingArgs, data: &TokenizedDataset) -> Trainer {
    let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(device).unwrap();
    let (lora, _) = load_adapter(&mut model, &fixtures().join("train/init_adapter"), device, false).unwrap();
    Trainer::new(model, lora, args, data, special_ids("a").pad, PaddingSide::Left, device).unwrap()
}

#[test]
fn steps_and_final_adapter_equal_transformers_trainer() {
    let data = dataset();
    for (device_name, base) in test_devices() {
        let tolerance = if device_name == "cpu" { tolerance::TRAINING_CPU } else { tolerance::TRAINING_WGPU };
        // --gradient-checkpointing recomputes every block and must not change a single step.
        let device = base.clone().autodiff();
        for (checkpointing, run_name) in [false, true].into_iter().flat_map(|c| ["run_a", "run_b"].map(|r| (c, r))) {
            let mode = if checkpointing { " with gradient checkpointing" } else { "" };
            let device_name = format!("{device_name}{mode}");
            let run = reference(run_name);
            let out = tempfile::tempdir().unwrap();
            let args =
                TrainingArgs { gradient_checkpointing: checkpointing, ..args_of(&run, out.path().to_str().unwrap()) };
            let mut t = trainer(&device, args, &data);
            let what = format!("{device_name} {run_name}");
            check_steps(&mut t, &run, &data, tolerance, &what);
            check_final_adapter(&t, out.path(), &format!("train/{run_name}_final"), tolerance, &what);
        }
    }
}

/// The page trains the model it loaded for inference ([`for_training`]: the same buffers on the
/// autodiff graph, no second load): the same steps and adapter as transformers' Trainer.
///
/// [`for_training`]: ember_core::model::BloomForCausalLM::for_training
#[test]
fn the_inference_model_trains_in_place_as_transformers_trainer() {
    let data = dataset();
    let run = reference("run_a");
    for (device_name, base) in test_devices() {
        let tolerance = if device_name == "cpu" { tolerance::TRAINING_CPU } else { tolerance::TRAINING_WGPU };
        let device = base.clone().autodiff();
        let out = tempfile::tempdir().unwrap();
        let loaded = ModelDir::open(&model_dir("a")).unwrap().load_model(&base).unwrap();
        let mut model = loaded.for_training();
        let (lora, _) = load_adapter(&mut model, &fixtures().join("train/init_adapter"), &device, false).unwrap();
        assert!(!model.transformer.h[0].self_attention.query_key_value.weight.val().is_require_grad());
        let pad = special_ids("a").pad;
        let mut t = Trainer::new(
            model,
            lora,
            args_of(&run, out.path().to_str().unwrap()),
            &data,
            pad,
            PaddingSide::Left,
            &device,
        )
        .unwrap();
        let what = format!("{device_name}, trained in place");
        check_steps(&mut t, &run, &data, tolerance, &what);
        check_final_adapter(&t, out.path(), "train/run_a_final", tolerance, &what);
    }
}

#[test]
fn optimizer_state_is_twice_the_trainable_parameters_and_nothing_for_the_base() {
    let data = dataset();
    let run = reference("run_a");
    let out = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let mut t = trainer(&device, args_of(&run, out.path().to_str().unwrap()), &data);
    t.step(&data).unwrap();
    let trainable: usize = t.slots.iter().map(|s| s.shape(&t.model).iter().product::<usize>()).sum();
    assert_eq!(trainable, 4 * 2 * (32 + 96), "r=4 LoRA on two query_key_value layers");
    assert_eq!(t.optimizer.state_len(), 2 * trainable);
    // Frozen base weights carry no gradient.
    assert!(!t.model.transformer.h[0].self_attention.query_key_value.weight.val().is_require_grad());
    assert!(!t.model.transformer.word_embeddings.weight.is_require_grad());
}

/// Training a `word_embeddings` copy and an `lm_head` copy gives the same adapter whether the
/// vocabulary matrices are one block or many (as on GPUs with a binding limit).
#[test]
fn training_vocabulary_copies_in_blocks_equals_one_block() {
    let data = dataset();
    let run = reference("run_a");
    let out = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let lora = LoraConfig::from_json(
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["query_key_value"], "modules_to_save": ["word_embeddings", "lm_head"]}"#,
        "test",
    )
    .unwrap();
    let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
    apply_lora(&mut model, &lora, &device).unwrap();
    let mut blocked = model.clone();
    blocked.set_vocab_block_rows(7);
    assert!(blocked.transformer.word_embeddings.trainable_copy.as_ref().unwrap().blocks.len() > 1);
    let args = || TrainingArgs { max_steps: 2, ..args_of(&run, out.path().to_str().unwrap()) };
    let mut whole =
        Trainer::new(model, lora.clone(), args(), &data, special_ids("a").pad, PaddingSide::Left, &device).unwrap();
    let mut parts =
        Trainer::new(blocked, lora, args(), &data, special_ids("a").pad, PaddingSide::Left, &device).unwrap();
    for step in 0..2 {
        let (a, b) = (whole.step(&data).unwrap(), parts.step(&data).unwrap());
        assert!(close(a.loss, b.loss, tolerance::SAME_MATH as f64), "step {step}: loss {} vs {}", a.loss, b.loss);
    }
    for slot in &whole.slots {
        let value = |t: &Trainer| slot.read(&t.model).1.inner().try_into_vec_as::<f32>().unwrap();
        let diff = max_abs_diff(&value(&whole), &value(&parts));
        assert!(diff < tolerance::SAME_MATH, "{}: max |Δ| = {diff}", slot.key());
    }
}
