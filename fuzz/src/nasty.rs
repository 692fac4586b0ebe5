//! Hand-written hostile inputs, one per failure class found or feared (docs/SECURITY.md): each
//! must end in a clear error (or a correct result) within the fuzz limits. Built in code rather
//! than committed as opaque bytes, so each case says what it is.

use std::io::Write;

/// `(target, what the case is, bytes)`.
pub fn cases() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("pytorch_bin", "lists nested a million deep", torch_zip(&deep_lists(1_000_000), &[])),
        ("pytorch_bin", "memo entries re-used to double a list 60 times", torch_zip(&memo_bomb(60), &[])),
        ("pytorch_bin", "a storage offset near 2^62", torch_zip(&state_dict_pickle(1 << 62, &[2, 3], &[3, 1]), &[0u8; 24])),
        ("pytorch_bin", "a stride near 2^62", torch_zip(&state_dict_pickle(0, &[2, 3], &[1 << 62, 1]), &[0u8; 24])),
        ("pytorch_bin", "a broadcast view (stride 0) of a million by a million", torch_zip(&state_dict_pickle(0, &[1 << 20, 1 << 20], &[0, 0]), &[0u8; 4])),
        ("pytorch_bin", "a shape whose product wraps", torch_zip(&state_dict_pickle(0, &[1 << 33, 1 << 33], &[1 << 33, 1]), &[0u8; 24])),
        ("pytorch_bin", "a valid tiny state dict", torch_zip(&state_dict_pickle(0, &[2, 3], &[3, 1]), &[0u8; 24])),
        ("pytorch_bin", "a call to os.system", torch_zip(b"cos\nsystem\n(X\x04\x00\x00\x00echotR.", &[])),
        ("safetensors", "a header length of 2^63", safetensors_with_header(u64::MAX / 2, b"{}")),
        ("safetensors", "a shape whose product wraps", safetensors_with_header(0, br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#)),
        ("safetensors", "offsets past the data", safetensors_with_header(0, br#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#)),
        ("model_config", "sizes of 2^40", br#"{"model_type":"bloom","vocab_size":1099511627776,"hidden_size":1099511627776,"n_layer":1073741824,"n_head":1}"#.to_vec()),
        ("model_config", "a pad_token_id past the vocabulary and 32 bits", br#"{"model_type":"bloom","vocab_size":10,"hidden_size":8,"n_layer":1,"n_head":2,"pad_token_id":4000000000}"#.to_vec()),
        ("model_config", "a NaN-like epsilon", br#"{"model_type":"bloom","vocab_size":10,"hidden_size":8,"n_layer":1,"n_head":2,"layer_norm_epsilon":1e999}"#.to_vec()),
        ("adapter_config", "r = 10^12", br#"{"target_modules":["dense"],"r":1000000000000}"#.to_vec()),
        ("adapter_config", "a rank_pattern entry of 2^60", br#"{"target_modules":["dense"],"rank_pattern":{"dense":1152921504606846976}}"#.to_vec()),
        ("adapter_config", "a negative rank_pattern entry", br#"{"target_modules":["dense"],"rank_pattern":{"dense":-1}}"#.to_vec()),
        ("adapter_config", "a rank_pattern key that is no regex", br#"{"target_modules":["dense"],"rank_pattern":{"(":2}}"#.to_vec()),
        ("adapter_config", "a regex that compiles huge", br#"{"target_modules":"(a{1000}){1000}"}"#.to_vec()),
        ("dataset_jsonl", "JSON nested 100,000 deep", nested_json(100_000)),
        ("dataset_json", "JSON nested 100,000 deep", nested_json(100_000)),
        ("tokenizer_json", "JSON nested 100,000 deep", nested_json(100_000)),
        ("tokenizer_config", "JSON nested 100,000 deep", nested_json(100_000)),
        ("dataset_csv", "a row with a million fields", format!("instruction,output\n{}", "a,".repeat(1_000_000)).into_bytes()),
        ("tokenized_cache", "an example pointing past the tokens", damaged_cache(|c| c[36..44].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("tokenized_cache", "a count that wraps when multiplied", damaged_cache(|c| {
            let n = c.len();
            c[n - 24..n - 16].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
        })),
        ("tokenized_cache", "a token id past the vocabulary", damaged_cache(|c| c[0..4].copy_from_slice(&u32::MAX.to_le_bytes()))),
    ]
}

/// A `torch.save` archive (stored zip entries) holding `pickle` as `data.pkl` and `storage` as
/// storage "0".
pub fn torch_zip(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in
        [("archive/data.pkl", pickle), ("archive/data/0", storage), ("archive/version", b"3\n".as_slice())]
    {
        zip.start_file(name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip").into_inner()
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.push(0x8a); // LONG1
    out.push(8);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `OrderedDict(w=_rebuild_tensor_v2(storage "0" (f32), offset, shape, stride, False, ()))`.
pub fn state_dict_pickle(offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    string(&mut p, "w");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    string(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    string(&mut p, "0");
    string(&mut p, "cpu");
    p.extend_from_slice(b"K\x06tQ");
    int(&mut p, offset);
    p.push(b'(');
    shape.iter().for_each(|&d| int(&mut p, d));
    p.extend_from_slice(b"t(");
    stride.iter().for_each(|&s| int(&mut p, s));
    p.extend_from_slice(b"t\x89)tRu.");
    p
}

/// `[[[…]]]` `depth` deep.
pub fn deep_lists(depth: usize) -> Vec<u8> {
    let mut p = b"](".repeat(depth);
    p.extend(std::iter::repeat_n(b'e', depth));
    p.push(b'.');
    p
}

/// A list holding the memoized previous list twice, `rounds` times: 2^rounds lists if memo
/// entries were copied.
pub fn memo_bomb(rounds: usize) -> Vec<u8> {
    let mut p = vec![b']', b'q', 0];
    for _ in 0..rounds {
        p.extend_from_slice(&[b']', b'(', b'h', 0, b'h', 0, b'e', b'q', 0]);
    }
    p.push(b'.');
    p
}

fn safetensors_with_header(header_len: u64, header: &[u8]) -> Vec<u8> {
    let len = if header_len == 0 { header.len() as u64 } else { header_len };
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&[0u8; 16]);
    out
}

fn nested_json(depth: usize) -> Vec<u8> {
    let mut out = "[".repeat(depth);
    out.push_str(&"]".repeat(depth));
    out.into_bytes()
}

/// A well-formed tokenized cache of three examples (token ids below 608), as `cache` writes it.
pub fn valid_cache() -> Vec<u8> {
    let examples: [&[u32]; 3] = [&[5, 6, 7], &[8, 9], &[10, 11, 12, 13]];
    let mut tokens = Vec::new();
    let mut index = Vec::new();
    let mut offset = 0u64;
    for ids in examples {
        tokens.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        index.extend_from_slice(&1u32.to_le_bytes());
        index.push(0);
        offset += ids.len() as u64;
    }
    let index_at = tokens.len() as u64;
    let mut out = tokens;
    out.extend(index);
    out.extend_from_slice(&(examples.len() as u64).to_le_bytes());
    out.extend_from_slice(&index_at.to_le_bytes());
    out.extend_from_slice(b"EMBTOK01");
    out
}

fn damaged_cache(damage: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut cache = valid_cache();
    damage(&mut cache);
    cache
}
