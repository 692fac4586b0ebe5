//! `pytorch_model.bin` files (the zip archives `torch.save` writes), read without executing any
//! pickle code: a small interpreter accepts only the opcodes and the handful of callables a
//! state dict uses (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, storage types)
//! and refuses anything else. A malicious `.bin` therefore cannot run code here, unlike with
//! `torch.load(weights_only=False)`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::host::{check_len, to_f32, FileBytes, HostTensor, StoredDType};
use super::TensorFile;
use crate::error::{Error, Result};

pub struct TorchFile {
    path: PathBuf,
    archive: Mutex<zip::ZipArchive<std::io::Cursor<Shared>>>,
    bytes: Arc<FileBytes>,
    /// Folder inside the zip holding `data.pkl` and `data/<storage key>`.
    prefix: String,
    tensors: HashMap<String, TensorRef>,
}

#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage_key: String,
    dtype: Option<StoredDType>,
    dtype_name: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TorchFile {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse(path.to_path_buf(), FileBytes::map(path)?)
    }

    pub fn from_bytes(origin: impl Into<PathBuf>, bytes: impl Into<std::sync::Arc<Vec<u8>>>) -> Result<Self> {
        Self::parse(origin.into(), FileBytes::Owned(bytes.into()))
    }

    fn parse(path: PathBuf, bytes: FileBytes) -> Result<Self> {
        let not_torch = |why: String| {
            Error::file(&path, format!("not a PyTorch checkpoint written by torch.save ({why})"))
        };
        let bytes = Arc::new(bytes);
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(Shared(bytes.clone()))).map_err(|e| {
            not_torch(format!("{e}; files saved with torch.save(..., _use_new_zipfile_serialization=False) are not supported: re-save them with a current PyTorch"))
        })?;
        let pickle_name = archive
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n.ends_with("data.pkl"))
            .map(|n| n.into_owned())
            .ok_or_else(|| not_torch("no data.pkl inside the archive".into()))?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
        let mut pickle = Vec::new();
        archive
            .by_name(&pickle_name)
            .and_then(|mut f| f.read_to_end(&mut pickle).map_err(Into::into))
            .map_err(|e| not_torch(format!("cannot read {pickle_name}: {e}")))?;
        let tensors = state_dict(&pickle).map_err(not_torch)?;
        Ok(TorchFile { path, archive: Mutex::new(archive), bytes, prefix, tensors })
    }
}

