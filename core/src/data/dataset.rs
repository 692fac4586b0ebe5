//! A tokenized dataset: examples encoded once (in parallel on native), kept in memory or in a
//! cache file keyed by the content of the data, the tokenizer and the settings, so a second run
//! starts at once and a dataset larger than memory is read through a memory map.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::encode::{encode_example, Encoded};
use super::formats::{Example, Examples};
use crate::error::{Error, Result};
use crate::template::Template;
use crate::tokenizer::Tokenizer;

/// Length and label facts of one example, enough for statistics and filtering without reading
/// its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub len: u32,
    pub prompt_len: u32,
    pub truncated: bool,
}

impl Entry {
    pub fn num_label_tokens(&self) -> usize {
        (self.len as usize).saturating_sub((self.prompt_len as usize).max(1))
    }
}

enum Tokens {
    Memory(Vec<u32>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

pub struct TokenizedDataset {
    entries: Vec<Entry>,
    tokens: Tokens,
    /// Whether it came from the on-disk cache rather than being tokenized now.
    pub from_cache: bool,
    /// Something the user should hear about (a damaged cache file that was rebuilt).
    pub notice: Option<String>,
}

/// What `ember data` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct DataStats {
    pub examples: usize,
    pub tokens: usize,
    pub label_tokens: usize,
    pub truncated: usize,
    pub without_labels: usize,
    /// (percentile, length) for p50, p90, p99 and p100.
    pub length_percentiles: Vec<(u8, usize)>,
}

/// Examples are read and encoded this many at a time, so memory stays bounded however large
/// the dataset is.
const CHUNK: usize = 4096;

impl TokenizedDataset {
    /// Encodes a stream of examples in memory.
    pub fn from_examples(
        examples: Examples,
        tokenizer: &Tokenizer,
        template: &Template,
        max_length: usize,
    ) -> Result<Self> {
        let mut encoded = Vec::new();
        encode_stream(examples, tokenizer, template, max_length, |e| {
            encoded.push(e);
            Ok(())
        })?;
        Ok(Self::from_encoded(encoded))
    }

