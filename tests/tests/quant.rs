//! QLoRA against bitsandbytes (tests/fixtures/quant, made by make_fixtures.py with bitsandbytes
//! 0.50): quantization byte for byte, dequantization bit for bit, for NF4 and FP4 with and
//! without double quantization, on shapes whose sizes are and are not multiples of a block.

use burn::tensor::Device;
use ember_core::checkpoint::{Checkpoint, LoadOptions, ModelDir};
use ember_core::generate::{generate, GenerationConfig};
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::merge::save_merged;
use ember_core::model::{ModelShape, ModuleKind, ModuleTree, WeightDType, WeightSource};
use ember_core::quant::{Absmax, QuantConfig, QuantType, Quantized, QuantizedWeight};
use ember_core::tokenizer::PaddingSide;
use ember_core::train::{Trainer, TrainingArgs};
use ember_tests::{fixtures, logits, max_abs_diff, special_ids, test_devices, tolerance, trainer_runs, Golden};
use safetensors::SafeTensors;
use serde_json::Value;

const SHAPES: [(&str, [usize; 2]); 4] =
    [("even", [192, 64]), ("odd", [37, 53]), ("row", [5, 300]), ("wide", [300, 64])];
const CONFIGS: [(&str, QuantType, bool); 4] = [
    ("nf4", QuantType::Nf4, false),
    ("nf4-dq", QuantType::Nf4, true),
    ("fp4", QuantType::Fp4, false),
    ("fp4-dq", QuantType::Fp4, true),
];

