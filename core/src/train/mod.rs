//! Training with transformers' `Trainer` semantics: arguments ([`args`]), AdamW ([`adamw`]),
//! the loop ([`trainer`]), checkpoints and resume ([`checkpoint`]) and the loss curve ([`plot`]).

pub mod adamw;
pub mod args;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
pub mod plot;
pub mod recompute;
pub mod trainer;

pub use args::{SchedulerType, TrainingArgs};
pub use trainer::{Event, Flow, Sink, StepReport, Trainer};
