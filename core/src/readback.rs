//! Reading tensors back to the host. A browser cannot block while the GPU works, so every read
//! is async at heart (burn's synchronous reads panic on wasm with WebGPU); native code uses the
//! blocking wrappers, which poll the same futures to completion.

use std::future::Future;

use burn::tensor::Tensor;

use crate::error::{device_failure, Error, Result};

/// The values of `tensor` as f32 (converted from f16/bf16 if needed). `what` names the work in
/// errors ("reading logits").
pub async fn values(tensor: Tensor<1>, what: &str) -> Result<Vec<f32>> {
    let data = tensor.into_data_async().await.map_err(|e| device_failure(what, &format!("{e:?}")))?;
    data.try_into_vec_as::<f32>().map_err(|e| device_failure(what, &format!("{e:?}")))
}

/// The single value of a one-element tensor.
pub async fn scalar(tensor: Tensor<1>, what: &str) -> Result<f32> {
    values(tensor, what)
        .await?
        .first()
        .copied()
        .ok_or_else(|| Error::invalid(format!("{what}: an empty tensor was read")))
}

/// Runs `future` to completion on this thread (native), or fails with advice where the platform
/// cannot block (wasm: use the `_async` function instead).
pub fn blocking<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    burn::tensor::try_read_sync(future).unwrap_or_else(|| {
        Err(Error::invalid(
            "this platform cannot wait for the device synchronously: use the async API (functions ending in _async)",
        ))
    })
}
