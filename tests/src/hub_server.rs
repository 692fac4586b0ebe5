//! An imitation of the Hugging Face Hub on 127.0.0.1, for the download tests (through
//! `HF_ENDPOINT`) and for the fixture script (huggingface_hub's own client against it):
//!
//! - `GET /api/{models|datasets}/{repo}/revision/{rev}`: `{"sha", "siblings": [{"rfilename"}]}`;
//! - `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}`: small files directly (`ETag` a git-style
//!   id), LFS files (weights, Parquet) by a 302 to a CDN on another origin (`localhost`) with
//!   `X-Linked-Etag` (their SHA-256) and `X-Linked-Size`; `X-Repo-Commit` always;
//! - `GET /cdn/{sha256}`: the bytes, honouring `Range`;
//! - 404 for what does not exist, 401 for a private repo without the right token;
//! - faults on request: drop a blob's connection after some bytes (once), or serve it damaged.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The token a private repo accepts.
pub const GOOD_TOKEN: &str = "hf_test_token";

#[derive(Default, Clone)]
pub struct Repo {
    pub private: bool,
    /// Branch or tag → commit.
    pub refs: BTreeMap<String, String>,
    /// Commit → path → bytes.
    pub commits: BTreeMap<String, BTreeMap<String, Arc<Vec<u8>>>>,
}

impl Repo {
    /// A repo whose `main` is one commit holding `files`.
    pub fn with_files(commit: &str, files: BTreeMap<String, Vec<u8>>) -> Self {
        let mut repo = Repo::default();
        repo.add_commit(commit, &["main"], files);
        repo
    }

    pub fn add_commit(&mut self, commit: &str, names: &[&str], files: BTreeMap<String, Vec<u8>>) {
        assert_eq!(commit.len(), 40, "commits are 40 hex digits");
        for name in names {
            self.refs.insert(name.to_string(), commit.to_owned());
        }
        self.commits.insert(commit.to_owned(), files.into_iter().map(|(k, v)| (k, Arc::new(v))).collect());
    }
}

/// The files of a folder (not recursive), by name.
pub fn files_of(dir: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(format!("{prefix}{name}"), std::fs::read(entry.path()).unwrap());
        }
    }
    files
}

#[derive(Default)]
pub struct Faults {
    /// Close the connection of the next GET of this blob (SHA-256) after this many bytes.
    pub drop_once: Option<(String, usize)>,
    /// Serve this blob (SHA-256) with one byte changed.
    pub damaged: Option<String>,
}

#[derive(Default)]
struct State {
    /// `models/org/name` or `datasets/org/name` → repo.
    repos: HashMap<String, Repo>,
    /// SHA-256 → bytes, for the CDN.
    blobs: HashMap<String, Arc<Vec<u8>>>,
    faults: Faults,
    /// One line per request: `METHOD PATH [range]`.
    log: Vec<String>,
}

pub struct HubServer {
    pub endpoint: String,
    port: u16,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start() -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state, port);
                });
            }
        });
        HubServer { endpoint: format!("http://127.0.0.1:{port}"), port, state }
    }

    /// Adds a repo: `kind` is `models` or `datasets`.
    pub fn add(&self, kind: &str, id: &str, repo: Repo) {
        let mut state = self.state.lock().unwrap();
        for files in repo.commits.values() {
            for (path, bytes) in files {
                if is_lfs(path) {
                    state.blobs.insert(sha256_hex(bytes), bytes.clone());
                }
            }
        }
        state.repos.insert(format!("{kind}/{id}"), repo);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// The requests served so far, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Files the Hub keeps in LFS (and so behind its CDN).
pub fn is_lfs(path: &str) -> bool {
    [".safetensors", ".bin", ".parquet", ".arrow"].iter().any(|e| path.ends_with(e))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A git-style blob id for small files (only its shape matters to clients).
fn git_id(bytes: &[u8]) -> String {
    sha256_hex(&[format!("blob {}\0", bytes.len()).as_bytes(), bytes].concat())[..40].to_owned()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: Option<(usize, usize)>,
    /// Close after this many body bytes.
    cut: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Arc::new(Vec::new()), range: None, cut: None }
    }
    fn json(status: u16, value: serde_json::Value) -> Reply {
        let mut r = Reply::new(status);
        r.body = Arc::new(value.to_string().into_bytes());
        r.header("Content-Type", "application/json")
    }
    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, port: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let range = headers.get("range").cloned();
    state
        .lock()
        .unwrap()
        .log
        .push(format!("{method} {target}{}", range.as_ref().map_or(String::new(), |r| format!(" {r}"))));
    let reply = route(&method, &target, &headers, state, port);
    write_reply(stream, &method, reply)
}

