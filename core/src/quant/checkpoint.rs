//! 4-bit weights as transformers saves them (`save_pretrained` of a model loaded with
//! `load_in_4bit`): for a Linear layer's `….weight`, the packed bytes under the weight's own
//! name (U8, `[⌈n/2⌉, 1]`) and beside it
//!
//! - `.absmax`: f32 per block, or with double quantization the U8 nested codes,
//! - `.quant_map`: the 16 code values,
//! - `.nested_absmax`, `.nested_quant_map`: the double quantization's absmax and 8-bit map,
//! - `.quant_state.bitsandbytes__nf4` (or `__fp4`): a JSON object as U8 bytes, with
//!   `quant_type`, `blocksize`, `dtype`, `shape` and the nested `nested_blocksize`,
//!   `nested_dtype`, `nested_offset`.
//!
//! Reading checks every size against the layer's shape (the file is a stranger's); writing
//! produces what transformers reads back.

use serde_json::{json, Value};

use super::bnb::{self, Absmax, QuantType, Quantized, BLOCKSIZE, NESTED_BLOCKSIZE};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lora::adapter_file::LazyTensor;

/// The suffix of the quant-state entry for `quant_type`.
fn state_suffix(quant_type: QuantType) -> String {
    format!("quant_state.bitsandbytes__{quant_type}")
}

/// Whether `name` (a Linear layer's `….weight`) is stored 4-bit in `checkpoint`.
pub fn is_stored_4bit(checkpoint: &Checkpoint, name: &str) -> bool {
    [QuantType::Nf4, QuantType::Fp4].iter().any(|&t| checkpoint.contains(&format!("{name}.{}", state_suffix(t))))
}

/// The 4-bit weight `name` of `shape` from `checkpoint`, checked.
pub fn read_4bit(checkpoint: &Checkpoint, name: &str, shape: [usize; 2]) -> Result<Quantized> {
    let quant_type = if checkpoint.contains(&format!("{name}.{}", state_suffix(QuantType::Nf4))) {
        QuantType::Nf4
    } else {
        QuantType::Fp4
    };
    let origin = checkpoint.origin_of(name);
    let bad = |what: String| {
        Error::file(&origin, format!("4-bit weight `{name}`: {what}; the file is damaged or not saved by transformers"))
    };

    let (_, state_bytes) = checkpoint.bytes(&format!("{name}.{}", state_suffix(quant_type)))?;
    if state_bytes.len() > 4096 {
        return Err(bad(format!("its quant state is {} bytes, not a small JSON object", state_bytes.len())));
    }
    let state: Value =
        serde_json::from_slice(&state_bytes).map_err(|e| bad(format!("its quant state is not JSON ({e})")))?;
    let field = |key: &str| state.get(key).ok_or_else(|| bad(format!("its quant state has no `{key}`")));
    if field("blocksize")?.as_u64() != Some(BLOCKSIZE as u64) {
        return Err(bad(format!(
            "blocksize {} (ember reads blocks of {BLOCKSIZE}, transformers' default)",
            field("blocksize")?
        )));
    }
    let stored_shape: Option<Vec<usize>> =
        field("shape")?.as_array().map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect());
    if stored_shape.as_deref() != Some(&shape[..]) {
        return Err(bad(format!("its quant state's shape is {}, but config.json implies {shape:?}", field("shape")?)));
    }

    let n = shape[0].checked_mul(shape[1]).ok_or_else(|| bad("its shape overflows".into()))?;
    let blocks = n.div_ceil(BLOCKSIZE);
    let (packed_shape, packed) = checkpoint.bytes(name)?;
    if packed.len() != n.div_ceil(2) || packed_shape.iter().product::<usize>() != packed.len() {
        return Err(bad(format!("{} packed bytes for {n} values (expected {})", packed.len(), n.div_ceil(2))));
    }
    let quant_map = checkpoint.floats(&format!("{name}.quant_map"), 16)?;
    let code = bnb::code(quant_type);
    // FP4's zero may be saved as -0: the same code.
    if quant_map.iter().zip(&code).any(|(a, b)| a != b) {
        return Err(bad(format!("its quant_map is not bitsandbytes' {quant_type} table")));
    }

    let absmax_name = format!("{name}.absmax");
    let nested = checkpoint.contains(&format!("{name}.nested_absmax"));
    let absmax = if nested {
        let (_, codes) = checkpoint.bytes(&absmax_name)?;
        if codes.len() != blocks {
            return Err(bad(format!("{} absmax codes for {blocks} blocks", codes.len())));
        }
        if field("nested_blocksize")?.as_u64() != Some(NESTED_BLOCKSIZE as u64) {
            return Err(bad(format!("nested_blocksize {} (expected {NESTED_BLOCKSIZE})", field("nested_blocksize")?)));
        }
        let offset = field("nested_offset")?
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad("nested_offset is not a number".into()))?;
        let nested = checkpoint.floats(&format!("{name}.nested_absmax"), blocks.div_ceil(NESTED_BLOCKSIZE))?;
        let map = checkpoint.floats(&format!("{name}.nested_quant_map"), 256)?;
        let nested_code: Box<[f32; 256]> = Box::new(map.try_into().expect("256 values"));
        // JSON holds the f32 offset as the shortest f64 that reads back to it.
        Absmax::Nested { codes, nested, offset: offset as f32, nested_code }
    } else {
        Absmax::Plain(checkpoint.floats(&absmax_name, blocks)?)
    };
    Ok(Quantized { shape, quant_type, packed, absmax })
}

/// The tensors transformers saves for the 4-bit weight `name` (a Linear layer's `….weight`),
/// with `dtype` the weight's dtype before quantization (`float32`, `float16`, `bfloat16`).
pub fn tensors_4bit(name: &str, q: &Quantized, dtype: &str) -> Vec<(String, LazyTensor)> {
    let bytes = |v: Vec<u8>| {
        let n = v.len();
        LazyTensor::bytes(vec![n], v)
    };
    let floats = |v: Vec<f32>| LazyTensor::floats(vec![v.len()], v);
    let mut state = json!({
        "quant_type": q.quant_type.to_string(),
        "blocksize": BLOCKSIZE,
        "dtype": dtype,
        "shape": q.shape,
    });
    let mut out = vec![
        (name.to_owned(), LazyTensor::bytes(vec![q.packed.len(), 1], q.packed.clone())),
        (format!("{name}.quant_map"), floats(bnb::code(q.quant_type).to_vec())),
    ];
    match &q.absmax {
        Absmax::Plain(absmax) => out.push((format!("{name}.absmax"), floats(absmax.clone()))),
        Absmax::Nested { codes, nested, offset, nested_code } => {
            state["nested_blocksize"] = json!(NESTED_BLOCKSIZE);
            state["nested_dtype"] = json!("float32");
            state["nested_offset"] = json!(f64::from(*offset));
            out.push((format!("{name}.absmax"), bytes(codes.clone())));
            out.push((format!("{name}.nested_absmax"), floats(nested.clone())));
            out.push((format!("{name}.nested_quant_map"), floats(nested_code.to_vec())));
        }
    }
    let state_text = python_json(&state).into_bytes();
    out.push((format!("{name}.{}", state_suffix(q.quant_type)), bytes(state_text)));
    out
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "` between items), which is how
/// transformers stores quant states, so a checkpoint written here has its bytes.
fn python_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(python_json).collect::<Vec<_>>().join(", ")),
        scalar => scalar.to_string(),
    }
}
