//! QLoRA against bitsandbytes (tests/fixtures/quant, made by make_fixtures.py with bitsandbytes
//! 0.50): quantization byte for byte, dequantization bit for bit, for NF4 and FP4 with and
//! without double quantization, on shapes whose sizes are and are not multiples of a block.

use ember_core::quant::{Absmax, QuantType, Quantized};
use ember_tests::{fixtures, Golden};

const SHAPES: [(&str, [usize; 2]); 4] =
    [("even", [192, 64]), ("odd", [37, 53]), ("row", [5, 300]), ("wide", [300, 64])];
const CONFIGS: [(&str, QuantType, bool); 4] = [
    ("nf4", QuantType::Nf4, false),
    ("nf4-dq", QuantType::Nf4, true),
    ("fp4", QuantType::Fp4, false),
    ("fp4-dq", QuantType::Fp4, true),
];

fn golden() -> Golden {
    Golden::open(&fixtures().join("quant/quantize.safetensors"))
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn bytes(golden: &Golden, name: &str) -> Vec<u8> {
    golden.get(name).1.iter().map(|&v| v as u8).collect()
}

#[test]
fn quantization_equals_bitsandbytes_byte_for_byte_and_bit_for_bit() {
    let g = golden();
    for (shape_name, shape) in SHAPES {
        let input = g.f32s(&format!("{shape_name}.input"));
        for (cfg, quant_type, double) in CONFIGS {
            let what = format!("{shape_name} {cfg}");
            let p = format!("{shape_name}.{cfg}");
            let q = Quantized::quantize(&input, shape, quant_type, double);
            assert_eq!(q.packed, bytes(&g, &format!("{p}.packed")), "{what}: packed codes");
            match &q.absmax {
                Absmax::Plain(absmax) => {
                    assert_eq!(bits(absmax), bits(&g.f32s(&format!("{p}.absmax"))), "{what}: absmax")
                }
                Absmax::Nested { codes, nested, offset, .. } => {
                    assert_eq!(
                        offset.to_bits(),
                        g.f32s(&format!("{p}.offset"))[0].to_bits(),
                        "{what}: offset (the absmax mean)"
                    );
                    let want = bytes(&g, &format!("{p}.absmax"));
                    let diff: Vec<(usize, u8, u8)> = codes
                        .iter()
                        .zip(&want)
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .map(|(i, (a, b))| (i, *a, *b))
                        .collect();
                    assert!(diff.is_empty(), "{what}: nested codes differ at (index, ours, bnb): {diff:?}");
                    assert_eq!(bits(nested), bits(&g.f32s(&format!("{p}.nested_absmax"))), "{what}: nested absmax");
                }
            }
            // bitsandbytes' kernels disagree on the sign of FP4's zero (+0 in its vectorized
            // path, -0 in its scalar one, used for rows not a multiple of 16 long); adding +0
            // makes both +0 and changes nothing else.
            let unsigned_zero = |v: Vec<f32>| v.into_iter().map(|x| x + 0.0).collect::<Vec<f32>>();
            let (ours, theirs) = (unsigned_zero(q.dequantize()), unsigned_zero(g.f32s(&format!("{p}.dequantized"))));
            let diff: Vec<(usize, f32, f32)> = ours
                .iter()
                .zip(&theirs)
                .enumerate()
                .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
                .map(|(i, (a, b))| (i, *a, *b))
                .take(8)
                .collect();
            assert!(
                ours.len() == theirs.len() && diff.is_empty(),
                "{what}: dequantized values differ at (index, ours, bnb): {diff:?}"
            );
        }
    }
}

#[test]
fn the_codes_are_bitsandbytes_tables() {
    let g = golden();
    for (name, quant_type) in [("nf4", QuantType::Nf4), ("fp4", QuantType::Fp4)] {
        assert_eq!(bits(&ember_core::quant::bnb::code(quant_type)), bits(&g.f32s(&format!("code.{name}"))), "{name}");
    }
    assert_eq!(bits(&ember_core::quant::bnb::DYNAMIC_MAP), bits(&g.f32s("nested_code")));
}
