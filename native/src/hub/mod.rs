//! Hugging Face Hub ids wherever a path is taken: `--model bigscience/bloom-560m`,
//! `--adapter someone/bloom-lora@v1`, `--data org/dataset`. A path that exists locally always
//! wins; otherwise the id is looked up in huggingface_hub's cache (shared with Python) and what is
//! missing is downloaded into it. `HF_HUB_OFFLINE=1` reads the cache only.

mod cache;
mod download;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ember_core::hub::{self, HubId, RepoKind};

pub use cache::RepoCache;
use download::{Client, Fault};

/// What a Hub id is expected to name, and so which of its files are fetched.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    Model,
    Adapter,
    Dataset { split: &'a str },
}

impl Want<'_> {
    fn kind(self) -> RepoKind {
        match self {
            Want::Dataset { .. } => RepoKind::Dataset,
            Want::Model | Want::Adapter => RepoKind::Model,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Want::Model => "model",
            Want::Adapter => "adapter",
            Want::Dataset { .. } => "dataset",
        }
    }
}

/// `arg` as a local path: itself when it exists, else the cache snapshot of the Hub repo it
/// names, with the files `want` needs downloaded. Anything else is returned as given, for the
/// caller's own "not found" error.
pub fn local(arg: &Path, want: Want) -> anyhow::Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let Some(id) = arg.to_str().and_then(HubId::parse) else {
        return Ok(arg.to_path_buf());
    };
    let settings = Settings::from_env()?;
    fetch(&settings, &id, want)
        .with_context(|| format!("{id}: no such local path, so it was taken as a Hugging Face Hub {} id", want.noun()))
}

/// Optional variant of [`local`].
pub fn local_opt(arg: Option<&Path>, want: Want) -> anyhow::Result<Option<PathBuf>> {
    arg.map(|a| local(a, want)).transpose()
}

/// The environment variables huggingface_hub honours, read once.
pub struct Settings {
    pub cache: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map_or_else(|| home.join("hub"), PathBuf::from);
        let token_file = var("HF_TOKEN_PATH").map_or_else(|| home.join("token"), PathBuf::from);
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(&token_file).ok())
            .map(|t| t.replace(['\r', '\n'], "").trim().to_owned())
            .filter(|t| !t.is_empty());
        let truthy = |name: &str| {
            var(name).is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_ascii_uppercase().as_str()))
        };
        Ok(Settings {
            cache,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| hub::DEFAULT_ENDPOINT.to_owned()),
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
        })
    }
}

/// The snapshot folder of `id` holding what `want` needs: from the cache when it is complete
/// there and the revision is a commit (or the Hub is off), else after downloading what is missing.
pub fn fetch(settings: &Settings, id: &HubId, want: Want) -> anyhow::Result<PathBuf> {
    let repo = RepoCache::new(&settings.cache, want.kind(), &id.repo);
    let cached = || -> anyhow::Result<PathBuf> {
        let (dir, listing) = repo.snapshot_of(&id.revision)?;
        let read = |name: &str| read_text(&dir.join(name));
        needed(&listing, want, id, &read)?;
        Ok(dir)
    };
    if settings.offline {
        return cached()
            .context(format!("HF_HUB_OFFLINE is set, and the cache ({}) lacks it", settings.cache.display()));
    }
    if id.is_commit() {
        if let Ok(dir) = cached() {
            return Ok(dir);
        }
    }
    let client = Client::new(settings);
    let (commit, listing) = match client.listing(want.kind(), id) {
        Ok(found) => found,
        Err(Fault::Unreachable(cause)) => {
            return cached().context(format!(
                "the Hub ({}) cannot be reached ({cause}), and the cache ({}) lacks it",
                settings.endpoint,
                settings.cache.display()
            ))
        }
        Err(fault) => return Err(anyhow::anyhow!("{fault}")),
    };
    let read = |name: &str| {
        client.fetch_file(&repo, id, &commit, name)?;
        read_text(&repo.snapshot(&commit).join(name))
    };
    for file in needed(&listing, want, id, &read)? {
        client.fetch_file(&repo, id, &commit, &file)?;
    }
    if id.revision != commit {
        repo.write_ref(&id.revision, &commit)?;
    }
    Ok(repo.snapshot(&commit))
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// The files of `listing` that `want` reads; a weights index is read (`read_index`) for its shards.
fn needed(
    listing: &BTreeSet<String>,
    want: Want,
    id: &HubId,
    read_index: &dyn Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Vec<String>> {
    let origin = id.to_string();
    Ok(match want {
        Want::Model => {
            let mut files = hub::model_files(listing, &origin)?;
            if let Some(index) = files.iter().find(|f| f.ends_with(".index.json")).cloned() {
                let text = read_index(&index)?;
                files.extend(hub::shards_to_fetch(&text, &format!("{origin}: {index}"), listing)?);
            }
            files
        }
        Want::Adapter => hub::adapter_files(listing, &origin)?,
        Want::Dataset { split } => {
            let files: Vec<String> = listing.iter().cloned().collect();
            ember_core::data::split_files(&files, split).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
        }
    })
}
