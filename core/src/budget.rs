//! The memory a model will need, phase by phase, known before its weights are read: the page
//! shows it and refuses only what cannot fit (docs/ARCHITECTURE.md, "Memory budget", has the
//! formula and the measurements behind each constant; `tests/tests/budget.rs` checks it against
//! a counting allocator at real size).
//!
//! Sizes are `u64` bytes: `usize` is 32 bits on wasm32, and a large model overflows it.

use ember_shaders::ops::{DEQUANTIZE_CHUNK_VALUES, LOGITS_CHUNK_BYTES};

use crate::lora::LoraReport;
use crate::model::bloom::LM_HEAD;
use crate::model::vocab::{rows_per_block, MAX_BLOCK_BYTES};
use crate::model::{ModelShape, ModuleKind, WeightDType};
use crate::quant::QuantConfig;
use crate::{BloomConfig, Error, Result};

const MIB: u64 = 1 << 20;
const F32: u64 = 4;

/// A 32-bit WebAssembly memory: 65,536 pages of 64 KiB.
pub const WASM_HEAP: u64 = 4 << 30;

/// The most one file can be in a page: a Rust allocation on wasm32 is at most `isize::MAX`
/// bytes, and the page holds each file in one piece while it loads.
pub const WASM_LARGEST_FILE: u64 = i32::MAX as u64;

/// The page's own share of its heap: the module's data, the stack, the allocator's slack
/// (measured: 35-67 MiB more heap than the same session's live allocations natively).
pub const RUNTIME: u64 = 64 * MIB;

/// The tokenizer in memory, per vocabulary entry: tokenizers' maps both ways and the strings
/// (134 bytes measured at 250,880 entries), with room for a BPE's merges.
pub const TOKENIZER_BYTES_PER_ENTRY: u64 = 160;

/// f32 values per token per block, in units of the hidden size, that the backward pass keeps:
/// the block's input, both layer norms' inputs (the second is the residual sum), the first
/// norm's output (the LoRA path's input), q, k and v, the attention's output (its backward needs
/// it), GELU's input (4): 11; and one more for the gradient flowing back through the blocks.
/// The frozen weights' matmuls keep nothing: no weight gradient is computed for them.
pub const KEPT_PER_TOKEN_PER_BLOCK: u64 = 12;

/// Bytes per trainable parameter: the f32 value, its gradient and AdamW's two moments.
pub const TRAINABLE_BYTES: u64 = 16;

/// More bytes per parameter of a `modules_to_save` copy: its gradient is summed from dense
/// partial gradients (a tied embedding gets one from the lookup and one from the head), so a
/// second gradient-sized buffer exists at the peak (measured: 23.7 bytes per parameter in all
/// for bloom-560m's word_embeddings).
pub const SAVED_EXTRA_BYTES: u64 = 8;

/// What the CPU backend keeps beside a weight's data, and the allocator's rounding, as a share
/// of the weights (measured: 0.4% for f16 weights, 2.4% for 4-bit ones).
const WEIGHT_OVERHEAD_PERCENT: u64 = 3;

/// Held while any checkpoint loads, besides its tensors: the header, the names, one tensor's
/// bookkeeping (measured: 8 MiB for bloom-560m).
const LOAD_OVERHEAD: u64 = 16 * MIB;

/// What is held at once by the 4-bit matmul: one chunk of the weight dequantized to f32, the
/// transposed copy the matmul reads, and the chunk's packed words.
const DEQUANTIZED_CHUNK_BYTES: u64 = DEQUANTIZE_CHUNK_VALUES as u64 * (F32 + F32 + 1);

/// Everything the budget needs to know about a model and how it will be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBudget {
    shape: ModelShape,
    /// The weight files' bytes, held whole while the model is built from them.
    pub file_bytes: u64,
    /// The base weights as stored (their dtype, or 4-bit).
    pub weight_bytes: u64,
    pub tokenizer_bytes: u64,
    /// The most held besides the weights while one weight is converted or quantized.
    pub load_transient: u64,
    /// The same when the checkpoint is read in ranges ([`ModelBudget::read_in_ranges`]).
    ranged_transient: u64,
    four_bit: bool,
}

/// The settings of a fine-tuning run that decide its memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingShape {
    pub batch: usize,
    pub max_length: usize,
    /// Trainable parameters: the adapters and the `modules_to_save` copies.
    pub trainable_params: u64,
    /// Of those, the `modules_to_save` copies'.
    pub saved_params: u64,
}

