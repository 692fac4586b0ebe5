//! One example → token ids, attention mask and labels, exactly as the reference recipe's
//! `process_func`: the prompt and the response (`output + eos_token`) are tokenized separately
//! and concatenated, the prompt's labels are -100, and all three are cut at `max_length`.

use super::formats::Example;
use super::IGNORE_INDEX;
use crate::error::Result;
use crate::template::Template;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    /// How many leading tokens are prompt (masked out of the loss), after truncation.
    pub prompt_len: usize,
    /// Whether `max_length` cut the example.
    pub truncated: bool,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// `[-100] * prompt_len + response ids`.
    pub fn labels(&self) -> Vec<i64> {
        self.input_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| if i < self.prompt_len { IGNORE_INDEX } else { id as i64 })
            .collect()
    }

    /// Label tokens that count in the causal-LM loss (the first position predicts nothing).
    pub fn num_label_tokens(&self) -> usize {
        self.len().saturating_sub(self.prompt_len.max(1))
    }
}

/// `process_func` of the reference recipe. Only as much of a long text is tokenized as the
/// `max_length` tokens kept need ([`Tokenizer::encode_prefix`]), so one huge example costs
/// memory in proportion to `max_length`, not to its size.
pub fn encode_example(
    tokenizer: &Tokenizer,
    template: &Template,
    example: &Example,
    max_length: usize,
) -> Result<Encoded> {
    // One token more than is kept, so that a cut shows as `truncated`.
    let wanted = max_length.saturating_add(1);
    let mut input_ids = tokenizer.encode_prefix(&template.prompt(&example.instruction, &example.input), wanted)?;
    let prompt_len = input_ids.len();
    if prompt_len < wanted {
        let eos = tokenizer.eos.as_ref().map_or("", |t| t.text.as_str());
        input_ids.extend(tokenizer.encode_prefix(&format!("{}{eos}", example.output), wanted - prompt_len)?);
    }
    let truncated = input_ids.len() > max_length;
    input_ids.truncate(max_length);
    Ok(Encoded { prompt_len: prompt_len.min(input_ids.len()), input_ids, truncated })
}
