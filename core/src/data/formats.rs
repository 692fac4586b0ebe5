//! Reading instruction datasets as a stream of examples, whatever the file format: a
//! `datasets.save_to_disk` directory (Arrow IPC streams) or `DatasetDict` directory, JSON (an
//! array), JSONL, Parquet or CSV. Formats are read with the Arrow, Parquet and CSV crates; JSON
//! arrays are read whole (use JSONL for large data), everything else streams.

use std::io::{BufRead, Read};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use serde_json::Value;

use crate::error::{catch_panic, Error, Result};

/// One instruction example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// Which columns hold the instruction, the (optional) input and the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Columns {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns { instruction: "instruction".into(), input: "input".into(), output: "output".into() }
    }
}

impl Columns {
    /// `instruction=prompt,output=answer`: renames some of the three columns.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut columns = Columns::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, name) = part.split_once('=').ok_or_else(|| {
                Error::invalid(format!("`columns`: \"{part}\" is not ROLE=COLUMN (e.g. instruction=prompt)"))
            })?;
            let slot = match role.trim() {
                "instruction" => &mut columns.instruction,
                "input" => &mut columns.input,
                "output" => &mut columns.output,
                other => {
                    return Err(Error::invalid(format!(
                        "`columns`: unknown role \"{other}\" (instruction, input, output)"
                    )))
                }
            };
            *slot = name.trim().to_owned();
        }
        Ok(columns)
    }
}

pub type Examples = Box<dyn Iterator<Item = Result<Example>> + Send>;

/// The files holding a dataset at `path` (a file, a `save_to_disk` directory, or a split of a
/// `DatasetDict` directory), in reading order.
#[cfg(not(target_arch = "wasm32"))]
pub fn data_files(path: &Path, split: &str) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::file(path, "dataset not found"));
    }
    let dict = path.join("dataset_dict.json");
    if dict.is_file() {
        let splits = read_json(&dict)?
            .get("splits")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        if !splits.iter().any(|s| s == split) {
            return Err(Error::file(
                &dict,
                format!("no split \"{split}\" (splits: {}); choose one with `split`", splits.join(", ")),
            ));
        }
        return data_files(&path.join(split), split);
    }
    let state = path.join("state.json");
    if state.is_file() {
        let files: Vec<PathBuf> = read_json(&state)?
            .get("_data_files")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(|e| e.get("filename")?.as_str()).map(|n| path.join(n)).collect())
            .unwrap_or_default();
        if files.is_empty() {
            return Err(Error::file(&state, "lists no data files (\"_data_files\")"));
        }
        return Ok(files);
    }
    let listed = crate::io::files_under(path, HUB_DIR_DEPTH)?;
    if listed.iter().any(|f| data_format_rank(f).is_some()) {
        // A dataset repo as the Hub lays it out (a snapshot, or a git clone).
        let chosen = split_files(&listed, split).map_err(|e| Error::file(path, e))?;
        return Ok(chosen.into_iter().map(|f| path.join(f)).collect());
    }
    Err(Error::file(
        path,
        "not a dataset directory (no dataset_dict.json or state.json as datasets.save_to_disk writes, and no .parquet, .json, .jsonl or .csv files as a Hub dataset repo holds); pass such a file or directory",
    ))
}

/// How deep a dataset repo's data files may sit (`data/train/part-0.parquet` is 2).
#[cfg(not(target_arch = "wasm32"))]
const HUB_DIR_DEPTH: usize = 4;
/// Data file formats Ember reads, best first: when a split has files in several formats (a repo
/// with both Parquet and JSON copies), only the best format's are read.
const DATA_FORMATS: [&str; 5] = ["parquet", "arrow", "jsonl", "json", "csv"];

fn data_format_rank(file: &str) -> Option<usize> {
    let ext = file.rsplit_once('.')?.1.to_ascii_lowercase();
    DATA_FORMATS.iter().position(|f| *f == ext)
}

/// The words `datasets` takes as naming each split in file and folder names.
const SPLIT_WORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The split a repo path names, by datasets' default patterns: a folder or a file-name word
/// (between `-`, `_`, `.`, spaces and digits) that is a split's keyword.
fn split_of(file: &str) -> Option<&'static str> {
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    let words = stem.split(|c: char| c == '/' || c == '-' || c == '_' || c == '.' || c == ' ' || c.is_ascii_digit());
    let words: Vec<String> = words.map(str::to_ascii_lowercase).collect();
    SPLIT_WORDS.iter().find(|(_, keys)| words.iter().any(|w| keys.contains(&w.as_str()))).map(|(split, _)| *split)
}

