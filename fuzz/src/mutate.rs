//! A small mutational fuzzer on stable Rust: random edits of valid files (bit flips, boundary
//! integers written over length and offset fields, chunks cut, repeated or spliced in from
//! another seed, syntax dropped into text), deterministic for a given seed so a failure can be
//! replayed. It has no coverage feedback: `fuzz/libfuzzer.sh` is the coverage-guided run.

/// A xorshift generator: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Integers that sit on the edges parsers get wrong.
const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 62, i64::MAX as u64, u64::MAX];

/// Fragments that change the meaning of text formats.
const SYNTAX: [&[u8]; 14] =
    [b"\"", b"{", b"}", b"[", b"]", b",", b":", b"\n", b"\\u0000", b"1e999", b"-1", b"null", b"\xff\xfe", b"[[[[[[[["];

/// Inputs are kept under this size, so a run spends its time on many inputs, not on huge ones.
pub const MAX_INPUT: usize = 1 << 20;

/// One to four random edits of `input`, with `other` as material to splice from.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        edit(rng, &mut out, other);
    }
    out.truncate(MAX_INPUT);
    out
}

fn edit(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8]) {
    let len = out.len();
    let at = rng.below(len + 1);
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            out[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            out[i] = INTERESTING[rng.below(6)] as u8;
        }
        2 => {
            // A little-endian integer of 2, 4 or 8 bytes over whatever is there.
            let width = [2, 4, 8][rng.below(3)];
            let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let end = (at + width).min(len);
            out.splice(at..end, value[..width].iter().copied());
        }
        3 if len > 0 => {
            let end = (at + 1 + rng.below(64)).min(len);
            out.drain(at.min(len)..end);
        }
        4 if len > 0 => {
            // Repeat a chunk: lengths and counts that no longer match.
            let start = rng.below(len);
            let end = (start + 1 + rng.below(256)).min(len);
            let chunk = out[start..end].to_vec();
            for _ in 0..1 + rng.below(8) {
                out.splice(at..at, chunk.iter().copied());
            }
        }
        5 if !other.is_empty() => {
            let start = rng.below(other.len());
            let end = (start + 1 + rng.below(512)).min(other.len());
            out.splice(at..at, other[start..end].iter().copied());
        }
        6 => {
            let fragment = SYNTAX[rng.below(SYNTAX.len())];
            out.splice(at..at, fragment.iter().copied());
        }
        7 => out.truncate(at),
        _ => {
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            out.splice(at..at, bytes);
        }
    }
}
