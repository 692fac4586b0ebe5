//! The training loop of transformers' `Trainer`, for LoRA on BLOOM:
//!
//! for each optimizer step: take `gradient_accumulation_steps` micro-batches of
//! `per_device_train_batch_size` examples (in a seeded per-epoch order); the step's loss is the
//! summed token cross-entropy of all its micro-batches divided by their label-token count;
//! back-propagate each micro-batch and add up the gradients; clip them to `max_grad_norm` by
//! their global L2 norm (the logged `grad_norm` is the norm before clipping); take one AdamW
//! step at the scheduler's learning rate for this step.

use burn::tensor::{Device, Tensor};
use serde_json::{json, Value};

use super::adamw::{AdamW, AdamWConfig};
use super::args::TrainingArgs;
use super::recompute;
use crate::data::{collate, Batch, TokenizedDataset};
use crate::error::{Error, Result};
use crate::eval::{evaluate_async, EvalResult};
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

/// What the loop tells its caller ([`Sink`]) about.
pub enum Event<'a> {
    Step(&'a StepReport),
    /// A `log_history` entry (training log or evaluation).
    Log(&'a Value),
    Eval(&'a EvalResult),
    /// A checkpoint is due: every `save_steps`, and when the run stops early. The caller writes
    /// it (`ember train`: [`super::checkpoint::save_checkpoint`]) or has nowhere to (the page).
    Checkpoint {
        trainer: &'a Trainer,
        epoch: f64,
    },
}

/// What the caller answers to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// After a [`Event::Step`]: end the run early, after a checkpoint.
    Stop,
}

/// The platform's side of the loop: where its events go (a progress bar and checkpoint files,
/// or messages to the page), whether to stop, and a clock. The loop itself has no platform code.
#[allow(async_fn_in_trait)] // used as a generic bound only, never as `dyn`
pub trait Sink {
    async fn event(&mut self, event: Event<'_>) -> Result<Flow>;

    /// Seconds since some fixed moment (for `train_runtime`; `std::time` has no clock in wasm32).
    fn seconds(&self) -> f64;
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
            return Err(Error::invalid(
                "no training example has a label token left after truncation; raise `max_length`",
            ));
        }
        let total_steps = args.total_steps(indices.len());
        let optimizer = AdamW::new(
            AdamWConfig {
                beta1: args.adam_beta1,
                beta2: args.adam_beta2,
                eps: args.adam_epsilon,
                weight_decay: args.weight_decay,
            },
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
        let divisor = label_tokens.max(1) as f64;
        for (i, batch) in batches.iter().enumerate() {
            let micro = if self.args.gradient_checkpointing {
                let seed = self.args.seed.wrapping_add(k as u64);
                recompute::loss_and_grads(&self.model, batch, divisor, &self.slots, &self.device, seed, i).await?
            } else {
                let (sum, _) = loss_sum(&self.model, batch, &self.device);
                let micro_loss = sum / divisor;
                let gradients = micro_loss.backward();
                let loss = scalar(micro_loss.inner(), "training").await? as f64;
                let grads = self.slots.iter().map(|slot| slot.grad(&self.model, &gradients)).collect();
                recompute::MicroBatchGrads { loss, grads }
            };
            loss += micro.loss;
            for (acc, g) in grads.iter_mut().zip(micro.grads) {
                if let Some(g) = g {
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
                 (lower `learning_rate`, check the data; earlier checkpoints in {} are intact)",
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
        let clip =
            if self.args.max_grad_norm > 0.0 { (self.args.max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
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
        Ok(StepReport {
            step: self.global_step,
            total_steps: self.total_steps,
            epoch,
            loss,
            grad_norm,
            learning_rate,
            tokens,
            label_tokens,
        })
    }

    /// A training log entry over the steps since the last one (loss averaged, as transformers does).
    fn log_entry(&mut self, report: &StepReport) -> Value {
        let mean = self.losses_since_log.iter().sum::<f64>() / self.losses_since_log.len().max(1) as f64;
        self.losses_since_log.clear();
        json!({ "loss": mean, "grad_norm": report.grad_norm, "learning_rate": report.learning_rate, "epoch": report.epoch, "step": report.step })
    }

    pub fn evaluate(&self, eval: &TokenizedDataset) -> Result<EvalResult> {
        blocking(self.evaluate_async(eval))
    }

    /// The evaluation loss of the model as it is now (dropout off).
    pub async fn evaluate_async(&self, eval: &TokenizedDataset) -> Result<EvalResult> {
        let model = self.model.clone().valid_model();
        let device = self.device.clone().without_autodiff();
        evaluate_async(
            &model,
            eval,
            self.args.per_device_eval_batch_size,
            self.pad_id,
            self.padding_side,
            &device,
            |_, _| {},
        )
        .await
    }

    /// [`Self::run_async`] on platforms that can wait for the device.
    pub fn run(
        &mut self,
        train: &TokenizedDataset,
        eval: Option<&TokenizedDataset>,
        sink: &mut impl Sink,
    ) -> Result<bool> {
        blocking(self.run_async(train, eval, sink))
    }

    /// Runs to the last step, telling `sink` about each step, log entry, evaluation and due
    /// checkpoint. When the sink answers a step with [`Flow::Stop`], a checkpoint is requested
    /// and the run ends early (`Ok(false)`).
    pub async fn run_async(
        &mut self,
        train: &TokenizedDataset,
        eval: Option<&TokenizedDataset>,
        sink: &mut impl Sink,
    ) -> Result<bool> {
        let start = sink.seconds();
        let first = self.global_step;
        while self.global_step < self.total_steps {
            let report = self.step_async(train).await?;
            let flow = sink.event(Event::Step(&report)).await?;
            let last = report.step == self.total_steps;
            if self.args.logging_steps > 0 && (report.step % self.args.logging_steps == 0) {
                let entry = self.log_entry(&report);
                sink.event(Event::Log(&entry)).await?;
                self.log_history.push(entry);
            }
            if let Some(eval) = eval {
                if (self.args.eval_steps > 0 && report.step % self.args.eval_steps == 0) || last {
                    let result = self.evaluate_async(eval).await?;
                    sink.event(Event::Eval(&result)).await?;
                    self.log_history
                        .push(json!({ "eval_loss": result.eval_loss, "epoch": report.epoch, "step": report.step }));
                }
            }
            let stop = flow == Flow::Stop && !last;
            let due = self.args.save_steps > 0 && report.step % self.args.save_steps == 0 && !last;
            if due || stop {
                sink.event(Event::Checkpoint { trainer: self, epoch: report.epoch }).await?;
            }
            if stop {
                return Ok(false);
            }
        }
        let runtime = (sink.seconds() - start).max(1e-9);
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
