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