impl TrainingShape {
    pub fn new(batch: usize, max_length: usize, lora: &LoraReport) -> Self {
        TrainingShape { batch, max_length, trainable_params: lora.trainable_params, saved_params: lora.saved_params }
    }
}

impl ModelBudget {
    /// `file_bytes`: the weight files that will be read (all shards); `file_dtype`: what they
    /// hold (`torch_dtype`); `dtype`/`quant`: how the weights will be stored.
    pub fn new(
        config: &BloomConfig,
        file_bytes: u64,
        file_dtype: WeightDType,
        dtype: WeightDType,
        quant: Option<&QuantConfig>,
    ) -> Self {
        let shape = ModelShape::of_config(config);
        let linears = || {
            shape.modules().into_iter().filter_map(|m| match m.kind {
                ModuleKind::Linear { out_features, in_features, .. } => {
                    Some((m.name, out_features as u64 * in_features as u64))
                }
                _ => None,
            })
        };
        let largest_quantized =
            linears().filter(|(name, _)| quant.is_some_and(|q| q.quantizes(name))).map(|(_, n)| n).max();
        let largest = linears().map(|(_, n)| n).max().unwrap_or(0);
        let largest_in_blocks = linears().filter(|(name, _)| name != LM_HEAD).map(|(_, n)| n).max().unwrap_or(0);
        // One block's weight as read from the file (copied into the heap, a tensor at a time);
        // quantizing also holds it in f32 and packed; a change of precision holds one tensor read
        // and converted, the vocabulary matrix as read plus one converted block; weights kept as
        // stored are moved in.
        let read = largest_in_blocks * file_dtype.bytes() as u64;
        let width = file_dtype.bytes() as u64;
        let converted = |vocab_matrix: u64| match largest_quantized {
            Some(n) => n * F32 + n / 2 + n / 16,
            None if dtype != file_dtype => vocab_matrix.max(largest_in_blocks * (F32 + width)),
            None => 0,
        };
        // Read whole, the vocabulary matrix is held as read while it is converted a block at a
        // time; read in ranges, only one block of rows is (as read and converted).
        let load_transient = read + converted(largest * width + MAX_BLOCK_BYTES as u64) + LOAD_OVERHEAD;
        let ranged_transient = read + converted(2 * MAX_BLOCK_BYTES as u64) + LOAD_OVERHEAD;
        ModelBudget {
            weight_bytes: shape.weight_bytes(dtype, quant) * (100 + WEIGHT_OVERHEAD_PERCENT) / 100,
            tokenizer_bytes: config.vocab_size as u64 * TOKENIZER_BYTES_PER_ENTRY,
            file_bytes,
            load_transient,
            ranged_transient,
            four_bit: largest_quantized.is_some(),
            shape,
        }
    }

    /// The checkpoint is read a tensor (the vocabulary matrix a block of rows) at a time, as the
    /// page reads safetensors files.
    pub fn read_in_ranges(self) -> Self {
        ModelBudget { load_transient: self.ranged_transient, ..self }
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    /// The model once loaded: weights and tokenizer.
    pub fn loaded(&self) -> u64 {
        self.weight_bytes + self.tokenizer_bytes
    }

    /// The peak while loading: the files, the tokenizer and the weights built so far.
    pub fn loading(&self) -> u64 {
        self.file_bytes + self.loaded() + self.load_transient
    }

    /// Generating `tokens` (prompt and new tokens) for one prompt: the KV cache, one block's
    /// prefill activations, the next-token logits and their copies for sampling.
    pub fn inference(&self, tokens: usize) -> u64 {
        let (t, h, layers) = (tokens as u64, self.shape.hidden as u64, self.shape.layers as u64);
        let kv_cache = 2 * layers * t * h * F32;
        let block = t * KEPT_PER_TOKEN_PER_BLOCK * h * F32;
        let logits = 3 * self.shape.vocab as u64 * F32;
        self.loaded() + kv_cache + block + logits + self.dequantized()
    }

    /// One optimizer step of `training` (gradient checkpointing off, as the page trains).
    pub fn training(&self, training: &TrainingShape) -> u64 {
        let tokens = training.batch as u64 * training.max_length as u64;
        let (h, layers) = (self.shape.hidden as u64, self.shape.layers as u64);
        let activations = tokens * layers * KEPT_PER_TOKEN_PER_BLOCK * h * F32;
        // One chunk of logits at a time, and per block of the frozen head its input gradient
        // `[tokens, hidden]`, worked out in the forward pass (`ember_shaders::autodiff`).
        let head_blocks = self.shape.vocab.div_ceil(rows_per_block(self.shape.hidden)) as u64;
        let head = LOGITS_CHUNK_BYTES as u64 + head_blocks * tokens * h * F32;
        let trainable = training.trainable_params * TRAINABLE_BYTES + training.saved_params * SAVED_EXTRA_BYTES;
        self.loaded() + activations + head + trainable + self.dequantized()
    }

    /// The 4-bit matmul's transient (nothing for dense weights).
    fn dequantized(&self) -> u64 {
        if self.four_bit {
            DEQUANTIZED_CHUNK_BYTES
        } else {
            0
        }
    }
}

/// Where the page runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The CPU path: everything in the WebAssembly heap.
    Heap,
    /// WebGPU: weights and work on the GPU; files, tokenizer and one host-side weight in the heap.
    Gpu,
}

