//! The training loop of transformers' `Trainer`, for LoRA on BLOOM:
//!
//! for each optimizer step: take `gradient_accumulation_steps` micro-batches of
//! `per_device_train_batch_size` examples (in a seeded per-epoch order); the step's loss is the
//! summed token cross-entropy of all its micro-batches divided by their label-token count;
//! back-propagate each micro-batch and add up the gradients; clip them to `max_grad_norm` by
//! their global L2 norm (the logged `grad_norm` is the norm before clipping); take one AdamW
//! step at the scheduler's learning rate for this step.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use serde_json::{json, Value};

use super::adamw::{AdamW, AdamWConfig};
use super::args::TrainingArgs;
use crate::data::{collate, Batch, TokenizedDataset};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::lora::slots::{adapter_slots, Slot};
use crate::lora::LoraConfig;
use crate::loss::loss_sum;
use crate::model::BloomForCausalLM;
use crate::readback::{blocking, scalar};
use crate::tokenizer::PaddingSide;

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// 1-based, as transformers counts `global_step`.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// Tokens fed (padding included) and label tokens counted.
    pub tokens: usize,
    pub label_tokens: usize,
}

/// What the loop tells its caller about.
pub enum Event<'a> {
    Step(&'a StepReport),
    /// A `log_history` entry (training log or evaluation).
    Log(&'a Value),
    Eval(&'a EvalResult),
    Checkpoint(&'a std::path::Path),
}

pub struct Trainer {
    pub model: BloomForCausalLM,
    pub lora: LoraConfig,
    pub args: TrainingArgs,
    pub slots: Vec<Slot>,
    pub optimizer: AdamW,
    pub device: Device,
    pub pad_id: u32,
    pub padding_side: PaddingSide,
    /// Examples that take part (those with at least one label token).
    pub indices: Vec<usize>,
    pub total_steps: usize,
    pub global_step: usize,
    pub log_history: Vec<Value>,
    /// Every step's loss, for the loss curve.
    pub step_losses: Vec<(usize, f64)>,
    losses_since_log: Vec<f64>,
}

impl Trainer {
    /// `model` must already carry the adapters of `lora` and live on an autodiff device.
    pub fn new(
        model: BloomForCausalLM,
        lora: LoraConfig,
        args: TrainingArgs,
        train: &TokenizedDataset,
        pad_id: u32,
        padding_side: PaddingSide,
        device: &Device,
    ) -> Result<Self> {
        args.validate()?;
        let slots = adapter_slots(&lora, &model)?;
        let indices = train.trainable_indices();
        if indices.is_empty() {
            return Err(Error::invalid("no training example has a label token left after truncation; raise --max-length"));
        }
        let total_steps = args.total_steps(indices.len());
        let optimizer = AdamW::new(
            AdamWConfig { beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon, weight_decay: args.weight_decay },
            slots.len(),
        );
        Ok(Trainer {
            model,
            lora,
            args,
            slots,
            optimizer,
            device: device.clone(),
            pad_id,
            padding_side,
            indices,
            total_steps,
            global_step: 0,
            log_history: Vec::new(),
            step_losses: Vec::new(),
            losses_since_log: Vec::new(),
        })
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.args.steps_per_epoch(self.indices.len())
    }

    /// The micro-batches (example indices) of 0-based optimizer step `step`, and the epoch
    /// position after it (`epoch + batches done / batches per epoch`, as transformers logs it).
    pub fn plan(&self, step: usize) -> (Vec<Vec<usize>>, f64) {
        let (bs, accum) = (self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps);
        let (epoch, within) = (step / self.steps_per_epoch(), step % self.steps_per_epoch());
        let order = TokenizedDataset::epoch_order(&self.indices, self.args.seed, epoch, self.args.shuffle);
        let batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        let end = ((within + 1) * accum).min(batches.len());
        let micro = batches[within * accum..end].to_vec();
        (micro, epoch as f64 + end as f64 / batches.len() as f64)
    }

    fn batch(&self, dataset: &TokenizedDataset, indices: &[usize]) -> Batch {
        let examples: Vec<_> = indices.iter().map(|&i| dataset.get(i)).collect();
        collate(&examples.iter().collect::<Vec<_>>(), self.pad_id, self.padding_side, None)
    }

    /// One optimizer step.
    pub fn step(&mut self, dataset: &TokenizedDataset) -> Result<StepReport> {
        blocking(self.step_async(dataset))
    }

    /// [`Self::step`] for platforms that cannot block on the device (the browser).
    pub async fn step_async(&mut self, dataset: &TokenizedDataset) -> Result<StepReport> {
        let k = self.global_step;
        // Dropout masks depend only on the seed and the step, so a resumed run draws the same.
        self.device.seed(self.args.seed.wrapping_add(k as u64));
        let (micro, epoch) = self.plan(k);
        let batches: Vec<Batch> = micro.iter().map(|m| self.batch(dataset, m)).collect();
        let label_tokens: usize = batches.iter().map(Batch::num_label_tokens).sum();
        let tokens: usize = batches.iter().map(|b| b.len() * b.seq_len()).sum();

        let mut grads: Vec<Option<Tensor<1>>> = vec![None; self.slots.len()];
        let mut loss = 0.0;
        for batch in &batches {
            let (sum, _) = loss_sum(&self.model, batch, &self.device);
            let micro_loss = sum / label_tokens.max(1) as f64;
            let gradients = micro_loss.backward();
            loss += scalar(micro_loss.inner(), "training").await? as f64;
            for (acc, slot) in grads.iter_mut().zip(&self.slots) {
                if let Some(g) = slot.grad(&self.model, &gradients) {
                    *acc = Some(match acc.take() {
                        Some(a) => a + g,
                        None => g,
                    });
                }
            }
        }
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "the loss became {loss} at step {}: training stopped and nothing of this step was saved \
                 (lower --learning-rate, check the data; earlier checkpoints in {} are intact)",
                k + 1,
                self.args.output_dir
            )));
        }

        let squares: Vec<Tensor<1>> = grads.iter().flatten().map(|g| (g.clone() * g.clone()).sum()).collect();
        let grad_norm = if squares.is_empty() {
            0.0
        } else {
            (scalar(Tensor::cat(squares, 0).sum(), "training").await? as f64).sqrt()
        };
        let clip = if self.args.max_grad_norm > 0.0 { (self.args.max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
        let learning_rate = self.args.learning_rate_at(k, self.total_steps);

        self.optimizer.begin_step();
        for (i, grad) in grads.into_iter().enumerate() {
            let Some(grad) = grad else { continue };
            let grad = if clip < 1.0 { grad * clip } else { grad };
            let slot = self.slots[i].clone();
            let value = slot.read(&self.model).1.inner();
            let new = self.optimizer.update(i, value, grad, learning_rate, slot.decays());
            slot.write(&mut self.model, new);
        }
        self.global_step += 1;
        self.step_losses.push((self.global_step, loss));
        self.losses_since_log.push(loss);
        Ok(StepReport { step: self.global_step, total_steps: self.total_steps, epoch, loss, grad_norm, learning_rate, tokens, label_tokens })
    }

    /// A training log entry over the steps since the last one (loss averaged, as transformers does).
    fn log_entry(&mut self, report: &StepReport) -> Value {
        let mean = self.losses_since_log.iter().sum::<f64>() / self.losses_since_log.len().max(1) as f64;
        self.losses_since_log.clear();
        json!({ "loss": mean, "grad_norm": report.grad_norm, "learning_rate": report.learning_rate, "epoch": report.epoch, "step": report.step })
    }

    pub fn evaluate(&self, eval: &TokenizedDataset) -> Result<EvalResult> {
        let model = self.model.clone().valid_model();
        evaluate(&model, eval, self.args.per_device_eval_batch_size, self.pad_id, self.padding_side, &self.device.clone().without_autodiff(), |_, _| {})
    }

    /// Runs to the last step. `should_stop` is checked after every step: when it says so, a
    /// checkpoint is written and the run ends early (`Ok(false)`).
    pub fn run(
        &mut self,
        train: &TokenizedDataset,
        eval: Option<&TokenizedDataset>,
        on_event: &mut dyn FnMut(Event),
        should_stop: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let start = Instant::now();
        let first = self.global_step;
        while self.global_step < self.total_steps {
            let report = self.step(train)?;
            on_event(Event::Step(&report));
            let last = report.step == self.total_steps;
            if self.args.logging_steps > 0 && (report.step % self.args.logging_steps == 0) {
                let entry = self.log_entry(&report);
                on_event(Event::Log(&entry));
                self.log_history.push(entry);
            }
            if let Some(eval) = eval {
                if (self.args.eval_steps > 0 && report.step % self.args.eval_steps == 0) || last {
                    let result = self.evaluate(eval)?;
                    let entry = json!({ "eval_loss": result.eval_loss, "epoch": report.epoch, "step": report.step });
                    on_event(Event::Eval(&result));
                    self.log_history.push(entry);
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            if self.args.save_steps > 0 && report.step % self.args.save_steps == 0 && !last {
                let path = super::checkpoint::save_checkpoint(self, report.epoch)?;
                on_event(Event::Checkpoint(&path));
            }
            if !last && should_stop() {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    let path = super::checkpoint::save_checkpoint(self, report.epoch)?;
                    on_event(Event::Checkpoint(&path));
                }
                return Ok(false);
            }
        }
        let runtime = start.elapsed().as_secs_f64();
        let steps = (self.global_step - first).max(1) as f64;
        let train_loss = self.step_losses.iter().map(|(_, l)| l).sum::<f64>() / self.step_losses.len().max(1) as f64;
        let (_, epoch) = self.plan(self.global_step.saturating_sub(1));
        self.log_history.push(json!({
            "train_runtime": runtime,
            "train_samples_per_second": steps * (self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps) as f64 / runtime,
            "train_steps_per_second": steps / runtime,
            "train_loss": train_loss,
            "epoch": epoch,
            "step": self.global_step,
        }));
        Ok(true)
    }
}

impl BloomForCausalLM {
    /// This model for inference: off the autodiff graph, dropout off.
    pub fn valid_model(self) -> Self {
        burn::module::Module::valid(&self)
    }
}
