//! The data pipeline against datasets + the reference recipe's `process_func` +
//! `DataCollatorForSeq2Seq`, for every file format, plus eval loss, cache and bad input.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ember_core::checkpoint::ModelDir;
use ember_core::data::dataset::load_or_build;
use ember_core::data::formats::open_examples;
use ember_core::data::{collate, Columns, TokenizedDataset};
use ember_core::eval::evaluate;
use ember_core::template::Template;
use ember_core::tokenizer::{PaddingSide, Tokenizer};
use ember_tests::{fixtures, model_dir, special_ids};
use serde_json::Value;

const FORMATS: [&str; 7] =
    ["train.json", "train.jsonl", "train.parquet", "train.csv", "saved", "saved-sharded", "dict"];

fn data(name: &str) -> PathBuf {
    fixtures().join("data").join(name)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::open(&model_dir("a"), &ModelDir::open(&model_dir("a")).unwrap().config).unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenized(path: &Path, columns: &Columns, max_length: usize) -> TokenizedDataset {
    let examples = open_examples(path, "train", columns).unwrap();
    TokenizedDataset::from_examples(examples, &tokenizer(), &Template::HumanAssistant, max_length).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn assert_processed(dataset: &TokenizedDataset, max_length: usize, what: &str) {
    let expected = json(&data(&format!("processed_{max_length}.json")));
    let expected = expected.as_array().unwrap();
    assert_eq!(dataset.len(), expected.len(), "{what}");
    for (i, e) in expected.iter().enumerate() {
        let ours = dataset.get(i);
        let ids: Vec<i64> = ours.input_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(ids, ints(&e["input_ids"]), "{what} example {i} input_ids");
        assert_eq!(vec![1; ours.len()], ints(&e["attention_mask"]), "{what} example {i} attention_mask");
        assert_eq!(ours.labels(), ints(&e["labels"]), "{what} example {i} labels");
    }
}

#[test]
fn every_format_gives_the_recipes_token_ids_masks_and_labels() {
    for max_length in [32, 256] {
        for format in FORMATS {
            assert_processed(&tokenized(&data(format), &Columns::default(), max_length), max_length, format);
        }
        assert_processed(
            &tokenized(&data("train-null-input.jsonl"), &Columns::default(), max_length),
            max_length,
            "null input",
        );
        let renamed = Columns::parse("instruction=prompt,input=context,output=answer").unwrap();
        assert_processed(&tokenized(&data("columns.jsonl"), &renamed, max_length), max_length, "renamed columns");
    }
}

#[test]
fn prompts_follow_python_strip_semantics() {
    let expected = json(&data("processed_256.json"));
    let examples: Vec<_> =
        open_examples(&data("train.jsonl"), "train", &Columns::default()).unwrap().map(Result::unwrap).collect();
    for (e, golden) in examples.iter().zip(expected.as_array().unwrap()) {
        assert_eq!(Template::HumanAssistant.prompt(&e.instruction, &e.input), golden["prompt_text"].as_str().unwrap());
    }
}

#[test]
fn batches_equal_data_collator_for_seq2seq() {
    let dataset = tokenized(&data("train.jsonl"), &Columns::default(), 32);
    for (file, side, multiple) in [
        ("collated_32.json", PaddingSide::Left, None),
        ("collated_32_mult8.json", PaddingSide::Left, Some(8)),
        ("collated_32_right.json", PaddingSide::Right, None),
    ] {
        let expected = json(&data(file));
        for (b, golden) in expected.as_array().unwrap().iter().enumerate() {
            let examples: Vec<_> = (4 * b..4 * b + 4).map(|i| dataset.get(i)).collect();
            let batch = collate(&examples.iter().collect::<Vec<_>>(), special_ids("a").pad, side, multiple);
            let rows = |k: &str| -> Vec<Vec<i64>> { golden[k].as_array().unwrap().iter().map(ints).collect() };
            assert_eq!(batch.input_ids, rows("input_ids"), "{file} batch {b}");
            assert_eq!(batch.attention_mask, rows("attention_mask"), "{file} batch {b}");
            assert_eq!(batch.labels, rows("labels"), "{file} batch {b}");
        }
    }
}

#[test]
fn eval_loss_equals_transformers_for_every_format() {
    let device = Device::flex();
    let model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
    let golden = json(&data("eval.json"));
    for max_length in [32, 256] {
        let expected = &golden[max_length.to_string()];
        for format in FORMATS {
            let dataset = tokenized(&data(format), &Columns::default(), max_length);
            let r = evaluate(&model, &dataset, 4, special_ids("a").pad, PaddingSide::Left, &device, |_, _| {}).unwrap();
            let want = expected["eval_loss"].as_f64().unwrap();
            assert!(
                ((r.eval_loss - want) / want).abs() < ember_tests::tolerance::LOSS_VS_TRANSFORMERS,
                "{format} {max_length}: {} vs {want}",
                r.eval_loss
            );
            assert_eq!(r.num_tokens as u64, expected["num_tokens"].as_u64().unwrap(), "{format}");
            assert_eq!(r.num_examples as u64, expected["num_examples"].as_u64().unwrap(), "{format}");
        }
    }
}

#[test]
fn a_second_run_reads_the_cache_and_sees_the_same_data() {
    let cache = tempfile::tempdir().unwrap();
    let load = || {
        load_or_build(
            &data("saved-sharded"),
            "train",
            &Columns::default(),
            &tokenizer(),
            &Template::HumanAssistant,
            32,
            cache.path(),
        )
        .unwrap()
    };
    let first = load();
    let second = load();
    assert!(!first.from_cache && second.from_cache);
    assert_processed(&second, 32, "cached");
    assert_eq!(first.stats(), second.stats());
    assert_eq!(second.stats().without_labels, 1);
    assert_eq!(second.trainable_indices().len(), 15);
}

#[test]
fn shuffling_is_seeded_per_epoch() {
    let indices: Vec<usize> = (0..50).collect();
    let a = TokenizedDataset::epoch_order(&indices, 42, 0, true);
    assert_eq!(a, TokenizedDataset::epoch_order(&indices, 42, 0, true));
    assert_ne!(a, TokenizedDataset::epoch_order(&indices, 42, 1, true));
    assert_ne!(a, indices);
    assert_eq!(TokenizedDataset::epoch_order(&indices, 42, 3, false), indices);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, indices);
}

fn first_error(path: &Path, split: &str, columns: &Columns) -> String {
    match open_examples(path, split, columns) {
        Err(e) => e.to_string(),
        Ok(mut it) => it.find_map(Result::err).expect("an error").to_string(),
    }
}

#[test]
fn bad_input_names_the_file_and_the_place() {
    let tmp = tempfile::tempdir().unwrap();
    let columns = Columns::default();

    let err = first_error(&data("columns.jsonl"), "train", &columns);
    assert!(
        err.contains("columns.jsonl:1") && err.contains("no field \"instruction\"") && err.contains("prompt"),
        "{err}"
    );
    let err = first_error(&data("train.parquet"), "train", &Columns::parse("output=answer").unwrap());
    assert!(err.contains("no column \"answer\"") && err.contains("instruction, input, output"), "{err}");

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": oops}\n").unwrap();
    let err = first_error(&bad, "train", &columns);
    assert!(err.contains("bad.jsonl:2") && err.contains("malformed JSON"), "{err}");

    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let dataset = tokenized(&empty, &columns, 32);
    let err = ember_core::data::dataset::check_not_empty(&dataset, "empty.jsonl").unwrap_err().to_string();
    assert!(err.contains("empty.jsonl") && err.contains("no examples"), "{err}");

    let arrow_dir = tmp.path().join("saved");
    std::fs::create_dir(&arrow_dir).unwrap();
    for f in ["state.json", "dataset_info.json"] {
        std::fs::copy(data("saved").join(f), arrow_dir.join(f)).unwrap();
    }
    std::fs::write(arrow_dir.join("data-00000-of-00001.arrow"), b"not arrow at all").unwrap();
    let err = first_error(&arrow_dir, "train", &columns);
    assert!(err.contains("data-00000-of-00001.arrow") && err.contains("unreadable Arrow"), "{err}");

    let err = first_error(&data("dict"), "validation", &columns);
    assert!(
        err.contains("dataset_dict.json") && err.contains("no split \"validation\"") && err.contains("train, test"),
        "{err}"
    );
}
