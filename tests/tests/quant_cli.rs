//! QLoRA from the command line: the 4-bit flags (transformers' names) on `generate` and `train`,
//! the same keys in a config file, and a 4-bit checkpoint loading 4-bit by itself.

use std::path::Path;
use std::process::{Command, Output};

use ember_core::checkpoint::{SafetensorsFile, TensorFile};
use ember_tests::{ember_bin, fixtures};

const NF4_DQ: [&str; 4] = ["--load-in-4bit", "--bnb-4bit-quant-type", "nf4", "--bnb-4bit-use-double-quant"];

fn ember(args: &[&str], cache: &Path) -> Output {
    Command::new(ember_bin()).env("EMBER_CACHE_DIR", cache).args(args).output().expect("run ember")
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "ember failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_with_4bit_flags_or_a_4bit_checkpoint_gives_transformers_greedy_ids() {
    let cache = tempfile::tempdir().unwrap();
    let (base, saved) = (fixtures().join("quant/base"), fixtures().join("quant/a-nf4-dq"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("generate.json")).unwrap()).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let ids: Vec<String> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
        let ids = ids.join(",");
        let new = case["generated_ids"].as_array().unwrap().len().to_string();
        let common =
            ["generate", "--prompt-ids", &ids, "--greedy", "--json", "--device", "cpu", "--max-new-tokens", &new];
        let with_flags: Vec<&str> = common.iter().copied().chain(["--model", path(&base)]).chain(NF4_DQ).collect();
        let from_checkpoint: Vec<&str> = common.iter().copied().chain(["--model", path(&saved)]).collect();
        for args in [with_flags, from_checkpoint] {
            let stdout = succeeded(&ember(&args, cache.path()));
            let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
            assert_eq!(json["generated_ids"], case["generated_ids"], "{args:?}");
        }
    }
    // The 4-bit settings alone change nothing: said so, not ignored.
    let out =
        ember(&["generate", "--model", path(&base), "--prompt", "hi", "--bnb-4bit-quant-type", "nf4"], cache.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--load-in-4bit"), "{stderr}");
}

fn train_args<'a>(base: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let mut args = vec!["train", "--model", path(base), "--data", path(data), "--output-dir", path(out)];
    args.extend(["--max-length", "32", "--max-steps", "3", "--learning-rate", "1e-3", "--device", "cpu"]);
    args.extend(["--target-modules-regex", r".*\.1.*query_key_value", "--seed", "7", "--save-steps", "0"]);
    args
}

fn adapter_values(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let file = SafetensorsFile::open(&dir.join("adapter_model.safetensors")).unwrap();
    let mut names = file.names();
    names.sort();
    names.into_iter().map(|n| (n.clone(), file.read(&n).unwrap().data)).collect()
}

#[test]
fn train_over_a_4bit_base_by_flags_or_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, data) = (fixtures().join("quant/base"), fixtures().join("data/train.jsonl"));
    let (by_flags, by_file, full) = (tmp.path().join("flags"), tmp.path().join("file"), tmp.path().join("f32"));

    let mut args = train_args(&base, &data, &by_flags);
    args.extend(NF4_DQ);
    let stdout = succeeded(&ember(&args, tmp.path()));
    assert!(stdout.contains("trainable params"), "{stdout}");

    let config = tmp.path().join("qlora.toml");
    std::fs::write(&config, "load_in_4bit = true\nbnb_4bit_quant_type = \"nf4\"\nbnb_4bit_use_double_quant = true\n")
        .unwrap();
    let mut args = train_args(&base, &data, &by_file);
    args.extend(["--config", path(&config)]);
    succeeded(&ember(&args, tmp.path()));
    assert_eq!(adapter_values(&by_flags), adapter_values(&by_file), "a config file gives the run its flags give");

    succeeded(&ember(&train_args(&base, &data, &full), tmp.path()));
    assert_ne!(adapter_values(&by_flags), adapter_values(&full), "the 4-bit base changes training");
}
