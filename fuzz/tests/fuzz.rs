//! Every parser of files from strangers, run on the seeds, the hand-written nasty cases and the
//! committed corpus (regular tests), then fuzzed for a bounded time (`EMBER_FUZZ_SECONDS` per
//! target, default 2; `EMBER_FUZZ_SEED` replays a run). Each input must end in an error or a
//! success within the time and memory bounds of `ember_fuzz`: a panic, an abort or a bound
//! exceeded fails the test and leaves the input under `target/fuzz-failures/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember_fuzz::mutate::{mutate, Rng};
use ember_fuzz::{corpus, memory_bound, nasty, seeds, Target, TARGETS, TIME_BOUND};

/// Counts the heap each thread holds, so a test can see the peak of the input it runs while
/// other tests run on other threads.
struct Counting;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn held_add(n: usize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn held_sub(n: usize) {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        held_add(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        held_sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        held_sub(layout.size());
        held_add(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An input being run: by which test thread, in which target, since when.
type Running = (std::thread::ThreadId, &'static str, Vec<u8>, Instant);

/// The input each test thread is running, for the watchdog.
static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

/// A hung input cannot be stopped from inside its thread: after 10 × the time bound the
/// watchdog keeps the input and ends the process, saying which target hung.
fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            let running = RUNNING.lock().unwrap();
            if let Some((_, target, input, _)) =
                running.iter().find(|(_, _, _, start)| start.elapsed() > TIME_BOUND * 10)
            {
                eprintln!("fuzz: {target} hung on an input, kept as {}", keep_failure(target, input));
                std::process::exit(1);
            }
        });
    });
}

/// Runs `target` on `input`: `Err` says which bound it broke.
fn check(target: &Target, input: &[u8]) -> Result<(), String> {
    start_watchdog();
    let me = std::thread::current().id();
    RUNNING.lock().unwrap().push((me, target.name, input.to_vec(), Instant::now()));
    let result = check_bounds(target, input);
    RUNNING.lock().unwrap().retain(|(id, ..)| *id != me);
    result
}

fn check_bounds(target: &Target, input: &[u8]) -> Result<(), String> {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let start = Instant::now();
    IN_TARGET.with(|t| t.set(true));
    let outcome = std::panic::catch_unwind(|| (target.run)(input));
    IN_TARGET.with(|t| t.set(false));
    let (elapsed, peak) = (start.elapsed(), PEAK.with(Cell::get) - base);
    if let Err(payload) = outcome {
        let message =
            payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        return Err(format!("panicked: {}", message.unwrap_or_default()));
    }
    if elapsed > TIME_BOUND {
        return Err(format!("took {elapsed:?} (bound {TIME_BOUND:?})"));
    }
    if peak > memory_bound(input.len()) {
        return Err(format!("held {} MiB at once (bound {} MiB)", peak >> 20, memory_bound(input.len()) >> 20));
    }
    Ok(())
}

fn keep_failure(target: &str, input: &[u8]) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "input-{:016x}",
        Rng::new(input.len() as u64 ^ input.iter().map(|&b| b as u64).sum::<u64>()).next_u64()
    ));
    let _ = std::fs::write(&path, input);
    path.display().to_string()
}

thread_local! {
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
}

/// Panics inside a target are results (reported by `check`), not noise; any other panic (a
/// test's own assertion) prints as usual.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

