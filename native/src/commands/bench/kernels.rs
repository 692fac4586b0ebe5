//! `ember bench kernels`: each fused kernel (shaders/) against the plain burn computation it
//! replaces, forward and backward on random inputs of a model shape: the time of both passes,
//! and the memory the forward pass leaves allocated for the backward one (its saved
//! activations and its output), which is what a training step's peak is made of. The last row
//! is QLoRA's 4-bit matmul against a dense one (`fused` there means 4-bit).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use ember_core::checkpoint::random_model;
use ember_core::loss::shifted_cross_entropy_sum;
use ember_core::model::{AttentionBias, AttentionMask, WeightDType};
use ember_core::quant::{QuantType, Quantized, QuantizedWeight};
use ember_core::BloomConfig;
use ember_shaders::Kernels;

use super::{median, shape};
use crate::device::{self, Placement};

#[derive(clap::Args)]
pub struct Args {
    /// The model shape whose sizes the inputs take: bloom-560m, bloom-1b4, tiny, or a config.json.
    #[arg(long, default_value = "bloom-1b4")]
    shape: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed runs of each (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    placement: Placement,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

/// One measured variant.
struct Run {
    kernel: &'static str,
    fused: bool,
    seconds: f64,
    kept_mb: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = shape(&args.shape)?;
    let selected = args.placement.select()?;
    let device = device::training_device(&selected.device);
    let tokens = args.batch * args.seq;
    eprintln!(
        "device: {}\nshape: {} (hidden {}, vocabulary {}), batch {} x {} tokens, head weights {}",
        selected.description,
        args.shape,
        config.hidden_size,
        config.vocab_size,
        args.batch,
        args.seq,
        args.placement.dtype
    );
    let mut runs = Vec::new();
    let x = Tensor::<2>::random([tokens, 4 * config.hidden_size], Distribution::Normal(0.0, 1.0), &device);
    for fused in [false, true] {
        device::doing(format!("benchmarking the GELU ({}) on {}", variant(fused), selected.description));
        runs.push(measure("gelu", fused, args.repeats, &device, || {
            let x = x.clone().require_grad();
            let y = kernels(fused).gelu(x);
            y.sum()
        })?);
    }
    drop(x);
    let x = Tensor::<2>::random([tokens, config.hidden_size], Distribution::Normal(0.0, 1.0), &device);
    let (gamma, beta) =
        (Tensor::<1>::ones([config.hidden_size], &device), Tensor::<1>::zeros([config.hidden_size], &device));
    for fused in [false, true] {
        device::doing(format!("benchmarking the layer norm ({}) on {}", variant(fused), selected.description));
        runs.push(measure("layer-norm", fused, args.repeats, &device, || {
            let (x, gamma, beta) = (x.clone().require_grad(), gamma.clone(), beta.clone());
            let y = kernels(fused).layer_norm(x, gamma, beta, 1e-5);
            y.sum()
        })?);
    }
    drop(x);
    let mut head =
        random_model(&BloomConfig { n_layer: 0, ..config.clone() }, &device, 0, &args.placement.load_options()?);
    let hidden =
        Tensor::<3>::random([args.batch, args.seq, config.hidden_size], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<Vec<i64>> = (0..args.batch)
        .map(|b| (0..args.seq).map(|i| ((b * 131 + i) * 7919 % config.vocab_size) as i64).collect())
        .collect();
    for fused in [false, true] {
        device::doing(format!("benchmarking the cross-entropy ({}) on {}", variant(fused), selected.description));
        head.kernels = kernels(fused);
        let head = &head;
        runs.push(measure("cross-entropy", fused, args.repeats, &device, || {
            shifted_cross_entropy_sum(head, hidden.clone().require_grad(), &labels, &device).0
        })?);
    }
    drop((head, hidden));
    let (heads, head_dim) = (config.n_head, config.hidden_size / config.n_head);
    let bias = AttentionBias::new(&AttentionMask::full(args.batch, args.seq), heads, args.seq, &device);
    let qkv: Vec<Tensor<4>> = (0..3)
        .map(|_| Tensor::random([args.batch, heads, args.seq, head_dim], Distribution::Normal(0.0, 1.0), &device))
        .collect();
    for fused in [false, true] {
        device::doing(format!("benchmarking the attention ({}) on {}", variant(fused), selected.description));
        runs.push(measure("attention", fused, args.repeats, &device, || {
            let [q, k, v] = [0, 1, 2].map(|i| qkv[i].clone().require_grad());
            let (alibi, mask) = (bias.alibi.clone(), bias.mask.clone());
            let y = kernels(fused).attention(q, k, v, alibi, mask);
            y.sum()
        })?);
    }
    drop((qkv, bias));
    // A block's four Linear layers (query_key_value, dense, dense_h_to_4h, dense_4h_to_h) as
    // matmuls of the input with a dense f32 weight ("plain") or an nf4 one ("fused": dequantized
    // into a transient forward and again backward); the difference is what QLoRA's
    // dequantization costs per block and pass.
    let h = config.hidden_size;
    let shapes = [[3 * h, h], [h, h], [4 * h, h], [h, 4 * h]];
    let dense: Vec<Tensor<2>> =
        shapes.iter().map(|&s| Tensor::random(s, Distribution::Normal(0.0, 0.02), &device)).collect();
    let four_bit = dense
        .iter()
        .zip(shapes)
        .map(|(w, shape)| {
            let values = w.to_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let q = Quantized::quantize(&values, shape, QuantType::Nf4, false);
            Ok(QuantizedWeight::upload(&q, WeightDType::F32, &device))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inputs: Vec<Tensor<2>> =
        shapes.iter().map(|s| Tensor::random([tokens, s[1]], Distribution::Normal(0.0, 1.0), &device)).collect();
    for fused in [false, true] {
        device::doing(format!(
            "benchmarking a block's Linear layers ({}) on {}",
            if fused { "nf4" } else { "f32" },
            selected.description
        ));
        runs.push(measure("linear-4bit", fused, args.repeats, &device, || {
            let outs = inputs.iter().enumerate().map(|(i, x)| {
                let x = x.clone().require_grad();
                let y = if fused { four_bit[i].forward(x) } else { x.matmul(dense[i].clone().transpose()) };
                y.sum()
            });
            outs.reduce(|a, b| a + b).expect("four layers")
        })?);
    }
    print_runs(&runs);
    if args.json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| serde_json::json!({ "kernel": r.kernel, "fused": r.fused, "forward_backward_s": r.seconds, "kept_for_backward_mb": r.kept_mb }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "shape": args.shape, "batch": args.batch, "seq": args.seq, "dtype": args.placement.dtype.to_string(),
                                "device": selected.description, "runs": rows })
        );
    }
    Ok(())
}

/// Every kernel fused, or none (each measurement exercises one of them).
fn kernels(fused: bool) -> Kernels {
    if fused {
        Kernels::ALL
    } else {
        Kernels::NONE
    }
}

fn variant(fused: bool) -> &'static str {
    if fused {
        "fused"
    } else {
        "plain"
    }
}

/// Median time of forward + backward of `forward` (which returns the value to differentiate),
/// and the memory in use after the forward pass beyond what was in use before it.
fn measure(
    kernel: &'static str,
    fused: bool,
    repeats: usize,
    device: &Device,
    forward: impl Fn() -> Tensor<1>,
) -> anyhow::Result<Run> {
    let sync = || device.sync().map_err(|e| ember_core::error::device_failure(kernel, &format!("{e:?}")));
    let mut times = Vec::new();
    let mut kept = Vec::new();
    for run in 0..=repeats {
        sync()?;
        let before = in_use_mb(device);
        let start = Instant::now();
        let out = forward();
        sync()?;
        let after = in_use_mb(device);
        let grads = out.backward();
        sync()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(grads);
        if run > 0 {
            times.push(seconds);
            kept.push(after - before);
        }
    }
    Ok(Run { kernel, fused, seconds: median(&mut times), kept_mb: median(&mut kept) })
}

/// Memory allocated now, in MiB: the device pool's bytes in use on a GPU, the process heap's
/// bytes in use (glibc's `mallinfo2`) on the CPU; NaN where neither is available.
fn in_use_mb(device: &Device) -> f64 {
    if let Some(usage) = device.memory_pool_usage() {
        return usage.bytes_in_use as f64 / 1048576.0;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as f64 / 1048576.0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    f64::NAN
}

fn print_runs(runs: &[Run]) {
    println!("{:<14} {:<6} {:>18} {:>22}", "kernel", "path", "fwd+bwd (ms)", "kept for backward (MiB)");
    for r in runs {
        println!("{:<14} {:<6} {:>18.1} {:>22.1}", r.kernel, variant(r.fused), r.seconds * 1e3, r.kept_mb);
    }
    for pair in runs.chunks(2) {
        if let [plain, fused] = pair {
            println!(
                "{}: {:.2}x faster, {:.1} MiB less kept ({:.2}x)",
                plain.kernel,
                plain.seconds / fused.seconds,
                plain.kept_mb - fused.kept_mb,
                fused.kept_mb / plain.kept_mb
            );
        }
    }
}
