//! The `ember` binary end to end: `generate --json` gives transformers' greedy ids, `info`
//! reports the model, and bad input ends with one `error:` line and exit status 1.

use std::process::{Command, Output};

use ember_tests::{ember_bin, model_dir};

fn ember(args: &[&str]) -> Output {
    Command::new(ember_bin()).args(args).output().expect("run ember")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "ember failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn cases(model: &str) -> Vec<serde_json::Value> {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir(model).join("generate.json")).unwrap()).unwrap();
    golden["cases"].as_array().unwrap().clone()
}

#[test]
fn generate_json_gives_transformers_greedy_ids() {
    let dir = model_dir("a");
    let dir = dir.to_str().unwrap();
    for case in &cases("a") {
        let max_new = case["max_new_tokens"].to_string();
        let out = if let Some(text) = case.get("prompt_text").and_then(|t| t.as_str()) {
            ember(&[
                "generate",
                "--model",
                dir,
                "--prompt",
                text,
                "--greedy",
                "--json",
                "--device",
                "cpu",
                "--max-new-tokens",
                &max_new,
            ])
        } else {
            let ids: Vec<String> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
            ember(&[
                "generate",
                "--model",
                dir,
                "--prompt-ids",
                &ids.join(","),
                "--greedy",
                "--json",
                "--device",
                "cpu",
                "--max-new-tokens",
                &max_new,
            ])
        };
        let json = stdout_json(&out);
        assert_eq!(json["prompt_ids"], case["prompt_ids"], "prompt ids of {case}");
        assert_eq!(json["generated_ids"], case["generated_ids"], "generated ids of {case}");
        assert!(json["text"].is_string());
    }
}

#[test]
fn max_length_counts_the_prompt() {
    let dir = model_dir("a");
    let out = ember(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "10,11,12,13",
        "--greedy",
        "--json",
        "--device",
        "cpu",
        "--max-length",
        "7",
    ]);
    let json = stdout_json(&out);
    let generated = json["generated_ids"].as_array().unwrap();
    assert!(generated.len() <= 3 && !generated.is_empty(), "{json}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let dir = model_dir("a");
    let run = |seed: &str| {
        stdout_json(&ember(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "你好",
            "--json",
            "--device",
            "cpu",
            "--seed",
            seed,
            "--temperature",
            "1.5",
            "--max-new-tokens",
            "12",
        ]))["generated_ids"]
            .clone()
    };
    assert_eq!(run("1"), run("1"));
}

