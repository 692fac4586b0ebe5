//! BLOOM logits, greedy generation and KV-cache decoding against transformers' outputs
//! (tests/fixtures/make_fixtures.py), on the CPU backend and on wgpu.

use ember_core::checkpoint::ModelDir;
use ember_core::generate::{generate, Decoder, GenerationConfig};
use ember_tests::tolerance::VS_TRANSFORMERS as TOLERANCE;
use ember_tests::{first_divergence, logits, max_abs_diff, model_dir, model_names, special_ids, test_devices, Golden};

#[test]
fn logits_match_transformers_for_every_fixture_model_and_format() {
    let names = model_names();
    assert!(names.len() >= 8, "expected the fixture models, found {names:?}");
    for (device_name, device) in test_devices() {
        for name in &names {
            let dir = ModelDir::open(&model_dir(name)).unwrap();
            let model = dir.load_model(&device).unwrap();
            let golden = Golden::open(&model_dir(name).join("golden.safetensors"));
            for batch in ["unpadded", "padded"] {
                let ids = golden.rows(&format!("{batch}.input_ids"));
                let mask = golden.rows(&format!("{batch}.attention_mask"));
                let ours = logits(&model, &ids, &mask, &device);
                let diff = max_abs_diff(&ours, &golden.f32s(&format!("{batch}.logits")));
                let first = if name == "a" {
                    format!("; first stage off: {:?}", first_divergence(&model, batch, &device))
                } else {
                    String::new()
                };
                assert!(diff < TOLERANCE, "{device_name} {name} {batch}: max |Δlogit| = {diff}{first}");
            }
        }
    }
}

/// Every stage of the forward pass (embeddings, each block, the final layer norm) matches
/// transformers', so a logits mismatch can be traced to the block where it starts.
#[test]
fn every_block_matches_transformers() {
    for (device_name, device) in test_devices() {
        let model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
        for split in ["unpadded", "padded"] {
            assert_eq!(first_divergence(&model, split, &device), None, "{device_name} {split}");
        }
        // The helper finds a divergence where there is one: a changed block 1 is the first off.
        let mut broken = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
        let dense = &mut broken.transformer.h[1].mlp.dense_4h_to_h;
        dense.weight = ember_core::model::LinearWeight::dense(dense.weight.val() * 1.01);
        let found = first_divergence(&broken, "unpadded", &device).map(|(stage, _)| stage);
        assert_eq!(found.as_deref(), Some("block.1"), "{device_name}");
    }
}

/// The vocabulary matrix cut into blocks (as it is for large vocabularies on GPUs) gives the
/// same logits: 7 rows per block, so the last block is partial.
#[test]
fn vocabulary_in_blocks_gives_the_same_logits() {
    for (device_name, device) in test_devices() {
        for name in ["a", "c"] {
            let mut model = ModelDir::open(&model_dir(name)).unwrap().load_model(&device).unwrap();
            model.set_vocab_block_rows(7);
            let blocks = model.transformer.word_embeddings.weight.blocks.len();
            assert_eq!(blocks, model.vocab_size().div_ceil(7), "{name}");
            let golden = Golden::open(&model_dir(name).join("golden.safetensors"));
            for batch in ["unpadded", "padded"] {
                let ids = golden.rows(&format!("{batch}.input_ids"));
                let mask = golden.rows(&format!("{batch}.attention_mask"));
                let diff =
                    max_abs_diff(&logits(&model, &ids, &mask, &device), &golden.f32s(&format!("{batch}.logits")));
                assert!(diff < TOLERANCE, "{device_name} {name} {batch} in {blocks} blocks: max |Δlogit| = {diff}");
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct GenerateCases {
    cases: Vec<Case>,
    batch_cases: Vec<BatchCase>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    max_new_tokens: usize,
    generated_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct BatchCase {
    batch_prompt_ids: Vec<Vec<u32>>,
    max_new_tokens: usize,
    generated_ids: Vec<Vec<u32>>,
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    let ids = special_ids("a");
    GenerationConfig {
        max_new_tokens: Some(max_new_tokens),
        eos_token_id: Some(ids.eos),
        pad_token_id: ids.pad,
        ..Default::default()
    }
}

/// transformers pads finished rows with pad tokens; ember stops a row at its eos.
fn strip_padding_after_eos(ids: &[u32]) -> Vec<u32> {
    match ids.iter().position(|&t| t == 2) {
        Some(eos) => ids[..=eos].to_vec(),
        None => ids.to_vec(),
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for (device_name, device) in test_devices() {
        for name in ["a", "b", "c"] {
            let model = ModelDir::open(&model_dir(name)).unwrap().load_model(&device).unwrap();
            let text = std::fs::read_to_string(model_dir(name).join("generate.json")).unwrap();
            let golden: GenerateCases = serde_json::from_str(&text).unwrap();
            assert!(golden.cases.len() >= 4 && !golden.batch_cases.is_empty());
            for case in golden.cases {
                let ours = generate(
                    &model,
                    std::slice::from_ref(&case.prompt_ids),
                    &greedy(case.max_new_tokens),
                    &device,
                    |_| {},
                )
                .unwrap();
                assert_eq!(ours[0], case.generated_ids, "{device_name} model {name} prompt {:?}", case.prompt_ids);
            }
            for case in golden.batch_cases {
                let ours =
                    generate(&model, &case.batch_prompt_ids, &greedy(case.max_new_tokens), &device, |_| {}).unwrap();
                for (row, (o, e)) in ours.iter().zip(&case.generated_ids).enumerate() {
                    assert_eq!(o, &strip_padding_after_eos(e), "{device_name} model {name} batch row {row}");
                }
            }
        }
    }
}

#[test]
fn kv_cache_decoding_equals_transformers_and_full_recomputation() {
    for (device_name, device) in test_devices() {
        let model = ModelDir::open(&model_dir("a")).unwrap().load_model(&device).unwrap();
        let golden = Golden::open(&model_dir("a").join("incremental.safetensors"));
        let prompt: Vec<u32> = golden.get("prompt_ids").1.iter().map(|&v| v as u32).collect();
        let steps: Vec<u32> = golden.get("step_ids").1.iter().map(|&v| v as u32).collect();
        let expected = golden.f32s("step_logits");
        let vocab = expected.len() / steps.len();

        let mut decoder = Decoder::new(&model, &device);
        decoder.prefill(std::slice::from_ref(&prompt), special_ids("a").pad).unwrap();
        let mut sequence = prompt.clone();
        for (i, &id) in steps.iter().enumerate() {
            let cached = decoder.step(&[id]).unwrap();
            sequence.push(id);
            let row: Vec<i64> = sequence.iter().map(|&t| t as i64).collect();
            let full = logits(&model, std::slice::from_ref(&row), &[vec![1; row.len()]], &device);
            let full_last = &full[full.len() - vocab..];
            let vs_full = max_abs_diff(&cached, full_last);
            let vs_torch = max_abs_diff(&cached, &expected[i * vocab..(i + 1) * vocab]);
            assert!(vs_full < TOLERANCE, "{device_name} step {i}: cache vs recompute {vs_full}");
            assert!(vs_torch < TOLERANCE, "{device_name} step {i}: cache vs transformers {vs_torch}");
        }
    }
}
