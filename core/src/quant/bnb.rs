//! bitsandbytes' 4-bit quantization, exactly as bitsandbytes 0.50 does it on the CPU, so that a
//! model quantized here has bitsandbytes' bytes and dequantizes to bitsandbytes' values bit for
//! bit (`tests/fixtures/quant/quantize.safetensors` holds bitsandbytes' own outputs):
//!
//! - the weight, flattened row-major, is cut into blocks of [`BLOCKSIZE`] values; each block is
//!   divided by its absolute maximum and every value replaced by the nearest of 16 codes (NF4 or
//!   FP4, bitsandbytes' tables), two codes per byte, the first in the high nibble;
//! - with double quantization the blocks' absmax values are themselves quantized: their mean
//!   (the "offset", summed as PyTorch sums on the CPU) is subtracted, and they are cut into blocks
//!   of [`NESTED_BLOCKSIZE`] quantized to 8-bit codes of bitsandbytes' dynamic map, as its C++
//!   CPU quantizer does (through a 65 536-point lookup table, not an exact nearest search);
//! - dequantizing multiplies a code by its block's absmax in f32 (the nested absmax first
//!   becoming `code · nested_absmax + offset`), as bitsandbytes does.

/// Values per block of the 4-bit codes (bitsandbytes' and transformers' default).
pub const BLOCKSIZE: usize = 64;
/// Absmax values per block of the nested (double) quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// NormalFloat4: the 16 quantiles of a normal distribution (QLoRA's data type).
    Nf4,
    /// A 4-bit float (1 sign, 2 exponent, 1 mantissa bit); transformers' default.
    Fp4,
}

impl std::str::FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            _ => Err(format!("unknown 4-bit type `{s}`: use nf4 or fp4")),
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        })
    }
}

/// NF4's 16 values (bitsandbytes' `get_4bit_type("nf4")`), as f32.
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4's 16 values before bitsandbytes divides them by their largest magnitude (12), in its
/// bit-pattern order: sign, then `0b000 = 0`, `0b001 = 0.0625` (subnormal), `8, 12, 4, 6, 2, 3`.
/// The negative zero is +0: bitsandbytes writes it as the Python integer `-0`, and its
/// vectorized CPU kernel decodes it so (its scalar one, for rows not a multiple of 16 long,
/// gives -0: a sign no sum sees).
const FP4_RAW: [f32; 16] =
    [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0];

/// The 16 values a 4-bit code stands for (bitsandbytes' `quant_map`), indexed by the code.
pub fn code(quant_type: QuantType) -> [f32; 16] {
    match quant_type {
        QuantType::Nf4 => NF4,
        QuantType::Fp4 => FP4_RAW.map(|v| v / 12.0),
    }
}

/// bitsandbytes' quantizer compares against the midpoints of the codes sorted by value (and
/// maps the sorted position back to the code): `(code[order[i]] + code[order[i+1]]) / 2`.
fn sorted_bounds(code: &[f32; 16]) -> ([f32; 15], [u8; 16]) {
    let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
    // Equal values (FP4's +0 and -0) keep their index order, as PyTorch's argsort leaves them.
    order.sort_by(|&a, &b| code[a as usize].partial_cmp(&code[b as usize]).expect("finite codes").then(a.cmp(&b)));
    let bounds = std::array::from_fn(|i| (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0);
    (bounds, order)
}

/// 4-bit codes (two per byte, the first in the high nibble) and one absmax per block of
/// `values`, as `bitsandbytes.functional.quantize_4bit` (its CPU kernel) computes them.
pub fn quantize_4bit(values: &[f32], quant_type: QuantType) -> (Vec<u8>, Vec<f32>) {
    let code = code(quant_type);
    let (bounds, order) = sorted_bounds(&code);
    let mut absmax = Vec::with_capacity(values.len().div_ceil(BLOCKSIZE));
    let mut codes = Vec::with_capacity(values.len() + 1);
    for block in values.chunks(BLOCKSIZE) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(max);
        let clamped = max.max(1e-38);
        // Full blocks are scaled by the reciprocal, a short last block is divided (as bnb does).
        let scale = |v: f32| if block.len() == BLOCKSIZE { v * (1.0 / clamped) } else { v / clamped };
        for &v in block {
            codes.push(bucket(scale(v).clamp(-1.0, 1.0), &bounds, &order, quant_type));
        }
    }
    if codes.len() % 2 == 1 {
        codes.push(bucket(0.0, &bounds, &order, quant_type)); // bnb pads with a scaled 0
    }
    let packed = codes.chunks_exact(2).map(|pair| (pair[0] << 4) | pair[1]).collect();
    (packed, absmax)
}