fn write_reply(mut stream: TcpStream, method: &str, reply: Reply) -> std::io::Result<()> {
    let (start, end) = reply.range.unwrap_or((0, reply.body.len()));
    let body = &reply.body[start..end];
    let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", reply.status, body.len());
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let sent = reply.cut.map_or(body.len(), |c| c.min(body.len()));
        stream.write_all(&body[..sent])?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn route(method: &str, target: &str, headers: &HashMap<String, String>, state: &Mutex<State>, port: u16) -> Reply {
    let path = target.split('?').next().unwrap_or("");
    let mut state = state.lock().unwrap();
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return cdn(sha, headers, &mut state);
    }
    let (kind, rest) = match path.strip_prefix("/api/") {
        Some(api) => {
            let (kind, rest) = api.split_once('/').unwrap_or((api, ""));
            return revision_api(kind, rest, headers, &state);
        }
        None => match path.strip_prefix("/datasets/") {
            Some(rest) => ("datasets", rest),
            None => ("models", path.trim_start_matches('/')),
        },
    };
    let segments: Vec<&str> = rest.splitn(5, '/').collect();
    if segments.len() < 5 || segments[2] != "resolve" || !(method == "HEAD" || method == "GET") {
        return Reply::new(404);
    }
    let id = format!("{}/{}", segments[0], segments[1]);
    let (revision, file) = (percent_decode(segments[3]), percent_decode(segments[4]));
    let (repo, commit) = match find(&state, kind, &id, &revision, headers) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let Some(bytes) = repo.commits[&commit].get(&file).cloned() else {
        return Reply::new(404).header("X-Repo-Commit", &commit).header("X-Error-Code", "EntryNotFound");
    };
    if is_lfs(&file) {
        let sha = sha256_hex(&bytes);
        return Reply::new(302)
            .header("Location", &format!("http://localhost:{port}/cdn/{sha}"))
            .header("X-Repo-Commit", &commit)
            .header("ETag", &format!("\"{}\"", git_id(sha.as_bytes())))
            .header("X-Linked-Etag", &format!("\"{sha}\""))
            .header("X-Linked-Size", &bytes.len().to_string());
    }
    let mut reply = Reply::new(200).header("X-Repo-Commit", &commit).header("ETag", &format!("\"{}\"", git_id(&bytes)));
    reply.body = bytes;
    reply
}

/// The repo and commit a request names, or the error reply the Hub gives.
fn find(
    state: &State,
    kind: &str,
    id: &str,
    revision: &str,
    headers: &HashMap<String, String>,
) -> Result<(Repo, String), Reply> {
    let not_found = || {
        Reply::json(404, serde_json::json!({"error": "Repository not found"}))
            .header("X-Error-Code", "RepositoryNotFound")
    };
    let repo = state.repos.get(&format!("{kind}/{id}")).ok_or_else(not_found)?;
    if repo.private && headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {GOOD_TOKEN}")) {
        return Err(Reply::json(401, serde_json::json!({"error": "Invalid credentials"}))
            .header("X-Error-Code", "RepoNotFound"));
    }
    let commit =
        if repo.commits.contains_key(revision) { Some(revision.to_owned()) } else { repo.refs.get(revision).cloned() };
    let commit = commit.ok_or_else(|| {
        Reply::json(404, serde_json::json!({"error": "Invalid rev id"})).header("X-Error-Code", "RevisionNotFound")
    })?;
    Ok((repo.clone(), commit))
}

