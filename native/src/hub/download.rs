//! Talking to the Hub (or `HF_ENDPOINT`) as huggingface_hub does: the revision API for a repo's
//! commit and files, a HEAD on each file's resolve URL for its blob id and size, then a GET (the
//! Hub redirects large files to its CDN) into `blobs/<etag>.incomplete`, resumed with `Range`
//! after a dropped connection, checked (size, and SHA-256 for LFS files), renamed into place.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use ember_core::hub::{info_url, resolve_url, safe_repo_path, HubId, RepoKind};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::{RepoCache, Settings};

/// Tries of one file's download before giving up (each resumes where the last stopped).
const TRIES: usize = 4;
/// Redirects followed to find a file's metadata (renamed repos answer with relative ones).
const MAX_REDIRECTS: usize = 10;
/// The revision API's answer is a small JSON document; more is not read.
const MAX_LISTING_BYTES: u64 = 64 << 20;

/// Why a request failed.
#[derive(Debug)]
pub enum Fault {
    /// No answer at all (offline, DNS, refused): the cache may still serve.
    Unreachable(String),
    /// An answer that says no, or one that makes no sense.
    Refused(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Unreachable(cause) | Fault::Refused(cause) => f.write_str(cause),
        }
    }
}

pub struct Client<'a> {
    settings: &'a Settings,
    /// Follows no redirects: metadata must come from the Hub's own answer, not the CDN's.
    agent: ureq::Agent,
}

/// What a file's HEAD says.
struct FileMeta {
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (the CDN for large files).
    location: String,
}

