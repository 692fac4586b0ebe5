//! Bad model directories give one clear error naming the file and the problem, never a panic.

use std::path::Path;

use burn::tensor::Device;
use ember_core::checkpoint::ModelDir;
use ember_core::tokenizer::Tokenizer;
use ember_tests::copy_of;

fn load_error(dir: &Path) -> String {
    let result = ModelDir::open(dir).and_then(|d| d.load_model(&Device::flex()).map(|_| ()));
    result.expect_err("loading should fail").to_string()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

#[test]
fn missing_config_json() {
    let (_tmp, dir) = copy_of("a");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("config.json") && err.contains("missing"), "{err}");
}

#[test]
fn unsupported_model_type() {
    let (_tmp, dir) = copy_of("a");
    edit_config(&dir, |c| c["model_type"] = "gpt2".into());
    let err = load_error(&dir);
    assert!(err.contains("config.json") && err.contains("unsupported model_type \"gpt2\""), "{err}");
}

#[test]
fn tensor_with_the_wrong_shape() {
    let (_tmp, dir) = copy_of("a");
    edit_config(&dir, |c| c["hidden_size"] = 64.into());
    let err = load_error(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("has shape") && err.contains("config.json implies"),
        "{err}"
    );
}

#[test]
fn tensor_missing() {
    let (_tmp, dir) = copy_of("a");
    edit_config(&dir, |c| c["n_layer"] = 3.into());
    let err = load_error(&dir);
    assert!(err.contains("transformer.h.2.") && err.contains("missing"), "{err}");
}

#[test]
fn corrupt_safetensors_header() {
    let (_tmp, dir) = copy_of("a");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..16].copy_from_slice(b"garbage!");
    std::fs::write(&path, bytes).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
}

/// A safetensors file whose header lies about a tensor: checked in 64 bits, each lie named.
#[test]
fn safetensors_headers_that_lie_are_refused() {
    let write = |header: &str, data: usize| {
        let (tmp, dir) = copy_of("a");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        (tmp, load_error(&dir))
    };
    for (header, data, says) in [
        (r#"{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#, 16, "shape overflows"),
        (r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, 12, "do not hold"),
        (
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
            20,
            "gap",
        ),
        (r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 16, "end at byte 8 of 16"),
        (r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4, "do not hold"),
    ] {
        let (_tmp, err) = write(header, data);
        assert!(err.contains("not a valid safetensors file") && err.contains(says), "{header}: {err}");
    }
    let (_tmp, err) = write(r#"{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#, 8);
    assert!(err.contains("dtype F64") && err.contains("only F32, F16 and BF16"), "{err}");
}

#[test]
fn truncated_pytorch_bin() {
    let (_tmp, dir) = copy_of("a-bin");
    let path = dir.join("pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("pytorch_model.bin") && err.contains("not a PyTorch checkpoint"), "{err}");
}

#[test]
fn no_weights_at_all() {
    let (_tmp, dir) = copy_of("a");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("no weights found") && err.contains("pytorch_model.bin"), "{err}");
}

#[test]
fn missing_tokenizer() {
    let (_tmp, dir) = copy_of("a");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let config = ModelDir::open(&dir).unwrap().config;
    let err = Tokenizer::open(&dir, &config).err().expect("should fail").to_string();
    assert!(err.contains("tokenizer.json") && err.contains("missing"), "{err}");
}
