//! The page's memory budget against the memory the same code really takes, at real size.
//!
//! Each case does what the page's worker does on the CPU path (file bytes in memory, the model
//! built from them in its stored dtype, a few greedy tokens, one LoRA step) with a counting
//! allocator, and checks that the budget's estimate of each phase is at least the measured peak
//! (nothing it lets through runs out of memory) and at most 15% above it (it refuses nothing
//! that fits).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use ember_core::budget::{ModelBudget, Placement, TrainingShape, RUNTIME, WASM_HEAP};
use ember_core::checkpoint::{
    build_model, tensor_file_from_bytes, Checkpoint, LoadOptions, ReadAt, SafetensorsFile, TensorFile,
};
use ember_core::data::formats::Example;
use ember_core::data::TokenizedDataset;
use ember_core::generate::{generate, GenerationConfig};
use ember_core::lora::{apply_lora, lora_report, LoraSettings, TargetModules};
use ember_core::model::{ModelShape, WeightDType};
use ember_core::quant::{QuantConfig, QuantType};
use ember_core::template::Template;
use ember_core::tokenizer::Tokenizer;
use ember_core::train::{Trainer, TrainingArgs};
use ember_core::BloomConfig;
use ember_tests::random_model::{tokenizer_json, write_weights};

/// Bytes live now and the most live since the last [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
}

fn peak() -> usize {
    PEAK.load(Ordering::SeqCst)
}

fn live() -> usize {
    LIVE.load(Ordering::SeqCst)
}

fn examples(words: usize) -> Vec<Example> {
    let output = vec!["hello"; words].join(" ");
    vec![Example { instruction: "what".into(), input: String::new(), output }]
}

/// A fine-tuning run of the check: LoRA r = 8 on `query_key_value` (the page's default), and
/// `modules_to_save`.
struct Run {
    length: usize,
    modules_to_save: &'static [&'static str],
}

/// Loads a model of `shape` from f16 file bytes in memory as the page does, generates, trains
/// each run one step, and checks the budget's figure of each phase against the peak measured.
/// A weight file on disk read a range at a time, as the page reads a `File` or a downloaded
/// `Blob`: its bytes are not in this process's heap.
struct OnDisk(std::fs::File);

impl ReadAt for OnDisk {
    fn size(&self) -> u64 {
        self.0.metadata().unwrap().len()
    }
    fn read_into(&self, offset: u64, out: &mut [u8]) -> ember_core::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(out, offset).unwrap();
        Ok(())
    }
}

/// How the weights reach the loader: whole in memory (a `.bin`, or any file before the page
/// read safetensors in ranges) or a tensor at a time.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    Whole,
    Ranges,
}

fn check(shape: &str, four_bit: bool, read: Read, runs: &[Run]) -> (ModelBudget, u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = BloomConfig::named_shape(shape).unwrap();
    config.torch_dtype = Some("float16".into());
    let device = Device::flex();
    let quant = four_bit.then(|| QuantConfig {
        bnb_4bit_quant_type: QuantType::Nf4,
        bnb_4bit_use_double_quant: true,
        ..QuantConfig::default()
    });
    let start = live();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let file = match read {
        Read::Whole => {
            let mut file = Vec::new();
            write_weights(&config, "f16", &mut file);
            file.shrink_to_fit();
            Some(Arc::new(file))
        }
        Read::Ranges => {
            write_weights(&config, "f16", std::io::BufWriter::new(std::fs::File::create(&path).unwrap()));
            None
        }
    };
    let tokenizer_file = tokenizer_json(config.vocab_size).into_bytes();
    let held = (file.as_ref().map_or(0, |f| f.len()) + tokenizer_file.len()) as u64;
    let budget = ModelBudget::new(&config, held, WeightDType::F16, WeightDType::F16, quant.as_ref());
    let budget = if read == Read::Ranges { budget.read_in_ranges() } else { budget };
    let what = format!(
        "{shape}{}{}",
        if four_bit { " 4-bit" } else { "" },
        if read == Read::Ranges { " read in ranges" } else { "" }
    );

    reset_peak();
    let tokenizer = Tokenizer::from_parts(&tokenizer_file, "tokenizer.json", None, None, &config).unwrap();
    let options = LoadOptions { dtype: WeightDType::F16, quant, ..LoadOptions::default() };
    let files = vec![match &file {
        Some(bytes) => tensor_file_from_bytes("model.safetensors", bytes.clone()).unwrap(),
        None => Box::new(
            SafetensorsFile::from_reader(&path, Box::new(OnDisk(std::fs::File::open(&path).unwrap()))).unwrap(),
        ) as Box<dyn TensorFile>,
    }];
    let mut checkpoint = Checkpoint::from_files("model.safetensors", files, &device);
    let model = build_model(&config, &mut checkpoint, &device, &options).unwrap();
    drop((checkpoint, file, tokenizer_file));
    let loading = (peak() - start) as u64;
    compare(&format!("{what}: loading"), budget.loading(), loading as usize);
    let loaded = live() - start;
    compare(&format!("{what}: loaded"), budget.loaded(), loaded);

    reset_peak();
    let prompt = tokenizer.encode(&vec!["hello"; 16].join(" ")).unwrap();
    let generation = GenerationConfig {
        max_new_tokens: Some(4),
        max_length: None,
        sampling: None,
        repetition_penalty: 1.0,
        eos_token_id: None,
        pad_token_id: 3,
        context_limit: config.context_limit().0,
    };
    generate(&model, std::slice::from_ref(&prompt), &generation, &device, |_| {}).unwrap();
    compare(&format!("{what}: 16 + 4 tokens"), budget.inference(prompt.len() + 4), peak() - start);

    for run in runs {
        reset_peak();
        let data = TokenizedDataset::from_examples(
            Box::new(examples(run.length).into_iter().map(Ok)),
            &tokenizer,
            &Template::HumanAssistant,
            run.length,
        )
        .unwrap();
        let lora = LoraSettings {
            target_modules: Some(TargetModules::Names(vec!["query_key_value".into()])),
            r: Some(8),
            lora_alpha: Some(16.0),
            modules_to_save: Some(run.modules_to_save.iter().map(|m| m.to_string()).collect()),
            ..LoraSettings::default()
        }
        .build(None)
        .unwrap();
        let report = lora_report(&lora, ModelShape::of_config(&config)).unwrap();
        let autodiff = device.clone().autodiff();
        let mut trainable = model.clone().for_training();
        apply_lora(&mut trainable, &lora, &autodiff).unwrap();
        let args = TrainingArgs {
            per_device_train_batch_size: 1,
            max_steps: 1,
            logging_steps: 1,
            save_steps: 0,
            ..TrainingArgs::default()
        };
        let mut trainer = Trainer::new(trainable, lora, args, &data, 3, tokenizer.padding_side, &autodiff).unwrap();
        trainer.step(&data).unwrap();
        drop(trainer);
        let estimate = budget.training(&TrainingShape::new(1, run.length, &report));
        compare(
            &format!("{what}: a step of 1 x {} saving {:?}", run.length, run.modules_to_save),
            estimate,
            peak() - start,
        );
    }
    (budget, loading)
}

