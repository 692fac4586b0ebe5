//! Folding adapters into the base weights (`W ← W + scale·B·A`) for inference at no extra
//! cost, undoing it, and writing the merged model as a Hugging Face model directory.

use burn::module::Param;
use burn::tensor::Tensor;

#[cfg(not(target_arch = "wasm32"))]
use super::adapter_file::write_safetensors;
use super::adapter_file::{to_host, LazyTensor};
use crate::error::Result;
use crate::model::layers::Linear;
use crate::model::precision::widened;
use crate::model::{BloomForCausalLM, Layer, LayerMut, LinearWeight, ModuleTree, VocabMatrix};
use crate::quant::checkpoint::tensors_4bit;
use crate::quant::{QuantConfig, Quantized};

/// Merges every unmerged adapter into its base weight (peft's `merge_adapter`).
pub fn merge(model: &mut BloomForCausalLM) {
    fold(model, 1.0);
}

/// Undoes [`merge`] (peft's `unmerge_adapter`).
pub fn unmerge(model: &mut BloomForCausalLM) {
    fold(model, -1.0);
}

/// Adapters over 4-bit weights stay beside them (their forward adds the update): merging would
/// mean requantizing, which changes the base (peft warns of exactly that); [`merged_tensors`]
/// writes such layers dequantized instead.
fn fold(model: &mut BloomForCausalLM, sign: f64) {
    model.visit_mut(|_, layer| {
        let LayerMut::Linear(linear) = layer else { return };
        let Some(param) = linear.weight.dense_mut() else { return };
        let Some(lora) = linear.lora.as_mut().filter(|l| l.merged != (sign > 0.0)) else { return };
        // In the weight's stored precision: merging into f16 weights rounds, as in peft.
        let stored = param.val();
        let dtype = stored.dtype();
        let weight = (widened(stored) + lora.delta_weight() * sign).cast(dtype);
        *param = Param::from_tensor(weight).set_require_grad(param.is_require_grad());
        lora.merged = sign > 0.0;
    });
}

/// Replaces every 4-bit weight by its dequantized values in its compute dtype (what
/// transformers' `dequantize()` gives), so the model can be merged and saved in full precision.
pub fn dequantize_all(model: &mut BloomForCausalLM) {
    model.visit_mut(|_, layer| {
        let LayerMut::Linear(linear) = layer else { return };
        if let LinearWeight::Quantized(q) = &linear.weight {
            let dense = q.dequantize().cast(q.compute.float_dtype());
            linear.weight = LinearWeight::dense(dense);
        }
    });
}

/// Whether the merged model's `lm_head` differs from its (possibly trained) embeddings, so it
/// must be saved untied, as transformers does after `merge_and_unload()`.
pub fn merged_head_is_untied(model: &BloomForCausalLM) -> bool {
    model.lm_head.is_some() || model.transformer.word_embeddings.trainable_copy.is_some()
}