/// Which of a dataset repo's files (relative paths) hold `split`, in reading order, as
/// `load_dataset` would pick them: files named for a split belong to it; when no file names any
/// split, every data file is `train`.
pub fn split_files(files: &[String], split: &str) -> std::result::Result<Vec<String>, String> {
    let data: Vec<&String> = files.iter().filter(|f| data_format_rank(f).is_some()).collect();
    if data.is_empty() {
        return Err("holds no data files Ember reads (.parquet, .arrow, .jsonl, .json, .csv)".into());
    }
    let named = data.iter().any(|f| split_of(f).is_some());
    let of_split: Vec<&String> =
        data.into_iter().filter(|f| if named { split_of(f) == Some(split) } else { split == "train" }).collect();
    let Some(best) = of_split.iter().filter_map(|f| data_format_rank(f)).min() else {
        let mut splits: Vec<&str> = files.iter().filter_map(|f| split_of(f)).collect();
        splits.sort_unstable();
        splits.dedup();
        let splits = if splits.is_empty() { "train".to_owned() } else { splits.join(", ") };
        return Err(format!("no split \"{split}\" (splits: {splits}); choose one with `split`"));
    };
    let mut chosen: Vec<String> = of_split.into_iter().filter(|f| data_format_rank(f) == Some(best)).cloned().collect();
    chosen.sort();
    Ok(chosen)
}

#[cfg(not(target_arch = "wasm32"))]
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}

/// Streams the examples of the dataset at `path`.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_examples(path: &Path, split: &str, columns: &Columns) -> Result<Examples> {
    let files = data_files(path, split)?;
    let mut streams = Vec::new();
    for file in files {
        let reader = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
        let binary =
            file.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("arrow"));
        streams.push(if binary {
            // SAFETY: read only; a concurrent writer could change what is read (as for any
            // reader), which the checks on the bytes then see as a damaged file.
            let map = unsafe { memmap2::Mmap::map(&reader) }.map_err(|e| Error::io(&file, e))?;
            binary_examples(file, bytes::Bytes::from_owner(map), columns.clone())?
        } else {
            examples_from_reader(&file, std::io::BufReader::new(reader), columns)?
        });
    }
    Ok(stop_at_first_error(streams.into_iter().flatten()))
}

/// Ends a stream after its first error: a reader that failed (a damaged Arrow batch, an I/O
/// error) may report the same error forever.
fn stop_at_first_error(examples: impl Iterator<Item = Result<Example>> + Send + 'static) -> Examples {
    Box::new(examples.scan(false, |failed, item| {
        if *failed {
            return None;
        }
        *failed = item.is_err();
        Some(item)
    }))
}

/// Streams examples from one file's bytes; the format comes from `origin`'s extension.
pub fn examples_from_reader(
    origin: &Path,
    reader: impl BufRead + Send + 'static,
    columns: &Columns,
) -> Result<Examples> {
    Ok(stop_at_first_error(format_examples(origin, reader, columns)?))
}

fn format_examples(origin: &Path, mut reader: impl BufRead + Send + 'static, columns: &Columns) -> Result<Examples> {
    let ext = origin.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let origin = origin.to_path_buf();
    let columns = columns.clone();
    match ext.as_str() {
        "jsonl" => Ok(json_lines(origin, reader, columns)),
        "json" => {
            let first = reader
                .fill_buf()
                .map_err(|e| Error::io(&origin, e))?
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .copied();
            if first == Some(b'[') {
                json_array(origin, reader, columns)
            } else {
                Ok(json_lines(origin, reader, columns))
            }
        }
        "csv" => csv_rows(origin, reader, columns),
        "parquet" | "arrow" => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(|e| Error::io(&origin, e))?;
            binary_examples(origin, bytes::Bytes::from(bytes), columns)
        }
        other => Err(Error::file(
            &origin,
            format!(
                "unknown dataset format \".{other}\": use .json, .jsonl, .parquet, .csv or a save_to_disk directory"
            ),
        )),
    }
}

