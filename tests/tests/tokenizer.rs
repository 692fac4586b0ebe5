//! The tokenizer gives the Python fast tokenizer's ids and decodings, and finds the special tokens.

use ember_core::checkpoint::ModelDir;
use ember_core::tokenizer::{PaddingSide, TextStream, Tokenizer};
use ember_tests::{fixtures, model_dir};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn tokenizer() -> Tokenizer {
    let dir = model_dir("a");
    Tokenizer::open(&dir, &ModelDir::open(&dir).unwrap().config).unwrap()
}

#[test]
fn encodes_and_decodes_like_transformers() {
    let tok = tokenizer();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer/cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        assert_eq!(tok.encode(&case.text).unwrap(), case.ids, "{:?}", case.text);
        assert_eq!(tok.decode(&case.ids, false).unwrap(), case.decoded, "{:?}", case.text);
    }
}

#[test]
fn special_tokens_and_padding_side_come_from_the_tokenizer_files() {
    let tok = tokenizer();
    assert_eq!(tok.eos.as_ref().map(|t| (t.text.as_str(), t.id)), Some(("</s>", 2)));
    assert_eq!(tok.bos.as_ref().map(|t| (t.text.as_str(), t.id)), Some(("<s>", 1)));
    assert_eq!(tok.pad.as_ref().map(|t| (t.text.as_str(), t.id)), Some(("<pad>", 3)));
    assert_eq!(tok.padding_side, PaddingSide::Left);
}

#[test]
fn streamed_text_equals_the_full_decoding() {
    let tok = tokenizer();
    let text = "你好，世界！Hello 😀 world";
    let ids = tok.encode(text).unwrap();
    let mut stream = TextStream::new();
    let streamed: String = ids.iter().map(|&id| stream.push(&tok, id).unwrap()).collect();
    assert_eq!(streamed, tok.decode(&ids, true).unwrap());
}
