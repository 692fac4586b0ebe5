//! `ember web`: serves the browser page (built by `web/build.sh` into `web/dist`) on
//! 127.0.0.1. A static file server is all the page needs: the model runs in the browser.
//! std's TcpListener is enough for one local user, so there is no HTTP dependency.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The built page.
    #[arg(long, default_value = "web/dist")]
    dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.join("index.html").is_file() || !args.dir.join("ember_web_bg.wasm").is_file() {
        bail!(
            "{}: no built page there (index.html and ember_web_bg.wasm): build it with `web/build.sh` (or `web/build.sh --dev` for a quick build), or point --dir at a built page",
            args.dir.display()
        );
    }
    let listener = TcpListener::bind(("127.0.0.1", args.port)).with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let address = listener.local_addr()?;
    println!("Ember's page: http://{address}/ (serving {}; Ctrl-C stops)", args.dir.display());
    for stream in listener.incoming().flatten() {
        let dir = args.dir.clone();
        // One thread per connection: the browser fetches the wasm and the model files in parallel.
        std::thread::spawn(move || {
            let _ = serve(stream, &dir);
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        // Headers are not needed (no ranges, no conditional requests); read past them.
        let mut keep_alive = true;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection:") && header.to_ascii_lowercase().contains("close") {
                keep_alive = false;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let response = match (method, file_for(dir, target)) {
            ("GET" | "HEAD", Some(path)) if path.is_file() => {
                let body = std::fs::read(&path)?;
                respond(&mut stream, "200 OK", mime_type(&path), &body, method == "HEAD")
            }
            ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain; charset=utf-8", b"not found\n", method == "HEAD"),
            _ => respond(&mut stream, "405 Method Not Allowed", "text/plain; charset=utf-8", b"only GET\n", false),
        };
        response?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, mime: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {mime}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// The file under `dir` that `target` names, or `None` if it would leave `dir`.
fn file_for(dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let path = percent_decode(path)?;
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = dir.join(relative);
    Some(if full.is_dir() { full.join("index.html") } else { full })
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
        let dir = Path::new("/srv/page");
        assert_eq!(file_for(dir, "/demo/model/config.json?x=1"), Some(dir.join("demo/model/config.json")));
        assert_eq!(file_for(dir, "/a%20b.js"), Some(dir.join("a b.js")));
        assert_eq!(file_for(dir, "/../etc/passwd"), None);
        assert_eq!(file_for(dir, "/%2e%2e/etc/passwd"), None);
        assert_eq!(mime_type(Path::new("x.wasm")), "application/wasm");
        assert_eq!(mime_type(Path::new("worker.js")), "text/javascript; charset=utf-8");
    }
}
