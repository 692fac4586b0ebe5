//! Hub ids end to end against the imitation Hub (`HF_ENDPOINT`): downloads land in
//! huggingface_hub's cache layout and give the same results as the local fixtures; offline mode,
//! resume after a dropped connection, a damaged download, 404/401, revision pinning, datasets by
//! id, and a cache tree written by huggingface_hub itself read offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ember_core::hub::{cache_folder, folder_url, resolve_url, HubId, RepoKind};
use ember_tests::hub_server::{self, sha256_hex, Faults, HubServer, COMMIT_MAIN, COMMIT_V1, GOOD_TOKEN};
use ember_tests::{ember_bin, fixtures, model_dir};

struct Hub {
    server: HubServer,
    home: tempfile::TempDir,
}

impl Hub {
    fn start() -> Hub {
        let server = HubServer::start();
        hub_server::standard_repos(&server);
        Hub { server, home: tempfile::tempdir().unwrap() }
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hub")
    }

    fn ember(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(ember_bin());
        command
            .args(args)
            .current_dir(self.home.path())
            .env("HF_ENDPOINT", &self.server.endpoint)
            .env("HF_HOME", self.home.path())
            .env("EMBER_CACHE_DIR", self.home.path().join("tokenized"))
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("TRANSFORMERS_OFFLINE");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    fn greedy(&self, model: &str, adapter: Option<&str>, env: &[(&str, &str)]) -> Result<Vec<i64>, String> {
        let mut args = vec!["generate", "--model", model, "--prompt", "Human: hello", "--max-new-tokens", "6"];
        args.extend(["--greedy", "--json", "--device", "cpu"]);
        if let Some(adapter) = adapter {
            args.extend(["--adapter", adapter]);
        }
        let out = self.ember(&args, env);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        Ok(json["generated_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
    }
}

fn local_greedy(model: &Path, adapter: Option<&Path>) -> Vec<i64> {
    let hub = Hub::start();
    hub.greedy(model.to_str().unwrap(), adapter.map(|a| a.to_str().unwrap()), &[]).unwrap()
}

fn repo_dir(cache: &Path, kind: RepoKind, repo: &str) -> PathBuf {
    cache.join(cache_folder(kind, repo))
}

#[test]
fn hub_ids_parse_as_huggingface_names_them() {
    let id = HubId::parse("bigscience/bloom-560m").unwrap();
    assert_eq!((id.repo.as_str(), id.revision.as_str(), id.pinned), ("bigscience/bloom-560m", "main", false));
    let id = HubId::parse("org/name@refs/pr/1").unwrap();
    assert_eq!((id.revision.as_str(), id.to_string().as_str()), ("refs/pr/1", "org/name@refs/pr/1"));
    for bad in
        ["bloom", "./org/name", "/abs/path", "a/b/c", "org/na--me", "org/..", "org/name@", "org/name@../x", "o rg/n"]
    {
        assert_eq!(HubId::parse(bad), None, "{bad}");
    }
    assert_eq!(
        resolve_url("https://hf.co/", RepoKind::Dataset, "o/d", "refs/pr/1", "data/train 1.parquet"),
        "https://hf.co/datasets/o/d/resolve/refs%2Fpr%2F1/data/train%201.parquet"
    );
    assert_eq!(cache_folder(RepoKind::Model, "bigscience/bloom-560m"), "models--bigscience--bloom-560m");
    // The page's URL field: ids go to the Hub's resolve folder, URLs stay URLs.
    assert_eq!(folder_url("bigscience/bloom-560m@v1.0"), "https://huggingface.co/bigscience/bloom-560m/resolve/v1.0/");
    assert_eq!(folder_url("https://example.org/m"), "https://example.org/m/");
}

#[test]
fn dataset_splits_are_picked_as_load_dataset_does() {
    let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let repo = files(&[
        "README.md",
        "data/train-00001-of-00002.parquet",
        "data/train-00000-of-00002.parquet",
        "data/test-00000-of-00001.parquet",
        "train.json",
    ]);
    let train = ember_core::data::split_files(&repo, "train").unwrap();
    assert_eq!(train, ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]);
    assert_eq!(ember_core::data::split_files(&repo, "test").unwrap(), ["data/test-00000-of-00001.parquet"]);
    let err = ember_core::data::split_files(&repo, "validation").unwrap_err();
    assert!(err.contains("no split \"validation\"") && err.contains("test, train"), "{err}");
    // No file names a split: all are train (shibing624/alpaca-zh's one JSON file).
    let single = files(&["alpaca_gpt4_data_zh.json", ".gitattributes"]);
    assert_eq!(ember_core::data::split_files(&single, "train").unwrap(), ["alpaca_gpt4_data_zh.json"]);
    assert!(ember_core::data::split_files(&files(&["README.md"]), "train").is_err());
    assert_eq!(
        ember_core::data::split_files(&files(&["dev/x.jsonl", "train/x.jsonl"]), "validation").unwrap(),
        ["dev/x.jsonl"]
    );
}

#[test]
fn a_model_by_id_downloads_into_python_layout_and_generates_as_the_local_copy() {
    let hub = Hub::start();
    let ids = hub.greedy("org/tiny", None, &[]).unwrap();
    assert_eq!(ids, local_greedy(&model_dir("a"), None));
    let repo = repo_dir(&hub.cache(), RepoKind::Model, "org/tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT_MAIN,
        "refs/main holds the commit, no newline"
    );
    let weights = repo.join("snapshots").join(COMMIT_MAIN).join("model.safetensors");
    let bytes = std::fs::read(model_dir("a").join("model.safetensors")).unwrap();
    let target = std::fs::read_link(&weights).expect("a symlink, as huggingface_hub makes");
    assert_eq!(target, PathBuf::from(format!("../../blobs/{}", sha256_hex(&bytes))));
    assert_eq!(std::fs::read(&weights).unwrap(), bytes);
    // The test goldens are not in the repo; README.md is, but a model does not need it.
    let snapshot = repo.join("snapshots").join(COMMIT_MAIN);
    assert!(snapshot.join("tokenizer.json").is_file() && !snapshot.join("README.md").exists());
    assert!(!std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".incomplete")));

