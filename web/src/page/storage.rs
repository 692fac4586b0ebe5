//! What survives a reload: the examples and the last adapter, in the origin private file
//! system (OPFS). Saving is best effort: a browser without OPFS only loses this convenience.

use js_sys::Uint8Array;
use leptos::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    File, FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetFileOptions, FileSystemWritableFileStream,
};

use super::{AdapterFiles, State};
use crate::protocol::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

const EXAMPLES: &str = "examples.txt";
const SUMMARY: &str = "adapter_summary.txt";

async fn root() -> Result<FileSystemDirectoryHandle, JsValue> {
    let storage = web_sys::window().ok_or("no window")?.navigator().storage();
    Ok(JsFuture::from(storage.get_directory()).await?.unchecked_into())
}

async fn write(name: &str, bytes: &[u8]) -> Result<(), JsValue> {
    let options = FileSystemGetFileOptions::new();
    options.set_create(true);
    let file: FileSystemFileHandle =
        JsFuture::from(root().await?.get_file_handle_with_options(name, &options)).await?.unchecked_into();
    let stream: FileSystemWritableFileStream = JsFuture::from(file.create_writable()).await?.unchecked_into();
    JsFuture::from(stream.write_with_buffer_source(&Uint8Array::from(bytes))?).await?;
    JsFuture::from(stream.close()).await?;
    Ok(())
}

async fn read(name: &str) -> Result<Vec<u8>, JsValue> {
    let handle: FileSystemFileHandle = JsFuture::from(root().await?.get_file_handle(name)).await?.unchecked_into();
    let file: File = JsFuture::from(handle.get_file()).await?.unchecked_into();
    Ok(Uint8Array::new(&JsFuture::from(file.array_buffer()).await?).to_vec())
}

fn warn(what: &str, e: &JsValue) {
    web_sys::console::warn_1(
        &format!("ember: could not keep {what} for the next visit: {}", crate::message::js_error(e)).into(),
    );
}

pub fn save_examples(text: &str) {
    let text = text.to_string();
    spawn_local(async move {
        if let Err(e) = write(EXAMPLES, text.as_bytes()).await {
            warn("the examples", &e);
        }
    });
}

pub fn save_adapter(adapter: &AdapterFiles) {
    let adapter = adapter.clone();
    spawn_local(async move {
        // Weights first and the config last: a config on disk means the pair is complete.
        for (name, bytes) in [
            (ADAPTER_WEIGHTS, adapter.weights.as_slice()),
            (SUMMARY, adapter.summary.as_bytes()),
            (ADAPTER_CONFIG, adapter.config_json.as_bytes()),
        ] {
            if let Err(e) = write(name, bytes).await {
                return warn("the adapter", &e);
            }
        }
    });
}

/// Puts the last session's examples and adapter back into the page.
pub fn restore(state: State) {
    spawn_local(async move {
        if let Ok(bytes) = read(EXAMPLES).await {
            if state.examples.get_untracked().is_empty() {
                state.examples.set(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        if let (Ok(config), Ok(weights)) = (read(ADAPTER_CONFIG).await, read(ADAPTER_WEIGHTS).await) {
            let summary = read(SUMMARY)
                .await
                .map(|s| String::from_utf8_lossy(&s).into_owned())
                .unwrap_or_else(|_| "saved adapter".into());
            if state.adapter.get_untracked().is_none() {
                state.adapter.set(Some(AdapterFiles {
                    summary,
                    config_json: String::from_utf8_lossy(&config).into_owned(),
                    weights,
                }));
            }
        }
    });
}