#[test]
fn info_reports_the_architecture() {
    let out = ember(&["info", "--model", model_dir("b").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6 heads") && text.contains("3 layers"), "{text}");
}

#[test]
fn device_flags_are_checked_with_clear_errors() {
    let model = model_dir("a");
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            "5,6",
            "--max-new-tokens",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    let out = generate(&["--device", "gpu:99"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--device gpu:99") && err.contains("ember devices"), "{err}");

    let out = generate(&["--device", "tpu"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use auto, gpu, gpu:N"), "clap names the accepted values");

    // f16 weights on the CPU: the same greedy tokens as f32 on this fixture, with the flag echoed nowhere else.
    let f32_ids = stdout_json(&generate(&["--device", "cpu"]))["generated_ids"].clone();
    let f16 = generate(&["--device", "cpu", "--dtype", "f16"]);
    assert_eq!(stdout_json(&f16)["generated_ids"], f32_ids);
    let out = generate(&["--device", "cpu", "--dtype", "f8"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use f32, f16 or bf16"));
}

/// `--backend vulkan` pins the graphics API: on a machine with a Vulkan adapter (Mesa's
/// lavapipe in CI) `ember devices` lists it with its limits, and generating on `gpu:0` over
/// Vulkan gives the CPU's greedy tokens.
#[test]
fn backend_flag_pins_the_graphics_api() {
    let out = ember(&["devices", "--backend", "vulkan"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    if !listing.contains("backend Vulkan") {
        assert!(std::env::var("EMBER_REQUIRE_WGPU").map_or(true, |v| v != "1"), "no Vulkan adapter: {listing}");
        eprintln!("note: no Vulkan adapter; skipped");
        return;
    }
    assert!(listing.contains("max storage binding"), "{listing}");
    let model = model_dir("a");
    let run = |device: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "4",
            "--json",
        ];
        args.extend_from_slice(device);
        stdout_json(&ember(&args))["generated_ids"].clone()
    };
    assert_eq!(run(&["--device", "gpu:0", "--backend", "vulkan"]), run(&["--device", "cpu"]));
}

/// Running out of GPU memory is one error line saying how much could not be allocated and what
/// to lower, not a panic (on lavapipe in CI: a 1 GiB-per-row attention score tensor).
#[test]
fn gpu_out_of_memory_is_explained() {
    if ember_tests::wgpu_device().is_none() {
        assert!(std::env::var("EMBER_REQUIRE_WGPU").map_or(true, |v| v != "1"), "no wgpu adapter");
        return;
    }
    let out = ember(&[
        "bench", "train", "--shape", "tiny", "--batch", "512", "--seq", "1024", "--steps", "1", "--warmup", "0",
        "--device", "gpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "device failures exit with 3: {err}");
    let line = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("could not allocate a buffer of") && line.contains("MiB"), "{line}");
    assert!(line.contains("--per-device-train-batch-size") && line.contains("--dtype f16"), "{line}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_error_line_not_a_panic() {
    let out = ember(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: /nonexistent/model: model directory not found"), "{err}");
    assert!(!err.contains("panicked"));

    let out =
        ember(&["generate", "--model", model_dir("a").to_str().unwrap(), "--prompt-ids", "999999", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the model's vocabulary"));
}

#[test]
fn info_prints_peft_trainable_line_for_flags_and_adapters() {
    let fixtures = ember_tests::fixtures();
    let expected = std::fs::read_to_string(fixtures.join("adapters/regex-embed/trainable.txt")).unwrap();
    let out = ember(&[
        "info",
        "--model",
        model_dir("d").to_str().unwrap(),
        "--target-modules-regex",
        r".*\.1.*query_key_value",
        "--modules-to-save",
        "word_embeddings",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("transformer.h.10.self_attention.query_key_value"), "{text}");
    assert_eq!(text.lines().last().unwrap(), expected.trim());

    let out = ember(&[
        "info",
        "--model",
        model_dir("a").to_str().unwrap(),
        "--adapter",
        fixtures.join("adapters/list").to_str().unwrap(),
    ]);
    let expected = std::fs::read_to_string(fixtures.join("adapters/list/trainable.txt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last().unwrap(), expected.trim());
}

#[test]
fn merged_model_generates_what_base_plus_adapter_generates() {
    let fixtures = ember_tests::fixtures();
    let adapter = fixtures.join("adapters/regex-embed");
    let base = model_dir("d");
    let out_dir = tempfile::tempdir().unwrap();
    let merged = out_dir.path().join("merged");
    let out = ember(&[
        "merge",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
        "--max-shard-size",
        "100KB",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(merged.join("model.safetensors.index.json").is_file(), "sharded past --max-shard-size");

    let run = |args: &[&str]| {
        stdout_json(&ember(
            &[
                &[
                    "generate",
                    "--prompt-ids",
                    "40,41,42,43",
                    "--greedy",
                    "--json",
                    "--device",
                    "cpu",
                    "--max-new-tokens",
                    "12",
                ],
                args,
            ]
            .concat(),
        ))["generated_ids"]
            .clone()
    };
    let with_adapter = run(&["--model", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()]);
    let from_merged = run(&["--model", merged.to_str().unwrap()]);
    let without = run(&["--model", base.to_str().unwrap()]);
    assert_eq!(with_adapter, from_merged);
    assert_ne!(with_adapter, without, "the adapter should change the output");
}

#[test]
fn eval_json_reports_transformers_loss_and_data_shows_stats() {
    let fixtures = ember_tests::fixtures();
    let cache = tempfile::tempdir().unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("data/eval.json")).unwrap()).unwrap();
    let out = Command::new(ember_bin())
        .env("EMBER_CACHE_DIR", cache.path())
        .args([
            "eval",
            "--model",
            model_dir("a").to_str().unwrap(),
            "--data",
            fixtures.join("data/dict").to_str().unwrap(),
            "--max-length",
            "32",
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    let json = stdout_json(&out);
    let want = golden["32"]["eval_loss"].as_f64().unwrap();
    assert!(
        (json["eval_loss"].as_f64().unwrap() - want).abs() / want < ember_tests::tolerance::LOSS_VS_TRANSFORMERS,
        "{json}"
    );
    assert_eq!(json["num_tokens"], golden["32"]["num_tokens"]);
    assert_eq!(json["num_examples"], 16);

    let out = Command::new(ember_bin())
        .env("EMBER_CACHE_DIR", cache.path())
        .args([
            "data",
            "--model",
            model_dir("a").to_str().unwrap(),
            "--data",
            fixtures.join("data/train.csv").to_str().unwrap(),
            "--max-length",
            "32",
            "--show",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[Human: 把下面的句子翻译成英文。"), "{text}");
    assert!(text.contains("truncated at 32:    9") && text.contains("without label token: 1"), "{text}");
}

/// `ember web` serves a built page with the MIME types browsers insist on, and without one says
/// how to build it.
#[test]
fn web_serves_the_page_and_explains_a_missing_build() {
    let out = ember(&["web", "--dir", "/nonexistent/dist"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web/build.sh"), "{stderr}");

    let dir = std::env::temp_dir().join(format!("ember-web-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("demo")).unwrap();
    for (name, body) in [
        ("index.html", "<html></html>"),
        ("ember_web_bg.wasm", "\0asm"),
        ("worker.js", "//"),
        ("demo/config.json", "{}"),
    ] {
        std::fs::write(dir.join(name), body).unwrap();
    }
    let mut server = Command::new(ember_bin())
        .args(["web", "--port", "0", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut first_line).unwrap();
    let address = first_line.split("http://").nth(1).and_then(|s| s.split('/').next()).expect(&first_line).to_string();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let checks = [
        ("/", "200 OK", "text/html"),
        ("/ember_web_bg.wasm", "200 OK", "application/wasm"),
        ("/worker.js", "200 OK", "text/javascript"),
        ("/demo/config.json", "200 OK", "application/json"),
        ("/missing.js", "404", "text/plain"),
        ("/../Cargo.toml", "404", "text/plain"),
    ];
    let results: Vec<String> = checks.iter().map(|(path, _, _)| get(path)).collect();
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for ((path, status, mime), response) in checks.iter().zip(results) {
        let head = response.split("\r\n\r\n").next().unwrap_or_default();
        assert!(head.contains(status) && head.contains(&format!("Content-Type: {mime}")), "GET {path}:\n{head}");
    }
}