#[test]
fn seeds_nasty_cases_and_corpus_end_within_bounds() {
    quiet_panics();
    let mut failures = Vec::new();
    for target in TARGETS {
        let mut inputs: Vec<(String, Vec<u8>)> =
            seeds(target.name).into_iter().enumerate().map(|(i, s)| (format!("seed {i}"), s)).collect();
        inputs.extend(
            nasty::cases()
                .into_iter()
                .filter(|(t, _, _)| *t == target.name)
                .map(|(_, what, bytes)| (what.to_string(), bytes)),
        );
        inputs.extend(corpus(target.name).into_iter().map(|(path, bytes)| (path.display().to_string(), bytes)));
        for (what, input) in inputs {
            if let Err(why) = check(target, &input) {
                failures.push(format!(
                    "{} / {what}: {why} (kept as {})",
                    target.name,
                    keep_failure(target.name, &input)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_has_nasty_cases_or_corpus() {
    for target in TARGETS {
        let hand_written =
            nasty::cases().iter().filter(|(t, _, _)| *t == target.name).count() + corpus(target.name).len();
        let seeded = seeds(target.name).len();
        assert!(seeded > 0, "{} has no seeds", target.name);
        assert!(
            hand_written > 0 || target.name == "dataset_parquet" || target.name == "dataset_arrow",
            "{} has no nasty cases",
            target.name
        );
    }
}

#[test]
fn mutated_seeds_end_within_bounds() {
    quiet_panics();
    let seconds: f64 = std::env::var("EMBER_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("EMBER_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    eprintln!("fuzzing each target for {seconds} s with EMBER_FUZZ_SEED={seed}");
    let mut failures = Vec::new();
    for target in TARGETS {
        let seeds = seeds(target.name);
        let mut rng = Rng::new(seed ^ target.name.len() as u64);
        let (start, mut runs) = (Instant::now(), 0usize);
        while start.elapsed() < Duration::from_secs_f64(seconds) && failures.len() < 10 {
            let input = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            let mutated = mutate(&mut rng, input, other);
            if let Err(why) = check(target, &mutated) {
                failures.push(format!("{}: {why} (kept as {})", target.name, keep_failure(target.name, &mutated)));
            }
            runs += 1;
        }
        eprintln!("{}: {runs} inputs", target.name);
    }
    assert!(failures.is_empty(), "EMBER_FUZZ_SEED={seed}\n{}", failures.join("\n"));
}

/// `EMBER_FUZZ_REPLAY=TARGET:FILE cargo test --release --workspace --test fuzz replay` runs one
/// input (kept from a failure) with the default panic hook, for a backtrace or a debugger.
#[test]
fn replay() {
    let Ok(spec) = std::env::var("EMBER_FUZZ_REPLAY") else { return };
    let (target, file) = spec.split_once(':').expect("TARGET:FILE");
    let input = std::fs::read(file).expect("the input file");
    (ember_fuzz::target(target).run)(&input);
    println!("{target}: {file}: {:?}", check(ember_fuzz::target(target), &input));
}

/// A huge example costs memory in proportion to `max_length`, not to its size (tokenized whole,
/// a 10 MB example took 2.3 GB), and gives the ids the whole text would.
#[test]
fn a_huge_example_is_tokenized_only_as_far_as_max_length_needs() {
    use ember_core::data::{encode_example, Example};
    use ember_core::template::Template;
    use ember_core::tokenizer::Tokenizer;
    let dir = ember_fuzz::fixtures().join("models/a");
    let config =
        ember_core::BloomConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap(), "config.json")
            .unwrap();
    let tokenizer = Tokenizer::open(&dir, &config).unwrap();
    let text = |bytes: usize| "考试有哪些技巧？ Practice every day, then rest. ".repeat(bytes / 56 + 1);
    let huge = Example { instruction: text(10 << 20), input: String::new(), output: text(10 << 20) };
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let encoded = encode_example(&tokenizer, &Template::HumanAssistant, &huge, 256).unwrap();
    let peak = PEAK.with(Cell::get) - base;
    assert_eq!((encoded.len(), encoded.prompt_len, encoded.truncated), (256, 256, true));
    assert!(peak < 64 << 20, "held {} MiB tokenizing a 20 MB example cut to 256 tokens", peak >> 20);
    // The same ids as tokenizing the whole text, on a text small enough to tokenize whole.
    let medium = Example { instruction: text(200 << 10), input: String::new(), output: "x".into() };
    let whole = tokenizer.encode(&Template::HumanAssistant.prompt(&medium.instruction, "")).unwrap();
    assert_eq!(encode_example(&tokenizer, &Template::HumanAssistant, &medium, 256).unwrap().input_ids, whole[..256]);
    // One giant "word" (no space or punctuation: base64, a run of letters) is cut inside it at
    // a bounded cost, keeping the ids a long prefix of it gives.
    let word = |bytes: usize| "Practice考试".repeat(bytes / 14);
    let giant = Example { instruction: word(10 << 20), input: String::new(), output: String::new() };
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let encoded = encode_example(&tokenizer, &Template::HumanAssistant, &giant, 256).unwrap();
    let peak = PEAK.with(Cell::get) - base;
    assert_eq!((encoded.len(), encoded.truncated), (256, true));
    assert!(peak < 64 << 20, "held {} MiB tokenizing a 10 MB word cut to 256 tokens", peak >> 20);
    let long = tokenizer.encode(&Template::HumanAssistant.prompt(&word(1 << 20), "")).unwrap();
    assert_eq!(encoded.input_ids, long[..256], "a giant word's first tokens");
}
