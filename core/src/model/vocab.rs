//! The `[vocab, hidden]` matrix shared by the word embeddings and the language-model head,
//! stored as blocks of rows.
//!
//! Why blocks: many GPUs and browsers (and Mesa's lavapipe) let a shader bind at most 128 MiB of
//! one buffer, and bloom-560m's 250,880 × 1024 f32 matrix is 980 MiB. As blocks of at most
//! [`MAX_BLOCK_BYTES`], every kernel touches one block at a time: the embedding lookup gathers
//! from each block the ids that fall in it, and the head's logits are the blocks' logits side by
//! side (the loss never joins them: `crate::loss`). A small vocabulary is a single block,
//! computed exactly as one matrix.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Gradients, Int, Tensor};

use super::layers::frozen_linear;
use super::precision::widened;
use crate::error::Result;
use crate::readback::{blocking, values};

/// The largest block, in bytes of f32. It must stay under the 128 MiB storage-binding limit of
/// WebGPU's defaults, lavapipe and many GPUs; 32 MiB also keeps a block's logits for a training
/// batch (512 positions × 8192 rows at bloom-560m's width) under glibc's largest mmap threshold,
/// so the CPU backend reuses those buffers instead of faulting in fresh pages every step
/// (bloom-560m training step 11.1 → 9.0 s; decode 10.5 → 9.7 tokens/s from the extra blocks).
pub const MAX_BLOCK_BYTES: usize = 32 << 20;

/// Rows per block for a matrix `hidden` wide (at least one).
pub fn rows_per_block(hidden: usize) -> usize {
    (MAX_BLOCK_BYTES / (hidden.max(1) * 4)).max(1)
}

/// The row ranges of `vocab` rows cut into blocks of `rows` rows.
pub fn block_ranges(vocab: usize, rows: usize) -> Vec<std::ops::Range<usize>> {
    (0..vocab.div_ceil(rows).max(1)).map(|i| i * rows..((i + 1) * rows).min(vocab)).collect()
}

/// For the rows `block` of the vocabulary: each id's index inside the block (clamped into it, so
/// any id is a valid index), and 1.0 where the id really falls in the block, 0.0 elsewhere.
pub fn ids_in_block(ids: &Tensor<2, Int>, block: std::ops::Range<usize>) -> (Tensor<2, Int>, Tensor<2>) {
    let (start, end) = (block.start as i64, block.end as i64);
    let inside = ids.clone().greater_equal_elem(start).bool_and(ids.clone().lower_elem(end));
    let local = (ids.clone() - start).clamp(0, end - start - 1);
    (local, inside.float())
}

#[derive(Module, Debug)]
pub struct VocabMatrix {
    pub blocks: Vec<Param<Tensor<2>>>,
}

impl VocabMatrix {
    /// `blocks` in row order, all as wide; `trainable` decides gradient tracking. Each block
    /// becomes a leaf of its own (blocks are often slices of one tensor).
    pub fn new(blocks: Vec<Tensor<2>>, trainable: bool) -> Self {
        let leaf = |b: Tensor<2>| Param::from_tensor(b.detach()).set_require_grad(trainable);
        VocabMatrix { blocks: blocks.into_iter().map(leaf).collect() }
    }

    /// A whole matrix cut into blocks of at most `rows` rows.
    pub fn split(matrix: Tensor<2>, rows: usize, trainable: bool) -> Self {
        let [vocab, _] = matrix.dims();
        Self::new(block_ranges(vocab, rows).into_iter().map(|r| matrix.clone().slice_dim(0, r)).collect(), trainable)
    }

    /// A trainable f32 copy (peft's `modules_to_save`), block by block.
    pub fn trainable_copy(&self) -> Self {
        Self::new(self.blocks.iter().map(|b| widened(b.val())).collect(), true)
    }

    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        let hidden = self.blocks[0].dims()[1];
        [self.blocks.iter().map(|b| b.dims()[0]).sum(), hidden]
    }

    pub fn is_require_grad(&self) -> bool {
        self.blocks[0].is_require_grad()
    }

    /// Rows of the matrix picked by `ids` (`[batch, positions]` → `[batch, positions, hidden]`).
    pub fn rows(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        if self.blocks.len() == 1 {
            return widened(embedding(self.blocks[0].val(), ids));
        }
        let mut start = 0;
        let mut sum: Option<Tensor<3>> = None;
        for block in &self.blocks {
            let n = block.dims()[0];
            let (local, inside) = ids_in_block(&ids, start..start + n);
            let picked = widened(embedding(block.val(), local)) * inside.unsqueeze_dim::<3>(2);
            sum = Some(match sum {
                Some(s) => s + picked,
                None => picked,
            });
            start += n;
        }
        sum.expect("at least one block")
    }

    /// `x Wᵀ` block by block: `[rows, hidden]` → one `[rows, block rows]` per block.
    pub fn project_blocks(&self, x: Tensor<2>) -> Vec<Tensor<2>> {
        self.blocks.iter().map(|b| frozen_linear(x.clone(), b.val(), None)).collect()
    }

    /// `x Wᵀ`: `[rows, hidden]` → `[rows, vocab]`.
    pub fn project(&self, x: Tensor<2>) -> Tensor<2> {
        let parts = self.project_blocks(x);
        if parts.len() == 1 {
            parts.into_iter().next().expect("one block")
        } else {
            Tensor::cat(parts, 1)
        }
    }

    /// The whole matrix as one tensor. On a device with a binding limit this fails for matrices
    /// above it: use it only where the full matrix is needed at once (training a copy).
    pub fn full(&self) -> Tensor<2> {
        Tensor::cat(self.blocks.iter().map(|b| widened(b.val())).collect(), 0)
    }

    /// The gradient of the whole matrix in `grads`, if it has one.
    pub fn grad(&self, grads: &Gradients) -> Option<Tensor<2>> {
        let parts: Option<Vec<Tensor<2>>> = self.blocks.iter().map(|b| b.val().grad(grads)).collect();
        parts.map(|p| Tensor::cat(p, 0))
    }

    /// Replaces the values with `matrix` (`[vocab, hidden]`), keeping blocks and trainability.
    pub fn set(&mut self, matrix: Tensor<2>) {
        let mut start = 0;
        for block in &mut self.blocks {
            let n = block.dims()[0];
            let value = matrix.clone().slice_dim(0, start..start + n).detach();
            *block = Param::from_tensor(value).set_require_grad(block.is_require_grad());
            start += n;
        }
    }

    /// The matrix on the host, row-major, read block by block (never whole on the device).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for block in &self.blocks {
            let [a, b] = block.dims();
            out.extend(blocking(values(block.val().reshape([a * b]), "reading weights"))?);
        }
        Ok(out)
    }
}
