//! Padding a batch like `DataCollatorForSeq2Seq(tokenizer, padding=True)`: to the longest
//! example (optionally up to a multiple), on the tokenizer's padding side, `input_ids` with
//! the pad id, `attention_mask` with 0, `labels` with -100.

use super::encode::Encoded;
use super::IGNORE_INDEX;
use crate::tokenizer::PaddingSide;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Vec<Vec<i64>>,
    pub labels: Vec<Vec<i64>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// Label tokens counted by the causal-LM loss (after the shift).
    pub fn num_label_tokens(&self) -> usize {
        self.labels.iter().map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }
}

pub fn collate(examples: &[&Encoded], pad_id: u32, side: PaddingSide, pad_to_multiple_of: Option<usize>) -> Batch {
    let longest = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let len = match pad_to_multiple_of {
        Some(m) if m > 0 => longest.div_ceil(m) * m,
        _ => longest,
    };
    let pad = |row: Vec<i64>, value: i64| -> Vec<i64> {
        let fill = std::iter::repeat_n(value, len - row.len());
        match side {
            PaddingSide::Left => fill.chain(row).collect(),
            PaddingSide::Right => row.into_iter().chain(fill).collect(),
        }
    };
    let mut batch = Batch { input_ids: Vec::new(), attention_mask: Vec::new(), labels: Vec::new() };
    for e in examples {
        batch.input_ids.push(pad(e.input_ids.iter().map(|&i| i as i64).collect(), pad_id as i64));
        batch.attention_mask.push(pad(vec![1; e.len()], 0));
        batch.labels.push(pad(e.labels(), IGNORE_INDEX));
    }
    batch
}
