//! `ember web`: serves the browser page (built by `web/build.sh` into `web/dist`) on
//! 127.0.0.1. A static file server is all the page needs: the model runs in the browser.
//!
//! It is written for a hostile network (docs/SECURITY.md), with std only: no path leaves the
//! served folder (symbolic links included: paths are resolved and checked against the folder),
//! a request must arrive whole within `--timeout` and its head fit in [`MAX_HEAD_BYTES`], at
//! most [`MAX_CONNECTIONS`] are served at once (others get 503), and file bodies are streamed
//! in small chunks, so no client holds more than a buffer of memory however slowly it reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Request line and headers together, at most (browsers send well under 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 32;

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The built page.
    #[arg(long, default_value = "web/dist")]
    dir: PathBuf,
    /// Seconds a client has to send a whole request (and an idle keep-alive connection is kept).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.join("index.html").is_file() || !args.dir.join("ember_web_bg.wasm").is_file() {
        bail!(
            "{}: no built page there (index.html and ember_web_bg.wasm): build it with `web/build.sh` (or `web/build.sh --dev` for a quick build), or point --dir at a built page",
            args.dir.display()
        );
    }
    let root = args.dir.canonicalize().with_context(|| format!("{}: cannot resolve", args.dir.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let address = listener.local_addr()?;
    println!("Ember's page: http://{address}/ (serving {}; Ctrl-C stops)", args.dir.display());
    let timeout = Duration::from_secs(args.timeout.max(1));
    let active = Arc::new(AtomicUsize::new(0));
    for mut stream in listener.incoming().flatten() {
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                Body::Bytes(b"busy, try again\n"),
                false,
            );
            continue;
        }
        let (root, active) = (root.clone(), active.clone());
        // One thread per connection, at most MAX_CONNECTIONS: the browser fetches the wasm and
        // the model files in parallel.
        std::thread::spawn(move || {
            let _ = serve(stream, &root, timeout);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// One request's head as far as this server cares.
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
}

enum Head {
    Request(Request),
    /// The client closed the connection between requests.
    Closed,
    /// Over [`MAX_HEAD_BYTES`].
    TooLarge,
}

fn serve(mut stream: TcpStream, root: &Path, timeout: Duration) -> std::io::Result<()> {
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::with_capacity(4096, stream.try_clone()?);
    loop {
        let request = match read_head(&mut reader, &stream, timeout)? {
            Head::Request(r) => r,
            Head::Closed => return Ok(()),
            Head::TooLarge => {
                return respond(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    "text/plain; charset=utf-8",
                    Body::Bytes(b"request head too large\n"),
                    false,
                );
            }
        };
        let head_only = request.method == "HEAD";
        match (request.method.as_str(), file_for(root, &request.target)) {
            ("GET" | "HEAD", Some(path)) => {
                let file = std::fs::File::open(&path)?;
                let len = file.metadata()?.len();
                respond(&mut stream, "200 OK", mime_type(&path), Body::File(file, len), head_only)?;
            }
            ("GET" | "HEAD", None) => respond(
                &mut stream,
                "404 Not Found",
                "text/plain; charset=utf-8",
                Body::Bytes(b"not found\n"),
                head_only,
            )?,
            _ => respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                Body::Bytes(b"only GET\n"),
                false,
            )?,
        }
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Reads a request line and headers, which must arrive within `timeout` of the first byte
/// being awaited and fit in [`MAX_HEAD_BYTES`] (a slow or endless sender is cut off).
fn read_head(reader: &mut BufReader<TcpStream>, stream: &TcpStream, timeout: Duration) -> std::io::Result<Head> {
    let deadline = Instant::now() + timeout;
    let mut head = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(head.len()) as u64;
        let before = head.len();
        let n = reader.by_ref().take(room).read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() { Ok(Head::Closed) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
        let line = &head[before..];
        let blank = line == b"\r\n" || line == b"\n";
        if blank && before > 0 {
            break;
        }
        if blank {
            head.clear(); // stray line break between requests
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
    let keep_alive = !lines.any(|h| {
        let h = h.to_ascii_lowercase();
        h.starts_with("connection:") && h.contains("close")
    });
    Ok(Head::Request(Request { method, target, keep_alive }))
}

enum Body<'a> {
    Bytes(&'a [u8]),
    File(std::fs::File, u64),
}

fn respond(stream: &mut TcpStream, status: &str, mime: &str, body: Body, head_only: bool) -> std::io::Result<()> {
    let len = match &body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(_, len) => *len,
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {mime}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\r\n"
    )?;
    if !head_only {
        match body {
            Body::Bytes(b) => stream.write_all(b)?,
            // Chunks of 64 KiB: a slow reader holds this buffer, never the file.
            Body::File(file, len) => {
                let copied = std::io::copy(&mut BufReader::with_capacity(64 << 10, file.take(len)), stream)?;
                if copied != len {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
    stream.flush()
}

/// The file under `root` (already canonical) that `target` names, or `None` if there is none or
/// it would leave `root`: `..` is refused outright, and the path is resolved (symbolic links
/// followed) and must still lie inside `root`.
fn file_for(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let path = percent_decode(path)?;
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(relative);
    let full = if full.is_dir() { full.join("index.html") } else { full };
    let resolved = full.canonicalize().ok()?;
    (resolved.starts_with(root) && resolved.is_file()).then_some(resolved)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Content types the browser insists on: `application/wasm` for streaming compilation,
/// `text/javascript` for module scripts and workers.
fn mime_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "jsonl" | "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_served_folder() {
        let tmp = std::env::temp_dir().join(format!("ember-web-test-{}", std::process::id()));
        let root = tmp.join("page");
        std::fs::create_dir_all(root.join("demo/model")).unwrap();
        std::fs::write(root.join("demo/model/config.json"), "{}").unwrap();
        std::fs::write(root.join("a b.js"), "").unwrap();
        std::fs::write(tmp.join("secret.txt"), "secret").unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(file_for(&root, "/demo/model/config.json?x=1"), Some(root.join("demo/model/config.json")));
        assert_eq!(file_for(&root, "/a%20b.js"), Some(root.join("a b.js")));
        assert_eq!(file_for(&root, "/../secret.txt"), None);
        assert_eq!(file_for(&root, "/%2e%2e/secret.txt"), None);
        assert_eq!(file_for(&root, "/missing.js"), None);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(tmp.join("secret.txt"), root.join("link.txt")).unwrap();
            std::os::unix::fs::symlink(&tmp, root.join("up")).unwrap();
            assert_eq!(file_for(&root, "/link.txt"), None, "a link to a file outside");
            assert_eq!(file_for(&root, "/up/secret.txt"), None, "a link to a folder outside");
        }
        assert_eq!(mime_type(Path::new("x.wasm")), "application/wasm");
        assert_eq!(mime_type(Path::new("worker.js")), "text/javascript; charset=utf-8");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
