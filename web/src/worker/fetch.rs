//! Loading a model folder from a URL: each file is fetched once and kept in the browser's
//! Cache Storage, so the next visit (or reload) reads it locally; progress is reported in bytes.

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::budget::check_file_size;
use ember_core::checkpoint::{shard_names, WEIGHT_FILES};
use ember_core::{Error, Result};
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Blob, Cache, ReadableStreamDefaultReader, RequestInit, Response, WorkerGlobalScope};

use super::blob::BlobFile;
use super::post;
use super::session::ModelFiles;
use crate::message::js_error;
use crate::protocol::{Reply, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

const CACHE_NAME: &str = "ember-models-v1";

/// `config.json`, `tokenizer.json`, the weights and the optional tokenizer files under `url`.
pub async fn model_files(url: &str) -> Result<ModelFiles> {
    let folder = ember_core::hub::folder_url(url);
    let cache = open_cache().await;
    let mut files = fetch_named(
        cache.as_ref(),
        &folder,
        &[
            ("config.json", true),
            ("tokenizer.json", true),
            ("tokenizer_config.json", false),
            ("special_tokens_map.json", false),
        ],
        "a model folder",
    )
    .await?;
    // transformers' order: one safetensors file, its index and shards, then the same for .bin.
    // Safetensors files stay outside the heap, read a tensor at a time while the model is built.
    let mut ranged = HashMap::new();
    for name in WEIGHT_FILES {
        if name.ends_with(".safetensors") {
            let Some(blob) = fetch_blob(cache.as_ref(), &format!("{folder}{name}")).await? else { continue };
            ranged.insert(name.to_string(), BlobFile::new(name.to_string(), blob));
            return Ok(ModelFiles::new(files, ranged));
        }
        let Some(bytes) = fetch_cached(cache.as_ref(), &format!("{folder}{name}")).await? else { continue };
        if name.ends_with(".index.json") {
            let text = std::str::from_utf8(&bytes).map_err(|_| Error::file(name, "is not UTF-8 text"))?;
            let names = shard_names(text, &format!("{folder}{name}"))?;
            // Shards sit beside their index: no `..` or absolute paths out of the folder.
            for shard in &names {
                ember_core::hub::safe_repo_path(shard)
                    .map_err(|e| Error::file(format!("{folder}{name}"), format!("names a shard that {e}")))?;
            }
            if name.ends_with(".safetensors.index.json") {
                for shard in &names {
                    let url = format!("{folder}{shard}");
                    let blob = fetch_blob(cache.as_ref(), &url)
                        .await?
                        .ok_or_else(|| not_found(&url, "a shard its index names"))?;
                    ranged.insert(shard.clone(), BlobFile::new(shard.clone(), blob));
                }
            } else {
                let shards: Vec<(&str, bool)> = names.iter().map(|s| (s.as_str(), true)).collect();
                files.extend(fetch_named(cache.as_ref(), &folder, &shards, "a shard its index names").await?);
            }
        }
        files.insert(name.to_string(), Arc::new(bytes));
        return Ok(ModelFiles::new(files, ranged));
    }
    Err(Error::file(&folder, format!("no weights found (HTTP 404 for {})", WEIGHT_FILES.join(", "))))
}

/// A PEFT adapter's `adapter_config.json` and `adapter_model.safetensors` under `url`.
pub async fn adapter_files(url: &str) -> Result<ModelFiles> {
    let folder = ember_core::hub::folder_url(url);
    let cache = open_cache().await;
    let names = [(ADAPTER_CONFIG, true), (ADAPTER_WEIGHTS, true)];
    Ok(ModelFiles::new(fetch_named(cache.as_ref(), &folder, &names, "a PEFT adapter folder").await?, HashMap::new()))
}

/// A required file the server does not have, and what `url` was expected to point into.
fn not_found(url: &str, what: &str) -> Error {
    Error::file(url, format!("not found (HTTP 404): is this the URL of {what}?"))
}

/// The file at `url` as a `Blob` (`None` for 404), from the cache when it has it: its bytes stay
/// outside the WebAssembly heap (large ones on disk) until each tensor is read. Progress comes
/// from a second reader of the same download, whose chunks are dropped as they are counted.
async fn fetch_blob(cache: Option<&Cache>, url: &str) -> Result<Option<Blob>> {
    let failed = |e: JsValue| Error::file(url, format!("cannot download: {}", js_error(&e)));
    let name = url.rsplit('/').next().unwrap_or(url);
    if let Some(cache) = cache {
        let hit = JsFuture::from(cache.match_with_str(url)).await.map_err(failed)?;
        if let Ok(response) = hit.dyn_into::<Response>() {
            post(
                &Reply::Progress { what: format!("from the browser cache {name}"), done: 0.0, total: 1.0 },
                Vec::new(),
            );
            let blob = JsFuture::from(response.blob().map_err(failed)?).await.map_err(failed)?;
            return Ok(Some(blob.unchecked_into()));
        }
    }
    let abort = AbortController::new().map_err(failed)?;
    let Some(response) = get(url, &abort).await? else { return Ok(None) };
    let counted = response.clone().map_err(failed)?;
    let blob = JsFuture::from(response.blob().map_err(failed)?);
    if let Err(e) = read_body(counted, url, "downloading", |_| Ok(())).await {
        abort.abort();
        return Err(e);
    }
    let blob: Blob = blob.await.map_err(failed)?.unchecked_into();
    // Cached once whole; best effort, as for the small files.
    if let Some(cache) = cache {
        if let Ok(copy) = Response::new_with_opt_blob(Some(&blob)) {
            let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
        }
    }
    Ok(Some(blob))
}

/// The response for `url` (`None` for 404; another failure is an error naming the status);
/// `abort` ends the download.
async fn get(url: &str, abort: &AbortController) -> Result<Option<Response>> {
    let failed = |e: JsValue| Error::file(url, format!("cannot download: {}", js_error(&e)));
    let init = RequestInit::new();
    init.set_signal(Some(&abort.signal()));
    let response: Response =
        JsFuture::from(scope().fetch_with_str_and_init(url, &init)).await.map_err(failed)?.unchecked_into();
    match response.status() {
        404 => Ok(None),
        _ if response.ok() => Ok(Some(response)),
        status => Err(Error::file(url, format!("cannot download: HTTP {status} {}", response.status_text()))),
    }
}

/// The files `names` under `folder` (`true`: required, its absence an error).
async fn fetch_named(
    cache: Option<&Cache>,
    folder: &str,
    names: &[(&str, bool)],
    what: &str,
) -> Result<HashMap<String, Arc<Vec<u8>>>> {
    let mut files = HashMap::new();
    for &(name, required) in names {
        match fetch_cached(cache, &format!("{folder}{name}")).await? {
            Some(bytes) => {
                files.insert(name.to_string(), Arc::new(bytes));
            }
            None if required => return Err(not_found(&format!("{folder}{name}"), what)),
            None => {}
        }
    }
    Ok(files)
}

fn scope() -> WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// The model cache, or `None` where the browser offers none (then every load downloads).
async fn open_cache() -> Option<Cache> {
    let caches = scope().caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into().ok()
}

/// The bytes at `url` (`None` for 404), from the cache when it has them.
async fn fetch_cached(cache: Option<&Cache>, url: &str) -> Result<Option<Vec<u8>>> {
    let failed = |e: JsValue| Error::file(url, format!("cannot download: {}", js_error(&e)));
    if let Some(cache) = cache {
        let hit = JsFuture::from(cache.match_with_str(url)).await.map_err(failed)?;
        if let Ok(response) = hit.dyn_into::<Response>() {
            return read_bytes(response, url, "from the browser cache").await.map(Some);
        }
    }
    let Some(response) = get(url, &AbortController::new().map_err(failed)?).await? else { return Ok(None) };
    let bytes = read_bytes(response, url, "downloading").await?;
    // Cached once whole (a cancelled or broken download is not). Best effort: a full disk only
    // means the next visit downloads again.
    if let Some(cache) = cache {
        if let Ok(copy) = cached_response(&bytes) {
            let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
        }
    }
    Ok(Some(bytes))
}

/// A response holding `bytes` for the cache, with their length in `content-length`: reading it
/// back then reserves the whole body once instead of growing a buffer by doubling (for a 1 GB
/// file that growth alone would need 3 GB of wasm heap).
fn cached_response(bytes: &[u8]) -> std::result::Result<Response, JsValue> {
    let headers = web_sys::Headers::new()?;
    headers.set("content-length", &bytes.len().to_string())?;
    let init = web_sys::ResponseInit::new();
    init.set_headers(&headers);
    Response::new_with_opt_buffer_source_and_init(Some(&Uint8Array::from(bytes)), &init)
}

/// A response's body in the heap.
async fn read_bytes(response: Response, url: &str, doing: &str) -> Result<Vec<u8>> {
    let total: f64 =
        response.headers().get("content-length").ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    check_file_size(url, total as u64)?;
    let mut bytes = Vec::with_capacity(total as usize);
    read_body(response, url, doing, |chunk| {
        // A server that sent no length is held to the same limit as it streams.
        check_file_size(url, bytes.len() as u64 + chunk.length() as u64)?;
        bytes.extend_from_slice(&chunk.to_vec());
        Ok(())
    })
    .await?;
    Ok(bytes)
}

/// Reads a response body chunk by chunk, handing each to `sink` and posting progress.
async fn read_body(
    response: Response,
    url: &str,
    doing: &str,
    mut sink: impl FnMut(&Uint8Array) -> Result<()>,
) -> Result<()> {
    let failed = |e: JsValue| Error::file(url, format!("cannot read: {}", js_error(&e)));
    let total: f64 =
        response.headers().get("content-length").ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let name = url.rsplit('/').next().unwrap_or(url);
    let Some(body) = response.body() else { return Ok(()) };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let (mut done, mut reported) = (0.0, 0.0);
    loop {
        if super::stop_requested() {
            let _ = reader.cancel();
            return Err(Error::file(url, "loading cancelled"));
        }
        let chunk = JsFuture::from(reader.read()).await.map_err(failed)?;
        if Reflect::get(&chunk, &"done".into()).map_err(failed)?.is_truthy() {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into()).map_err(failed)?.unchecked_into();
        sink(&value)?;
        done += value.length() as f64;
        // A message per percent, not per chunk (a large file arrives in tens of thousands).
        if done >= reported + total / 100.0 {
            reported = done;
            post(&Reply::Progress { what: format!("{doing} {name}"), done, total: total.max(done) }, Vec::new());
        }
    }
    Ok(())
}
