//! Training arguments under transformers' `TrainingArguments` names, with its defaults (which
//! differ from burn's: AdamW eps 1e-8 and no weight decay, global-norm clipping at 1.0, linear
//! decay). A TOML or JSON file can hold them; command-line flags override the file.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// transformers' `lr_scheduler_type` values Ember implements; an unknown one is refused with
/// this list (serde's "unknown variant ..., expected one of ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

impl std::fmt::Display for SchedulerType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchedulerType::Linear => "linear",
            SchedulerType::Cosine => "cosine",
            SchedulerType::Constant => "constant",
            SchedulerType::ConstantWithWarmup => "constant_with_warmup",
        })
    }
}

impl std::str::FromStr for SchedulerType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingArgs {
    pub output_dir: String,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Overrides `num_train_epochs` when > 0.
    pub max_steps: i64,
    pub lr_scheduler_type: SchedulerType,
    pub warmup_steps: usize,
    /// Used when `warmup_steps` is 0: `ceil(warmup_ratio * total steps)`.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global L2 norm to clip gradients to; 0 disables clipping.
    pub max_grad_norm: f64,
    pub logging_steps: usize,
    /// A checkpoint every this many steps (0: none).
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    pub seed: u64,
    /// Shuffle the training examples each epoch (transformers always does).
    pub shuffle: bool,
    /// Evaluate every this many steps when evaluation data is given (0: only at the end).
    pub eval_steps: usize,
    pub per_device_eval_batch_size: usize,
    /// Keep only each block's input in the forward pass and run the blocks again in the
    /// backward pass ([`super::recompute`]): much less memory for about a third more compute.
    pub gradient_checkpointing: bool,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        TrainingArgs {
            output_dir: "ember-output".into(),
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: -1,
            lr_scheduler_type: SchedulerType::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 500,
            save_steps: 500,
            save_total_limit: None,
            seed: 42,
            shuffle: true,
            eval_steps: 0,
            per_device_eval_batch_size: 8,
            gradient_checkpointing: false,
        }
    }
}

impl TrainingArgs {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return bad("`per_device_train_batch_size` and `gradient_accumulation_steps` must be at least 1".into());
        }
        for (name, value, ok) in [
            ("learning_rate", self.learning_rate, self.learning_rate >= 0.0),
            ("num_train_epochs", self.num_train_epochs, self.num_train_epochs >= 0.0),
            ("warmup_ratio", self.warmup_ratio, (0.0..=1.0).contains(&self.warmup_ratio)),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0.0),
            ("adam_beta1", self.adam_beta1, (0.0..1.0).contains(&self.adam_beta1)),
            ("adam_beta2", self.adam_beta2, (0.0..1.0).contains(&self.adam_beta2)),
            ("adam_epsilon", self.adam_epsilon, self.adam_epsilon > 0.0),
            ("max_grad_norm", self.max_grad_norm, self.max_grad_norm >= 0.0),
        ] {
            if !value.is_finite() || !ok {
                return bad(format!("`{name}` = {value} is out of range (learning_rate, num_train_epochs, weight_decay and max_grad_norm \
                                    are finite and >= 0; warmup_ratio in [0, 1]; adam_beta1/2 in [0, 1); adam_epsilon > 0)"));
            }
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return bad("set `num_train_epochs` > 0 or `max_steps` > 0".into());
        }
        Ok(())
    }

    /// Optimizer steps in one epoch of `examples` examples.
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.per_device_train_batch_size).div_ceil(self.gradient_accumulation_steps)
    }

    /// Total optimizer steps: `max_steps`, or `ceil(num_train_epochs * steps_per_epoch)`.
    pub fn total_steps(&self, examples: usize) -> usize {
        if self.max_steps > 0 {
            self.max_steps as usize
        } else {
            (self.num_train_epochs * self.steps_per_epoch(examples) as f64).ceil() as usize
        }
    }

    pub fn warmup(&self, total_steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total_steps as f64).ceil() as usize
        }
    }

    /// The learning rate of the `step`-th update (0-based), as transformers' schedulers give it.
    pub fn learning_rate_at(&self, step: usize, total_steps: usize) -> f64 {
        let warmup = self.warmup(total_steps);
        let factor = if step < warmup && self.lr_scheduler_type != SchedulerType::Constant {
            step as f64 / warmup.max(1) as f64
        } else {
            let progress = (step - warmup.min(step)) as f64 / (total_steps.saturating_sub(warmup)).max(1) as f64;
            match self.lr_scheduler_type {
                SchedulerType::Linear => {
                    ((total_steps as f64 - step as f64) / (total_steps.saturating_sub(warmup)).max(1) as f64).max(0.0)
                }
                SchedulerType::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
                SchedulerType::Constant | SchedulerType::ConstantWithWarmup => 1.0,
            }
        };
        self.learning_rate * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_transformers() {
        let args = TrainingArgs { learning_rate: 1e-3, warmup_steps: 2, ..Default::default() };
        let lrs: Vec<f64> = (0..5).map(|s| args.learning_rate_at(s, 5)).collect();
        assert_eq!(lrs, vec![0.0, 0.0005, 0.001, 0.001 * 2.0 / 3.0, 0.001 / 3.0]);
        let cosine =
            TrainingArgs { lr_scheduler_type: SchedulerType::Cosine, learning_rate: 1.0, ..Default::default() };
        assert!((cosine.learning_rate_at(5, 10) - 0.5).abs() < 1e-12);
        let warm = TrainingArgs {
            lr_scheduler_type: SchedulerType::ConstantWithWarmup,
            learning_rate: 1.0,
            warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(warm.learning_rate_at(1, 10), 0.25);
        assert_eq!(warm.learning_rate_at(7, 10), 1.0);
    }

    #[test]
    fn step_counts_follow_transformers() {
        let args = TrainingArgs {
            per_device_train_batch_size: 1,
            gradient_accumulation_steps: 4,
            num_train_epochs: 1.0,
            ..Default::default()
        };
        assert_eq!(args.steps_per_epoch(15), 4);
        assert_eq!(args.total_steps(15), 4);
        assert_eq!(TrainingArgs { max_steps: 5, ..args }.total_steps(15), 5);
    }
}