    // A second run asks the Hub which commit main is, but downloads nothing.
    hub.server.take_log();
    assert_eq!(hub.greedy("org/tiny", None, &[]).unwrap(), ids);
    let log = hub.server.take_log();
    assert!(log.iter().all(|l| l.starts_with("GET /api/")), "{log:?}");

    // Offline: the cache alone serves, and the Hub is not asked.
    assert_eq!(hub.greedy("org/tiny", None, &[("HF_HUB_OFFLINE", "1")]).unwrap(), ids);
    assert!(hub.server.take_log().is_empty());
    let err = hub.greedy("org/tiny-sharded", None, &[("HF_HUB_OFFLINE", "1")]).unwrap_err();
    assert!(err.contains("org/tiny-sharded") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

#[test]
fn sharded_checkpoints_fetch_their_index_and_every_shard() {
    let hub = Hub::start();
    assert_eq!(hub.greedy("org/tiny-sharded", None, &[]).unwrap(), local_greedy(&model_dir("a-sharded"), None));
    let snapshot = repo_dir(&hub.cache(), RepoKind::Model, "org/tiny-sharded").join("snapshots").join(COMMIT_MAIN);
    for shard in 1..=3 {
        assert!(snapshot.join(format!("model-0000{shard}-of-00003.safetensors")).is_file());
    }
}

#[test]
fn a_dropped_connection_is_resumed_with_range() {
    let hub = Hub::start();
    let bytes = std::fs::read(model_dir("a").join("model.safetensors")).unwrap();
    let sha = sha256_hex(&bytes);
    let cut = bytes.len() / 3;
    hub.server.set_faults(Faults { drop_once: Some((sha.clone(), cut)), ..Faults::default() });
    assert_eq!(hub.greedy("org/tiny", None, &[]).unwrap(), local_greedy(&model_dir("a"), None));
    let log = hub.server.take_log();
    assert!(log.iter().any(|l| l.contains(&format!("/cdn/{sha} bytes={cut}-"))), "no resumed request: {log:?}");

    // A partial file a killed run left is resumed by the next run, not restarted.
    let other = Hub::start();
    let blobs = repo_dir(&other.cache(), RepoKind::Model, "org/tiny").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &bytes[..cut]).unwrap();
    other.greedy("org/tiny", None, &[]).unwrap();
    let log = other.server.take_log();
    assert!(log.iter().any(|l| l.ends_with(&format!("/cdn/{sha} bytes={cut}-"))), "{log:?}");
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), bytes);
}

