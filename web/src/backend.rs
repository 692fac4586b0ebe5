//! Which device the browser gives us.

use std::cell::RefCell;

use burn::tensor::Device;

thread_local! {
    /// burn's WebGPU runtime can be initialised once per page: the first answer is kept.
    static WEBGPU: RefCell<Option<Option<Device>>> = const { RefCell::new(None) };
}

/// The browser's GPU through WebGPU, or `None` when `navigator.gpu` or an adapter is missing.
/// Initialisation is async in the browser (it cannot block while the GPU answers).
pub async fn webgpu() -> Option<Device> {
    if let Some(known) = WEBGPU.with(|w| w.borrow().clone()) {
        return known;
    }
    let device = Device::wgpu_options().init_async().await.ok();
    WEBGPU.with(|w| *w.borrow_mut() = Some(device.clone()));
    device
}

/// The CPU fallback: burn's flex backend compiled to WebAssembly.
pub fn cpu() -> Device {
    Device::flex()
}

/// What the browser says about its WebGPU adapter.
pub struct AdapterInfo {
    /// Vendor, architecture and description, as far as the browser reveals them.
    pub name: String,
    pub max_storage_binding: f64,
}

/// The adapter `navigator.gpu` offers (page or worker), read through JS reflection because
/// web-sys's WebGPU bindings are unstable.
pub async fn webgpu_adapter() -> Option<AdapterInfo> {
    use js_sys::{Function, Promise, Reflect};
    use wasm_bindgen::JsCast;
    let get = |object: &wasm_bindgen::JsValue, key: &str| {
        Reflect::get(object, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
    };
    let gpu = get(&get(&js_sys::global(), "navigator")?, "gpu")?;
    let request: Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(Promise::from(request.call0(&gpu).ok()?)).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = get(&adapter, "info");
    let field =
        |key: &str| info.as_ref().and_then(|i| get(i, key)).and_then(|v| v.as_string()).filter(|s| !s.is_empty());
    let mut parts: Vec<String> = ["vendor", "architecture", "description"].iter().filter_map(|k| field(k)).collect();
    parts.dedup();
    let fallback = get(&adapter, "isFallbackAdapter")
        .or_else(|| info.as_ref().and_then(|i| get(i, "isFallbackAdapter")))
        .is_some_and(|v| v.is_truthy());
    if fallback {
        parts.push("(software fallback adapter: \"Use CPU\" is usually faster)".into());
    }
    let name = if parts.is_empty() { "unnamed adapter".into() } else { parts.join(" ") };
    let max_storage_binding = get(&adapter, "limits")
        .and_then(|l| get(&l, "maxStorageBufferBindingSize"))
        .and_then(|v| v.as_f64())
        .unwrap_or(128.0 * 1048576.0);
    Some(AdapterInfo { name, max_storage_binding })
}