/// `torch.bucketize(x, bounds)` (the number of bounds below `x`), mapped back to the code.
fn bucket(x: f32, bounds: &[f32; 15], order: &[u8; 16], quant_type: QuantType) -> u8 {
    let position = bounds.iter().take_while(|&&b| b < x).count();
    match quant_type {
        QuantType::Nf4 => position as u8, // NF4's codes are in value order already
        QuantType::Fp4 => order[position],
    }
}

/// The 4-bit code of element `i` in packed bytes.
pub fn nibble(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// `n` values back from packed codes and one absmax per block, as bitsandbytes' CPU
/// `dequantize_4bit` computes them (`code · absmax` in f32).
pub fn dequantize_4bit(packed: &[u8], absmax: &[f32], code: &[f32; 16], n: usize) -> Vec<f32> {
    (0..n).map(|i| code[nibble(packed, i) as usize] * absmax[i / BLOCKSIZE]).collect()
}

/// The sum of `values` as PyTorch's CPU `sum` computes it for a contiguous f32 tensor on one
/// thread on x86 (aten's `cascade_sum`: 8-lane vectors summed four rows at a time in a cascade
/// of levels, the tail added one by one, then the lanes; x86 builds run their AVX2 kernel for
/// `sum` even on AVX-512 machines), so that the mean bitsandbytes subtracts before double
/// quantization is the same f32 here.
pub fn torch_sum(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    if values.len() < LANES {
        return row_sum::<1>(values.len(), |i| [values[i]])[0];
    }
    let vectors = values.len() / LANES;
    let lanes = row_sum::<LANES>(vectors, |i| std::array::from_fn(|l| values[i * LANES + l]));
    let mut total = 0.0f32;
    for &v in &values[vectors * LANES..] {
        total += v;
    }
    for lane in lanes {
        total += lane;
    }
    total
}

/// aten's `row_sum`: `size` elements (each `W` lanes wide) summed as four interleaved rows by
/// `multi_row_sum`, the leftover elements added to the first, then the four rows combined.
fn row_sum<const W: usize>(size: usize, load: impl Fn(usize) -> [f32; W]) -> [f32; W] {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum::<W, ILP>(rows, |i, k| load(i * ILP + k));
    for i in rows * ILP..size {
        add(&mut partial[0], &load(i));
    }
    let mut out = partial[0];
    for row in &partial[1..] {
        add(&mut out, row);
    }
    out
}

/// aten's `multi_row_sum`: `NROWS` running sums over `size` steps, in a cascade of four levels
/// so that only sums of similar size are added together.
fn multi_row_sum<const W: usize, const NROWS: usize>(
    size: usize,
    load: impl Fn(usize, usize) -> [f32; W],
) -> [[f32; W]; NROWS] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 1 { 0 } else { usize::BITS - (size - 1).leading_zeros() } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; W]; NROWS]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, row) in acc[0].iter_mut().enumerate() {
                add(row, &load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (below, above) in lower[j - 1].iter_mut().zip(upper[0].iter_mut()) {
                add(above, below);
                *below = [0.0; W];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, row) in acc[0].iter_mut().enumerate() {
            add(row, &load(i, k));
        }
        i += 1;
    }
    let mut out = acc[0];
    for level in &acc[1..] {
        for (o, l) in out.iter_mut().zip(level) {
            add(o, l);
        }
    }
    out
}

fn add<const W: usize>(a: &mut [f32; W], b: &[f32; W]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// 8-bit codes and one absmax per block of `values`, as bitsandbytes' C++ CPU quantizer
/// (`quantize_cpu`) computes them. It does not search the code per value: it maps
/// `v / absmax` in [-1, 1] to one of 65 536 evenly spaced points and reads that point's code
/// from a table built once from the code's midpoints. A value very near a midpoint can so get
/// the neighbouring code; matching bitsandbytes bit for bit means doing the same.
pub fn quantize_blockwise(values: &[f32], code: &[f32; 256], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let table = lookup_table(code);
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(max);
        if max == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / max;
        for &v in block {
            let unit = (v * inv).clamp(-1.0, 1.0);
            // The same f32 steps as the C++ (its FMA-free scalar and AVX2 paths agree).
            let point = ((unit + 1.0) * 0.5 * LOOKUP_LAST + 0.5) as u16;
            codes.push(table[point as usize]);
        }
    }
    (codes, absmax)
}