#[test]
fn a_damaged_download_is_caught_by_its_sha256_and_not_kept() {
    let hub = Hub::start();
    let sha = sha256_hex(&std::fs::read(model_dir("a").join("model.safetensors")).unwrap());
    hub.server.set_faults(Faults { damaged: Some(sha.clone()), ..Faults::default() });
    let err = hub.greedy("org/tiny", None, &[]).unwrap_err();
    assert!(err.contains("SHA-256") && err.contains("model.safetensors") && err.contains("org/tiny"), "{err}");
    let repo = repo_dir(&hub.cache(), RepoKind::Model, "org/tiny");
    assert!(!repo.join("blobs").join(&sha).exists() && !repo.join("blobs").join(format!("{sha}.incomplete")).exists());
    assert!(!repo.join("snapshots").join(COMMIT_MAIN).join("model.safetensors").exists());
    // Served whole again, the same command succeeds.
    hub.server.set_faults(Faults::default());
    hub.greedy("org/tiny", None, &[]).unwrap();
}

#[test]
fn missing_and_private_repos_say_what_to_do() {
    let hub = Hub::start();
    let err = hub.greedy("org/nope", None, &[]).unwrap_err();
    assert!(err.contains("org/nope") && err.contains("404") && err.contains("no such"), "{err}");
    let err = hub.greedy("org/tiny@no-such-branch", None, &[]).unwrap_err();
    assert!(err.contains("org/tiny@no-such-branch") && err.contains("404"), "{err}");
    let err = hub.greedy("org/private", None, &[]).unwrap_err();
    assert!(err.contains("401") && err.contains("HF_TOKEN"), "{err}");
    let err = hub.greedy("org/private", None, &[("HF_TOKEN", "hf_wrong")]).unwrap_err();
    assert!(err.contains("401") && err.contains("not allowed"), "{err}");
    hub.greedy("org/private", None, &[("HF_TOKEN", GOOD_TOKEN)]).unwrap();
    // The token file under HF_HOME serves as well.
    std::fs::write(hub.home.path().join("token"), format!("{GOOD_TOKEN}\n")).unwrap();
    let fresh = repo_dir(&hub.cache(), RepoKind::Model, "org/private");
    std::fs::remove_dir_all(fresh).unwrap();
    hub.greedy("org/private", None, &[]).unwrap();
    // Nothing listens: the error names the endpoint and that the cache lacks the id.
    let err = hub.greedy("org/other", None, &[("HF_ENDPOINT", "http://127.0.0.1:9")]).unwrap_err();
    assert!(err.contains("cannot be reached") && err.contains("org/other"), "{err}");
}