    /// A dataset of already-encoded examples (benchmarks, tests).
    pub fn from_encoded(examples: impl IntoIterator<Item = Encoded>) -> Self {
        let mut entries = Vec::new();
        let mut tokens = Vec::new();
        for e in examples {
            entries.push(Entry {
                offset: tokens.len() as u64,
                len: e.len() as u32,
                prompt_len: e.prompt_len as u32,
                truncated: e.truncated,
            });
            tokens.extend_from_slice(&e.input_ids);
        }
        TokenizedDataset { entries, tokens: Tokens::Memory(tokens), from_cache: false, notice: None }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry(&self, index: usize) -> Entry {
        self.entries[index]
    }

    pub fn get(&self, index: usize) -> Encoded {
        let e = self.entries[index];
        let (start, len) = (e.offset as usize, e.len as usize);
        let input_ids = match &self.tokens {
            Tokens::Memory(t) => t[start..start + len].to_vec(),
            #[cfg(not(target_arch = "wasm32"))]
            Tokens::Mapped(map) => map[start * 4..(start + len) * 4]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        Encoded { input_ids, prompt_len: e.prompt_len as usize, truncated: e.truncated }
    }

    /// Indices of the examples that have at least one label token; the others (prompt longer
    /// than `max_length`) are skipped in training, and counted.
    pub fn trainable_indices(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.entries[i].num_label_tokens() > 0).collect()
    }

    /// The order of `indices` for one epoch: shuffled with a generator seeded by `seed` and the
    /// epoch (so a resumed run sees the same order), or as given.
    pub fn epoch_order(indices: &[usize], seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
        let mut order = indices.to_vec();
        if shuffle {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add((epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            order.shuffle(&mut rng);
        }
        order
    }

    pub fn stats(&self) -> DataStats {
        let mut lengths: Vec<usize> = self.entries.iter().map(|e| e.len as usize).collect();
        lengths.sort_unstable();
        let percentile = |p: u8| -> usize {
            if lengths.is_empty() {
                return 0;
            }
            let rank = ((p as f64 / 100.0) * lengths.len() as f64).ceil() as usize;
            lengths[rank.clamp(1, lengths.len()) - 1]
        };
        DataStats {
            examples: self.len(),
            tokens: lengths.iter().sum(),
            label_tokens: self.entries.iter().map(Entry::num_label_tokens).sum(),
            truncated: self.entries.iter().filter(|e| e.truncated).count(),
            without_labels: self.entries.iter().filter(|e| e.num_label_tokens() == 0).count(),
            length_percentiles: [50, 90, 99, 100].into_iter().map(|p| (p, percentile(p))).collect(),
        }
    }
}

/// Reads `examples` in chunks, encodes each chunk (in parallel on native) and hands the results
/// to `sink` in dataset order. Fails on the first bad example, naming where it is.
pub fn encode_stream(
    mut examples: Examples,
    tokenizer: &Tokenizer,
    template: &Template,
    max_length: usize,
    mut sink: impl FnMut(Encoded) -> Result<()>,
) -> Result<usize> {
    let mut count = 0;
    loop {
        let chunk: Vec<Example> = examples.by_ref().take(CHUNK).collect::<Result<_>>()?;
        if chunk.is_empty() {
            return Ok(count);
        }
        count += chunk.len();
        let encode = |e: &Example| encode_example(tokenizer, template, e, max_length);
        #[cfg(not(target_arch = "wasm32"))]
        let encoded: Vec<Encoded> = {
            use rayon::prelude::*;
            chunk.par_iter().map(encode).collect::<Result<_>>()?
        };
        #[cfg(target_arch = "wasm32")]
        let encoded: Vec<Encoded> = chunk.iter().map(encode).collect::<Result<_>>()?;
        for e in encoded {
            sink(e)?;
        }
    }
}

/// Refuses a dataset without examples, naming it.
pub fn check_not_empty(dataset: &TokenizedDataset, origin: &str) -> Result<()> {
    if dataset.is_empty() {
        return Err(Error::file(origin, "the dataset has no examples"));
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
pub use cache::{cache_key, load_or_build, parse_cache};

#[cfg(not(target_arch = "wasm32"))]
mod cache {
    //! The cache file: all token ids (u32, little-endian), then one index record per example
    //! (offset u64, length u32, prompt length u32, truncated u8), then the example count (u64),
    //! the index's byte offset (u64) and a magic tag.

    use std::hash::{Hash, Hasher};
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::data::formats::{data_files, open_examples, Columns};

    const MAGIC: &[u8; 8] = b"EMBTOK01";
    const ENTRY: usize = 17;

    /// A key over everything the tokenized result depends on: the data files' bytes, the
    /// tokenizer, the template, the columns and `max_length`.
    pub fn cache_key(
        files: &[PathBuf],
        tokenizer: &Tokenizer,
        template: &Template,
        columns: &Columns,
        max_length: usize,
    ) -> Result<String> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (MAGIC, tokenizer.fingerprint(), template, columns, max_length).hash(&mut h);
        for file in files {
            let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io(file, e))?;
                if n == 0 {
                    break;
                }
                buf[..n].hash(&mut h);
            }
        }
        Ok(format!("{:016x}", h.finish()))
    }

    /// The tokenized dataset at `path`, from `cache_dir` if it was tokenized before with the same
    /// inputs, else tokenized now (streaming, bounded memory) and written there atomically. A
    /// damaged cache file is tokenized again, with a notice; a cache directory that cannot be
    /// read or written is an error naming it.
    pub fn load_or_build(
        path: &Path,
        split: &str,
        columns: &Columns,
        tokenizer: &Tokenizer,
        template: &Template,
        max_length: usize,
        cache_dir: &Path,
    ) -> Result<TokenizedDataset> {
        let files = data_files(path, split)?;
        let key = cache_key(&files, tokenizer, template, columns, max_length)?;
        let cached = cache_dir.join(format!("{key}.tok"));
        let unusable = |what: &str, e: std::io::Error| {
            Error::file(cache_dir, format!("cannot {what} the tokenized-data cache here ({e}); point EMBER_CACHE_DIR at a directory you can write"))
        };
        let mut notice = None;
        if cached.exists() {
            match open(&cached, tokenizer.id_bound()) {
                Ok(dataset) => return Ok(dataset),
                Err(Damage::Io(e)) => return Err(unusable("read", e)),
                Err(Damage::Corrupt(why)) => {
                    notice =
                        Some(format!("{}: damaged tokenized cache ({why}); tokenized the data again", cached.display()))
                }
            }
        }
        std::fs::create_dir_all(cache_dir).map_err(|e| unusable("create", e))?;
        crate::io::remove_stale_temporaries(cache_dir);
        crate::io::write_atomic_with(&cached, |tmp| {
            write(tmp, open_examples(path, split, columns)?, tokenizer, template, max_length)
        })
        .map_err(|e| match e {
            Error::Io { source, action: "write", .. } => unusable("write", source),
            other => other,
        })?;
        let mut dataset = open(&cached, tokenizer.id_bound()).map_err(|e| match e {
            Damage::Io(e) => unusable("read", e),
            Damage::Corrupt(why) => {
                Error::file(&cached, format!("the tokenized cache just written is unreadable ({why})"))
            }
        })?;
        dataset.from_cache = false;
        dataset.notice = notice;
        Ok(dataset)
    }

    fn write(
        path: &Path,
        examples: Examples,
        tokenizer: &Tokenizer,
        template: &Template,
        max_length: usize,
    ) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io_write(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        let mut index = Vec::new();
        let mut offset = 0u64;
        encode_stream(examples, tokenizer, template, max_length, |e| {
            for id in &e.input_ids {
                out.write_all(&id.to_le_bytes()).map_err(|err| Error::io_write(path, err))?;
            }
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&(e.len() as u32).to_le_bytes());
            index.extend_from_slice(&(e.prompt_len as u32).to_le_bytes());
            index.push(e.truncated as u8);
            offset += e.len() as u64;
            Ok(())
        })?;
        let count = (index.len() / ENTRY) as u64;
        let io = |err| Error::io_write(path, err);
        out.write_all(&index).map_err(io)?;
        out.write_all(&count.to_le_bytes()).map_err(io)?;
        out.write_all(&(offset * 4).to_le_bytes()).map_err(io)?;
        out.write_all(MAGIC).map_err(io)?;
        out.into_inner().map_err(|e| Error::io_write(path, e.into_error()))?.sync_all().map_err(io)
    }

    enum Damage {
        Io(std::io::Error),
        Corrupt(String),
    }

    fn open(path: &Path, id_bound: usize) -> std::result::Result<TokenizedDataset, Damage> {
        let file = std::fs::File::open(path).map_err(Damage::Io)?;
        // SAFETY: cache files are only ever renamed into place complete and never modified.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Damage::Io)?;
        let entries = parse_cache(&map, id_bound).map_err(Damage::Corrupt)?;
        Ok(TokenizedDataset { entries, tokens: Tokens::Mapped(map), from_cache: true, notice: None })
    }

    /// The index of a cache file, every record checked: its tokens lie inside the token section,
    /// its prompt inside it, and every token id below `id_bound`. The file is the user's and
    /// may be damaged or edited, so nothing in it is trusted.
    pub fn parse_cache(bytes: &[u8], id_bound: usize) -> std::result::Result<Vec<Entry>, String> {
        let len = bytes.len();
        if len < 24 || &bytes[len - 8..] != MAGIC {
            return Err("not an ember cache file".into());
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let (count, index_at) = (u64_at(len - 24), u64_at(len - 16));
        let index_bytes = count.checked_mul(ENTRY as u64).ok_or("impossible example count")?;
        if index_at.checked_add(index_bytes).and_then(|n| n.checked_add(24)) != Some(len as u64) || index_at % 4 != 0 {
            return Err("its index does not fit the file".into());
        }
        let (index_at, tokens) = (index_at as usize, index_at as usize / 4);
        let mut entries = Vec::with_capacity(count as usize);
        for r in bytes[index_at..len - 24].chunks_exact(ENTRY) {
            let entry = Entry {
                offset: u64::from_le_bytes(r[0..8].try_into().expect("8")),
                len: u32::from_le_bytes(r[8..12].try_into().expect("4")),
                prompt_len: u32::from_le_bytes(r[12..16].try_into().expect("4")),
                truncated: r[16] != 0,
            };
            let end = entry.offset.checked_add(entry.len as u64);
            if end.is_none_or(|end| end > tokens as u64) || entry.prompt_len > entry.len {
                return Err(format!("example {} points outside the tokens", entries.len()));
            }
            entries.push(entry);
        }
        if let Some(bad) = bytes[..index_at]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .find(|&id| id as usize >= id_bound)
        {
            return Err(format!("token id {bad} is outside the tokenizer's vocabulary"));
        }
        Ok(entries)
    }
}
