//! LoRA against peft: adapters saved by peft give peft's logits, merged and unmerged agree,
//! `ember`'s merged model equals transformers', ember's adapter files have peft's keys,
//! shapes, dtypes and config fields, and the trainable-parameter line is peft's.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ember_core::checkpoint::{ModelDir, SafetensorsFile, TensorFile};
use ember_core::lora::adapter_file::{load_adapter, save_adapter};
use ember_core::lora::inject::lora_report;
use ember_core::lora::merge::{merge, save_merged, unmerge};
use ember_core::lora::{apply_lora, LoraConfig};
use ember_core::model::BloomForCausalLM;
use ember_core::model::ModelShape;
use ember_core::BloomConfig;
use ember_tests::{fixtures, logits, max_abs_diff, model_dir, test_devices, Golden};
use serde_json::Value;

use ember_tests::tolerance::VS_TRANSFORMERS as TOLERANCE;

fn adapter_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("adapters"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("adapter_config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join("adapters").join(name)
}

fn info(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(adapter_dir(name).join("info.json")).unwrap()).unwrap()
}

fn base_of(name: &str) -> String {
    info(name)["base"].as_str().unwrap().to_owned()
}

fn batch_logits(model: &BloomForCausalLM, golden: &Golden, batch: &str, device: &Device) -> Vec<f32> {
    logits(model, &golden.rows(&format!("{batch}.input_ids")), &golden.rows(&format!("{batch}.attention_mask")), device)
}

fn assert_logits(model: &BloomForCausalLM, golden: &Golden, prefix: &str, what: &str, device: &Device) {
    for batch in ["unpadded", "padded"] {
        let diff =
            max_abs_diff(&batch_logits(model, golden, batch, device), &golden.f32s(&format!("{prefix}{batch}.logits")));
        assert!(diff < TOLERANCE, "{what} {batch}: max |Δlogit| = {diff}");
    }
}

#[test]
fn peft_adapters_give_peft_logits_merged_and_unmerged() {
    let names = adapter_names();
    assert!(names.len() >= 4, "{names:?}");
    for (device_name, device) in test_devices() {
        for name in &names {
            let mut model = ModelDir::open(&model_dir(&base_of(name))).unwrap().load_model(&device).unwrap();
            load_adapter(&mut model, &adapter_dir(name), &device, false).unwrap();
            let golden = Golden::open(&adapter_dir(name).join("golden.safetensors"));
            assert_logits(&model, &golden, "", &format!("{device_name} {name}"), &device);
            merge(&mut model);
            assert_logits(&model, &golden, "merged.", &format!("{device_name} {name} merged"), &device);
            unmerge(&mut model);
            assert_logits(&model, &golden, "", &format!("{device_name} {name} unmerged"), &device);
            // Trainable embedding copies and an untied head work in vocabulary blocks too.
            model.set_vocab_block_rows(5);
            assert_logits(&model, &golden, "", &format!("{device_name} {name} in blocks"), &device);
            merge(&mut model);
            assert_logits(&model, &golden, "merged.", &format!("{device_name} {name} merged in blocks"), &device);
        }
    }
}

#[test]
fn merged_directory_equals_transformers_merged_model() {
    let device = Device::flex();
    for name in adapter_names() {
        let mut model = ModelDir::open(&model_dir(&base_of(&name))).unwrap().load_model(&device).unwrap();
        load_adapter(&mut model, &adapter_dir(&name), &device, false).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_merged(&model, &model_dir(&base_of(&name)), out.path(), u64::MAX, None).unwrap();

        let ours = SafetensorsFile::open(&out.path().join("model.safetensors")).unwrap();
        let theirs = SafetensorsFile::open(&adapter_dir(&name).join("merged/model.safetensors")).unwrap();
        let (mut a, mut b) = (ours.names(), theirs.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: merged tensor names");
        for key in &a {
            let (x, y) = (ours.read(key).unwrap(), theirs.read(key).unwrap());
            assert_eq!(x.shape, y.shape, "{name} {key}");
            let diff = max_abs_diff(&x.data, &y.data);
            assert!(diff < ember_tests::tolerance::SAME_MATH, "{name} {key}: {diff}");
        }
        let config = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap()
        };
        assert_eq!(
            config(out.path())["tie_word_embeddings"].as_bool().unwrap_or(true),
            config(&adapter_dir(&name).join("merged"))["tie_word_embeddings"].as_bool().unwrap_or(true),
            "{name}: tie_word_embeddings"
        );
        // And ember runs the merged directory to transformers' merged logits.
        let merged = ModelDir::open(out.path()).unwrap().load_model(&device).unwrap();
        let golden = Golden::open(&adapter_dir(&name).join("golden.safetensors"));
        assert_logits(&merged, &golden, "merged.", &format!("{name} merged dir"), &device);
    }
}

fn config_from_kwargs(name: &str) -> LoraConfig {
    let mut kwargs = info(name)["lora_config_kwargs"].clone();
    kwargs["base_model_name_or_path"] = info(name)["base_model_name_or_path"].clone();
    LoraConfig::from_json(&kwargs.to_string(), name).unwrap()
}

