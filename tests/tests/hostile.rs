//! Files and clients from strangers (docs/SECURITY.md): one test per class of failure a hostile
//! user found — deep pickles, memo bombs, offsets and strides that wrap, absurd LoRA ranks,
//! tokenizers larger than their model, damaged caches, unwritable output, NaN weights, and the
//! web server's symlinks, header floods and half-open connections. Each ends in a clear error
//! naming the file or flag (or in correct behaviour), never a panic or an abort.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use ember_core::checkpoint::{ModelDir, TensorFile, TorchFile};
use ember_core::data::dataset::load_or_build;
use ember_core::data::Columns;
use ember_core::lora::adapter_file::load_adapter;
use ember_core::template::Template;
use ember_core::tokenizer::Tokenizer;
use ember_fuzz::nasty;
use ember_tests::{copy_of, ember_bin, fixtures, model_dir};

fn ember(args: &[&str]) -> Output {
    Command::new(ember_bin()).args(args).output().expect("run ember")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

fn torch_error(bytes: Vec<u8>) -> String {
    let start = Instant::now();
    let result = TorchFile::from_bytes("pytorch_model.bin", bytes)
        .and_then(|f| f.names().iter().try_for_each(|n| f.read(n).map(|_| ())));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    result.expect_err("a hostile pickle must be refused").to_string()
}

#[test]
fn deep_pickles_and_memo_bombs_are_refused_without_stack_or_memory() {
    let deep = torch_error(nasty::torch_zip(&nasty::deep_lists(2_000_000), &[]));
    assert!(deep.contains("pytorch_model.bin") && deep.contains("holds a list, not a state dict"), "{deep}");
    // 2^60 lists if memo entries were copied.
    let bomb = torch_error(nasty::torch_zip(&nasty::memo_bomb(60), &[]));
    assert!(bomb.contains("not a state dict"), "{bomb}");
}

#[test]
fn offsets_and_strides_outside_the_storage_are_refused() {
    let storage = [0u8; 24]; // six f32 values
    for (offset, shape, stride) in [
        (1u64 << 62, vec![2, 3], vec![3, 1]),
        (0, vec![2, 3], vec![1 << 62, 1]),
        (0, vec![1 << 20, 1 << 20], vec![0, 0]),
        (0, vec![1 << 33, 1 << 33], vec![1 << 33, 1]),
        (1, vec![2, 3], vec![3, 1]),
    ] {
        let err = torch_error(nasty::torch_zip(&nasty::state_dict_pickle(offset, &shape, &stride), &storage));
        assert!(
            err.contains("tensor `w`") && err.contains("outside its storage"),
            "{offset} {shape:?} {stride:?}: {err}"
        );
    }
    // The same file with a sane view loads: the checks refuse only what is wrong.
    let ok = TorchFile::from_bytes(
        "pytorch_model.bin",
        nasty::torch_zip(&nasty::state_dict_pickle(0, &[3, 2], &[1, 3]), &storage),
    )
    .unwrap();
    assert_eq!(ok.read("w").unwrap().shape, vec![3, 2]);
}

#[test]
fn an_absurd_lora_rank_is_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("adapters/list/adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("adapter_config.json"),
        r#"{"target_modules": ["query_key_value"], "r": 1000000000000}"#,
    )
    .unwrap();
    let mut model = ModelDir::open(&model_dir("a")).unwrap().load_model(&Device::flex()).unwrap();
    let err = load_adapter(&mut model, tmp.path(), &Device::flex(), false).unwrap_err().to_string();
    assert!(
        err.contains("adapter_config.json")
            && err.contains("r = 1000000000000")
            && err.contains("transformer.h.0.self_attention.query_key_value"),
        "{err}"
    );

    let out = ember(&["info", "--model", model_dir("a").to_str().unwrap(), "--adapter", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = ember(&[
        "info",
        "--model",
        model_dir("a").to_str().unwrap(),
        "--target-modules",
        "dense",
        "--lora-r",
        "100000000000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("larger than that layer's smaller side"), "{}", stderr(&out));
}

#[test]
fn a_tokenizer_larger_than_its_model_and_ids_outside_the_vocabulary_are_refused_by_name() {
    let (_tmp, dir) = copy_of("a");
    edit_json(&dir.join("config.json"), |c| c["vocab_size"] = 100.into());
    let config = ModelDir::open(&dir).unwrap().config;
    let err = Tokenizer::open(&dir, &config).err().expect("must fail").to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab_size 100") && err.contains("different models"),
        "{err}"
    );

    edit_json(&dir.join("config.json"), |c| {
        c["vocab_size"] = 608.into();
        c["pad_token_id"] = 4_000_000_000u64.into();
    });
    let err = ModelDir::open(&dir).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("pad_token_id 4000000000"), "{err}");

    edit_json(&dir.join("config.json"), |c| c["hidden_size"] = (1u64 << 40).into());
    let out = ember(&["info", "--model", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hidden_size is 1099511627776"), "{}", stderr(&out));
}

#[test]
fn a_damaged_cache_is_rebuilt_with_a_notice() {
    let cache = tempfile::tempdir().unwrap();
    let tokenizer = {
        let dir = ModelDir::open(&model_dir("a")).unwrap();
        Tokenizer::open(&model_dir("a"), &dir.config).unwrap()
    };
    let data = fixtures().join("data/train.jsonl");
    let load = || {
        load_or_build(&data, "train", &Columns::default(), &tokenizer, &Template::HumanAssistant, 32, cache.path())
            .unwrap()
    };
    let first = load();
    let ids: Vec<Vec<u32>> = (0..first.len()).map(|i| first.get(i).input_ids).collect();
    drop(first);
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tok"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let index_at = u64::from_le_bytes(bytes[bytes.len() - 16..bytes.len() - 8].try_into().unwrap()) as usize;
    bytes[index_at..index_at + 8].copy_from_slice(&u64::MAX.to_le_bytes()); // first example's offset
    std::fs::write(&file, &bytes).unwrap();

    let rebuilt = load();
    let notice = rebuilt.notice.clone().expect("a notice about the damaged cache");
    assert!(notice.contains("damaged tokenized cache") && notice.contains(".tok"), "{notice}");
    assert_eq!((0..rebuilt.len()).map(|i| rebuilt.get(i).input_ids).collect::<Vec<_>>(), ids);
    let again = load();
    assert!(again.from_cache && again.notice.is_none(), "the rebuilt cache is used from then on");
}

#[test]
fn an_unusable_cache_or_output_directory_is_named_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let model = model_dir("a");
    let data = fixtures().join("data/train.jsonl");

    let out = Command::new(ember_bin())
        .env("EMBER_CACHE_DIR", file.join("cache"))
        .args(["data", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("tokenized-data cache") && stderr(&out).contains("EMBER_CACHE_DIR"),
        "{}",
        stderr(&out)
    );

    let train = |output: &Path| {
        Command::new(ember_bin())
            .env("EMBER_CACHE_DIR", tmp.path().join("cache"))
            .args([
                "train",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--device",
                "cpu",
                "--max-steps",
                "100000",
            ])
            .arg("--output-dir")
            .arg(output)
            .output()
            .unwrap()
    };
    let out = train(&file.join("out"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("a-file/out") && err.contains("--output-dir"), "{err}");
    assert!(!err.contains("device:"), "fails before choosing a device or loading anything: {err}");

    #[cfg(unix)]
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let locked = tmp.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        let out = train(&locked);
        assert!(
            stderr(&out).contains("cannot write there") && stderr(&out).contains("--output-dir"),
            "{}",
            stderr(&out)
        );
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// Overwrites the first value of tensor `name` in a safetensors file with NaN.
fn poison(path: &Path, name: &str) {
    let nan = |dtype: &str| match dtype {
        "F32" => f32::NAN.to_le_bytes().to_vec(),
        _ => half::f16::NAN.to_le_bytes().to_vec(),
    };
    overwrite(path, name, 0, nan);
}

/// Overwrites value `index` of tensor `name` (stored with or without the `transformer.` prefix)
/// in a safetensors file with the bytes `value` gives for its dtype.
fn overwrite(path: &Path, name: &str, index: usize, value: impl Fn(&str) -> Vec<u8>) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let stored = if header.get(name).is_some() { name.to_string() } else { name.replacen("transformer.", "", 1) };
    let value = value(header[&stored]["dtype"].as_str().unwrap());
    let start = 8 + header_len + header[&stored]["data_offsets"][0].as_u64().unwrap() as usize + index * value.len();
    bytes[start..start + value.len()].copy_from_slice(&value);
    std::fs::write(path, bytes).unwrap();
}

/// Half-precision weights kept in their precision are checked by their bits, without widening:
/// infinity refused by name (bf16's bits: `checkpoint::host`'s unit test; the bf16 fixture is a
/// `.bin`).
#[test]
fn nan_in_half_precision_weights_kept_half_is_refused() {
    let (_tmp, dir) = copy_of("a-f16");
    let infinity = |_: &str| half::f16::INFINITY.to_le_bytes().to_vec();
    overwrite(&dir.join("model.safetensors"), "transformer.h.0.self_attention.dense.weight", 3, infinity);
    let dir_str = dir.to_str().unwrap();
    let args = ["generate", "--model", dir_str, "--prompt-ids", "5,6", "--max-new-tokens", "2", "--device", "cpu"];
    let out = ember(&[&args[..], &["--dtype", "f16"]].concat());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("self_attention.dense.weight")
            && err.contains("index 3")
            && (err.contains("inf") || err.contains("NaN")),
        "{err}"
    );
}

#[test]
fn nan_weights_are_refused_by_tensor_name_unless_allowed() {
    let (_tmp, dir) = copy_of("a");
    poison(&dir.join("model.safetensors"), "transformer.h.1.mlp.dense_4h_to_h.weight");
    let dir_str = dir.to_str().unwrap();
    let out =
        ember(&["generate", "--model", dir_str, "--prompt-ids", "5,6", "--max-new-tokens", "2", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors")
            && err.contains("transformer.h.1.mlp.dense_4h_to_h.weight")
            && err.contains("NaN"),
        "{err}"
    );
    assert!(err.contains("--allow-nonfinite"), "{err}");
    let out = ember(&[
        "generate",
        "--model",
        dir_str,
        "--prompt-ids",
        "5,6",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
        "--allow-nonfinite",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let adapter = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("adapters/list").join(file), adapter.path().join(file)).unwrap();
    }
    let key = "base_model.model.transformer.h.0.self_attention.query_key_value.lora_B.weight";
    poison(&adapter.path().join("adapter_model.safetensors"), key);
    let out = ember(&[
        "generate",
        "--model",
        model_dir("a").to_str().unwrap(),
        "--adapter",
        adapter.path().to_str().unwrap(),
        "--prompt-ids",
        "5",
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(key) && stderr(&out).contains("NaN"), "{}", stderr(&out));
}

#[test]
fn non_finite_flags_name_the_flag() {
    let out = ember(&["train", "--learning-rate", "inf"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("--learning-rate") && stderr(&out).contains("finite"), "{}", stderr(&out));
}

#[test]
fn generation_stops_at_the_models_context() {
    let (_tmp, dir) = copy_of("a");
    edit_json(&dir.join("config.json"), |c| c["seq_length"] = 24.into());
    let dir = dir.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "5,6,7,8",
        "--max-new-tokens",
        "500",
        "--device",
        "cpu",
        "--greedy",
    ];
    let out = ember(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(json["generated_ids"].as_array().unwrap().len(), 20, "24 in all, 4 of them the prompt: {json}");
    let out = ember(&args);
    assert!(stderr(&out).contains("generation stops at 24 tokens in all"), "{}", stderr(&out));
}

/// `ember web` on a page folder that holds a symbolic link out of it.
struct Server {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(timeout_s: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page");
    std::fs::create_dir(&page).unwrap();
    for (name, body) in [("index.html", "<html></html>"), ("ember_web_bg.wasm", "\0asm")] {
        std::fs::write(page.join(name), body).unwrap();
    }
    std::fs::write(page.join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), page.join("secret.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), page.join("up")).unwrap();
    }
    let mut child = Command::new(ember_bin())
        .args(["web", "--port", "0", "--timeout", &timeout_s.to_string(), "--dir"])
        .arg(&page)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first_line).unwrap();
    let address = first_line.split("http://").nth(1).and_then(|s| s.split('/').next()).expect(&first_line).to_string();
    Server { child, address, _dir: dir }
}

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A server over its connection limit answers 503 and closes at once, maybe before this writes.
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn web_never_serves_through_a_symlink_out_of_its_folder() {
    let s = server(10);
    assert!(get(&s.address, "/index.html").starts_with("HTTP/1.1 200"));
    for path in ["/secret.txt", "/up/secret.txt", "/../secret.txt"] {
        let response = get(&s.address, path);
        assert!(
            response.starts_with("HTTP/1.1 404") && !response.contains("secret\n") && !response.ends_with("secret"),
            "{path}: {response}"
        );
    }
}

#[test]
fn web_cuts_off_header_floods_and_keeps_serving() {
    let s = server(10);
    let mut stream = TcpStream::connect(&s.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A request line that never ends: the server answers once it has seen 16 KiB and hangs up,
    // so writing the 200 MB fails long before the end.
    let chunk = vec![b'a'; 1 << 20];
    let _ = stream.write_all(b"GET /");
    let mut sent = 0usize;
    while sent < 200 << 20 && stream.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 200 << 20, "the server read all of a 200 MB request line");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(get(&s.address, "/index.html").starts_with("HTTP/1.1 200"), "still serving");
}

#[test]
fn web_drops_half_open_connections_and_streams_large_files() {
    let s = server(1);
    // More silent connections than the server serves at once.
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&s.address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Refused: a 503, or a reset when the server closed on the unread request.
    let busy = get(&s.address, "/index.html");
    assert!(busy.is_empty() || busy.starts_with("HTTP/1.1 503"), "{busy}");
    // After the timeout every silent connection has been closed by the server ...
    std::thread::sleep(Duration::from_millis(2500));
    for mut stream in idle {
        // Closed by the server (after a 503 for those over the limit): the read ends, it does not wait.
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ended = match stream.read_to_end(&mut Vec::new()) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
        assert!(ended, "a silent connection is still held");
    }
    // ... and a large file streams whole to a client.
    let response = get(&s.address, "/big.bin");
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("Content-Length: 8388608"),
        "{}",
        &response[..200.min(response.len())]
    );
    let body_len = response.split_once("\r\n\r\n").unwrap().1.len();
    assert_eq!(body_len, 8 << 20);
}
