//! The dataset flags shared by `ember data`, `ember eval` and `ember train`.

use std::path::PathBuf;

use ember_core::data::dataset::load_or_build;
use ember_core::data::{Columns, TokenizedDataset};
use ember_core::template::Template;
use ember_core::tokenizer::Tokenizer;

use crate::hub::{self, Want};

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// A dataset: .json (array), .jsonl, .parquet, .csv, a directory written by datasets'
    /// save_to_disk (a Dataset or a DatasetDict), or a Hub dataset id (org/name[@revision]).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of a DatasetDict directory or Hub dataset.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Column names, if not instruction/input/output: e.g. instruction=prompt,output=answer.
    #[arg(long, default_value = "")]
    pub columns: String,
    /// human-assistant (the reference recipe), alpaca, or a string with {instruction} and {input}.
    #[arg(long, default_value = "human-assistant")]
    pub template: String,
    /// Examples are cut to this many tokens.
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
}

impl DataArgs {
    /// Tokenizes the dataset, or reuses the cached tokenization of the same inputs.
    pub fn load(&self, tokenizer: &Tokenizer) -> anyhow::Result<TokenizedDataset> {
        let template = Template::parse(&self.template).map_err(anyhow::Error::msg)?;
        let columns = Columns::parse(&self.columns)?;
        anyhow::ensure!(self.max_length >= 2, "--max-length must be at least 2");
        let data = hub::local(&self.data, Want::Dataset { split: &self.split })?;
        let dataset = load_or_build(&data, &self.split, &columns, tokenizer, &template, self.max_length, &cache_dir())?;
        if let Some(notice) = &dataset.notice {
            eprintln!("note: {notice}");
        }
        ember_core::data::dataset::check_not_empty(&dataset, &self.data.display().to_string())?;
        Ok(dataset)
    }
}

/// `$EMBER_CACHE_DIR`, else `$XDG_CACHE_HOME/ember/tokenized`, else `~/.cache/ember/tokenized`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ember").join("tokenized")
}