impl TensorFile for TorchFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}`")))?;
        let dtype = t.dtype.ok_or_else(|| {
            Error::file(&self.path, format!("tensor `{name}` is stored as {}; only float32, float16 and bfloat16 weights are supported", t.dtype_name))
        })?;
        let entry = format!("{}data/{}", self.prefix, t.storage_key);
        let mut storage = Vec::new();
        {
            let mut archive = self.archive.lock().expect("zip archive lock poisoned");
            let mut file = archive
                .by_name(&entry)
                .map_err(|e| Error::file(&self.path, format!("storage {entry} of `{name}` is missing: {e}")))?;
            file.read_to_end(&mut storage)
                .map_err(|e| Error::file(&self.path, format!("cannot read storage {entry} of `{name}`: {e}")))?;
            if let Some(start) = file.data_start() {
                self.bytes.release(start as usize, storage.len());
            }
        }
        let numel: usize = t.shape.iter().product();
        let size = dtype.size();
        let last = t.offset + t.shape.iter().zip(&t.stride).map(|(&n, &s)| n.saturating_sub(1) * s).sum::<usize>();
        if numel > 0 && (last + 1) * size > storage.len() {
            return Err(Error::file(&self.path, format!("tensor `{name}` reaches past the end of its storage: the file is corrupt")));
        }
        let bytes = gather_strided(&storage, size, t.offset, &t.shape, &t.stride);
        check_len(&self.path, name, bytes.len(), &t.shape, dtype)?;
        Ok(HostTensor { shape: t.shape.clone(), data: to_f32(&bytes, dtype) })
    }
}

/// The file's bytes, shared between the zip reader and the page releaser.
struct Shared(Arc<FileBytes>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes of a strided view, in row-major order (a plain copy when it is contiguous).
fn gather_strided(storage: &[u8], size: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let contiguous = shape.iter().zip(stride).rev().try_fold(1usize, |expected, (&n, &s)| {
        (n == 1 || s == expected).then_some(expected * n)
    });
    if contiguous.is_some() {
        return storage[offset * size..(offset + numel) * size].to_vec();
    }
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let element = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[element * size..(element + 1) * size]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage { key: String, dtype_name: String },
    Tensor(TensorRef),
    Mark,
}

/// Runs the restricted pickle machine over `data.pkl` and returns its name → tensor map.
fn state_dict(pickle: &[u8]) -> std::result::Result<HashMap<String, TensorRef>, String> {
    let root = Unpickler { data: pickle, pos: 0, stack: Vec::new(), memo: HashMap::new() }.run()?;
    let Value::Dict(items) = root else {
        return Err("the pickle does not hold a state dict (a dict of tensors)".into());
    };
    let mut tensors = HashMap::new();
    for (key, value) in items {
        match (key, value) {
            (Value::Str(name), Value::Tensor(t)) => {
                tensors.insert(name, t);
            }
            (Value::Str(name), _) => return Err(format!("entry `{name}` of the state dict is not a tensor")),
            _ => return Err("the state dict has a key that is not a string".into()),
        }
    }
    Ok(tensors)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn run(mut self) -> std::result::Result<Value, String> {
        loop {
            let op = self.bytes(1)?[0];
            match op {
                0x80 => { self.bytes(1)?; } // PROTO
                0x95 => { self.bytes(8)?; } // FRAME
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b't' => { let items = self.pop_mark()?; self.stack.push(Value::Tuple(items)); }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n { return Err("pickle stack underflow".into()); }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'X' => { let n = self.u32()? as usize; let s = self.string(n)?; self.stack.push(Value::Str(s)); }
                0x8c => { let n = self.bytes(1)?[0] as usize; let s = self.string(n)?; self.stack.push(Value::Str(s)); }
                b'J' => { let b = self.bytes(4)?; self.stack.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)); }
                b'K' => { let b = self.bytes(1)?[0]; self.stack.push(Value::Int(b as i64)); }
                b'M' => { let b = self.bytes(2)?; self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64)); }
                0x8a => { let n = self.bytes(1)?[0] as usize; let v = self.long(n)?; self.stack.push(Value::Int(v)); }
                b'G' => { let b = self.bytes(8)?; self.stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap()))); }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'Q' => { let pid = self.pop()?; self.stack.push(persistent_load(pid)?); }
                b'R' => { let args = self.pop()?; let callable = self.pop()?; self.stack.push(reduce(callable, args)?); }
                b'b' => { self.pop()?; } // BUILD: object state (e.g. OrderedDict._metadata) is not needed
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_top()?.push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 { return Err("SETITEMS with an odd number of items".into()); }
                    let mut it = items.into_iter();
                    let dict = self.dict_top()?;
                    while let (Some(k), Some(v)) = (it.next(), it.next()) { dict.push((k, v)); }
                }
                b'a' => { let v = self.pop()?; self.list_top()?.push(v); }
                b'e' => { let items = self.pop_mark()?; self.list_top()?.extend(items); }
                b'q' => { let i = self.bytes(1)?[0] as u32; self.put(i)?; }
                b'r' => { let i = self.u32()?; self.put(i)?; }
                0x94 => { let i = self.memo.len() as u32; self.put(i)?; }
                b'h' => { let i = self.bytes(1)?[0] as u32; self.get(i)?; }
                b'j' => { let i = self.u32()?; self.get(i)?; }
                b'.' => return self.pop(),
                other => return Err(format!("pickle opcode 0x{other:02x} is not used by state dicts and is refused")),
            }
        }
    }

    fn bytes(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len()).ok_or("pickle data ends early")?;
        let out = &data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn long(&mut self, n: usize) -> std::result::Result<i64, String> {
        if n > 8 { return Err("integer too large".into()); }
        let b = self.bytes(n)?;
        let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
        buf[..n].copy_from_slice(b);
        Ok(i64::from_le_bytes(buf))
    }

    fn string(&mut self, n: usize) -> std::result::Result<String, String> {
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| "invalid UTF-8 in a pickle string".into())
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL")?;
        let s = String::from_utf8(rest[..end].to_vec()).map_err(|_| "invalid GLOBAL name")?;
        self.pos += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let mark = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or("MARK missing")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn dict_top(&mut self) -> std::result::Result<&mut Vec<(Value, Value)>, String> {
        match self.stack.last_mut() {
            Some(Value::Dict(d)) => Ok(d),
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn list_top(&mut self) -> std::result::Result<&mut Vec<Value>, String> {
        match self.stack.last_mut() {
            Some(Value::List(l)) => Ok(l),
            _ => Err("APPEND on something that is not a list".into()),
        }
    }

    fn put(&mut self, i: u32) -> std::result::Result<(), String> {
        let top = self.stack.last().ok_or("memo of an empty stack")?.clone();
        self.memo.insert(i, top);
        Ok(())
    }

    fn get(&mut self, i: u32) -> std::result::Result<(), String> {
        let v = self.memo.get(&i).ok_or("memo entry missing")?.clone();
        self.stack.push(v);
        Ok(())
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)` → a storage reference.
fn persistent_load(pid: Value) -> std::result::Result<Value, String> {
    match pid {
        Value::Tuple(items) if items.len() >= 3 && items[0] == Value::Str("storage".into()) => {
            let dtype_name = match &items[1] {
                Value::Global(m, n) if m == "torch" => n.clone(),
                other => return Err(format!("unknown storage type {other:?}")),
            };
            let key = match &items[2] {
                Value::Str(k) => k.clone(),
                _ => return Err("storage key is not a string".into()),
            };
            Ok(Value::Storage { key, dtype_name })
        }
        other => Err(format!("unsupported persistent id {other:?}")),
    }
}