fn field(
    record: &serde_json::Map<String, Value>,
    name: &str,
    optional: bool,
    place: &dyn Fn() -> String,
) -> Result<String> {
    match record.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if optional => Ok(String::new()),
        None | Some(Value::Null) => {
            let present: Vec<&str> = record.keys().map(String::as_str).collect();
            Err(Error::invalid(format!(
                "{}: no field \"{name}\" (fields present: {}); map yours with `columns`",
                place(),
                present.join(", ")
            )))
        }
        Some(other) => Err(Error::invalid(format!("{}: field \"{name}\" is {other}, not a string", place()))),
    }
}

fn example_from_json(value: Value, columns: &Columns, place: &dyn Fn() -> String) -> Result<Example> {
    let Value::Object(record) = value else {
        return Err(Error::invalid(format!("{}: expected a JSON object per example", place())));
    };
    Ok(Example {
        instruction: field(&record, &columns.instruction, false, place)?,
        input: field(&record, &columns.input, true, place)?,
        output: field(&record, &columns.output, false, place)?,
    })
}

fn json_lines(origin: PathBuf, reader: impl BufRead + Send + 'static, columns: Columns) -> Examples {
    Box::new(reader.lines().enumerate().filter_map(move |(i, line)| {
        let place = || format!("{}:{}", origin.display(), i + 1);
        let line = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(Error::invalid(format!("{}: cannot read: {e}", place())))),
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str::<Value>(&line)
                .map_err(|e| Error::invalid(format!("{}: malformed JSON line: {e}", place())))
                .and_then(|v| example_from_json(v, &columns, &place)),
        )
    }))
}

fn json_array(origin: PathBuf, reader: impl Read, columns: Columns) -> Result<Examples> {
    let values: Vec<Value> = serde_json::from_reader(reader)
        .map_err(|e| Error::file(&origin, format!("not a valid JSON array of examples: {e}")))?;
    Ok(Box::new(
        values
            .into_iter()
            .enumerate()
            .map(move |(i, v)| example_from_json(v, &columns, &|| format!("{}: example {}", origin.display(), i))),
    ))
}