#[test]
fn adapters_saved_by_ember_have_peft_keys_shapes_dtypes_and_config_fields() {
    let device = Device::flex();
    for name in adapter_names() {
        let config = config_from_kwargs(&name);
        let mut model = ModelDir::open(&model_dir(&base_of(&name))).unwrap().load_model(&device).unwrap();
        apply_lora(&mut model, &config, &device).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_adapter(&model, &config, out.path()).unwrap();
        // The weights get a new file's permissions, as the config does (not safetensors' 0600).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(out.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("adapter_model.safetensors"), mode("adapter_config.json"), "{name}: file permissions");
        }

        let ours = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
        let theirs = std::fs::read(adapter_dir(&name).join("adapter_model.safetensors")).unwrap();
        let describe = |bytes: &[u8]| {
            let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
            let mut v: Vec<(String, Vec<usize>, String)> =
                st.tensors().into_iter().map(|(k, t)| (k, t.shape().to_vec(), format!("{:?}", t.dtype()))).collect();
            v.sort();
            v
        };
        assert_eq!(describe(&ours), describe(&theirs), "{name}: keys, shapes, dtypes");

        let mut ours: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
        let mut theirs: Value =
            serde_json::from_str(&std::fs::read_to_string(adapter_dir(&name).join("adapter_config.json")).unwrap())
                .unwrap();
        for v in [&mut ours, &mut theirs] {
            if let Some(Value::Array(t)) = v.get_mut("target_modules") {
                t.sort_by_key(|x| x.to_string());
            }
        }
        assert_eq!(ours, theirs, "{name}: adapter_config.json");
    }
}

#[test]
fn trainable_parameter_line_equals_peft() {
    for name in adapter_names() {
        let base = ModelDir::open(&model_dir(&base_of(&name))).unwrap().config;
        let report = lora_report(&config_from_kwargs(&name), ModelShape::of_config(&base)).unwrap();
        let expected = std::fs::read_to_string(adapter_dir(&name).join("trainable.txt")).unwrap();
        assert_eq!(report.trainable_line(), expected.trim(), "{name}");
        let matched: Vec<String> = serde_json::from_value(info(&name)["matched_modules"].clone()).unwrap();
        let mut targeted = report.targeted.clone();
        targeted.sort();
        assert_eq!(targeted, matched, "{name}");
    }
    // The reference recipe on bloom-1b4-zh's shape (24 layers), counted without any weights.
    let shape = ModelShape::of_config(&BloomConfig::named_shape("bloom-1b4-zh").unwrap());
    for (config_file, line_file) in
        [("recipe-1b4-config.json", "recipe-1b4-trainable.txt"), ("", "qkv-1b4-trainable.txt")]
    {
        let config = if config_file.is_empty() {
            LoraConfig::from_json(r#"{"target_modules": ["query_key_value"]}"#, "qkv").unwrap()
        } else {
            let recipe: Value =
                serde_json::from_str(&std::fs::read_to_string(fixtures().join("adapters").join(config_file)).unwrap())
                    .unwrap();
            LoraConfig::from_json(&recipe["lora_config"].to_string(), config_file).unwrap()
        };
        let expected = std::fs::read_to_string(fixtures().join("adapters").join(line_file)).unwrap();
        assert_eq!(lora_report(&config, shape).unwrap().trainable_line(), expected.trim(), "{line_file}");
    }
}

#[test]
fn bad_adapters_and_targets_are_clear_errors() {
    let device = Device::flex();
    let load = |base: &str| ModelDir::open(&model_dir(base)).unwrap().load_model(&device).unwrap();

    for targets in [r#"["nonexistent"]"#, r#""foo.*""#] {
        let config = LoraConfig::from_json(&format!(r#"{{"target_modules": {targets}}}"#), "t").unwrap();
        let err = apply_lora(&mut load("a"), &config, &device).unwrap_err().to_string();
        assert!(
            err.contains("matched no module") && err.contains("transformer.h.0.self_attention.query_key_value"),
            "{err}"
        );
    }

    let err = load_adapter(&mut load("b"), &adapter_dir("list"), &device, false).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("does not fit"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(adapter_dir("list").join("adapter_model.safetensors"), tmp.path().join("adapter_model.safetensors"))
        .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter_dir("list").join("adapter_config.json")).unwrap())
            .unwrap();
    config["peft_type"] = "PREFIX_TUNING".into();
    std::fs::write(tmp.path().join("adapter_config.json"), config.to_string()).unwrap();
    let err = load_adapter(&mut load("a"), tmp.path(), &device, false).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("PREFIX_TUNING"), "{err}");

    std::fs::remove_file(tmp.path().join("adapter_model.safetensors")).unwrap();
    std::fs::copy(adapter_dir("list").join("adapter_config.json"), tmp.path().join("adapter_config.json")).unwrap();
    let err = load_adapter(&mut load("a"), tmp.path(), &device, false).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("missing"), "{err}");
}
