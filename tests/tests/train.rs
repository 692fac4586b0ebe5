//! The trainer against transformers' Trainer runs recorded in tests/fixtures/train: same
//! micro-batches, per-step loss, grad_norm and learning rate, and the same final adapter.

use burn::tensor::Device;
use ember_core::checkpoint::{ModelDir, SafetensorsFile, TensorFile};
use ember_core::data::formats::open_examples;
use ember_core::data::{Columns, TokenizedDataset};
use ember_core::lora::adapter_file::{load_adapter, save_adapter};
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::template::Template;
use ember_core::tokenizer::{PaddingSide, Tokenizer};
use ember_core::train::{Trainer, TrainingArgs};
use ember_tests::{fixtures, max_abs_diff, model_dir, special_ids, test_devices, tolerance};
use serde_json::Value;

fn dataset() -> TokenizedDataset {
    let dir = model_dir("a");
    let tokenizer = Tokenizer::open(&dir, &ModelDir::open(&dir).unwrap().config).unwrap();
    let examples = open_examples(&fixtures().join("data/train.jsonl"), "train", &Columns::default()).unwrap();
    TokenizedDataset::from_examples(examples, &tokenizer, &Template::HumanAssistant, 32).unwrap()
}

fn reference(run: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("train/{run}.json"))).unwrap()).unwrap()
}

fn args_of(run: &Value, output_dir: &str) -> TrainingArgs {
    let a = &run["args"];
    TrainingArgs {
        output_dir: output_dir.into(),
        per_device_train_batch_size: a["per_device_train_batch_size"].as_u64().unwrap() as usize,
        gradient_accumulation_steps: a["gradient_accumulation_steps"].as_u64().unwrap() as usize,
        learning_rate: a["learning_rate"].as_f64().unwrap(),
        lr_scheduler_type: serde_json::from_value(a["lr_scheduler_type"].clone()).unwrap(),
        warmup_steps: a.get("warmup_steps").and_then(Value::as_u64).unwrap_or(0) as usize,
        max_grad_norm: a["max_grad_norm"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
        max_steps: a["max_steps"].as_i64().unwrap(),
        adam_beta1: a["adam_beta1"].as_f64().unwrap(),
        adam_beta2: a["adam_beta2"].as_f64().unwrap(),
        adam_epsilon: a["adam_epsilon"].as_f64().unwrap(),
        logging_steps: 1,
        save_steps: 0,
        seed: 42,
        shuffle: false,
        ..TrainingArgs::default()
    }
}

fn trainer(device: &Device, args: TrainingArgs, data: &TokenizedDataset) -> Trainer {
    let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(device).unwrap();
    let (lora, _) = load_adapter(&mut model, &fixtures().join("train/init_adapter"), device, false).unwrap();
    Trainer::new(model, lora, args, data, special_ids("a").pad, PaddingSide::Left, device).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn steps_and_final_adapter_equal_transformers_trainer() {
    let data = dataset();
    for (device_name, base) in test_devices() {
        let tolerance = if device_name == "cpu" { tolerance::TRAINING_CPU } else { tolerance::TRAINING_WGPU };
        // --gradient-checkpointing recomputes activations and must not change a single step.
        let modes = [
            ("", base.clone().autodiff()),
            (" with gradient checkpointing", base.clone().autodiff().gradient_checkpointing()),
        ];
        for ((mode, device), run_name) in modes.iter().flat_map(|m| ["run_a", "run_b"].map(|r| (m, r))) {
            let device_name = format!("{device_name}{mode}");
            let run = reference(run_name);
            let out = tempfile::tempdir().unwrap();
            let mut t = trainer(device, args_of(&run, out.path().to_str().unwrap()), &data);
            let steps = run["steps"].as_array().unwrap();
            assert_eq!(t.total_steps, steps.len());
            for expected in steps {
                let step = t.global_step;
                let planned: Vec<Vec<usize>> = serde_json::from_value(expected["micro_batches"].clone()).unwrap();
                assert_eq!(t.plan(step).0, planned, "{run_name} step {}: micro-batches", step + 1);
                let r = t.step(&data).unwrap();
                let what = format!("{device_name} {run_name} step {}", r.step);
                assert!(
                    close(r.loss, expected["loss"].as_f64().unwrap(), tolerance),
                    "{what}: loss {} vs {}",
                    r.loss,
                    expected["loss"]
                );
                assert!(
                    close(r.grad_norm, expected["grad_norm"].as_f64().unwrap(), tolerance),
                    "{what}: grad_norm {} vs {}",
                    r.grad_norm,
                    expected["grad_norm"]
                );
                assert!(
                    close(r.learning_rate, expected["learning_rate"].as_f64().unwrap(), 1e-9)
                        || expected["learning_rate"] == 0.0 && r.learning_rate == 0.0,
                    "{what}: lr"
                );
                assert!(close(r.epoch, expected["epoch"].as_f64().unwrap(), 1e-9), "{what}: epoch {}", r.epoch);
            }
            save_adapter(&t.model, &t.lora, out.path()).unwrap();
            let ours = SafetensorsFile::open(&out.path().join("adapter_model.safetensors")).unwrap();
            let theirs =
                SafetensorsFile::open(&fixtures().join(format!("train/{run_name}_final/adapter_model.safetensors")))
                    .unwrap();
            for key in theirs.names() {
                let diff = max_abs_diff(&ours.read(&key).unwrap().data, &theirs.read(&key).unwrap().data);
                assert!(diff < tolerance as f32, "{device_name} {run_name} final {key}: {diff}");
            }
        }
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
    assert!(!t.model.transformer.h[0].self_attention.query_key_value.weight.is_require_grad());
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
