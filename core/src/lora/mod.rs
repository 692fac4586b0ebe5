//! LoRA with peft's semantics: the adapter layer ([`layer`]), the config and target matching
//! ([`config`]), putting adapters into a model ([`inject`]), the peft file format
//! ([`adapter_file`], [`slots`]) and merging ([`merge`]).

pub mod adapter_file;
pub mod config;
pub mod inject;
pub mod layer;
pub mod merge;
pub mod slots;

pub use config::{Bias, LoraConfig, LoraSettings, TargetModules};
pub use inject::{apply_lora, lora_report, LoraReport};
pub use layer::{LoraAdapter, LoraInit};