fn csv_rows(origin: PathBuf, reader: impl Read + Send + 'static, columns: Columns) -> Result<Examples> {
    let mut csv = csv::Reader::from_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .map_err(|e| Error::file(&origin, format!("not valid CSV: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let index = |name: &str, optional: bool| -> Result<Option<usize>> {
        match headers.iter().position(|h| h == name) {
            Some(i) => Ok(Some(i)),
            None if optional => Ok(None),
            None => Err(missing_column(&origin, name, &headers)),
        }
    };
    let (ins, inp, out) =
        (index(&columns.instruction, false)?, index(&columns.input, true)?, index(&columns.output, false)?);
    Ok(Box::new(csv.into_records().enumerate().map(move |(i, record)| {
        let record = record.map_err(|e| Error::file(&origin, format!("row {}: {e}", i + 2)))?;
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or_default().to_owned();
        Ok(Example { instruction: get(ins), input: get(inp), output: get(out) })
    })))
}

fn missing_column(origin: &Path, name: &str, present: &[String]) -> Error {
    Error::file(
        origin,
        format!(
            "no column \"{name}\" (columns: {}); map yours with `columns` instruction=NAME,...",
            present.join(", ")
        ),
    )
}

/// The examples of one Arrow record batch.
fn batch_examples(origin: &Path, batch: &RecordBatch, columns: &Columns) -> Result<Vec<Example>> {
    let schema = batch.schema();
    let present: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let column = |name: &str, optional: bool| -> Result<Option<Vec<String>>> {
        let Some(index) = present.iter().position(|p| p == name) else {
            return if optional { Ok(None) } else { Err(missing_column(origin, name, &present)) };
        };
        strings(batch.column(index).as_ref()).map(Some).ok_or_else(|| {
            Error::file(origin, format!("column \"{name}\" holds {}, not strings", batch.column(index).data_type()))
        })
    };
    let instruction = column(&columns.instruction, false)?.unwrap_or_default();
    let input = column(&columns.input, true)?;
    let output = column(&columns.output, false)?.unwrap_or_default();
    Ok(instruction
        .into_iter()
        .zip(output)
        .enumerate()
        .map(|(i, (instruction, output))| Example {
            instruction,
            input: input.as_ref().map_or_else(String::new, |c| c[i].clone()),
            output,
        })
        .collect())
}

/// A string column's values, nulls as empty strings.
fn strings(array: &dyn Array) -> Option<Vec<String>> {
    let collect = |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|v| v.unwrap_or_default().to_owned()).collect();
    if let Some(a) = array.as_string_opt::<i32>() {
        Some(collect(&mut a.iter()))
    } else if let Some(a) = array.as_string_opt::<i64>() {
        Some(collect(&mut a.iter()))
    } else {
        array.as_string_view_opt().map(|a| collect(&mut a.iter()))
    }
}

fn batches_to_examples(
    origin: PathBuf,
    batches: impl Iterator<Item = std::result::Result<RecordBatch, arrow_schema::ArrowError>> + Send + 'static,
    columns: Columns,
) -> Examples {
    Box::new(batches.flat_map(move |batch| {
        let examples = batch
            .map_err(|e| Error::file(&origin, format!("unreadable Arrow data: {e}")))
            .and_then(|b| batch_examples(&origin, &b, &columns));
        match examples {
            Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    }))
}

/// The examples of a Parquet or Arrow file held in memory (or mapped), by its extension.
fn binary_examples(origin: PathBuf, bytes: bytes::Bytes, columns: Columns) -> Result<Examples> {
    let is_parquet = origin.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if is_parquet {
        parquet_batches(origin, bytes, columns)
    } else {
        arrow_stream(origin, bytes, columns)
    }
}

/// A `datasets` Arrow file: an Arrow IPC stream. Its messages are checked to claim no more bytes
/// than the file has before arrow reads them (it allocates what a message claims), and arrow's
/// panics on damaged buffers become errors.
fn arrow_stream(origin: PathBuf, bytes: bytes::Bytes, columns: Columns) -> Result<Examples> {
    let unreadable = |e: String| {
        Error::file(&origin, format!("unreadable Arrow file (expected the IPC stream format datasets writes): {e}"))
    };
    check_ipc_messages(&bytes).map_err(unreadable)?;
    let reader = std::io::Cursor::new(bytes);
    let mut stream = catch_panic(AssertUnwindSafe(|| arrow_ipc::reader::StreamReader::try_new(reader, None)))
        .map_err(unreadable)?
        .map_err(|e| unreadable(e.to_string()))?;
    let batches = std::iter::from_fn(move || {
        catch_panic(AssertUnwindSafe(|| stream.next()))
            .unwrap_or_else(|panic| Some(Err(arrow_schema::ArrowError::ExternalError(panic.into()))))
    });
    Ok(batches_to_examples(origin, batches, columns))
}

/// Walks an Arrow IPC stream's framing (continuation marker, metadata length, flatbuffer
/// `Message`, body): every message and its body must lie inside `bytes`.
fn check_ipc_messages(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    let word = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    while let Some(mut len) = word(pos) {
        pos += 4;
        if len == 0xFFFF_FFFF {
            len = word(pos).ok_or("a message length is cut off")?;
            pos += 4;
        }
        if len == 0 {
            return Ok(()); // end of stream
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or("a message runs past the end of the file")?;
        let message = arrow_ipc::root_as_message(&bytes[pos..end]).map_err(|e| format!("a damaged message ({e})"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a message with a negative body length")?;
        pos = end
            .checked_add(body)
            .filter(|&e| e <= bytes.len())
            .ok_or("a message claims a body past the end of the file")?;
    }
    Ok(())
}

/// A Parquet file's examples. The `parquet` crate trusts the file more than a stranger's file
/// deserves: the page layout is checked first ([`super::parquet_pages`]) and the crate's panics
/// on damaged files become errors.
fn parquet_batches(origin: PathBuf, bytes: bytes::Bytes, columns: Columns) -> Result<Examples> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let unreadable = |e: String| Error::file(&origin, format!("unreadable Parquet file: {e}"));
    super::parquet_pages::check_footer(&bytes).map_err(unreadable)?;
    let source = bytes.clone();
    let builder = catch_panic(AssertUnwindSafe(|| ParquetRecordBatchReaderBuilder::try_new(source)))
        .map_err(unreadable)?
        .map_err(|e| unreadable(e.to_string()))?;
    super::parquet_pages::check(&bytes, builder.metadata()).map_err(unreadable)?;
    let mut reader = catch_panic(AssertUnwindSafe(|| builder.with_batch_size(1024).build()))
        .map_err(unreadable)?
        .map_err(|e| unreadable(e.to_string()))?;
    let batches = std::iter::from_fn(move || {
        catch_panic(AssertUnwindSafe(|| reader.next()))
            .unwrap_or_else(|panic| Some(Err(arrow_schema::ArrowError::ExternalError(panic.into()))))
    });
    Ok(batches_to_examples(origin, batches, columns))
}
