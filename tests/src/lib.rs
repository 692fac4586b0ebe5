//! Shared helpers of the end-to-end and parity tests: fixture paths, golden tensors, devices,
//! and the `ember` binary; [`hub_server`] imitates the Hugging Face Hub.

pub mod hub_server;
pub mod random_model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, DeviceKind, DeviceType, Int, Tensor, TensorData};
use ember_core::model::{AttentionMask, BloomForCausalLM};

use safetensors::SafeTensors;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// Every fixture model directory (each holds one weight format).
pub fn model_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("models"))
        .expect("tests/fixtures/models exists (run tests/fixtures/make_fixtures.py)")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A golden tensor file: name → (shape, values as f64).
pub struct Golden {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Golden {
    pub fn open(path: &Path) -> Golden {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I64 => {
                    data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I32 => {
                    data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::U8 => data.iter().map(|&b| b as f64).collect(),
                other => panic!("{}: unexpected dtype {other:?} for {name}", path.display()),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Golden { tensors }
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
    }

    /// An integer tensor of rank 2 as rows.
    pub fn rows(&self, name: &str) -> Vec<Vec<i64>> {
        let (shape, values) = self.get(name);
        values.chunks(shape[1]).map(|r| r.iter().map(|&v| v as i64).collect()).collect()
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name).1.iter().map(|&v| v as f32).collect()
    }
}

/// Logits `[batch, seq, vocab]` (flattened) of `model` for rows of token ids and their 0/1 mask.
pub fn logits(model: &BloomForCausalLM, ids: &[Vec<i64>], mask: &[Vec<i64>], device: &Device) -> Vec<f32> {
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), ids[0].len()]), device);
    model.forward(input, &AttentionMask::from_ints(mask), None).try_into_vec_as::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The devices parity tests run on: burn's CPU backend, and wgpu when an adapter exists
/// (Mesa's software Vulkan in CI). With `EMBER_REQUIRE_WGPU=1` a missing adapter fails the
/// test instead of skipping the wgpu half, so CI cannot pass without exercising wgpu.
pub fn test_devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("cpu", Device::flex())];
    match wgpu_device() {
        Some(d) => {
            eprintln!("running on wgpu too");
            devices.push(("wgpu", d))
        }
        None if std::env::var("EMBER_REQUIRE_WGPU").is_ok_and(|v| v == "1") => {
            panic!("EMBER_REQUIRE_WGPU=1 but wgpu finds no adapter (apt-get install mesa-vulkan-drivers)")
        }
        None => eprintln!("note: no wgpu adapter; wgpu half of the test skipped"),
    }
    devices
}

pub fn wgpu_device() -> Option<Device> {
    let found = Device::enumerate(DeviceType::Wgpu);
    let _ = found.into_iter().next()?;
    Some(Device::wgpu(DeviceKind::DefaultDevice))
}

/// The `ember` binary next to this test executable (`cargo build --release` builds it).
pub fn ember_bin() -> PathBuf {
    if let Ok(path) = std::env::var("EMBER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(if cfg!(windows) { "ember.exe" } else { "ember" });
    assert!(bin.is_file(), "{} not found: build it first with `cargo build --release -p ember-native`", bin.display());
    bin
}

/// A writable copy of fixture model `name` (in a temporary directory that lives as long as the
/// returned handle).
pub fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

/// How close two results must be, one constant per kind of comparison.
pub mod tolerance {
    /// ember's f32 outputs (logits, hidden states) against transformers' on the same weights:
    /// absolute, for the different summation orders of two implementations.
    pub const VS_TRANSFORMERS: f32 = 1e-4;
    /// A loss against transformers' or peft's, relative.
    pub const LOSS_VS_TRANSFORMERS: f64 = 1e-4;
    /// A training run's per-step loss, gradient norm and learning rate against transformers'
    /// Trainer, relative: on the CPU, and on wgpu, whose reductions differ more.
    pub const TRAINING_CPU: f64 = 1e-4;
    pub const TRAINING_WGPU: f64 = 1e-3;
    /// The same computation done two ways inside ember (merged and unmerged adapters, the
    /// vocabulary in blocks or whole): absolute.
    pub const SAME_MATH: f32 = 1e-5;
    /// A fused kernel against its plain computation, relative to the values' scale, in f32.
    pub const KERNEL: f32 = 1e-4;
    /// The same with f16 weights: for values and for gradients.
    pub const KERNEL_F16: (f32, f32) = (1e-3, 1e-2);
}

/// A fixture model's special-token ids, from its config.json (not written into tests).
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
}

pub fn special_ids(model: &str) -> SpecialIds {
    let config = ember_core::checkpoint::ModelDir::open(&model_dir(model)).unwrap().config;
    let id = |v: Option<u32>, what: &str| v.unwrap_or_else(|| panic!("fixture {model} has no {what}"));
    SpecialIds {
        bos: id(config.bos_token_id, "bos"),
        eos: id(config.eos_token_id, "eos"),
        pad: id(config.pad_token_id, "pad"),
    }
}