/// `LOOKUP_POINTS - 1`, the scale from [0, 1] to a lookup point.
const LOOKUP_LAST: f32 = 65535.0;
const LOOKUP_POINTS: usize = 65536;

/// bitsandbytes' `build_quantize_lut`: for each of the evenly spaced points of [-1, 1], the
/// first code whose midpoint with the next code is not below it.
fn lookup_table(code: &[f32; 256]) -> Vec<u8> {
    let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut index = 0usize;
    (0..LOOKUP_POINTS)
        .map(|i| {
            let point = -1.0 + (2.0 * i as f32) / LOOKUP_LAST;
            while index < midpoints.len() && midpoints[index] < point {
                index += 1;
            }
            index as u8
        })
        .collect()
}

/// The values of 8-bit `codes` with one absmax per block (`code · absmax` in f32).
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], code: &[f32; 256], blocksize: usize) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &c)| code[c as usize] * absmax[i / blocksize]).collect()
}

/// A block's absmax values: as they are, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    Plain(Vec<f32>),
    /// `value = nested_code[codes[i]] · nested[i / 256] + offset`.
    Nested {
        codes: Vec<u8>,
        nested: Vec<f32>,
        offset: f32,
        nested_code: Box<[f32; 256]>,
    },
}

impl Absmax {
    /// The absmax values in f32, as bitsandbytes gets them back before dequantizing.
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Nested { codes, nested, offset, nested_code } => {
                dequantize_blockwise(codes, nested, nested_code, NESTED_BLOCKSIZE)
                    .into_iter()
                    .map(|v| v + offset)
                    .collect()
            }
        }
    }

    /// Bytes it takes.
    pub fn bytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Nested { codes, nested, .. } => codes.len() + 4 * nested.len() + 4 + 4 * 256,
        }
    }
}

/// A weight matrix in bitsandbytes' 4-bit format, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    pub quant_type: QuantType,
    /// Two 4-bit codes per byte, row-major over the whole matrix.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl Quantized {
    /// `values` (row-major, `shape`) quantized as `bitsandbytes.functional.quantize_4bit` does,
    /// with `compress_statistics` = `double_quant`.
    pub fn quantize(values: &[f32], shape: [usize; 2], quant_type: QuantType, double_quant: bool) -> Self {
        let (packed, absmax) = quantize_4bit(values, quant_type);
        let absmax = if double_quant { nested(&absmax) } else { Absmax::Plain(absmax) };
        Quantized { shape, quant_type, packed, absmax }
    }

    /// The weight back in f32, as `dequantize_4bit` gives it.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_4bit(&self.packed, &self.absmax.values(), &code(self.quant_type), self.shape[0] * self.shape[1])
    }

    /// Bytes it takes.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }
}

/// Double quantization of absmax values, as `quantize_4bit(compress_statistics=True)`.
fn nested(absmax: &[f32]) -> Absmax {
    let offset = torch_sum(absmax) / absmax.len() as f32;
    let centred: Vec<f32> = absmax.iter().map(|v| v - offset).collect();
    let nested_code = Box::new(DYNAMIC_MAP);
    let (codes, nested) = quantize_blockwise(&centred, &nested_code, NESTED_BLOCKSIZE);
    Absmax::Nested { codes, nested, offset, nested_code }
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`), as the f32 bit patterns
/// bitsandbytes 0.50 produces and saves.
pub const DYNAMIC_MAP: [f32; 256] = dynamic_map();

const fn dynamic_map() -> [f32; 256] {
    let mut out = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = f32::from_bits(DYNAMIC_MAP_BITS[i]);
        i += 1;
    }
    out
}

/// bitsandbytes' map as it saves it (`nested_quant_map`; tests/fixtures/quant/quantize.safetensors).
#[rustfmt::skip]
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];
