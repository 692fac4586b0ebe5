//! The data pipeline: instruction datasets in the formats users have ([`formats`]), the
//! recipe's template, tokenization and label masking ([`encode`]), padding like
//! `DataCollatorForSeq2Seq` ([`collate`]), and tokenized datasets with shuffling, statistics
//! and an on-disk cache ([`dataset`]).

pub mod collate;
pub mod dataset;
pub mod encode;
pub mod formats;
mod parquet_pages;

pub use collate::{collate, Batch};
pub use dataset::TokenizedDataset;
pub use encode::{encode_example, Encoded};
pub use formats::{split_files, Columns, Example};

/// Label value ignored by the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