/// The weights of the merged model under `BloomForCausalLM` names, as transformers saves them
/// after `merge_and_unload()`: adapters folded in, `modules_to_save` copies in place of the
/// originals, `lm_head.weight` only when it is untied. Layers that were 4-bit are merged
/// dequantized and written so, or with `requantize` quantized again as peft's merge into a
/// `Linear4bit` does (and saved as transformers saves 4-bit weights).
pub fn merged_tensors(model: &BloomForCausalLM, requantize: Option<&QuantConfig>) -> Result<Vec<(String, LazyTensor)>> {
    // 4-bit layers: those with an adapter are requantized after merging; the others keep
    // their bytes (peft's merge leaves them alone).
    let mut was_4bit = std::collections::HashMap::new();
    for (module, layer) in model.named_layers() {
        if let Layer::Linear(Linear { weight: LinearWeight::Quantized(q), lora, .. }) = layer {
            let unchanged = lora.as_ref().is_none_or(|l| l.merged);
            was_4bit.insert(module.name, if unchanged && requantize.is_some() { Some(q.to_host()?) } else { None });
        }
    }
    let mut merged = model.clone();
    dequantize_all(&mut merged);
    merge(&mut merged);
    let untied = merged_head_is_untied(&merged);
    let mut out = Vec::new();
    let lazy =
        |name: String, t: Tensor<1>, shape: Vec<usize>| (name, LazyTensor::new(shape, move || to_host(t.clone())));
    let flat = |t: Tensor<2>| {
        let dims = t.dims();
        (t.reshape([dims[0] * dims[1]]), dims.to_vec())
    };
    for (module, layer) in merged.named_layers() {
        let name = &module.name;
        match layer {
            Layer::Linear(linear) => {
                let (weight, shape) = flat(linear.weight.val());
                match (requantize, was_4bit.remove(name)) {
                    (Some(_), Some(Some(original))) => {
                        out.extend(tensors_4bit(&format!("{name}.weight"), &original, "float32"))
                    }
                    (Some(config), Some(None)) => {
                        let values = to_host(widened(weight))?;
                        let shape = [shape[0], shape[1]];
                        let q = Quantized::quantize(
                            &values,
                            shape,
                            config.bnb_4bit_quant_type,
                            config.bnb_4bit_use_double_quant,
                        );
                        out.extend(tensors_4bit(&format!("{name}.weight"), &q, "float32"));
                    }
                    _ => out.push(lazy(format!("{name}.weight"), weight, shape)),
                }
                if let Some(b) = &linear.bias {
                    out.push(lazy(format!("{name}.bias"), b.val(), b.dims().to_vec()));
                }
            }
            Layer::LayerNorm(norm) => {
                out.push(lazy(format!("{name}.weight"), norm.weight.val(), norm.weight.dims().to_vec()));
                out.push(lazy(format!("{name}.bias"), norm.bias.val(), norm.bias.dims().to_vec()));
            }
            // Read block by block (never whole on the device).
            Layer::Embedding(embedding) => out.push(vocab_tensor(format!("{name}.weight"), embedding.active_weight())),
            Layer::Head(head) if untied => out.push(vocab_tensor(format!("{name}.weight"), head)),
            Layer::Head(_) => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn vocab_tensor(name: String, matrix: &VocabMatrix) -> (String, LazyTensor) {
    let matrix = matrix.clone();
    (name, LazyTensor::new(matrix.dims().to_vec(), move || matrix.to_host()))
}

/// Writes `model` with its adapters merged as a complete model directory: `config.json` and
/// the tokenizer files copied from `base_dir`, weights in `model.safetensors`, or in shards of
/// at most `max_shard_bytes` with a `model.safetensors.index.json` as transformers writes them.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_merged(
    model: &BloomForCausalLM,
    base_dir: &std::path::Path,
    out_dir: &std::path::Path,
    max_shard_bytes: u64,
    requantize: Option<&QuantConfig>,
) -> Result<()> {
    use crate::error::Error;
    use std::collections::HashMap;

    if base_dir.canonicalize().ok() == out_dir.canonicalize().ok() {
        return Err(Error::file(
            out_dir,
            "the output directory is the base model's own; choose another so the original stays intact",
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io_write(out_dir, e))?;
    let config_path = base_dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&crate::error::read_file(&config_path)?)
        .map_err(|e| Error::file(&config_path, format!("not valid JSON: {e}")))?;
    if merged_head_is_untied(model) {
        config["tie_word_embeddings"] = serde_json::Value::Bool(false);
    }
    // The weights are written in f32 (4-bit ones only when requantized), under whichever name
    // the config gives the dtype (transformers 4: `torch_dtype`, 5: `dtype`).
    let dtype_key = if config.get("torch_dtype").is_some() { "torch_dtype" } else { "dtype" };
    config[dtype_key] = "float32".into();
    match (requantize, config.as_object_mut()) {
        (Some(q), _) => config["quantization_config"] = q.transformers_json(),
        (None, Some(fields)) => {
            fields.remove("quantization_config");
        }
        (None, None) => {}
    }
    let config_text = serde_json::to_string_pretty(&config).expect("json");
    crate::io::write_atomic(&out_dir.join("config.json"), config_text.as_bytes())?;
    for file in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        let src = base_dir.join(file);
        if src.is_file() {
            let bytes = crate::error::read_file(&src)?;
            crate::io::write_atomic(&out_dir.join(file), &bytes)?;
        }
    }

    let tensors = merged_tensors(model, requantize)?;
    let mut shards: Vec<Vec<&(String, LazyTensor)>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in &tensors {
        let bytes = safetensors::tensor::View::data_len(&&t.1) as u64;
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(t);
        size += bytes;
    }
    let metadata = Some(HashMap::from([("format".to_owned(), "pt".to_owned())]));
    if shards.len() == 1 {
        return write_safetensors(&out_dir.join("model.safetensors"), &tensors, metadata);
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let total: usize = tensors.iter().map(|(_, t)| safetensors::tensor::View::data_len(&t)).sum();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let path = out_dir.join(&file);
        write_safetensors(&path, shard.iter().copied(), metadata.clone())?;
        for (k, _) in shard {
            weight_map.insert(k.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    crate::io::write_atomic(
        &out_dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).expect("json").as_bytes(),
    )
}
