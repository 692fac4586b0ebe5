//! Loading a model with 4-bit Linear layers: a weight source that hands each Linear layer's
//! weight out 4-bit, read as a checkpoint stores it or quantized on the host one weight at a
//! time (as transformers quantizes each weight as it loads it), so no full-precision copy of
//! the model ever reaches the device.

use burn::tensor::{Device, Tensor};

use super::weight::QuantizedWeight;
use super::{QuantConfig, Quantized};
use crate::model::{LinearWeight, VocabMatrix, WeightDType, WeightSource};
use crate::Result;

pub struct Quantizing<'a, W> {
    pub inner: &'a mut W,
    pub config: &'a QuantConfig,
    pub device: Device,
}

impl<W: WeightSource> WeightSource for Quantizing<'_, W> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.inner.tensor(name, shape)
    }

    fn vocab_matrix(&mut self, name: &str, shape: [usize; 2], rows: usize, dtype: WeightDType) -> Result<VocabMatrix> {
        self.inner.vocab_matrix(name, shape, rows, dtype)
    }

    fn linear_weight(&mut self, name: &str, shape: [usize; 2]) -> Result<LinearWeight> {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if !self.config.quantizes(module) {
            return self.inner.linear_weight(name, shape);
        }
        let q = match self.inner.stored_4bit(name, shape)? {
            Some(stored) => stored,
            None => {
                let values = self.inner.host_values(name, shape)?;
                let config = self.config;
                Quantized::quantize(&values, shape, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant)
            }
        };
        Ok(LinearWeight::Quantized(QuantizedWeight::upload(&q, self.config.bnb_4bit_compute_dtype, &self.device)))
    }

    fn stored_4bit(&mut self, name: &str, shape: [usize; 2]) -> Result<Option<Quantized>> {
        self.inner.stored_4bit(name, shape)
    }

    fn host_values(&mut self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>> {
        self.inner.host_values(name, shape)
    }
}
