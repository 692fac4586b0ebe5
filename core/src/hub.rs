//! Hugging Face Hub ids (`org/name@revision`) and what they name: the resolve URLs of a repo's
//! files, the cache folder huggingface_hub keeps them in, and which of a repo's files Ember needs.
//! No I/O here: the CLI downloads (native `hub`), the page fetches the same URLs.

use std::collections::BTreeSet;

use crate::checkpoint::{shard_names, WEIGHT_FILES};
use crate::error::{Error, Result};
use crate::lora::adapter_file::{CONFIG_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE};

/// huggingface_hub's default endpoint (`HF_ENDPOINT` overrides it).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// A repo's default branch, as `from_pretrained` uses when no revision is given.
pub const DEFAULT_REVISION: &str = "main";

/// Model files read beside the weights: the config, the tokenizer, generation defaults.
pub const MODEL_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The plural the Hub uses in API paths and huggingface_hub in cache folder names.
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// `org/name`, optionally `@revision` (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
    /// Whether a revision was written (`@...`); else [`DEFAULT_REVISION`].
    pub pinned: bool,
}

impl HubId {
    /// `Some` when `text` has the shape of a Hub id. Names follow the Hub's rules (letters,
    /// digits, `-`, `_`, `.`; no `--` or `..`, which would be ambiguous in cache folder names).
    pub fn parse(text: &str) -> Option<HubId> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (text, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
                && !p.contains("--")
                && !p.contains("..")
        };
        if !part_ok(org) || !part_ok(name) {
            return None;
        }
        let revision_ok = |r: &str| {
            !r.is_empty()
                && r.len() <= 256
                && !r.contains("..")
                && !r.starts_with('/')
                && r.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        if revision.is_some_and(|r| !revision_ok(r)) {
            return None;
        }
        Some(HubId {
            repo: repo.to_owned(),
            revision: revision.unwrap_or(DEFAULT_REVISION).to_owned(),
            pinned: revision.is_some(),
        })
    }

    /// Whether the revision is a full commit hash (then no `refs/` entry names it).
    pub fn is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pinned {
            write!(f, "{}@{}", self.repo, self.revision)
        } else {
            f.write_str(&self.repo)
        }
    }
}

pub fn is_commit_hash(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `{endpoint}/[datasets/]{repo}/resolve/{revision}/{file}`: where the Hub serves a file (it
/// redirects large ones to its CDN). The revision is one URL segment (`refs/pr/1` is quoted).
pub fn resolve_url(endpoint: &str, kind: RepoKind, repo: &str, revision: &str, file: &str) -> String {
    let prefix = match kind {
        RepoKind::Model => "",
        RepoKind::Dataset => "datasets/",
    };
    let file: Vec<String> = file.split('/').map(quote).collect();
    format!("{}/{prefix}{repo}/resolve/{}/{}", endpoint.trim_end_matches('/'), quote(revision), file.join("/"))
}

/// `{endpoint}/api/{models|datasets}/{repo}/revision/{revision}`: the commit a revision names
/// and the repo's files there (`sha`, `siblings[].rfilename`).
pub fn info_url(endpoint: &str, kind: RepoKind, repo: &str, revision: &str) -> String {
    format!("{}/api/{}/{repo}/revision/{}", endpoint.trim_end_matches('/'), kind.plural(), quote(revision))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as `urllib.parse.quote(s, safe="")`.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The model folder URL the page's URL field names: a Hub id (`org/name[@revision]`) is the
/// Hub's `resolve/<revision>/` folder of that model (served with CORS); anything else is a URL.
pub fn folder_url(input: &str) -> String {
    match HubId::parse(input) {
        Some(id) => resolve_url(DEFAULT_ENDPOINT, RepoKind::Model, &id.repo, &id.revision, ""),
        None if input.ends_with('/') => input.to_owned(),
        None => format!("{input}/"),
    }
}

/// huggingface_hub's cache folder of a repo: `models--org--name`, `datasets--org--name`.
pub fn cache_folder(kind: RepoKind, repo: &str) -> String {
    format!("{}--{}", kind.plural(), repo.replace('/', "--"))
}

/// The files of a model repo Ember reads: config, tokenizer and generation files that exist, and
/// the first weights layout transformers would pick (an index also needs its shards, which
/// [`shards_to_fetch`] names once the index is read).
pub fn model_files(listing: &BTreeSet<String>, id: &str) -> Result<Vec<String>> {
    if !listing.contains("config.json") {
        return Err(Error::file(id, "the repo has no config.json: is it a transformers model?"));
    }
    let weights = WEIGHT_FILES.iter().find(|w| listing.contains(**w)).ok_or_else(|| {
        Error::file(id, format!("the repo has no weights Ember reads (looked for {})", WEIGHT_FILES.join(", ")))
    })?;
    let mut files: Vec<String> = MODEL_FILES.iter().filter(|f| listing.contains(**f)).map(|f| f.to_string()).collect();
    files.push(weights.to_string());
    Ok(files)
}

/// The shards an index names that the repo holds; a shard the index names but the repo lacks is
/// an error (the download could never be complete).
pub fn shards_to_fetch(index_json: &str, index_name: &str, listing: &BTreeSet<String>) -> Result<Vec<String>> {
    let shards = shard_names(index_json, index_name)?;
    if let Some(missing) = shards.iter().find(|s| !listing.contains(*s)) {
        return Err(Error::file(index_name, format!("names shard {missing}, which the repo does not hold")));
    }
    Ok(shards.into_iter().collect())
}

/// An adapter repo's config and weights (safetensors preferred, as peft saves by default).
pub fn adapter_files(listing: &BTreeSet<String>, id: &str) -> Result<Vec<String>> {
    if !listing.contains(CONFIG_FILE) {
        return Err(Error::file(id, format!("the repo has no {CONFIG_FILE}: is it a PEFT adapter?")));
    }
    let weights = [WEIGHTS_FILE, LEGACY_WEIGHTS_FILE].into_iter().find(|w| listing.contains(*w)).ok_or_else(|| {
        Error::file(id, format!("the repo has no adapter weights ({WEIGHTS_FILE} or {LEGACY_WEIGHTS_FILE})"))
    })?;
    Ok(vec![CONFIG_FILE.to_string(), weights.to_string()])
}

/// `file` if it is a plain relative path inside a repo: no `..`, no absolute or empty parts, no
/// backslashes (a hostile listing or index must not place files outside the snapshot folder).
pub fn safe_repo_path(file: &str) -> Result<&str> {
    let bad = file.is_empty()
        || file.len() > 1024
        || file.contains('\\')
        || file.contains('\0')
        || file.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        Err(Error::file(file, "is not a relative path inside the repo"))
    } else {
        Ok(file)
    }
}