/// What a phase takes where: the WebAssembly heap's peak and the GPU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub heap: u64,
    pub gpu: u64,
}

impl ModelBudget {
    /// What a session that loads the model and then does `work` (a phase's figure above) needs.
    /// A WebAssembly memory grows and never shrinks, so loading's peak counts after the files
    /// are freed.
    pub fn need(&self, placement: Placement, work: u64) -> Need {
        match placement {
            Placement::Heap => Need { heap: self.loading().max(work) + RUNTIME, gpu: 0 },
            Placement::Gpu => Need {
                heap: self.file_bytes + self.tokenizer_bytes + self.load_transient + RUNTIME,
                gpu: work - self.tokenizer_bytes,
            },
        }
    }
}

impl Placement {
    fn limit_text(self) -> &'static str {
        match self {
            Placement::Heap => "WebAssembly memory",
            Placement::Gpu => "WebAssembly memory (beside the GPU's)",
        }
    }
}

impl Need {
    /// Whether it fits a page: the heap is the limit the page knows; a GPU's memory is not
    /// known to it (WebGPU does not say), so that figure is shown, not enforced.
    pub fn fits(&self) -> bool {
        self.heap <= WASM_HEAP
    }

    /// What it takes, in words: "1.20 GiB", or on WebGPU "0.90 GiB on the GPU, 150 MiB of
    /// WebAssembly memory".
    pub fn text(&self, placement: Placement) -> String {
        match placement {
            Placement::Heap => size_text(self.heap),
            Placement::Gpu => {
                format!("{} on the GPU, {} of WebAssembly memory", size_text(self.gpu), size_text(self.heap))
            }
        }
    }

    /// The figure to show: the heap's on the CPU path, the GPU's on WebGPU (unless the heap
    /// is what does not fit).
    pub fn shown(&self, placement: Placement) -> u64 {
        if placement == Placement::Gpu && self.fits() {
            self.gpu
        } else {
            self.heap
        }
    }
}

/// A phase and what it needs.
pub type Phase = (String, Need);

/// What fits, in a line: "In 4.00 GiB of WebAssembly memory: inference yes (2.30 GiB),
/// fine-tuning at batch 1 × 256 yes (2.30 GiB), with word_embeddings in modules_to_save no
/// (needs 7.07 GiB)".
/// `device_memory`: what the browser says the device has (`navigator.deviceMemory`, GiB,
/// rounded and capped by the browser): a hint shown beside the figures, never a limit.
pub fn what_fits(placement: Placement, phases: &[Phase], device_memory: Option<f64>) -> String {
    let verdicts: Vec<String> = phases
        .iter()
        .map(|(what, need)| {
            let size = size_text(need.shown(placement));
            if need.fits() {
                format!("{what} yes ({size})")
            } else {
                format!("{what} no (needs {size})")
            }
        })
        .collect();
    let place = match placement {
        Placement::Heap => format!("In {} of WebAssembly memory", size_text(WASM_HEAP)),
        Placement::Gpu => "In GPU memory (its size is not known to the page)".to_string(),
    };
    let hint =
        device_memory.map_or(String::new(), |gib| format!(" (the browser reports {gib} GiB of memory on this device)"));
    let heap = match (placement, phases.first()) {
        (Placement::Gpu, Some((_, need))) => format!("; WebAssembly memory while loading: {}", size_text(need.heap)),
        _ => String::new(),
    };
    format!("{place}: {}{heap}{hint}", verdicts.join(", "))
}

