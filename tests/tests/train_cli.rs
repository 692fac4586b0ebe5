//! `ember train` end to end: an interrupted and resumed run ends with the same adapter as an
//! uninterrupted one, a NaN loss stops with a clear error and leaves the last checkpoint, and a
//! config file gives the same run as the equivalent flags.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_core::checkpoint::{SafetensorsFile, TensorFile};
use ember_tests::{ember_bin, fixtures, max_abs_diff, model_dir};

fn base_args(out: &Path, steps: usize) -> Vec<String> {
    [
        "train",
        "--model",
        model_dir("a").to_str().unwrap(),
        "--data",
        fixtures().join("data/train.jsonl").to_str().unwrap(),
        "--max-length",
        "32",
        "--per-device-train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "3",
        "--lora-dropout",
        "0.1",
        "--target-modules",
        "query_key_value,dense",
        "--device",
        "cpu",
        "--seed",
        "7",
        "--logging-steps",
        "5",
        "--save-steps",
        "10",
        "--save-total-limit",
        "2",
        "--output-dir",
        out.to_str().unwrap(),
        "--max-steps",
        &steps.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ember(args: &[String], cache: &Path) -> std::process::Output {
    Command::new(ember_bin()).env("EMBER_CACHE_DIR", cache).args(args).output().unwrap()
}

fn adapter(dir: &Path) -> SafetensorsFile {
    SafetensorsFile::open(&dir.join("adapter_model.safetensors")).unwrap()
}

fn assert_same_adapter(a: &Path, b: &Path) {
    let (a, b) = (adapter(a), adapter(b));
    let mut names = a.names();
    names.sort();
    for key in names {
        let diff = max_abs_diff(&a.read(&key).unwrap().data, &b.read(&key).unwrap().data);
        assert!(diff == 0.0, "{key}: {diff}");
    }
}

#[test]
fn killed_and_resumed_run_ends_with_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 400;
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));

    let out = ember(&base_args(&whole, steps), tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("trainer_state.json")).unwrap()).unwrap();
    let losses: Vec<f64> = state["log_history"].as_array().unwrap().iter().filter_map(|e| e["loss"].as_f64()).collect();
    assert!(losses.last().unwrap() < losses.first().unwrap(), "loss should fall: {losses:?}");
    assert!(whole.join("loss.svg").is_file() && whole.join("adapter_config.json").is_file());
    let kept: Vec<_> = std::fs::read_dir(&whole)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    assert_eq!(kept.len(), 2, "save_total_limit 2");

    let mut child = Command::new(ember_bin())
        .env("EMBER_CACHE_DIR", tmp.path())
        .args(base_args(&killed, steps))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !killed.join("checkpoint-20").is_dir() {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed_pid = child.id();
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(!killed.join("adapter_model.safetensors").exists(), "killed before the end");
    // What a kill during a save leaves (the kill above may or may not have hit one): the next
    // start in this directory removes it.
    std::fs::create_dir_all(killed.join(format!(".checkpoint-30.tmp-{killed_pid}"))).unwrap();
    std::fs::write(killed.join(format!(".adapter_model.safetensors.tmp-{killed_pid}")), b"half").unwrap();

    let mut resume = base_args(&killed, steps);
    resume.extend(["--resume-from-checkpoint".to_string(), "latest".to_string()]);
    let out = ember(&resume, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_adapter(&whole, &killed);
    let left: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporaries left after the next start: {left:?}");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("removed {}", killed.join(format!(".checkpoint-30.tmp-{killed_pid}")).display())));
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut args = base_args(&out_dir, 6);
    for (flag, value) in
        [("--learning-rate", "1e30"), ("--save-steps", "1"), ("--warmup-steps", "0"), ("--max-grad-norm", "0")]
    {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.into(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    let out = ember(&args, tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: the loss became") && !err.contains("panicked"), "{err}");
    assert!(out_dir.join("checkpoint-1/adapter_model.safetensors").is_file());
}

#[test]
fn a_config_file_equals_the_same_flags_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let (by_flags, by_file) = (tmp.path().join("flags"), tmp.path().join("file"));
    let out = ember(&base_args(&by_flags, 12), tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let config = tmp.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ndata = {:?}\nmax_length = 32\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 2\n\
             learning_rate = 0.5\nwarmup_steps = 3\nlora_dropout = 0.1\ntarget_modules = [\"query_key_value\", \"dense\"]\n\
             seed = 7\nlogging_steps = 5\nsave_steps = 10\nmax_steps = 12\n",
            model_dir("a").display().to_string(),
            fixtures().join("data/train.jsonl").display().to_string()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "train",
        "--config",
        config.to_str().unwrap(),
        "--learning-rate",
        "1e-3",
        "--device",
        "cpu",
        "--output-dir",
        by_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = ember(&args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_adapter(&by_flags, &by_file);

    // target_modules as a string is a regex over whole module names, as in peft.
    let by_regex = tmp.path().join("regex");
    let text = std::fs::read_to_string(&config).unwrap();
    let regex = r#"target_modules = '.*\.(query_key_value|dense)'"#;
    std::fs::write(&config, text.replace(r#"target_modules = ["query_key_value", "dense"]"#, regex)).unwrap();
    let regex_args: Vec<String> = args
        .iter()
        .map(|a| if *a == by_file.to_str().unwrap() { by_regex.to_str().unwrap().into() } else { a.clone() })
        .collect();
    let out = ember(&regex_args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_adapter(&by_flags, &by_regex);

    std::fs::write(&config, "target_modules = 5\n").unwrap();
    let err = String::from_utf8_lossy(&ember(&args, tmp.path()).stderr).into_owned();
    assert!(err.contains("target_modules must be a list of module names or a regex string"), "{err}");

    std::fs::write(&config, "learning_rat = 1.0\n").unwrap();
    let out = ember(&args, tmp.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting \"learning_rat\""));
}

#[test]
fn bare_ember_train_runs_the_bundled_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(ember_bin())
        .current_dir(tmp.path())
        .env("EMBER_CACHE_DIR", tmp.path().join("cache"))
        .args(["train", "--device", "cpu"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    let demo_answer = "我是Ember训练出来的小模型";
    let (before, after) = text.split_once("after training:").expect("before and after answers");
    assert!(before.contains("before training:") && !before.contains(demo_answer), "{text}");
    assert!(after.contains(demo_answer), "{text}");
    let dir = tmp.path().join("ember-demo-output");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()).unwrap();
    let losses: Vec<f64> = state["log_history"].as_array().unwrap().iter().filter_map(|e| e["loss"].as_f64()).collect();
    assert!(losses.len() >= 5 && losses.last().unwrap() < &(losses[0] / 2.0), "loss should fall: {losses:?}");
    assert!(dir.join("adapter_model.safetensors").is_file() && dir.join("loss.svg").is_file());
}

#[test]
fn ctrl_c_writes_a_checkpoint_before_exiting() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut args = base_args(&out_dir, 5000);
    let i = args.iter().position(|a| a == "--save-steps").unwrap();
    args[i + 1] = "100000".into(); // no periodic checkpoint: the one found must come from Ctrl-C
    let child = Command::new(ember_bin())
        .env("EMBER_CACHE_DIR", tmp.path())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("interrupted at step"), "{text}");
    let step: usize = text.split("interrupted at step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    assert!(out_dir.join(format!("checkpoint-{step}/optimizer.safetensors")).is_file(), "{text}");
}

/// f16 base weights and gradient checkpointing train, and the summary reports peak memory.
#[test]
fn half_precision_checkpointed_training_reports_peak_memory() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut args = base_args(out.path(), 4);
    args.extend(["--dtype", "f16", "--gradient-checkpointing"].map(String::from));
    let run = ember(&args, cache.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let line = stdout.lines().find(|l| l.starts_with("peak memory:")).unwrap_or_else(|| panic!("{stdout}"));
    let mib: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(mib > 1.0, "{line}");
    // The adapter is f32 whatever the base weights were stored in.
    let saved = adapter(out.path());
    assert!(saved.names().iter().all(|k| saved.read(k).unwrap().data.iter().all(|v| v.is_finite())));
}
