//! A frozen 4-bit weight on the device, as a Linear layer holds it under QLoRA
//! (bitsandbytes' `Params4bit`): the packed codes as u32 words, one f32 absmax per block (double
//! quantization undone on the host, exactly), the 16-value code table. Its matmul is
//! `ember_shaders::linear_4bit`.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use ember_shaders::linear_4bit::{self, Weight4bit, PER_WORD};

use super::bnb::{self, Absmax, QuantType, Quantized};
use crate::model::WeightDType;

#[derive(Module, Debug)]
pub struct QuantizedWeight {
    /// bitsandbytes' packed bytes as little-endian u32 words (zero-padded to a whole word).
    pub words: Param<Tensor<1, Int>>,
    /// One per block of 64 values.
    pub absmax: Param<Tensor<1>>,
    /// The 16 values a code stands for.
    pub code: Param<Tensor<1>>,
    pub out_features: usize,
    pub in_features: usize,
    #[module(skip)]
    pub quant_type: QuantType,
    /// The precision the matmul runs in (`bnb_4bit_compute_dtype`).
    #[module(skip)]
    pub compute: WeightDType,
    /// With double quantization, the scales as stored (1 byte per block), so the weight can be
    /// written back exactly as it was read or made ([`Self::to_host`]).
    #[module(skip)]
    pub nested_absmax: Option<Absmax>,
}

impl QuantizedWeight {
    /// `q` on `device`; only the packed codes and one f32 per block travel.
    pub fn upload(q: &Quantized, compute: WeightDType, device: &Device) -> Self {
        let [out_features, in_features] = q.shape;
        let words: Vec<u32> = q
            .packed
            .chunks(4)
            .map(|b| {
                let mut word = [0u8; 4];
                word[..b.len()].copy_from_slice(b);
                u32::from_le_bytes(word)
            })
            .collect();
        let n_words = words.len();
        let words = Tensor::<1, Int>::from_data(TensorData::new(words, [n_words]), (device, DType::U32));
        let absmax = q.absmax.values();
        let n_blocks = absmax.len();
        let frozen = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        QuantizedWeight {
            words: Param::initialized(ParamId::new(), words),
            absmax: frozen(Tensor::from_data(TensorData::new(absmax, [n_blocks]), device)),
            code: frozen(Tensor::from_data(TensorData::new(bnb::code(q.quant_type).to_vec(), [16]), device)),
            out_features,
            in_features,
            quant_type: q.quant_type,
            compute,
            nested_absmax: matches!(q.absmax, Absmax::Nested { .. }).then(|| q.absmax.clone()),
        }
    }

    /// The weight as bitsandbytes stores it, read back from the device.
    pub fn to_host(&self) -> crate::Result<Quantized> {
        use crate::readback::{blocking, values};
        let n = self.out_features * self.in_features;
        let words = blocking(async {
            let data = self.words.val().into_data_async().await;
            data.map_err(|e| crate::error::device_failure("reading 4-bit weights", &format!("{e:?}")))?
                .try_into_vec_as::<u32>()
                .map_err(|e| crate::error::device_failure("reading 4-bit weights", &format!("{e:?}")))
        })?;
        let mut packed: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        packed.truncate(n.div_ceil(2));
        let absmax = match &self.nested_absmax {
            Some(nested) => nested.clone(),
            None => Absmax::Plain(blocking(values(self.absmax.val(), "reading 4-bit scales"))?),
        };
        Ok(Quantized { shape: [self.out_features, self.in_features], quant_type: self.quant_type, packed, absmax })
    }

    fn kernel_weight(&self) -> Weight4bit {
        Weight4bit {
            words: self.words.val(),
            absmax: self.absmax.val(),
            code: self.code.val(),
            shape: [self.out_features, self.in_features],
            compute: self.compute.float_dtype(),
        }
    }

    /// `x Wᵀ` (`x` `[n, in]`, f32), differentiable in `x`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear_4bit::linear(x, &self.kernel_weight())
    }

    /// `W` in f32, bit for bit bitsandbytes' `dequantize_4bit`.
    pub fn dequantize(&self) -> Tensor<2> {
        linear_4bit::dequantize(&self.kernel_weight())
    }

    /// Bytes a `[out, in]` weight takes on the device: half a byte per value, 4 per block of
    /// 64 (double quantization shrinks files, not this: the scales are kept dequantized).
    pub fn device_bytes(out_features: usize, in_features: usize) -> u64 {
        let n = out_features as u64 * in_features as u64;
        4 * n.div_ceil(PER_WORD as u64) + 4 * n.div_ceil(bnb::BLOCKSIZE as u64) + 4 * 16
    }
}
