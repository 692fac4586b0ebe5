//! Stored precision of the frozen base weights (`--dtype`, like loading with
//! `torch_dtype=torch.float16` and training with `fp16=True`): f16 or bf16 halves the memory of
//! the base model, while LoRA weights, gradients and optimizer state stay f32.
//!
//! As under PyTorch's autocast, the matmuls with frozen weights run in the weights' precision
//! (inputs rounded, products widened back: `layers::frozen_linear`), everything else in f32
//! (layer norms, softmax, GELU, the loss, LoRA). Parity is held to PyTorch's own f16/bf16
//! deviation on the same fixture (tests/fixtures/models/a/dtype_tolerance.json).

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use super::vocab::VocabMatrix;
use super::WeightSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    #[default]
    #[serde(alias = "float32", alias = "fp32")]
    F32,
    #[serde(alias = "float16", alias = "fp16", alias = "half")]
    F16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

impl WeightDType {
    pub fn float_dtype(self) -> FloatDType {
        match self {
            WeightDType::F32 => FloatDType::F32,
            WeightDType::F16 => FloatDType::F16,
            WeightDType::Bf16 => FloatDType::BF16,
        }
    }

    /// PyTorch's name (`torch.float32`, ...), as transformers writes dtypes into configs.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDType::F32 => "float32",
            WeightDType::F16 => "float16",
            WeightDType::Bf16 => "bfloat16",
        }
    }

    /// `tensor` (f32) stored in this precision.
    pub fn stored<const D: usize>(self, tensor: Tensor<D>) -> Tensor<D> {
        if self == WeightDType::F32 {
            tensor
        } else {
            tensor.cast(self.float_dtype())
        }
    }

    /// f32 values from the host on `device` in this precision, converted on the host so no f32
    /// copy reaches the device.
    pub fn upload<const D: usize>(self, values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        let data = TensorData::new(values, shape);
        if self == WeightDType::F32 {
            return Tensor::from_data(data, device);
        }
        let dtype = DType::from(self.float_dtype());
        Tensor::from_data(data.convert_dtype(dtype), (device, dtype))
    }

    /// Little-endian values already in this precision (a half-precision checkpoint's own bytes)
    /// on `device`, unconverted.
    pub fn upload_bytes<const D: usize>(self, bytes: Vec<u8>, shape: [usize; D], device: &Device) -> Tensor<D> {
        let dtype = DType::from(self.float_dtype());
        Tensor::from_data(TensorData::from_bytes_vec(bytes, shape, dtype), (device, dtype))
    }

    pub fn bytes(self) -> usize {
        if self == WeightDType::F32 {
            4
        } else {
            2
        }
    }
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(WeightDType::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(WeightDType::F16),
            "bf16" | "bfloat16" => Ok(WeightDType::Bf16),
            _ => Err(format!("unknown dtype `{s}`: use f32, f16 or bf16")),
        }
    }
}

impl std::fmt::Display for WeightDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightDType::F32 => "f32",
            WeightDType::F16 => "f16",
            WeightDType::Bf16 => "bf16",
        })
    }
}

/// `tensor` as f32, for arithmetic with f32 activations (a no-op for f32 weights).
pub fn widened<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(FloatDType::F32)
    }
}

/// A weight source whose tensors are stored as `dtype`, converted one tensor at a time so an
/// f32 copy of the whole model never exists.
pub struct StoredAs<'a, W> {
    pub inner: &'a mut W,
    pub dtype: WeightDType,
}

impl<W: WeightSource> WeightSource for StoredAs<'_, W> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> crate::Result<Tensor<D>> {
        self.inner.tensor_as(name, shape, self.dtype)
    }

    fn stored_4bit(&mut self, name: &str, shape: [usize; 2]) -> crate::Result<Option<crate::quant::Quantized>> {
        self.inner.stored_4bit(name, shape)
    }

    /// The values as stored in `dtype` (what transformers quantizes after loading in it).
    fn host_values(&mut self, name: &str, shape: [usize; 2]) -> crate::Result<Vec<f32>> {
        let mut values = self.inner.host_values(name, shape)?;
        match self.dtype {
            WeightDType::F32 => {}
            WeightDType::F16 => values.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            WeightDType::Bf16 => values.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        }
        Ok(values)
    }

    /// This layer decides the stored precision; the source converts block by block.
    fn vocab_matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        rows: usize,
        _: WeightDType,
    ) -> crate::Result<VocabMatrix> {
        self.inner.vocab_matrix(name, shape, rows, self.dtype)
    }
}
