//! `--dtype f16|bf16`: base weights stored in half precision give logits and per-token losses
//! as close to transformers' f32 results as PyTorch's own f16/bf16 run of the same fixture is
//! (tests/fixtures/models/a/dtype_tolerance.json, written by make_fixtures.py), while the model
//! takes half the memory and LoRA training stays f32. Rounding errors of different kernels are
//! not the same numbers, so "as close" allows [`MARGIN`] times PyTorch's deviation.

use burn::tensor::{DType, Device, Int, Tensor};
use ember_core::checkpoint::{LoadOptions, ModelDir};
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::model::WeightDType;
use ember_tests::{logits, max_abs_diff, model_dir, test_devices, Golden};
use serde_json::Value;

/// PyTorch's own deviation times this is the tolerance.
const MARGIN: f64 = 1.25;

fn tolerance(dtype: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(model_dir("a").join("dtype_tolerance.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json[dtype][key].as_f64().unwrap() * MARGIN
}

/// Next-token cross-entropy at each real position, from `[batch, seq, vocab]` logits (compared
/// token by token: a mean lets errors of opposite sign cancel by chance).
fn token_losses(logits: &[f32], ids: &[Vec<i64>], mask: &[Vec<i64>]) -> Vec<f64> {
    let (b, t) = (ids.len(), ids[0].len());
    let vocab = logits.len() / (b * t);
    let mut losses = Vec::new();
    for r in 0..b {
        for p in 0..t - 1 {
            if mask[r][p + 1] == 0 {
                continue;
            }
            let row = &logits[(r * t + p) * vocab..(r * t + p + 1) * vocab];
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            losses.push(lse - row[ids[r][p + 1] as usize] as f64);
        }
    }
    losses
}

/// Largest |Δ| over the positions the mask keeps (padding rows are not compared, as in PyTorch's).
fn masked_diff(a: &[f32], b: &[f32], mask: &[Vec<i64>]) -> f32 {
    let t = mask[0].len();
    let vocab = a.len() / (mask.len() * t);
    let keep = |i: usize| mask[i / (t * vocab)][(i / vocab) % t] == 1;
    a.iter().zip(b).enumerate().filter(|(i, _)| keep(*i)).map(|(_, (x, y))| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn half_precision_weights_stay_within_pytorchs_own_deviation() {
    let dir = ModelDir::open(&model_dir("a")).unwrap();
    let golden = Golden::open(&model_dir("a").join("golden.safetensors"));
    for (device_name, device) in test_devices() {
        for (dtype, name) in [(WeightDType::F16, "f16"), (WeightDType::Bf16, "bf16")] {
            if !device.supports_dtype(dtype.float_dtype()) {
                eprintln!("{device_name}: {name} not supported by this device, skipped");
                continue;
            }
            let model = dir.load(&device, &LoadOptions { dtype, ..Default::default() }).unwrap();
            assert_eq!(model.transformer.h[0].mlp.dense_h_to_4h.weight.val().dtype(), DType::from(dtype.float_dtype()));
            for batch in ["unpadded", "padded"] {
                let ids = golden.rows(&format!("{batch}.input_ids"));
                let mask = golden.rows(&format!("{batch}.attention_mask"));
                let reference = golden.f32s(&format!("{batch}.logits"));
                let ours = logits(&model, &ids, &mask, &device);
                let diff = masked_diff(&ours, &reference, &mask) as f64;
                let allowed = tolerance(name, "max_abs_logit_diff");
                eprintln!("{device_name} {name} {batch}: max |Δlogit| {diff:.4} (allowed {allowed:.4})");
                assert!(diff <= allowed, "{device_name} {name} {batch}: max |Δlogit| {diff} > PyTorch's {allowed}");
                // Not trivially equal: the weights really were rounded.
                assert!(max_abs_diff(&ours, &reference) > 1e-6, "{device_name} {name}: no rounding seen");
                let (a, b) = (token_losses(&ours, &ids, &mask), token_losses(&reference, &ids, &mask));
                let loss_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                let allowed = tolerance(name, "max_abs_token_loss_diff");
                eprintln!("{device_name} {name} {batch}: max |Δ token loss| {loss_diff:.4} (allowed {allowed:.4})");
                assert!(
                    loss_diff <= allowed,
                    "{device_name} {name} {batch}: max |Δ token loss| {loss_diff} > PyTorch's {allowed}"
                );
            }
        }
    }
}

#[test]
fn lora_weights_stay_f32_on_half_precision_base_weights() {
    let device = Device::flex().autodiff();
    let mut model = ModelDir::open(&model_dir("a"))
        .unwrap()
        .load(&device, &LoadOptions { dtype: WeightDType::F16, ..Default::default() })
        .unwrap();
    let lora = LoraConfig::from_json(
        r#"{"r": 4, "target_modules": ["query_key_value"], "modules_to_save": ["ln_f", "word_embeddings"]}"#,
        "test",
    )
    .unwrap();
    apply_lora(&mut model, &lora, &device).unwrap();
    let qkv = &model.transformer.h[0].self_attention.query_key_value;
    assert_eq!(qkv.weight.val().dtype(), DType::F16);
    assert_eq!(qkv.lora.as_ref().unwrap().lora_a.val().dtype(), DType::F32);
    assert_eq!(model.transformer.ln_f.weight.val().dtype(), DType::F32, "modules_to_save copies train in f32");
    let copy = model.transformer.word_embeddings.trainable_copy.as_ref().unwrap();
    assert_eq!(copy.blocks[0].val().dtype(), DType::F32);
    assert_eq!(model.transformer.word_embeddings.weight.blocks[0].val().dtype(), DType::F16);
}

/// The vocabulary matrix is converted to f16/bf16 on the host before upload (so no f32 copy
/// reaches the device); those values must be the device's own cast, bit for bit, including
/// ties, subnormals and values past f16's range.
#[test]
fn weights_converted_on_the_host_equal_the_device_cast() {
    use burn::tensor::{Tensor, TensorData};
    let mut values: Vec<f32> = (0..4093).map(|i| (i as f32 * 0.7123).sin() * 10f32.powi(i % 13 - 6)).collect();
    values.extend([1.0 + f32::EPSILON * 4096.0, 65520.0, 1e-7, -3.0e38]);
    let n = values.len();
    for (name, device) in test_devices() {
        for dtype in [WeightDType::F16, WeightDType::Bf16] {
            if !device.supports_dtype(dtype.float_dtype()) {
                continue;
            }
            let host = dtype.upload(values.clone(), [n], &device);
            let cast = dtype.stored(Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device));
            assert_eq!(host.dtype(), DType::from(dtype.float_dtype()), "{name} {dtype}: stored dtype");
            let bits = |t: Tensor<1>| -> Vec<u32> {
                t.cast(burn::tensor::FloatDType::F32)
                    .try_into_vec_as::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(host), bits(cast), "{name} {dtype}: host conversion differs from the device's cast");
        }
    }
}

/// An f16 checkpoint kept in f32 (`--dtype f32`, or WebGPU without `shader-f16`): the vocabulary
/// matrix, widened a block at a time on the host (and, read in ranges, read a block of rows at a
/// time), holds exactly the file's values in every block.
#[test]
fn half_checkpoints_kept_f32_hold_the_files_values() {
    use ember_core::checkpoint::{build_model, tensor_file_from_bytes, Checkpoint, SafetensorsFile, TensorFile};
    // hidden 1024: 8,192 rows per 32 MiB block, so 20,000 rows make three blocks.
    let mut config = ember_core::BloomConfig::with_shape(20_000, 1024, 1, 16);
    config.torch_dtype = Some("float16".into());
    let mut bytes = Vec::new();
    ember_tests::random_model::write_weights(&config, "f16", &mut bytes);
    let device = Device::flex();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let stored = file.tensor("transformer.word_embeddings.weight").unwrap();
    let expected: Vec<f32> =
        stored.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    // In memory (whole), and read in ranges a block of rows at a time (as the page reads it).
    let in_memory = tensor_file_from_bytes("model.safetensors", std::sync::Arc::new(bytes.clone())).unwrap();
    let in_ranges: Box<dyn TensorFile> =
        Box::new(SafetensorsFile::from_reader("model.safetensors", Box::new(Ranges(bytes.clone()))).unwrap());
    for file in [in_memory, in_ranges] {
        let mut checkpoint = Checkpoint::from_files("model.safetensors", vec![file], &device);
        let options = LoadOptions { dtype: WeightDType::F32, ..LoadOptions::default() };
        let model = build_model(&config, &mut checkpoint, &device, &options).unwrap();
        let embeddings = &model.transformer.word_embeddings.weight;
        let ids = Tensor::<1, Int>::arange(0..20_000, &device).reshape([1, 20_000]);
        let loaded: Vec<f32> = embeddings.rows(ids).into_data().try_to_vec().unwrap();
        assert_eq!(loaded.len(), expected.len());
        assert!(loaded == expected, "the widened vocabulary matrix differs from the file's values");
    }
}

/// A file in memory read a range at a time.
struct Ranges(Vec<u8>);

impl ember_core::checkpoint::ReadAt for Ranges {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> ember_core::Result<()> {
        out.copy_from_slice(&self.0[offset as usize..offset as usize + out.len()]);
        Ok(())
    }
}
