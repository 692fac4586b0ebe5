//! The tokenizer of a model directory: `tokenizer.json` (run by the `tokenizers` crate, the
//! same Rust code the Python fast tokenizer runs) plus the special tokens and padding side from
//! `tokenizer_config.json` / `special_tokens_map.json`, falling back to `config.json`'s ids.

use serde_json::Value;

use crate::config::BloomConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// A hash of `tokenizer.json` and the special tokens: cached tokenizations are keyed by it.
    fingerprint: u64,
    /// One more than the largest id the tokenizer produces (at most the model's vocabulary).
    id_bound: usize,
    pub eos: Option<SpecialToken>,
    pub bos: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    pub padding_side: PaddingSide,
}

impl Tokenizer {
    /// Loads the tokenizer files of a model directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &std::path::Path, config: &BloomConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::file(
                &path,
                "missing: ember needs the fast tokenizer file tokenizer.json (save it with tokenizer.save_pretrained)",
            ));
        }
        let json = crate::error::read_file(&path)?;
        let optional = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        Self::from_parts(
            &json,
            &path.display().to_string(),
            optional("tokenizer_config.json").as_deref(),
            optional("special_tokens_map.json").as_deref(),
            config,
        )
    }

    /// Builds a tokenizer from file contents (the browser has no file system).
    pub fn from_parts(
        tokenizer_json: &[u8],
        origin: &str,
        tokenizer_config: Option<&str>,
        special_tokens_map: Option<&str>,
        config: &BloomConfig,
    ) -> Result<Self> {
        let inner = crate::error::catch_panic(|| tokenizers::Tokenizer::from_bytes(tokenizer_json))
            .unwrap_or_else(|panic| Err(format!("the tokenizers library failed on it: {panic}").into()))
            .map_err(|e| Error::file(origin, format!("not a valid tokenizer.json: {e}")))?;
        // Every id the tokenizer can produce must index the model's embedding matrix.
        let id_bound = inner.get_vocab(true).into_values().max().map_or(0, |id| id as usize + 1);
        if id_bound > config.vocab_size {
            return Err(Error::file(
                origin,
                format!(
                    "produces token ids up to {} but the model's config.json has vocab_size {}: the tokenizer and the \
                     weights come from different models",
                    id_bound - 1,
                    config.vocab_size
                ),
            ));
        }
        let parse =
            |text: Option<&str>| text.and_then(|t| serde_json::from_str::<Value>(t).ok()).unwrap_or(Value::Null);
        let tok_config = parse(tokenizer_config);
        let special_map = parse(special_tokens_map);

        let special = |key: &str, config_id: Option<u32>| -> Option<SpecialToken> {
            let text = token_text(&tok_config, key).or_else(|| token_text(&special_map, key));
            match text {
                Some(text) => inner.token_to_id(&text).map(|id| SpecialToken { text, id }),
                None => config_id.and_then(|id| inner.id_to_token(id).map(|text| SpecialToken { text, id })),
            }
        };
        let padding_side = match tok_config.get("padding_side").and_then(Value::as_str) {
            Some("left") => PaddingSide::Left,
            _ => PaddingSide::Right, // transformers' default
        };
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (tokenizer_json, tokenizer_config, special_tokens_map).hash(&mut h);
            h.finish()
        };
        Ok(Tokenizer {
            fingerprint,
            id_bound,
            eos: special("eos_token", config.eos_token_id),
            bos: special("bos_token", config.bos_token_id),
            pad: special("pad_token", config.pad_token_id),
            inner,
            padding_side,
        })
    }

    /// The padding id transformers uses for this model: config.json's, else the tokenizer's, else 0.
    pub fn pad_id(&self, config: &BloomConfig) -> u32 {
        config.pad_token_id.or(self.pad.as_ref().map(|t| t.id)).unwrap_or(0)
    }

    /// The id that ends generation: config.json's, else the tokenizer's.
    pub fn eos_id(&self, config: &BloomConfig) -> Option<u32> {
        config.eos_token_id.or(self.eos.as_ref().map(|t| t.id))
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds (none
    /// for BLOOM), like `tokenizer(text).input_ids`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::invalid(format!("cannot tokenize text: {e}")))
    }

    /// The first tokens of `text`, at least `max_tokens` of them where the text has that many:
    /// the same ids as the start of [`Self::encode`], but tokenizing a prefix of the text only
    /// (doubling it until enough whole words are in), so memory follows `max_tokens` rather than
    /// the text (a 10 MB example cut to 256 tokens took 2.3 GB tokenized whole). Only tokens of
    /// words that end well before the cut are kept: the words the cut touches may tokenize
    /// differently than in the whole text.
    ///
    /// A text whose words do not settle within [`UNSETTLED_PREFIX_FACTOR`] times the first cut
    /// (one "word" of hundreds of kilobytes: base64, a run of letters with no space or
    /// punctuation) is cut there: its tokens in the first half of that prefix are kept. The
    /// whole text would tokenize that giant word at a cost without bound, and BPE's merges
    /// far from the cut come out the same.
    pub fn encode_prefix(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let first = max_tokens.saturating_mul(PREFIX_BYTES_PER_TOKEN).max(MIN_PREFIX_BYTES);
        let last = first.saturating_mul(UNSETTLED_PREFIX_FACTOR);
        let mut cut = first;
        while cut < text.len() {
            let prefix = &text[..floor_char_boundary(text, cut)];
            let encoding =
                self.inner.encode(prefix, true).map_err(|e| Error::invalid(format!("cannot tokenize text: {e}")))?;
            let words = encoding.get_word_ids();
            // The last two words may reach the cut (a regex pre-tokenizer can look one ahead).
            let settled = words.iter().flatten().max().map_or(0, |last| last.saturating_sub(1));
            let whole = words.iter().take_while(|w| w.is_none_or(|w| w < settled)).count();
            if whole >= max_tokens {
                return Ok(encoding.get_ids()[..whole].to_vec());
            }
            if cut >= last {
                let half = prefix.len() / 2;
                let kept = encoding.get_offsets().iter().take_while(|(_, end)| *end <= half).count();
                return Ok(encoding.get_ids()[..kept].to_vec());
            }
            cut = cut.saturating_mul(2);
        }
        self.encode(text)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| Error::invalid(format!("cannot decode token ids: {e}")))
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// One more than the largest token id this tokenizer produces.
    pub fn id_bound(&self) -> usize {
        self.id_bound
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// [`Tokenizer::encode_prefix`] starts with this many bytes of text per wanted token (about four
/// times what BLOOM's tokenizer averages on Chinese or English), and never fewer than
/// `MIN_PREFIX_BYTES`.
const PREFIX_BYTES_PER_TOKEN: usize = 16;
const MIN_PREFIX_BYTES: usize = 16 << 10;
/// How far past its first cut [`Tokenizer::encode_prefix`] looks for word boundaries before it
/// cuts inside a word: 256 KiB for the usual 256 tokens.
const UNSETTLED_PREFIX_FACTOR: usize = 16;

/// The largest char boundary of `text` at or before `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut i = index.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A special token's text from `tokenizer_config.json` / `special_tokens_map.json`, where it is
/// either a string or an `AddedToken` object with a `content` field.
fn token_text(json: &Value, key: &str) -> Option<String> {
    match json.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Decodes a growing list of ids and hands out only the text that is final, so streamed output
/// never shows half of a multi-byte character (byte-level BPE splits Chinese characters).
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    pub fn new() -> Self {
        TextStream { ids: Vec::new(), printed: 0 }
    }

    /// Adds one token; returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let fresh = text.get(self.printed..).unwrap_or_default().to_owned();
        self.printed = self.printed.max(text.len());
        Ok(fresh)
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}