/// Refuses `phase` when it cannot fit, naming those of `alternatives` that would.
pub fn check_fits(placement: Placement, phase: &Phase, alternatives: &[Phase]) -> Result<Need> {
    let (what, need) = phase;
    if need.fits() {
        return Ok(*need);
    }
    let fitting: Vec<String> = alternatives
        .iter()
        .filter(|(_, need)| need.fits())
        .map(|(what, need)| format!("{what} ({})", size_text(need.shown(placement))))
        .collect();
    let instead = if fitting.is_empty() {
        "use a smaller model, or the ember command line".to_string()
    } else {
        format!("these fit: {}", fitting.join("; "))
    };
    Err(Error::invalid(format!(
        "{what} needs about {} of {} here, and a page has {} at most: {instead}",
        size_text(need.heap),
        placement.limit_text(),
        size_text(WASM_HEAP)
    )))
}

/// Refuses a file too large for a page to hold in one piece, before any of it is read.
pub fn check_file_size(name: &str, bytes: u64) -> Result<()> {
    if bytes <= WASM_LARGEST_FILE {
        return Ok(());
    }
    Err(Error::file(
        name,
        format!(
            "is {} in one file, and a page can hold at most {} in one piece (WebAssembly's sizes are 32-bit): \
             load the checkpoint saved in shards (transformers: `save_pretrained(dir, max_shard_size=\"1GB\")`), \
             or use the ember command line",
            size_text(bytes),
            size_text(WASM_LARGEST_FILE + 1)
        ),
    ))
}

/// Runs like `run` but smaller, to offer when it does not fit: without the `modules_to_save`
/// copies, at batch 1, and at batch 1 with shorter sequences.
pub fn smaller_runs(run: &TrainingShape) -> Vec<(String, TrainingShape)> {
    let mut runs = Vec::new();
    if run.saved_params > 0 {
        let adapters =
            TrainingShape { trainable_params: run.trainable_params - run.saved_params, saved_params: 0, ..*run };
        runs.push(("without modules_to_save".to_string(), adapters));
    }
    let mut length = run.max_length;
    let mut smaller = TrainingShape { batch: 1, ..*run };
    if run.batch == 1 {
        length /= 2;
    }
    while length >= 32 {
        smaller.max_length = length;
        runs.push((format!("batch 1 × {length}"), smaller));
        length /= 2;
    }
    runs
}