impl<'a> Client<'a> {
    pub fn new(settings: &'a Settings) -> Self {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30))
            .user_agent(concat!("ember/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .build();
        Client { settings, agent }
    }

    fn request(&self, method: &str, url: &str, with_token: bool) -> ureq::Request {
        let request = self.agent.request(method, url).set("Accept-Encoding", "identity");
        match (&self.settings.token, with_token) {
            (Some(token), true) => request.set("Authorization", &format!("Bearer {token}")),
            _ => request,
        }
    }

    /// The commit `id`'s revision names and the repo's files there.
    pub fn listing(&self, kind: RepoKind, id: &HubId) -> Result<(String, BTreeSet<String>), Fault> {
        let url = info_url(&self.settings.endpoint, kind, &id.repo, &id.revision);
        let response = self.request("GET", &url, true).call().map_err(|e| self.fault(e, id, None))?;
        let mut text = String::new();
        response
            .into_reader()
            .take(MAX_LISTING_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| Fault::Unreachable(format!("{url}: {e}")))?;
        let bad = |what: &str| Fault::Refused(format!("{url}: unexpected answer ({what})"));
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
        let commit = json.get("sha").and_then(|s| s.as_str()).filter(|s| ember_core::hub::is_commit_hash(s));
        let commit = commit.ok_or_else(|| bad("no commit \"sha\""))?.to_owned();
        let siblings = json.get("siblings").and_then(|s| s.as_array()).ok_or_else(|| bad("no \"siblings\""))?;
        let mut files = BTreeSet::new();
        for name in siblings.iter().filter_map(|s| s.get("rfilename")?.as_str()) {
            safe_repo_path(name).map_err(|e| Fault::Refused(format!("{url}: lists a file that {e}")))?;
            files.insert(name.to_owned());
        }
        Ok((commit, files))
    }

    /// Makes `snapshots/<commit>/<file>` present, downloading its blob unless cached.
    pub fn fetch_file(&self, repo: &RepoCache, id: &HubId, commit: &str, file: &str) -> anyhow::Result<()> {
        if repo.snapshot(commit).join(file).is_file() {
            return Ok(());
        }
        let url = resolve_url(&self.settings.endpoint, repo.kind, &id.repo, commit, file);
        let meta = self.metadata(&url, id, file).map_err(|f| anyhow::anyhow!("{f}"))?;
        if !repo.blob(&meta.etag).is_file() {
            self.download(repo, &meta, &format!("{id}: {file}"))?;
        }
        repo.link(commit, file, &meta.etag)
    }

    /// HEAD on a resolve URL: relative redirects (renamed repos) are followed; an absolute one
    /// (the CDN) is not, since the Hub's answer carries the metadata.
    fn metadata(&self, url: &str, id: &HubId, file: &str) -> Result<FileMeta, Fault> {
        let mut at = url.to_owned();
        for _ in 0..MAX_REDIRECTS {
            let response = self.request("HEAD", &at, true).call().map_err(|e| self.fault(e, id, Some(file)))?;
            let redirect = (300..400).contains(&response.status());
            let location = response.header("Location").map(str::to_owned);
            if let (true, Some(next)) = (redirect, &location) {
                if next.starts_with('/') {
                    at = format!("{}{next}", origin_of(&at));
                    continue;
                }
            }
            let header = |name: &str| response.header(name).map(str::to_owned);
            let etag = header("X-Linked-Etag").or_else(|| header("ETag")).map(|e| normalize_etag(&e));
            let etag = etag.filter(|e| is_blob_name(e)).ok_or_else(|| {
                Fault::Refused(format!("{at}: the answer has no usable ETag (is HF_ENDPOINT a Hugging Face Hub?)"))
            })?;
            let size = header("X-Linked-Size")
                .or_else(|| if redirect { None } else { header("Content-Length") })
                .and_then(|s| s.parse().ok());
            let location = if redirect { location.unwrap_or_else(|| at.clone()) } else { at.clone() };
            return Ok(FileMeta { etag, size, location });
        }
        Err(Fault::Refused(format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }

    /// Downloads a blob into `blobs/<etag>.incomplete`, resuming after drops, then checks and
    /// renames it into place.
    fn download(&self, repo: &RepoCache, meta: &FileMeta, what: &str) -> anyhow::Result<()> {
        let partial = repo.partial(&meta.etag);
        std::fs::create_dir_all(partial.parent().expect("blobs folder"))
            .with_context(|| format!("{}: cannot create folder", partial.display()))?;
        let bar = progress_bar(what, meta.size);
        let mut outcome = Err(String::new());
        for _ in 0..TRIES {
            outcome = self.download_once(meta, &partial, &bar);
            if outcome.is_ok() {
                break;
            }
        }
        bar.finish_and_clear();
        let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if let Err(cause) = outcome {
            anyhow::bail!(
                "{what}: download stopped at {have} of {} bytes ({cause}); run the command again to resume it",
                meta.size.map_or("?".into(), |s| s.to_string())
            );
        }
        verify_sha256(&partial, &meta.etag).with_context(|| format!("{what}: the download is damaged"))?;
        std::fs::rename(&partial, repo.blob(&meta.etag))
            .with_context(|| format!("{}: cannot move into place", partial.display()))?;
        if bar.is_hidden() {
            eprintln!("downloaded {what} ({})", indicatif::HumanBytes(have));
        }
        Ok(())
    }

    /// One GET from where the partial file ends; `Err` says why it stopped early.
    fn download_once(&self, meta: &FileMeta, partial: &std::path::Path, bar: &ProgressBar) -> Result<(), String> {
        let have = std::fs::metadata(partial).map_or(0, |m| m.len());
        if meta.size.is_some_and(|size| have >= size) {
            return if meta.size == Some(have) {
                Ok(())
            } else {
                Err("the partial file is larger than the blob".into())
            };
        }
        // The token goes to the Hub only, not to the CDN it redirects to.
        let to_hub = origin_of(&meta.location) == origin_of(&self.settings.endpoint);
        let mut request = self.request("GET", &meta.location, to_hub);
        if have > 0 {
            request = request.set("Range", &format!("bytes={have}-"));
        }
        let response = follow_get(request, &self.agent, &meta.location)?;
        let resumed = response.status() == 206;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(partial)
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        let start = if resumed { have } else { 0 };
        bar.set_position(start);
        let limit = meta.size.map_or(u64::MAX, |s| s - start);
        let mut body = response.into_reader().take(limit);
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buffer).map_err(|e| format!("connection lost: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buffer[..n]).map_err(|e| format!("{}: {e}", partial.display()))?;
            bar.inc(n as u64);
        }
        out.sync_all().map_err(|e| format!("{}: {e}", partial.display()))?;
        let got = std::fs::metadata(partial).map_or(0, |m| m.len());
        match meta.size {
            Some(size) if got < size => Err("the connection closed early".into()),
            _ => Ok(()),
        }
    }

    /// A failed request, said in terms of the id and file.
    fn fault(&self, error: ureq::Error, id: &HubId, file: Option<&str>) -> Fault {
        let what = match file {
            Some(file) => format!("file {file} of {id}"),
            None => format!("repo {id}"),
        };
        match error {
            ureq::Error::Status(404, _) => Fault::Refused(format!(
                "HTTP 404 from {}: no such {what} (check the id, the revision and the spelling)",
                self.settings.endpoint
            )),
            ureq::Error::Status(code @ (401 | 403), _) => Fault::Refused(format!(
                "HTTP {code} from {}: {what} is private or gated; {}",
                self.settings.endpoint,
                if self.settings.token.is_some() {
                    "the token in HF_TOKEN (or $HF_HOME/token) is not allowed to read it (accept the terms on its Hub page?)"
                } else {
                    "set HF_TOKEN to a token that may read it"
                }
            )),
            ureq::Error::Status(code, response) => Fault::Refused(format!(
                "HTTP {code} {} from {} for {what}",
                response.status_text(),
                self.settings.endpoint
            )),
            ureq::Error::Transport(t) => Fault::Unreachable(t.to_string()),
        }
    }
}

/// A GET that follows redirects itself (the agent follows none), without the token on hosts
/// other than the first.
fn follow_get(request: ureq::Request, agent: &ureq::Agent, url: &str) -> Result<ureq::Response, String> {
    let range = request.header("Range").map(str::to_owned);
    let mut response = request.call().map_err(|e| e.to_string())?;
    let mut at = url.to_owned();
    for _ in 0..MAX_REDIRECTS {
        if !(300..400).contains(&response.status()) {
            return Ok(response);
        }
        let Some(next) = response.header("Location") else { return Ok(response) };
        at = if next.starts_with('/') { format!("{}{next}", origin_of(&at)) } else { next.to_owned() };
        let mut again = agent.get(&at).set("Accept-Encoding", "identity");
        if let Some(range) = &range {
            again = again.set("Range", range);
        }
        response = again.call().map_err(|e| e.to_string())?;
    }
    Ok(response)
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find('/').map_or(url, |i| &url[..after_scheme + i])
}

/// As huggingface_hub: a weak validator's `W/` and the quotes go.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_owned()
}

/// Whether an etag can name a file in `blobs/` (a hostile server must not pick paths).
fn is_blob_name(etag: &str) -> bool {
    !etag.is_empty() && etag.len() <= 128 && etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An LFS file's etag is its SHA-256: the file must hash to it. Other blobs (git ids of small
/// files) are checked by size only, as huggingface_hub does.
fn verify_sha256(path: &std::path::Path, etag: &str) -> anyhow::Result<()> {
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("{}: cannot read", path.display()))?;
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !got.eq_ignore_ascii_case(etag) {
        let _ = std::fs::remove_file(path);
        anyhow::bail!("SHA-256 {got}, but the Hub says {etag}; the partial file was removed, run the command again");
    }
    Ok(())
}

fn progress_bar(what: &str, size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::new(size.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    if bar.is_hidden() {
        eprintln!(
            "downloading {what} ({})",
            size.map_or("size unknown".into(), |s| indicatif::HumanBytes(s).to_string())
        );
    }
    bar
}
