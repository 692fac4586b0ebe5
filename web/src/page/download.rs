//! Saving the adapter from the page: one .zip, or either file alone, with peft's file names so
//! `ember generate --adapter DIR` and `PeftModel.from_pretrained(model, DIR)` load it unchanged.

use std::io::Write;

use js_sys::{Array, Uint8Array};
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{Blob, BlobPropertyBag, HtmlAnchorElement, Url};

use super::State;
use crate::protocol::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// The two adapter files in one zip archive (stored: safetensors barely compresses).
pub fn zip_bytes(config_json: &str, weights: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [(ADAPTER_CONFIG, config_json.as_bytes()), (ADAPTER_WEIGHTS, weights)] {
        archive.start_file(name, options)?;
        archive.write_all(bytes)?;
    }
    Ok(archive.finish()?.into_inner())
}

pub fn adapter_zip(state: State) {
    let Some(adapter) = state.adapter.get_untracked() else { return };
    match zip_bytes(&adapter.config_json, &adapter.weights) {
        Ok(bytes) => save(state, "adapter.zip", &bytes, "application/zip"),
        Err(e) => state.fail(format!("cannot build adapter.zip: {e}")),
    }
}

pub fn adapter_file(state: State, name: &str) {
    let Some(adapter) = state.adapter.get_untracked() else { return };
    if name == ADAPTER_CONFIG {
        save(state, name, adapter.config_json.as_bytes(), "application/json");
    } else {
        save(state, name, &adapter.weights, "application/octet-stream");
    }
}

/// Offers `bytes` as a download named `name`.
fn save(state: State, name: &str, bytes: &[u8], mime: &str) {
    let result = (|| {
        let options = BlobPropertyBag::new();
        options.set_type(mime);
        let blob = Blob::new_with_u8_array_sequence_and_options(&Array::of1(&Uint8Array::from(bytes)), &options)?;
        let url = Url::create_object_url_with_blob(&blob)?;
        let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
        let link: HtmlAnchorElement = document.create_element("a")?.unchecked_into();
        link.set_href(&url);
        link.set_download(name);
        link.click();
        // The download has started from the URL; the blob can go once the click is handled.
        let revoke = wasm_bindgen::closure::Closure::once_into_js(move || Url::revoke_object_url(&url));
        web_sys::window()
            .ok_or("no window")?
            .set_timeout_with_callback_and_timeout_and_arguments_0(revoke.unchecked_ref(), 10_000)?;
        Ok::<_, wasm_bindgen::JsValue>(())
    })();
    if let Err(e) = result {
        state.fail(format!("cannot download {name}: {}", crate::message::js_error(&e)));
    }
}