/// "2.25 GiB" / "850 MiB".
pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantType;

    fn nf4() -> QuantConfig {
        QuantConfig { bnb_4bit_quant_type: QuantType::Nf4, bnb_4bit_use_double_quant: true, ..QuantConfig::default() }
    }

    #[test]
    fn a_4bit_model_needs_its_packed_weights_and_one_weight_while_quantizing() {
        let config = BloomConfig::named_shape("bloom-1b4").unwrap();
        let dense = ModelBudget::new(&config, 0, WeightDType::F16, WeightDType::F16, None);
        let packed = ModelBudget::new(&config, 0, WeightDType::F16, WeightDType::F16, Some(&nf4()));
        assert!(packed.weight_bytes * 2 < dense.weight_bytes, "{packed:?} vs {dense:?}");
        // The largest quantized weight is dense_h_to_4h, 8192 × 2048 values.
        let fc1 = 8192u64 * 2048;
        assert_eq!(packed.load_transient, fc1 * 2 + fc1 * 4 + fc1 / 2 + fc1 / 16 + LOAD_OVERHEAD);
        assert_eq!(dense.load_transient, fc1 * 2 + LOAD_OVERHEAD);
        let to_f32 = ModelBudget::new(&config, 0, WeightDType::F16, WeightDType::F32, None);
        // A change of precision holds the vocabulary matrix as read and one block widened.
        assert_eq!(to_f32.load_transient, fc1 * 2 + 46_145 * 2048 * 2 + (32 << 20) + LOAD_OVERHEAD);
        // Read in ranges, one block of rows as read and converted.
        assert_eq!(to_f32.clone().read_in_ranges().load_transient, fc1 * 2 + fc1 * 6 + LOAD_OVERHEAD);
    }

    #[test]
    fn training_grows_with_tokens_and_trainable_parameters() {
        let config = BloomConfig::named_shape("bloom-560m").unwrap();
        let budget = ModelBudget::new(&config, 1 << 30, WeightDType::F16, WeightDType::F16, None);
        let step = |batch, max_length, trainable_params| {
            budget.training(&TrainingShape { batch, max_length, trainable_params, saved_params: 0 })
        };
        // Per block the activations, per 8,192-row block of the head its input gradient.
        let per_token = 24 * KEPT_PER_TOKEN_PER_BLOCK * 1024 * 4 + 250_880u64.div_ceil(8192) * 1024 * 4;
        assert_eq!(step(1, 256, 0) - step(1, 128, 0), 128 * per_token);
        assert_eq!(step(2, 128, 0), step(1, 256, 0));
        assert_eq!(step(1, 64, 1000) - step(1, 64, 0), 16_000);
        let saving = TrainingShape { batch: 1, max_length: 64, trainable_params: 1000, saved_params: 600 };
        assert_eq!(budget.training(&saving) - step(1, 64, 0), 16_000 + 600 * 8);
        let need = budget.need(Placement::Heap, step(1, 64, 0));
        assert_eq!(need, Need { heap: budget.loading() + RUNTIME, gpu: 0 });
        let on_gpu = budget.need(Placement::Gpu, step(1, 64, 0));
        assert_eq!(on_gpu.heap, (1 << 30) + budget.tokenizer_bytes + budget.load_transient + RUNTIME);
        assert_eq!(on_gpu.gpu, step(1, 64, 0) - budget.tokenizer_bytes);
        assert_eq!(size_text(3 << 29), "1.50 GiB");
        assert_eq!(size_text(300 << 20), "300 MiB");
    }

    #[test]
    fn refusals_name_the_smaller_runs_that_fit() {
        let run = TrainingShape { batch: 4, max_length: 256, trainable_params: 1100, saved_params: 1000 };
        let smaller: Vec<String> = smaller_runs(&run).into_iter().map(|(what, _)| what).collect();
        assert_eq!(
            smaller,
            ["without modules_to_save", "batch 1 × 256", "batch 1 × 128", "batch 1 × 64", "batch 1 × 32"]
        );
        let one = TrainingShape { batch: 1, max_length: 64, trainable_params: 10, saved_params: 0 };
        assert_eq!(smaller_runs(&one).into_iter().map(|(what, _)| what).collect::<Vec<_>>(), ["batch 1 × 32"]);

        let need = |gib: u64| Need { heap: gib << 30, gpu: 0 };
        let phase = ("fine-tuning".to_string(), need(5));
        let alternatives = [("small".to_string(), need(3)), ("still big".to_string(), need(6))];
        let refusal = check_fits(Placement::Heap, &phase, &alternatives).unwrap_err().to_string();
        assert!(
            refusal.contains("needs about 5.00 GiB") && refusal.contains("these fit: small (3.00 GiB)"),
            "{refusal}"
        );
        assert!(!refusal.contains("still big"), "{refusal}");
        let none = check_fits(Placement::Heap, &phase, &alternatives[1..]).unwrap_err().to_string();
        assert!(none.contains("ember command line"), "{none}");
        assert!(check_fits(Placement::Heap, &("ok".to_string(), need(4)), &[]).is_ok());
        assert!(check_file_size("a", 2 << 30).unwrap_err().to_string().contains("max_shard_size"));
        assert!(check_file_size("a", (2 << 30) - 1).is_ok());

        let line = what_fits(Placement::Heap, &[("inference".to_string(), need(2)), phase], None);
        assert_eq!(
            line,
            "In 4.00 GiB of WebAssembly memory: inference yes (2.00 GiB), fine-tuning no (needs 5.00 GiB)"
        );
        // On WebGPU the GPU's figure is shown, the heap's only where it is what does not fit.
        let on_gpu = Need { heap: 1 << 30, gpu: 3 << 29 };
        assert_eq!(
            what_fits(Placement::Gpu, &[("inference".to_string(), on_gpu)], Some(8.0)),
            "In GPU memory (its size is not known to the page): inference yes (1.50 GiB); WebAssembly memory while \
             loading: 1.00 GiB (the browser reports 8 GiB of memory on this device)"
        );
    }
}