fn storage_dtype(name: &str) -> Option<StoredDType> {
    match name {
        "FloatStorage" => Some(StoredDType::F32),
        "HalfStorage" => Some(StoredDType::F16),
        "BFloat16Storage" => Some(StoredDType::BF16),
        _ => None,
    }
}

/// The only callables a state dict needs; everything else is refused, never executed.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = callable else {
        return Err("REDUCE on something that is not a global".into());
    };
    let Value::Tuple(args) = args else { return Err("REDUCE arguments are not a tuple".into()) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (Some(Value::Storage { key, dtype_name }), Some(Value::Int(offset)), Some(Value::Tuple(size)), Some(Value::Tuple(stride))) =
                (args.first(), args.get(1), args.get(2), args.get(3))
            else {
                return Err("malformed _rebuild_tensor_v2 arguments".into());
            };
            let ints = |v: &[Value]| -> std::result::Result<Vec<usize>, String> {
                v.iter().map(|x| match x { Value::Int(i) if *i >= 0 => Ok(*i as usize), _ => Err("bad tensor size or stride".to_string()) }).collect()
            };
            Ok(Value::Tensor(TensorRef {
                storage_key: key.clone(),
                dtype: storage_dtype(dtype_name),
                dtype_name: dtype_name.clone(),
                offset: usize::try_from(*offset).map_err(|_| "negative storage offset")?,
                shape: ints(size)?,
                stride: ints(stride)?,
            }))
        }
        ("torch._utils", "_rebuild_parameter") => args.into_iter().next().ok_or_else(|| "empty _rebuild_parameter".into()),
        _ => Err(format!("the pickle calls {module}.{name}, which a state dict never needs; refusing to run it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // A 2x3 f32-sized (4 byte) storage holding 0..6, viewed transposed (3x2, strides 1,3).
        let storage: Vec<u8> = (0u8..6).flat_map(|i| [i, 0, 0, 0]).collect();
        let out = gather_strided(&storage, 4, 0, &[3, 2], &[1, 3]);
        let firsts: Vec<u8> = out.chunks(4).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn code_execution_is_refused() {
        // GLOBAL os.system, '(' MARK, string 'echo', TUPLE, REDUCE, STOP
        let mut p = b"cos\nsystem\n(X\x04\x00\x00\x00echot".to_vec();
        p.extend_from_slice(b"R.");
        let err = state_dict(&p).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
    }
}