#[test]
fn revisions_pin_the_adapter_and_are_recorded_in_refs() {
    let hub = Hub::start();
    let adapters = fixtures().join("adapters");
    let at_main = hub.greedy("org/tiny", Some("org/lora"), &[]).unwrap();
    assert_eq!(at_main, local_greedy(&model_dir("a"), Some(&adapters.join("list"))));
    let at_v1 = hub.greedy("org/tiny", Some("org/lora@v1"), &[]).unwrap();
    assert_eq!(at_v1, local_greedy(&model_dir("a"), Some(&adapters.join("bias-all"))));
    let repo = repo_dir(&hub.cache(), RepoKind::Model, "org/lora");
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1")).unwrap(), COMMIT_V1);
    // A commit hash that is cached is used without asking the Hub.
    hub.server.take_log();
    let pinned = format!("org/lora@{COMMIT_V1}");
    assert_eq!(hub.greedy("org/tiny", Some(&pinned), &[]).unwrap(), at_v1);
    assert!(hub.server.take_log().iter().all(|l| !l.contains("org/lora")));
}

#[test]
fn a_local_path_wins_over_a_hub_id() {
    let hub = Hub::start();
    let local = hub.home.path().join("org/tiny");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::create_dir(&local).unwrap();
    for entry in std::fs::read_dir(model_dir("b")).unwrap().flatten() {
        std::fs::copy(entry.path(), local.join(entry.file_name())).unwrap();
    }
    // ember runs in hub.home, where ./org/tiny is model b.
    assert_eq!(hub.greedy("org/tiny", None, &[]).unwrap(), local_greedy(&model_dir("b"), None));
    assert!(hub.server.take_log().is_empty());
}

#[test]
fn train_takes_a_model_and_a_dataset_by_id() {
    let hub = Hub::start();
    let out_dir = hub.home.path().join("out");
    let out = hub.ember(
        &[
            "train",
            "--model",
            "org/tiny",
            "--data",
            "org/alpaca",
            "--max-length",
            "32",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out_dir.join("adapter_model.safetensors").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], "org/tiny", "peft records the id, not the cache path");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let examples = std::fs::read_to_string(fixtures().join("data/train.jsonl")).unwrap().lines().count();
    let parquet_rows = ember_core::data::formats::open_examples(
        &fixtures().join("data/train.parquet"),
        "train",
        &ember_core::data::Columns::default(),
    )
    .unwrap()
    .count();
    assert!(stderr.contains(&format!("data: {parquet_rows} examples")), "{stderr}");
    let snapshot = repo_dir(&hub.cache(), RepoKind::Dataset, "org/alpaca").join("snapshots").join(COMMIT_MAIN);
    assert!(snapshot.join("data/train-00000-of-00001.parquet").is_file());
    assert!(!snapshot.join("data/test-00000-of-00001.jsonl").exists(), "only the train split is fetched");

    // The same ids from a config file.
    let config_file = hub.home.path().join("run.toml");
    let by_file = hub.home.path().join("by-file");
    std::fs::write(
        &config_file,
        format!("model = \"org/tiny\"\ndata = \"org/alpaca\"\ninit_adapter = \"org/lora\"\nmax_steps = 1\nmax_length = 32\noutput_dir = \"{}\"\n", by_file.display()),
    )
    .unwrap();
    let out = hub.ember(&["train", "--config", config_file.to_str().unwrap(), "--device", "cpu"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(by_file.join("adapter_model.safetensors").is_file());

    // The other split by --split.
    let out = hub.ember(&["data", "--model", "org/tiny", "--data", "org/alpaca", "--split", "test"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("examples:") && l.trim_end().ends_with(&format!(" {examples}"))),
        "{stdout}"
    );
    assert!(snapshot.join("data/test-00000-of-00001.jsonl").is_file());
}

#[test]
fn a_cache_tree_written_by_huggingface_hub_is_read_offline() {
    let tree = fixtures().join("hub/cache");
    let hub = Hub::start();
    let cache = tree.to_str().unwrap();
    let env = [("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")];
    assert_eq!(hub.greedy("org/tiny", None, &env).unwrap(), local_greedy(&model_dir("a"), None));
    let adapter = hub.greedy("org/tiny", Some("org/lora@v1"), &env).unwrap();
    assert_eq!(adapter, local_greedy(&model_dir("a"), Some(&fixtures().join("adapters/bias-all"))));
    assert!(hub.server.take_log().is_empty());
}
