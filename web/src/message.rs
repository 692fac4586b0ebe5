//! Packing [`crate::protocol`] messages into what `postMessage` carries: a JS array of the
//! message's JSON followed by `name, ArrayBuffer` pairs, the buffers transferred (not copied).

use js_sys::{Array, ArrayBuffer, Uint8Array};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};

/// Files travelling with a message: name and contents, an `ArrayBuffer` (transferred) or a
/// `Blob`/`File` (passed by reference: its bytes stay outside the WebAssembly heap until the
/// worker reads them, a tensor at a time).
pub type Attached = Vec<(String, JsValue)>;

/// The message array and the list of buffers to transfer with it.
pub fn pack<T: Serialize>(message: &T, files: &Attached) -> (Array, Array) {
    let json = serde_json::to_string(message).expect("protocol messages serialise");
    let data = Array::of1(&JsValue::from_str(&json));
    let transfer = Array::new();
    for (name, buffer) in files {
        data.push(&JsValue::from_str(name));
        data.push(buffer);
        if buffer.is_instance_of::<ArrayBuffer>() {
            transfer.push(buffer);
        }
    }
    (data, transfer)
}

pub fn unpack<T: DeserializeOwned>(data: &JsValue) -> Result<(T, Attached), String> {
    let items: Array = data.clone().dyn_into().map_err(|_| "message is not an array".to_string())?;
    let json = items.get(0).as_string().ok_or("message has no JSON head")?;
    let message = serde_json::from_str(&json).map_err(|e| format!("unreadable message {json}: {e}"))?;
    let mut files = Vec::new();
    for i in (1..items.length()).step_by(2) {
        let name = items.get(i).as_string().ok_or("file name missing in message")?;
        let contents = items.get(i + 1);
        if !(contents.is_instance_of::<ArrayBuffer>() || contents.is_instance_of::<web_sys::Blob>()) {
            return Err(format!("{name}: bytes missing in message"));
        }
        files.push((name, contents));
    }
    Ok((message, files))
}

/// A copy of `buffer` in wasm memory.
pub fn bytes(buffer: &JsValue) -> Vec<u8> {
    Uint8Array::new(buffer).to_vec()
}

/// A fresh JS buffer holding `bytes`.
pub fn buffer(bytes: &[u8]) -> JsValue {
    Uint8Array::from(bytes).buffer().into()
}

/// The text of a thrown JS value (an Error's message, or its string form).
pub fn js_error(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}
