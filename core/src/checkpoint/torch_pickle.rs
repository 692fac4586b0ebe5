//! `pytorch_model.bin` files (the zip archives `torch.save` writes), read without executing any
//! pickle code: a small interpreter accepts only the opcodes and the handful of callables a
//! state dict uses (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, storage types)
//! and refuses anything else. A malicious `.bin` therefore cannot run code here, unlike with
//! `torch.load(weights_only=False)`.
//!
//! The file is hostile until proven otherwise (docs/SECURITY.md):
//! - pickle values live in one arena and refer to each other by index, so nothing recurses
//!   over them (any nesting depth costs no stack) and a memo entry is shared, never copied
//!   (memory grows with the opcodes read, at most a constant per byte of `data.pkl`);
//! - every size, offset and stride is checked arithmetic, and a tensor must address only its
//!   own storage in a non-overlapping layout, so it holds at most as many values as the file;
//! - storages are read in place from the (memory-mapped) archive: only uncompressed entries,
//!   as `torch.save` writes them, whose bytes lie inside the file.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::host::{check_len, to_f32, FileBytes, HostTensor, StoredDType};
use super::TensorFile;
use crate::error::{Error, Result};

/// Tensors of more dimensions than this are not weights; refusing them bounds the strided walk.
const MAX_DIMS: usize = 8;

pub struct TorchFile {
    path: PathBuf,
    bytes: FileBytes,
    /// Byte range of each stored (uncompressed) archive entry, by name.
    entries: HashMap<String, Range<usize>>,
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
        let not_torch =
            |why: String| Error::file(&path, format!("not a PyTorch checkpoint written by torch.save ({why})"));
        let entries = stored_entries(&bytes).map_err(|e| {
            not_torch(format!(
                "{e}; files saved with torch.save(..., _use_new_zipfile_serialization=False) are not supported: re-save them with a current PyTorch"
            ))
        })?;
        let pickle_name = entries
            .keys()
            .filter(|n| n.ends_with("data.pkl"))
            .min()
            .cloned()
            .ok_or_else(|| not_torch("no data.pkl inside the archive".into()))?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
        let tensors = state_dict(&bytes[entries[&pickle_name].clone()]).map_err(not_torch)?;
        Ok(TorchFile { path, bytes, entries, prefix, tensors })
    }
}

/// The byte range of every archive entry, which must be stored uncompressed (as `torch.save`
/// writes them) inside the file.
fn stored_entries(bytes: &[u8]) -> std::result::Result<HashMap<String, Range<usize>>, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let mut entries = HashMap::new();
    for i in 0..archive.len() {
        let file = archive.by_index_raw(i).map_err(|e| e.to_string())?;
        let name = file.name().map_err(|e| e.to_string())?.into_owned();
        if file.compression() != zip::CompressionMethod::Stored {
            return Err(format!("entry {name} is compressed ({}), which torch.save never does", file.compression()));
        }
        let range = file
            .data_start()
            .and_then(|start| {
                Some(usize::try_from(start).ok()?..usize::try_from(start.checked_add(file.compressed_size())?).ok()?)
            })
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| format!("entry {name} lies outside the file"))?;
        entries.insert(name, range);
    }
    Ok(entries)
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
            Error::file(
                &self.path,
                format!(
                    "tensor `{name}` is stored as {}; only float32, float16 and bfloat16 weights are supported",
                    t.dtype_name
                ),
            )
        })?;
        let entry = format!("{}data/{}", self.prefix, t.storage_key);
        let range = self
            .entries
            .get(&entry)
            .cloned()
            .ok_or_else(|| Error::file(&self.path, format!("storage {entry} of `{name}` is missing")))?;
        let storage = &self.bytes[range.clone()];
        let bytes = gather_strided(storage, dtype.size(), t.offset, &t.shape, &t.stride).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "tensor `{name}` addresses values outside its storage or overlapping ones: the file is corrupt"
                ),
            )
        })?;
        self.bytes.release(range.start, range.len());
        check_len(&self.path, name, bytes.len(), &t.shape, dtype)?;
        Ok(HostTensor { shape: t.shape.clone(), data: to_f32(&bytes, dtype) })
    }
}

