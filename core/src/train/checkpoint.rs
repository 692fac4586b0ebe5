//! Checkpoints as transformers lays them out: `checkpoint-N/` with the adapter, the optimizer
//! state, the scheduler and RNG positions and `trainer_state.json`; the final adapter and
//! `trainer_state.json` in the output directory. Every checkpoint is written to a temporary
//! directory and renamed into place, so an interruption never leaves a half-written one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use serde_json::{json, Value};

use super::trainer::Trainer;
use crate::checkpoint::{SafetensorsFile, TensorFile};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::lora::adapter_file::{save_adapter, to_host, write_safetensors, LazyTensor};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

/// `trainer_state.json` with transformers' main fields.
pub fn trainer_state(trainer: &Trainer, epoch: f64) -> Value {
    json!({
        "global_step": trainer.global_step,
        "max_steps": trainer.total_steps,
        "epoch": epoch,
        "num_train_epochs": trainer.args.num_train_epochs,
        "logging_steps": trainer.args.logging_steps,
        "save_steps": trainer.args.save_steps,
        "train_batch_size": trainer.args.per_device_train_batch_size,
        "log_history": trainer.log_history,
        "best_metric": null,
        "best_model_checkpoint": null,
        "ember": {
            "step_losses": trainer.step_losses,
            "adam_step": trainer.optimizer.step,
            "args": trainer.args,
            "scheduler": { "type": trainer.args.lr_scheduler_type, "next_step": trainer.global_step,
                           "next_learning_rate": trainer.args.learning_rate_at(trainer.global_step, trainer.total_steps) },
            "rng": { "seed": trainer.args.seed,
                     "scheme": "data order seeded by seed and epoch; dropout seeded by seed + step before every step" },
        },
    })
}

fn write_state(trainer: &Trainer, dir: &Path, epoch: f64) -> Result<()> {
    let text = serde_json::to_string_pretty(&trainer_state(trainer, epoch)).expect("json");
    write_atomic(&dir.join(STATE_FILE), text.as_bytes())
}

/// The adapter and `trainer_state.json` in the output directory.
pub fn save_final(trainer: &Trainer, epoch: f64) -> Result<PathBuf> {
    let out = PathBuf::from(&trainer.args.output_dir);
    save_adapter(&trainer.model, &trainer.lora, &out)?;
    write_state(trainer, &out, epoch)?;
    Ok(out)
}

pub fn save_checkpoint(trainer: &Trainer, epoch: f64) -> Result<PathBuf> {
    let out = PathBuf::from(&trainer.args.output_dir);
    let final_dir = out.join(format!("checkpoint-{}", trainer.global_step));
    let tmp = out.join(format!(".checkpoint-{}.tmp-{}", trainer.global_step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io_write(&tmp, e))?;
    save_adapter(&trainer.model, &trainer.lora, &tmp)?;
    write_state(trainer, &tmp, epoch)?;
    let moments: Vec<(String, LazyTensor)> = trainer
        .slots
        .iter()
        .zip(&trainer.optimizer.moments)
        .filter_map(|(slot, m)| m.as_ref().map(|m| (slot.key(), m)))
        .flat_map(|(key, (m, v))| {
            let (m, v) = (m.clone(), v.clone());
            let n = m.dims()[0];
            [
                (format!("exp_avg.{key}"), LazyTensor::new(vec![n], move || to_host(m.clone()))),
                (format!("exp_avg_sq.{key}"), LazyTensor::new(vec![n], move || to_host(v.clone()))),
            ]
        })
        .collect();
    let path = tmp.join(OPTIMIZER_FILE);
    let metadata = Some(HashMap::from([("adam_step".to_owned(), trainer.optimizer.step.to_string())]));
    write_safetensors(&path, &moments, metadata)?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io_write(&final_dir, e))?;
    rotate_checkpoints(&out, trainer.args.save_total_limit)?;
    Ok(final_dir)
}

/// `checkpoint-N` directories in `out`, oldest first.
pub fn checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join(STATE_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

fn rotate_checkpoints(out: &Path, limit: Option<usize>) -> Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let all = checkpoints(out);
    for (_, dir) in all.iter().take(all.len().saturating_sub(limit.max(1))) {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io_write(dir, e))?;
    }
    Ok(())
}

/// `latest` → the newest checkpoint in the output directory; otherwise the path given.
pub fn resolve_checkpoint(spec: &str, output_dir: &Path) -> Result<PathBuf> {
    if spec == "latest" {
        return checkpoints(output_dir)
            .pop()
            .map(|(_, p)| p)
            .ok_or_else(|| Error::file(output_dir, "no checkpoint-N directory to resume from"));
    }
    Ok(PathBuf::from(spec))
}

/// Puts the trainer where the checkpoint in `dir` left off: adapter weights, optimizer moments,
/// step counters and log history.
pub fn resume(trainer: &mut Trainer, dir: &Path) -> Result<()> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: Value =
        serde_json::from_str(&text).map_err(|e| Error::file(&state_path, format!("not valid JSON: {e}")))?;
    let step = state["global_step"].as_u64().ok_or_else(|| Error::file(&state_path, "no global_step"))? as usize;
    let adapter = SafetensorsFile::open(&dir.join(crate::lora::adapter_file::WEIGHTS_FILE))?;
    let optimizer = SafetensorsFile::open(&dir.join(OPTIMIZER_FILE))?;
    let device = trainer.device.clone().without_autodiff();
    let read = |file: &SafetensorsFile, key: &str| -> Result<Tensor<1>> {
        let host = file.read(key)?;
        let n = host.data.len();
        Ok(Tensor::from_data(TensorData::new(host.data, [n]), &device))
    };
    for (i, slot) in trainer.slots.clone().iter().enumerate() {
        let key = slot.key();
        slot.write(&mut trainer.model, read(&adapter, &key)?);
        let names = optimizer.names();
        if names.contains(&format!("exp_avg.{key}")) {
            trainer.optimizer.moments[i] =
                Some((read(&optimizer, &format!("exp_avg.{key}"))?, read(&optimizer, &format!("exp_avg_sq.{key}"))?));
        }
    }
    trainer.optimizer.step = state["ember"]["adam_step"].as_u64().unwrap_or(step as u64);
    trainer.global_step = step;
    trainer.log_history = state["log_history"].as_array().cloned().unwrap_or_default();
    trainer.step_losses = serde_json::from_value(state["ember"]["step_losses"].clone()).unwrap_or_default();
    Ok(())
}
