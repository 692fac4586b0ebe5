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
    pub fn from_examples(examples: Examples, tokenizer: &Tokenizer, template: &Template, max_length: usize) -> Result<Self> {
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
            entries.push(Entry { offset: tokens.len() as u64, len: e.len() as u32, prompt_len: e.prompt_len as u32, truncated: e.truncated });
            tokens.extend_from_slice(&e.input_ids);
        }
        TokenizedDataset { entries, tokens: Tokens::Memory(tokens), from_cache: false }
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
pub use cache::{cache_key, load_or_build};

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
    pub fn cache_key(files: &[PathBuf], tokenizer: &Tokenizer, template: &Template, columns: &Columns, max_length: usize) -> Result<String> {
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
    /// inputs, else tokenized now (streaming, bounded memory) and written there atomically.
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
        if let Ok(dataset) = open(&cached) {
            return Ok(dataset);
        }
        std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
        let tmp = cache_dir.join(format!(".{key}.tok.tmp-{}", std::process::id()));
        let result = write(&tmp, open_examples(path, split, columns)?, tokenizer, template, max_length)
            .and_then(|_| std::fs::rename(&tmp, &cached).map_err(|e| Error::io(&cached, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        let mut dataset = open(&cached)?;
        dataset.from_cache = false;
        Ok(dataset)
    }

    fn write(path: &Path, examples: Examples, tokenizer: &Tokenizer, template: &Template, max_length: usize) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        let mut index = Vec::new();
        let mut offset = 0u64;
        encode_stream(examples, tokenizer, template, max_length, |e| {
            for id in &e.input_ids {
                out.write_all(&id.to_le_bytes()).map_err(|err| Error::io(path, err))?;
            }
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&(e.len() as u32).to_le_bytes());
            index.extend_from_slice(&(e.prompt_len as u32).to_le_bytes());
            index.push(e.truncated as u8);
            offset += e.len() as u64;
            Ok(())
        })?;
        let count = (index.len() / ENTRY) as u64;
        let io = |err| Error::io(path, err);
        out.write_all(&index).map_err(io)?;
        out.write_all(&count.to_le_bytes()).map_err(io)?;
        out.write_all(&(offset * 4).to_le_bytes()).map_err(io)?;
        out.write_all(MAGIC).map_err(io)?;
        out.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().map_err(io)
    }

    fn open(path: &Path) -> Result<TokenizedDataset> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: cache files are only ever renamed into place complete and never modified.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let corrupt = || Error::file(path, "corrupt cache file; delete it to tokenize again");
        if map.len() < 24 || &map[map.len() - 8..] != MAGIC {
            return Err(corrupt());
        }
        let u64_at = |i: usize| u64::from_le_bytes(map[i..i + 8].try_into().expect("8 bytes"));
        let count = u64_at(map.len() - 24) as usize;
        let index_at = u64_at(map.len() - 16) as usize;
        if index_at + count * ENTRY + 24 != map.len() {
            return Err(corrupt());
        }
        let entries = map[index_at..index_at + count * ENTRY]
            .chunks_exact(ENTRY)
            .map(|r| Entry {
                offset: u64::from_le_bytes(r[0..8].try_into().expect("8")),
                len: u32::from_le_bytes(r[8..12].try_into().expect("4")),
                prompt_len: u32::from_le_bytes(r[12..16].try_into().expect("4")),
                truncated: r[16] != 0,
            })
            .collect();
        Ok(TokenizedDataset { entries, tokens: Tokens::Mapped(map), from_cache: true })
    }
}