/// The budget lets nothing through that needs more than it says, and asks at most 15% more.
fn compare(what: &str, estimate: u64, measured: usize) {
    let measured = measured as u64;
    let ratio = estimate as f64 / measured as f64;
    eprintln!("{what}: budget {:.1} MiB, measured {:.1} MiB ({ratio:.3})", mib(estimate), mib(measured));
    assert!(
        std::env::var("EMBER_BUDGET_PRINT").is_ok() || (1.0..=1.15).contains(&ratio),
        "{what}: the budget says {:.1} MiB, the peak was {:.1} MiB",
        mib(estimate),
        mib(measured)
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

#[test]
fn bloom_560m_f16_as_the_page_loads_it() {
    let runs = [
        Run { length: 64, modules_to_save: &[] },
        Run { length: 256, modules_to_save: &[] },
        Run { length: 64, modules_to_save: &["word_embeddings"] },
    ];
    let (budget, _) = check("bloom-560m", false, Read::Whole, &runs);
    // The page's verdicts: all of it fits the heap but the embedding copy.
    let fits = |work| budget.need(Placement::Heap, work).heap <= WASM_HEAP;
    assert!(fits(budget.inference(512)));
    let lora = |saved: &[&str]| {
        let settings = LoraSettings {
            target_modules: Some(TargetModules::Names(vec!["query_key_value".into()])),
            modules_to_save: Some(saved.iter().map(|m| m.to_string()).collect()),
            ..LoraSettings::default()
        };
        lora_report(&settings.build(None).unwrap(), budget.shape()).unwrap()
    };
    assert!(fits(budget.training(&TrainingShape::new(1, 256, &lora(&[])))));
    assert!(!fits(budget.training(&TrainingShape::new(1, 64, &lora(&["word_embeddings"])))));
}

/// Read a tensor at a time (the page's safetensors files), a checkpoint never sits whole in
/// memory: bloom-1b4 then fits a page in f16, where read whole it needed 5 GB.
#[test]
fn read_in_ranges_the_file_is_not_held() {
    let (f16, loading) = check("bloom-560m", false, Read::Ranges, &[Run { length: 64, modules_to_save: &[] }]);
    assert!(loading < f16.loaded() + (64 << 20), "{loading}");
    let (bloom_1b4, loading) = check("bloom-1b4", false, Read::Ranges, &[]);
    assert!(bloom_1b4.need(Placement::Heap, bloom_1b4.inference(512)).heap <= WASM_HEAP);
    assert!(loading + RUNTIME < WASM_HEAP, "{loading}");
}

#[test]
fn bloom_1b4_in_4_bit() {
    let (budget, _) = check(
        "bloom-1b4",
        true,
        Read::Whole,
        &[Run { length: 64, modules_to_save: &[] }, Run { length: 256, modules_to_save: &[] }],
    );
    // The 4-bit model fits where the f16 one does not (below).
    assert!(budget.need(Placement::Heap, budget.inference(512)).heap <= WASM_HEAP);
}