fn revision_api(kind: &str, rest: &str, headers: &HashMap<String, String>, state: &State) -> Reply {
    let segments: Vec<&str> = rest.splitn(4, '/').collect();
    if segments.len() < 4 || segments[2] != "revision" {
        return Reply::new(404);
    }
    let id = format!("{}/{}", segments[0], segments[1]);
    let (repo, commit) = match find(state, kind, &id, &percent_decode(segments[3]), headers) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let siblings: Vec<serde_json::Value> =
        repo.commits[&commit].keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
    Reply::json(200, serde_json::json!({ "id": id, "sha": commit, "private": repo.private, "siblings": siblings }))
}

fn cdn(sha: &str, headers: &HashMap<String, String>, state: &mut State) -> Reply {
    let Some(bytes) = state.blobs.get(sha).cloned() else { return Reply::new(404) };
    let mut reply = Reply::new(200).header("Accept-Ranges", "bytes").header("Access-Control-Allow-Origin", "*");
    reply.body = if state.faults.damaged.as_deref() == Some(sha) {
        let mut damaged = bytes.as_ref().clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x55;
        Arc::new(damaged)
    } else {
        bytes.clone()
    };
    if let Some(start) = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
    {
        if start < bytes.len() {
            reply.status = 206;
            reply.range = Some((start, bytes.len()));
            reply = reply.header("Content-Range", &format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()));
        }
    }
    if let Some((blob, after)) = state.faults.drop_once.clone() {
        if blob == sha {
            reply.cut = Some(after);
            state.faults.drop_once = None;
        }
    }
    reply
}

/// Commits of the standard repos (fixed, so the fixture script's cache tree is reproducible).
pub const COMMIT_MAIN: &str = "1111111111111111111111111111111111111111";
pub const COMMIT_V1: &str = "0000000000000000000000000000000000000001";

/// The repos the tests and the fixture script use, from the fixtures:
/// - `org/tiny` (model `a`), `org/tiny-sharded` (`a-sharded`), `org/private` (`a`, private);
/// - `org/lora`: `main` is adapter `list`, tag `v1` (an older commit) is adapter `bias-all`;
/// - dataset `org/alpaca`: `data/train-00000-of-00001.parquet`, `data/test-00000-of-00001.jsonl`.
pub fn standard_repos(server: &HubServer) {
    let fixtures = crate::fixtures();
    let model = |name: &str| {
        let mut files = files_of(&fixtures.join("models").join(name), "");
        // Test goldens are not part of a model repo.
        files.retain(|f, _| {
            !f.ends_with("golden.safetensors")
                && !f.contains("hidden_states")
                && !f.contains("incremental")
                && !f.ends_with("generate.json")
                && !f.ends_with("dtype_tolerance.json")
        });
        files.insert("README.md".into(), b"# a test model\n".to_vec());
        files
    };
    server.add("models", "org/tiny", Repo::with_files(COMMIT_MAIN, model("a")));
    server.add("models", "org/tiny-sharded", Repo::with_files(COMMIT_MAIN, model("a-sharded")));
    let mut private = Repo::with_files(COMMIT_MAIN, model("a"));
    private.private = true;
    server.add("models", "org/private", private);
    let adapter = |name: &str| {
        let mut files = files_of(&fixtures.join("adapters").join(name), "");
        files.retain(|f, _| f.starts_with("adapter_"));
        files
    };
    let mut lora = Repo::default();
    lora.add_commit(COMMIT_V1, &["v1"], adapter("bias-all"));
    lora.add_commit(COMMIT_MAIN, &["main"], adapter("list"));
    server.add("models", "org/lora", lora);
    let data = fixtures.join("data");
    let files = BTreeMap::from([
        ("data/train-00000-of-00001.parquet".to_string(), std::fs::read(data.join("train.parquet")).unwrap()),
        ("data/test-00000-of-00001.jsonl".to_string(), std::fs::read(data.join("train.jsonl")).unwrap()),
        ("README.md".to_string(), b"# a test dataset\n".to_vec()),
    ]);
    server.add("datasets", "org/alpaca", Repo::with_files(COMMIT_MAIN, files));
}