/// Where ember's forward pass of fixture model `a` first leaves transformers' (beyond
/// [`tolerance::VS_TRANSFORMERS`]): the stage (`embeddings`, `block.N`, `ln_f`) and its largest
/// difference, from `models/a/hidden_states.safetensors`; `None` when every stage agrees. A
/// failing logits test can then say which block to look at.
pub fn first_divergence(model: &BloomForCausalLM, split: &str, device: &Device) -> Option<(String, f32)> {
    use ember_core::model::AttentionBias;
    let golden = Golden::open(&model_dir("a").join("golden.safetensors"));
    let stages = Golden::open(&model_dir("a").join("hidden_states.safetensors"));
    let (ids, mask) = (golden.rows(&format!("{split}.input_ids")), golden.rows(&format!("{split}.attention_mask")));
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), ids[0].len()]), device);
    let mask = AttentionMask::from_ints(&mask);
    let bias = AttentionBias::new(&mask, model.num_heads, ids[0].len(), device);
    let (t, kernels) = (&model.transformer, &model.kernels);
    let diverges = |stage: &str, x: &Tensor<3>| {
        let diff =
            max_abs_diff(&x.clone().try_into_vec_as::<f32>().unwrap(), &stages.f32s(&format!("{split}.{stage}")));
        (diff > tolerance::VS_TRANSFORMERS).then(|| (stage.to_owned(), diff))
    };
    let mut x = t.word_embeddings_layernorm.forward(t.word_embeddings.forward(input), kernels);
    if let Some(found) = diverges("embeddings", &x) {
        return Some(found);
    }
    for (i, block) in t.h.iter().enumerate() {
        x = block.forward(x, &bias, kernels, None);
        if let Some(found) = diverges(&format!("block.{i}"), &x) {
            return Some(found);
        }
    }
    diverges("ln_f", &t.ln_f.forward(x, kernels))
}

/// transformers' Trainer runs recorded by make_fixtures.py (`train/run_*.json`,
/// `quant/train_*.json`) and the checks every trainer test makes against them.
pub mod trainer_runs {
    use std::path::Path;

    use ember_core::checkpoint::{ModelDir, SafetensorsFile, TensorFile};
    use ember_core::data::formats::open_examples;
    use ember_core::data::{Columns, TokenizedDataset};
    use ember_core::lora::adapter_file::save_adapter;
    use ember_core::template::Template;
    use ember_core::tokenizer::Tokenizer;
    use ember_core::train::{Trainer, TrainingArgs};
    use serde_json::Value;

    use super::{fixtures, max_abs_diff};

    /// The recipe's training data (`data/train.jsonl`, truncated at 32) tokenized for `model_dir`.
    pub fn dataset(model_dir: &Path) -> TokenizedDataset {
        let tokenizer = Tokenizer::open(model_dir, &ModelDir::open(model_dir).unwrap().config).unwrap();
        let examples = open_examples(&fixtures().join("data/train.jsonl"), "train", &Columns::default()).unwrap();
        TokenizedDataset::from_examples(examples, &tokenizer, &Template::HumanAssistant, 32).unwrap()
    }

    /// A recorded run, by its path under tests/fixtures.
    pub fn reference(path: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(path)).unwrap()).unwrap()
    }

    /// The run's arguments, in sequential order (the recordings use a sequential sampler).
    pub fn args_of(run: &Value, output_dir: &str) -> TrainingArgs {
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

    /// `a` within `rel` of `b`, relative.
    pub fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    /// Runs every recorded step, checking the micro-batches (where recorded), loss, grad_norm,
    /// learning rate and epoch; `what` names the run in failures.
    pub fn check_steps(t: &mut Trainer, run: &Value, data: &TokenizedDataset, tolerance: f64, what: &str) {
        let steps = run["steps"].as_array().unwrap();
        assert_eq!(t.total_steps, steps.len(), "{what}: steps");
        for expected in steps {
            let step = t.global_step;
            if let Some(batches) = expected.get("micro_batches") {
                let planned: Vec<Vec<usize>> = serde_json::from_value(batches.clone()).unwrap();
                assert_eq!(t.plan(step).0, planned, "{what} step {}: micro-batches", step + 1);
            }
            let r = t.step(data).unwrap();
            let what = format!("{what} step {}", r.step);
            let want = |key: &str| expected[key].as_f64().unwrap();
            assert!(close(r.loss, want("loss"), tolerance), "{what}: loss {} vs {}", r.loss, want("loss"));
            assert!(
                close(r.grad_norm, want("grad_norm"), tolerance),
                "{what}: grad_norm {} vs {}",
                r.grad_norm,
                want("grad_norm")
            );
            assert!(
                close(r.learning_rate, want("learning_rate"), 1e-9)
                    || want("learning_rate") == 0.0 && r.learning_rate == 0.0,
                "{what}: lr"
            );
            assert!(close(r.epoch, want("epoch"), 1e-9), "{what}: epoch {}", r.epoch);
        }
    }

    /// Saves the trained adapter into `out` and compares every tensor with the recorded final
    /// adapter in `reference_dir` (under tests/fixtures).
    pub fn check_final_adapter(t: &Trainer, out: &Path, reference_dir: &str, tolerance: f64, what: &str) {
        save_adapter(&t.model, &t.lora, out).unwrap();
        let ours = SafetensorsFile::open(&out.join("adapter_model.safetensors")).unwrap();
        let theirs = SafetensorsFile::open(&fixtures().join(reference_dir).join("adapter_model.safetensors")).unwrap();
        for key in theirs.names() {
            let diff = max_abs_diff(&ours.read(&key).unwrap().data, &theirs.read(&key).unwrap().data);
            assert!(diff < tolerance as f32, "{what} final {key}: {diff}");
        }
    }
}