fn golden() -> Golden {
    Golden::open(&fixtures().join("quant/quantize.safetensors"))
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn bytes(golden: &Golden, name: &str) -> Vec<u8> {
    golden.get(name).1.iter().map(|&v| v as u8).collect()
}

#[test]
fn quantization_equals_bitsandbytes_byte_for_byte_and_bit_for_bit() {
    let g = golden();
    for (shape_name, shape) in SHAPES {
        let input = g.f32s(&format!("{shape_name}.input"));
        for (cfg, quant_type, double) in CONFIGS {
            let what = format!("{shape_name} {cfg}");
            let p = format!("{shape_name}.{cfg}");
            let q = Quantized::quantize(&input, shape, quant_type, double);
            assert_eq!(q.packed, bytes(&g, &format!("{p}.packed")), "{what}: packed codes");
            match &q.absmax {
                Absmax::Plain(absmax) => {
                    assert_eq!(bits(absmax), bits(&g.f32s(&format!("{p}.absmax"))), "{what}: absmax")
                }
                Absmax::Nested { codes, nested, offset, .. } => {
                    assert_eq!(
                        offset.to_bits(),
                        g.f32s(&format!("{p}.offset"))[0].to_bits(),
                        "{what}: offset (the absmax mean)"
                    );
                    let want = bytes(&g, &format!("{p}.absmax"));
                    let diff: Vec<(usize, u8, u8)> = codes
                        .iter()
                        .zip(&want)
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .map(|(i, (a, b))| (i, *a, *b))
                        .collect();
                    assert!(diff.is_empty(), "{what}: nested codes differ at (index, ours, bnb): {diff:?}");
                    assert_eq!(bits(nested), bits(&g.f32s(&format!("{p}.nested_absmax"))), "{what}: nested absmax");
                }
            }
            // bitsandbytes' kernels disagree on the sign of FP4's zero (+0 in its vectorized
            // path, -0 in its scalar one, used for rows not a multiple of 16 long); adding +0
            // makes both +0 and changes nothing else.
            let unsigned_zero = |v: Vec<f32>| v.into_iter().map(|x| x + 0.0).collect::<Vec<f32>>();
            let (ours, theirs) = (unsigned_zero(q.dequantize()), unsigned_zero(g.f32s(&format!("{p}.dequantized"))));
            let diff: Vec<(usize, f32, f32)> = ours
                .iter()
                .zip(&theirs)
                .enumerate()
                .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
                .map(|(i, (a, b))| (i, *a, *b))
                .take(8)
                .collect();
            assert!(
                ours.len() == theirs.len() && diff.is_empty(),
                "{what}: dequantized values differ at (index, ours, bnb): {diff:?}"
            );
        }
    }
}

#[test]
fn the_codes_are_bitsandbytes_tables() {
    let g = golden();
    for (name, quant_type) in [("nf4", QuantType::Nf4), ("fp4", QuantType::Fp4)] {
        assert_eq!(bits(&ember_core::quant::bnb::code(quant_type)), bits(&g.f32s(&format!("code.{name}"))), "{name}");
    }
    assert_eq!(bits(&ember_core::quant::bnb::DYNAMIC_MAP), bits(&g.f32s("nested_code")));
}

/// bitsandbytes' settings of a fixture configuration (`nf4-dq`, `fp4`), compute in f32.
fn config_of(name: &str) -> QuantConfig {
    let (_, quant_type, double) = CONFIGS.iter().find(|(n, ..)| *n == name).copied().expect("a fixture configuration");
    QuantConfig { bnb_4bit_quant_type: quant_type, bnb_4bit_use_double_quant: double, ..QuantConfig::default() }
}

fn quantized_options(name: &str) -> LoadOptions {
    LoadOptions { quant: Some(config_of(name)), ..LoadOptions::default() }
}

/// Values with FP4's zero made +0 (see above).
fn unsigned_zero_bits(values: Vec<f32>) -> Vec<u32> {
    values.into_iter().map(|x| (x + 0.0).to_bits()).collect()
}

#[test]
fn dequantization_on_the_device_equals_bitsandbytes_bit_for_bit() {
    let g = golden();
    for (device_name, device) in test_devices() {
        for (shape_name, shape) in SHAPES {
            let input = g.f32s(&format!("{shape_name}.input"));
            for (cfg, quant_type, double) in CONFIGS {
                let what = format!("{device_name} {shape_name} {cfg}");
                let q = Quantized::quantize(&input, shape, quant_type, double);
                let w = QuantizedWeight::upload(&q, WeightDType::F32, &device);
                let want = unsigned_zero_bits(g.f32s(&format!("{shape_name}.{cfg}.dequantized")));
                let fused = w.dequantize().reshape([shape[0] * shape[1]]).try_into_vec_as::<f32>().unwrap();
                assert!(unsigned_zero_bits(fused) == want, "{what}: the kernel's values differ from bitsandbytes'");
                let plain = dequantize_plain(&w);
                assert!(unsigned_zero_bits(plain) == want, "{what}: the plain path's values differ from bitsandbytes'");
            }
        }
    }
}

/// The dequantization in plain burn operations, read back.
fn dequantize_plain(w: &QuantizedWeight) -> Vec<f32> {
    let kernel_weight = ember_shaders::linear_4bit::Weight4bit {
        words: w.words.val(),
        absmax: w.absmax.val(),
        code: w.code.val(),
        shape: [w.out_features, w.in_features],
        compute: burn::tensor::FloatDType::F32,
    };
    let t = ember_shaders::linear_4bit::dequantize_plain(&kernel_weight);
    t.reshape([w.out_features * w.in_features]).try_into_vec_as::<f32>().unwrap()
}

#[test]
fn a_model_quantized_at_load_has_bitsandbytes_bytes() {
    let dir = ModelDir::open(&base_dir()).unwrap();
    let device = Device::flex();
    let mut base = Checkpoint::open(&dir.dir, &device).unwrap();
    let modules = ModelShape::of_config(&dir.config).modules();
    for cfg in QUANT_MODELS {
        let config = config_of(cfg);
        let linears: Vec<_> = modules
            .iter()
            .filter(|m| matches!(m.kind, ModuleKind::Linear { .. }) && config.quantizes(&m.name))
            .collect();
        assert_eq!(linears.len(), 8, "the four Linear layers of both blocks (lm_head is skipped)");
        let mut saved = Checkpoint::open(&fixtures().join(format!("quant/a-{cfg}")), &device).unwrap();
        for m in &linears {
            let ModuleKind::Linear { out_features, in_features, .. } = m.kind else { unreachable!() };
            let (name, shape) = (format!("{}.weight", m.name), [out_features, in_features]);
            let values = base.host_values(&name, shape).unwrap();
            let ours =
                Quantized::quantize(&values, shape, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant);
            let theirs = saved.stored_4bit(&name, shape).unwrap().expect("saved 4-bit by transformers");
            assert!(
                ours == theirs,
                "{cfg} {name}: ember's quantization differs from the checkpoint transformers saved"
            );
        }
    }
}

const QUANT_MODELS: [&str; 2] = ["nf4-dq", "fp4"];

/// The 4-bit fixtures' f32 base (model "a"'s vocabulary, hidden 64: see make_fixtures.py).
fn base_dir() -> std::path::PathBuf {
    fixtures().join("quant/base")
}

#[test]
fn logits_and_greedy_ids_equal_transformers_with_bitsandbytes() {
    for (device_name, device) in test_devices() {
        for cfg in QUANT_MODELS {
            let what = format!("{device_name} {cfg}");
            let saved_dir = fixtures().join(format!("quant/a-{cfg}"));
            let golden = Golden::open(&saved_dir.join("golden.safetensors"));
            let model = ModelDir::open(&base_dir()).unwrap().load(&device, &quantized_options(cfg)).unwrap();
            assert!(model.has_4bit_weights(), "{what}: the model is 4-bit");
            // Saved by transformers already 4-bit: loads 4-bit from its config.json alone.
            let saved = ModelDir::open(&saved_dir).unwrap().load(&device, &LoadOptions::default()).unwrap();
            assert!(saved.has_4bit_weights(), "{what}: the saved model loads 4-bit");
            for split in ["unpadded", "padded"] {
                let (ids, mask) =
                    (golden.rows(&format!("{split}.input_ids")), golden.rows(&format!("{split}.attention_mask")));
                let ours = logits(&model, &ids, &mask, &device);
                let diff = max_abs_diff(&ours, &golden.f32s(&format!("{split}.logits")));
                assert!(diff < tolerance::VS_TRANSFORMERS, "{what} {split}: logits differ by {diff}");
                let from_saved = logits(&saved, &ids, &mask, &device);
                assert_eq!(from_saved, ours, "{what} {split}: the saved checkpoint and quantizing at load differ");
            }
            let cases: Value =
                serde_json::from_str(&std::fs::read_to_string(saved_dir.join("generate.json")).unwrap()).unwrap();
            let ids = special_ids("a");
            for case in cases["cases"].as_array().unwrap() {
                let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
                let want: Vec<u32> = serde_json::from_value(case["generated_ids"].clone()).unwrap();
                let config = GenerationConfig {
                    max_new_tokens: Some(want.len()),
                    eos_token_id: Some(ids.eos),
                    pad_token_id: ids.pad,
                    ..Default::default()
                };
                let ours = generate(&model, std::slice::from_ref(&prompt), &config, &device, |_| {}).unwrap();
                assert_eq!(ours[0], want, "{what}: greedy ids for {prompt:?}");
            }
        }
    }
}

/// The recipe over an nf4 (double-quantized) base from a fixed adapter (regex target and a
/// `word_embeddings` copy), batch 1 × accumulation 8, against transformers' Trainer over
/// bitsandbytes' `Linear4bit` (after `prepare_model_for_kbit_training`).
#[test]
fn qlora_training_equals_transformers_trainer_over_a_4bit_base() {
    let data = trainer_runs::dataset(&base_dir());
    let run = trainer_runs::reference("quant/train_nf4-dq.json");
    assert_eq!(run["quantization"], "nf4-dq");
    for (device_name, base) in test_devices() {
        let tolerance = if device_name == "cpu" { tolerance::TRAINING_CPU } else { tolerance::TRAINING_WGPU };
        let device = base.clone().autodiff();
        // The third run trains the model loaded for inference, in place (the page's way).
        for (checkpointing, in_place) in [(false, false), (true, false), (false, true)] {
            let what = format!(
                "{device_name}{}{}",
                if checkpointing { " with gradient checkpointing" } else { "" },
                if in_place { ", trained in place" } else { "" }
            );
            let out = tempfile::tempdir().unwrap();
            let dir = ModelDir::open(&base_dir()).unwrap();
            let mut model = if in_place {
                dir.load(&base, &quantized_options("nf4-dq")).unwrap().for_training()
            } else {
                dir.load(&device, &quantized_options("nf4-dq")).unwrap()
            };
            let (lora, _) = load_adapter(&mut model, &fixtures().join("quant/init_adapter"), &device, false).unwrap();
            assert!(model.has_4bit_weights());
            let args = TrainingArgs {
                gradient_checkpointing: checkpointing,
                ..trainer_runs::args_of(&run, out.path().to_str().unwrap())
            };
            let pad = special_ids("a").pad;
            let mut t = Trainer::new(model, lora, args, &data, pad, PaddingSide::Left, &device).unwrap();
            trainer_runs::check_steps(&mut t, &run, &data, tolerance, &what);
            trainer_runs::check_final_adapter(&t, out.path(), "quant/train_nf4-dq_final", tolerance, &what);
        }
    }
}

/// `ember merge` over a 4-bit base: dequantized, the merged model gives peft's outputs with the
/// adapter unmerged; requantized, it is tensor for tensor what peft's `merge_and_unload()` over
/// bitsandbytes' layers saves (the adapted layers quantized again, the others as they were).
#[test]
fn merging_over_a_4bit_base_equals_peft() {
    let device = Device::flex();
    let config = config_of("nf4-dq");
    let mut model = ModelDir::open(&base_dir()).unwrap().load(&device, &quantized_options("nf4-dq")).unwrap();
    load_adapter(&mut model, &fixtures().join("quant/train_nf4-dq_final"), &device, false).unwrap();
    let golden = Golden::open(&fixtures().join("quant/train_nf4-dq_final/golden.safetensors"));
    let (ids, mask) = (golden.rows("padded.input_ids"), golden.rows("padded.attention_mask"));
    let unmerged = logits(&model, &ids, &mask, &device);
    let diff = max_abs_diff(&unmerged, &golden.f32s("padded.logits"));
    assert!(diff < tolerance::VS_TRANSFORMERS, "4-bit base + adapter: logits differ from peft's by {diff}");

    let dense = tempfile::tempdir().unwrap();
    save_merged(&model, &base_dir(), dense.path(), u64::MAX, None).unwrap();
    let merged = ModelDir::open(dense.path()).unwrap();
    assert!(merged.config.quantization_config.is_none(), "written dequantized");
    let merged = merged.load(&device, &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(&logits(&merged, &ids, &mask, &device), &unmerged);
    assert!(diff < tolerance::VS_TRANSFORMERS, "dequantized merge: logits differ by {diff}");

    let requantized = tempfile::tempdir().unwrap();
    save_merged(&model, &base_dir(), requantized.path(), u64::MAX, Some(&config)).unwrap();
    let ours = std::fs::read(requantized.path().join("model.safetensors")).unwrap();
    let theirs = std::fs::read(fixtures().join("quant/merged_nf4-dq/model.safetensors")).unwrap();
    let (ours, theirs) = (SafeTensors::deserialize(&ours).unwrap(), SafeTensors::deserialize(&theirs).unwrap());
    let mut names: Vec<String> = theirs.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let mut ours_names: Vec<String> = ours.names().into_iter().map(str::to_owned).collect();
    ours_names.sort();
    assert_eq!(ours_names, names, "the same tensors as peft's");
    for name in &names {
        let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
        assert!(a.dtype() == b.dtype() && a.shape() == b.shape() && a.data() == b.data(), "{name} differs from peft's");
    }
    let reloaded = ModelDir::open(requantized.path()).unwrap();
    assert_eq!(reloaded.config.quantization_config.as_ref(), Some(&config));
}

/// A weight larger than one dequantization chunk (so the matmul goes through it in row ranges)
/// gives what the whole dequantized weight gives, forward and backward.
#[test]
fn the_matmul_in_row_ranges_equals_the_whole_weight() {
    use burn::tensor::{Distribution, Tensor};
    let (rows, cols) = (ember_shaders::ops::DEQUANTIZE_CHUNK_VALUES / 64 + 300, 64);
    assert!(ember_shaders::ops::weight_chunks([rows, cols]).len() > 1);
    for (device_name, device) in test_devices() {
        let device = device.autodiff();
        device.seed(5);
        let w: Vec<f32> = Tensor::<1>::random([rows * cols], Distribution::Normal(0.0, 0.05), &device.clone().inner())
            .try_into_vec_as::<f32>()
            .unwrap();
        let q = QuantizedWeight::upload(
            &Quantized::quantize(&w, [rows, cols], QuantType::Nf4, false),
            WeightDType::F32,
            &device,
        );
        let x = Tensor::<2>::random([3, cols], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let y = q.forward(x.clone());
        let dense = q.dequantize();
        let x2 = x.clone().detach().require_grad();
        let y2 = x2.clone().matmul(dense.transpose());
        let values = |t: Tensor<2>| t.inner().reshape([-1]).try_into_vec_as::<f32>().unwrap();
        let diff = max_abs_diff(&values(y.clone()), &values(y2.clone()));
        assert!(diff < tolerance::SAME_MATH, "{device_name}: forward differs by {diff}");
        let (g1, g2) = (y.sum().backward(), y2.sum().backward());
        let (dx1, dx2) = (x.grad(&g1).unwrap(), x2.grad(&g2).unwrap());
        let diff = max_abs_diff(&values(dx1), &values(dx2));
        assert!(diff < 1e-3, "{device_name}: input gradient differs by {diff}");
    }
}

/// A 4-bit checkpoint from a stranger: each damage gives an error naming the weight, not a
/// panic or a silently wrong model.
#[test]
fn damaged_4bit_checkpoints_are_refused_by_name() {
    let saved = fixtures().join("quant/a-nf4-dq");
    let bytes = std::fs::read(saved.join("model.safetensors")).unwrap();
    let original = SafeTensors::deserialize(&bytes).unwrap();
    let weight = "transformer.h.1.mlp.dense_4h_to_h.weight";
    let state_key = format!("{weight}.quant_state.bitsandbytes__nf4");
    let state = String::from_utf8(original.tensor(&state_key).unwrap().data().to_vec()).unwrap();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("shape", state_key.clone(), state.replace("\"shape\": [64, 256]", "\"shape\": [64, 255]").into_bytes()),
        ("blocksize", state_key.clone(), state.replace("\"blocksize\": 64", "\"blocksize\": 128").into_bytes()),
        ("json", state_key.clone(), b"{\"quant_type\": ".to_vec()),
        ("packed", weight.to_owned(), vec![0u8; 100]),
        ("absmax", format!("{weight}.absmax"), vec![7u8; 3]),
    ];
    for (what, key, data) in cases {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(saved.join(f), dir.path().join(f)).unwrap();
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = original
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                if name == key {
                    let shape = if data.len() == view.data().len() { view.shape().to_vec() } else { vec![data.len()] };
                    (name, safetensors::tensor::TensorView::new(view.dtype(), shape, &data).unwrap())
                } else {
                    (name, view)
                }
            })
            .collect();
        std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        let err =
            ModelDir::open(dir.path()).unwrap().load(&Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(weight) && err.contains("model.safetensors"), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
}

/// The page generates from the model it trained (`valid()` of the autodiff model) and offers
/// its adapter for download: over a 4-bit base both must give the same logits as loading the
/// base 4-bit for inference and the adapter onto it.
#[test]
fn a_4bit_model_off_the_autodiff_graph_equals_the_one_loaded_for_inference() {
    let golden = Golden::open(&fixtures().join("quant/a-nf4-dq/golden.safetensors"));
    let (ids, mask) = (golden.rows("padded.input_ids"), golden.rows("padded.attention_mask"));
    for (device_name, base) in test_devices() {
        let device = base.clone().autodiff();
        let mut trained = ModelDir::open(&base_dir()).unwrap().load(&device, &quantized_options("nf4-dq")).unwrap();
        load_adapter(&mut trained, &fixtures().join("quant/init_adapter"), &device, false).unwrap();
        let mut loaded = ModelDir::open(&base_dir()).unwrap().load(&base, &quantized_options("nf4-dq")).unwrap();
        load_adapter(&mut loaded, &fixtures().join("quant/init_adapter"), &base, false).unwrap();
        let diff =
            max_abs_diff(&logits(&trained.valid_model(), &ids, &mask, &base), &logits(&loaded, &ids, &mask, &base));
        assert!(
            diff < tolerance::SAME_MATH,
            "{device_name}: the trained model's valid() differs from loading by {diff}"
        );
    }
}