/// The bytes of a strided view, in row-major order (a plain copy when it is contiguous), or
/// `None` when the view reaches outside `storage` or two of its elements share a storage cell
/// (a broadcast or overlapping view is not a weight a checkpoint holds).
fn gather_strided(storage: &[u8], size: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Option<Vec<u8>> {
    if shape.len() != stride.len() || shape.len() > MAX_DIMS {
        return None;
    }
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    if numel == 0 {
        return Some(Vec::new());
    }
    // Non-overlapping: ordered by stride, each dimension steps over all of the smaller ones.
    let mut dims: Vec<(usize, usize)> =
        shape.iter().copied().zip(stride.iter().copied()).filter(|&(n, _)| n > 1).collect();
    dims.sort_by_key(|&(_, s)| s);
    let mut span = 1usize;
    for &(n, s) in &dims {
        if s < span {
            return None;
        }
        span = s.checked_mul(n)?;
    }
    let last = dims.iter().try_fold(offset, |acc, &(n, s)| acc.checked_add((n - 1).checked_mul(s)?))?;
    let end = last.checked_add(1)?.checked_mul(size)?;
    if end > storage.len() {
        return None;
    }
    let contiguous = shape
        .iter()
        .zip(stride)
        .rev()
        .try_fold(1usize, |expected, (&n, &s)| (n == 1 || s == expected).then(|| expected * n));
    if contiguous.is_some() {
        return Some(storage[offset * size..(offset + numel) * size].to_vec());
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
    Some(out)
}

/// Index of a value in the unpickler's arena.
type Id = usize;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(String, String),
    Storage { key: String, dtype_name: String },
    Tensor(TensorRef),
}

impl Value {
    /// What kind of value this is, for messages (never its contents, which may be huge).
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(..) => "a global",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

type Parse<T> = std::result::Result<T, String>;

/// Runs the restricted pickle machine over `data.pkl` and returns its name → tensor map.
fn state_dict(pickle: &[u8]) -> Parse<HashMap<String, TensorRef>> {
    let mut machine = Unpickler {
        data: pickle,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = machine.run()?;
    let Value::Dict(items) = &machine.arena[root] else {
        return Err(format!("the pickle holds {}, not a state dict (a dict of tensors)", machine.arena[root].kind()));
    };
    let mut tensors = HashMap::new();
    for &(key, value) in items {
        match (&machine.arena[key], &machine.arena[value]) {
            (Value::Str(name), Value::Tensor(t)) => {
                tensors.insert(name.clone(), t.clone());
            }
            (Value::Str(name), other) => {
                return Err(format!("entry `{name}` of the state dict is {}, not a tensor", other.kind()))
            }
            _ => return Err("the state dict has a key that is not a string".into()),
        }
    }
    Ok(tensors)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Every value made so far; containers hold indices into it.
    arena: Vec<Value>,
    stack: Vec<Id>,
    /// Stack heights at each MARK (pickle's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Unpickler<'a> {
    fn run(&mut self) -> Parse<Id> {
        loop {
            let op = self.bytes(1)?[0];
            match op {
                0x80 => {
                    self.bytes(1)?; // PROTO
                }
                0x95 => {
                    self.bytes(8)?; // FRAME
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let split = self.stack.len().checked_sub(n).ok_or("pickle stack underflow")?;
                    let items = self.stack.split_off(split);
                    self.push(Value::Tuple(items));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.bytes(1)?[0] as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                b'J' => {
                    let b = self.bytes(4)?;
                    self.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64));
                }
                b'K' => {
                    let b = self.bytes(1)?[0];
                    self.push(Value::Int(b as i64));
                }
                b'M' => {
                    let b = self.bytes(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                0x8a => {
                    let n = self.bytes(1)?[0] as usize;
                    let v = self.long(n)?;
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.bytes(8)?;
                    self.push(Value::Float(f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])));
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.arena[module], &self.arena[name]) {
                        (Value::Str(m), Value::Str(n)) => {
                            let global = Value::Global(m.clone(), n.clone());
                            self.push(global);
                        }
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_load(&self.arena, pid)?;
                    self.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = reduce(&mut self.arena, callable, args)?;
                    self.stack.push(result);
                }
                b'b' => {
                    self.pop()?; // BUILD: object state (e.g. OrderedDict._metadata) is not needed
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_top()?.push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let dict = self.dict_top()?;
                    dict.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.list_top()?.push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.list_top()?.extend(items);
                }
                b'q' => {
                    let i = self.bytes(1)?[0] as u32;
                    self.put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.bytes(1)?[0] as u32;
                    self.get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?;
                }
                b'.' => return self.pop(),
                other => return Err(format!("pickle opcode 0x{other:02x} is not used by state dicts and is refused")),
            }
        }
    }

    fn push(&mut self, value: Value) {
        self.arena.push(value);
        self.stack.push(self.arena.len() - 1);
    }

    fn bytes(&mut self, n: usize) -> Parse<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len()).ok_or("pickle data ends early")?;
        let out = &data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Parse<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn long(&mut self, n: usize) -> Parse<i64> {
        if n > 8 {
            return Err("integer too large".into());
        }
        let b = self.bytes(n)?;
        let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
        buf[..n].copy_from_slice(b);
        Ok(i64::from_le_bytes(buf))
    }

    fn string(&mut self, n: usize) -> Parse<String> {
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| "invalid UTF-8 in a pickle string".into())
    }

    fn line(&mut self) -> Parse<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL")?;
        let s = String::from_utf8(rest[..end].to_vec()).map_err(|_| "invalid GLOBAL name")?;
        self.pos += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Parse<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Parse<Vec<Id>> {
        let mark = self.marks.pop().ok_or("MARK missing")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn dict_top(&mut self) -> Parse<&mut Vec<(Id, Id)>> {
        match self.stack.last().map(|&id| &mut self.arena[id]) {
            Some(Value::Dict(d)) => Ok(d),
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn list_top(&mut self) -> Parse<&mut Vec<Id>> {
        match self.stack.last().map(|&id| &mut self.arena[id]) {
            Some(Value::List(l)) => Ok(l),
            _ => Err("APPEND on something that is not a list".into()),
        }
    }

    /// The memo keeps a reference to the value (as Python's does), never a copy.
    fn put(&mut self, i: u32) -> Parse<()> {
        let top = *self.stack.last().ok_or("memo of an empty stack")?;
        self.memo.insert(i, top);
        Ok(())
    }

    fn get(&mut self, i: u32) -> Parse<()> {
        let id = *self.memo.get(&i).ok_or("memo entry missing")?;
        self.stack.push(id);
        Ok(())
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)` → a storage reference.
fn persistent_load(arena: &[Value], pid: Id) -> Parse<Value> {
    let Value::Tuple(items) = &arena[pid] else {
        return Err(format!("unsupported persistent id ({})", arena[pid].kind()));
    };
    let item = |i: usize| items.get(i).map(|&id| &arena[id]);
    if items.len() < 3 || item(0) != Some(&Value::Str("storage".into())) {
        return Err("unsupported persistent id (not a storage)".into());
    }
    let dtype_name = match item(1) {
        Some(Value::Global(m, n)) if m == "torch" => n.clone(),
        _ => return Err("unknown storage type".into()),
    };
    let key = match item(2) {
        Some(Value::Str(k)) => k.clone(),
        _ => return Err("storage key is not a string".into()),
    };
    Ok(Value::Storage { key, dtype_name })
}

fn storage_dtype(name: &str) -> Option<StoredDType> {
    match name {
        "FloatStorage" => Some(StoredDType::F32),
        "HalfStorage" => Some(StoredDType::F16),
        "BFloat16Storage" => Some(StoredDType::BF16),
        _ => None,
    }
}

/// The only callables a state dict needs; everything else is refused, never executed. Returns
/// the result's index (a new value, or an argument passed through).
fn reduce(arena: &mut Vec<Value>, callable: Id, args: Id) -> Parse<Id> {
    let Value::Global(module, name) = &arena[callable] else {
        return Err("REDUCE on something that is not a global".into());
    };
    let Value::Tuple(args) = &arena[args] else { return Err("REDUCE arguments are not a tuple".into()) };
    let arg = |i: usize| args.get(i).map(|&id| &arena[id]);
    let value = match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (
                Some(Value::Storage { key, dtype_name }),
                Some(Value::Int(offset)),
                Some(Value::Tuple(size)),
                Some(Value::Tuple(stride)),
            ) = (arg(0), arg(1), arg(2), arg(3))
            else {
                return Err("malformed _rebuild_tensor_v2 arguments".into());
            };
            let ints = |ids: &[Id]| -> Parse<Vec<usize>> {
                if ids.len() > MAX_DIMS {
                    return Err(format!("a tensor of {} dimensions is not a weight", ids.len()));
                }
                ids.iter()
                    .map(|&id| match &arena[id] {
                        Value::Int(i) => usize::try_from(*i).map_err(|_| "negative tensor size or stride".to_string()),
                        _ => Err("tensor size or stride is not an integer".to_string()),
                    })
                    .collect()
            };
            let (shape, stride) = (ints(size)?, ints(stride)?);
            if shape.len() != stride.len() {
                return Err("tensor size and stride differ in length".into());
            }
            Value::Tensor(TensorRef {
                storage_key: key.clone(),
                dtype: storage_dtype(dtype_name),
                dtype_name: dtype_name.clone(),
                offset: usize::try_from(*offset).map_err(|_| "negative storage offset")?,
                shape,
                stride,
            })
        }
        ("torch._utils", "_rebuild_parameter") => {
            return args.first().copied().ok_or_else(|| "empty _rebuild_parameter".into())
        }
        _ => {
            return Err(format!("the pickle calls {module}.{name}, which a state dict never needs; refusing to run it"))
        }
    };
    arena.push(value);
    Ok(arena.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // A 2x3 f32-sized (4 byte) storage holding 0..6, viewed transposed (3x2, strides 1,3).
        let storage: Vec<u8> = (0u8..6).flat_map(|i| [i, 0, 0, 0]).collect();
        let out = gather_strided(&storage, 4, 0, &[3, 2], &[1, 3]).unwrap();
        let firsts: Vec<u8> = out.chunks(4).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn views_outside_their_storage_or_overlapping_are_refused() {
        let storage = vec![0u8; 24]; // six f32 values
        assert!(gather_strided(&storage, 4, 1, &[2, 3], &[3, 1]).is_none(), "one past the end");
        assert!(gather_strided(&storage, 4, usize::MAX - 2, &[1], &[1]).is_none(), "offset that wraps");
        assert!(gather_strided(&storage, 4, 0, &[2, 3], &[usize::MAX / 2, 1]).is_none(), "stride that wraps");
        assert!(gather_strided(&storage, 4, 0, &[1000, 3], &[0, 1]).is_none(), "broadcast (stride 0)");
        assert!(gather_strided(&storage, 4, 0, &[3, 3], &[1, 1]).is_none(), "overlapping rows");
        assert_eq!(gather_strided(&storage, 4, 0, &[2, 3], &[3, 1]).unwrap().len(), 24);
    }

    #[test]
    fn code_execution_is_refused() {
        // GLOBAL os.system, '(' MARK, string 'echo', TUPLE, REDUCE, STOP
        let mut p = b"cos\nsystem\n(X\x04\x00\x00\x00echot".to_vec();
        p.extend_from_slice(b"R.");
        let err = state_dict(&p).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
    }

    #[test]
    fn memo_entries_are_shared_not_copied() {
        // A list, memoized; then 40 rounds of: a new list holding the memo entry twice, memoized
        // over it. Deep copies would hold 2^40 lists; shared entries hold 41.
        let mut p = vec![b']', b'q', 0];
        for _ in 0..40 {
            p.extend_from_slice(&[b']', b'(', b'h', 0, b'h', 0, b'e', b'q', 0]);
        }
        p.push(b'.');
        let err = state_dict(&p).unwrap_err();
        assert!(err.contains("a list, not a state dict"), "{err}");
    }

    #[test]
    fn deep_nesting_needs_no_stack() {
        // a million nested lists: `]` then (`]` APPEND-into-previous…) never recurses.
        let mut p = Vec::new();
        for _ in 0..1_000_000 {
            p.extend_from_slice(b"](");
        }
        for _ in 0..1_000_000 {
            p.extend_from_slice(b"e");
        }
        p.push(b'.');
        let err = state_dict(&p).unwrap_err();
        assert!(err.contains("not a state dict"), "{err}");
    }
}
