//! The CPU matmul's f32 rate on this machine for the training shapes of issue #19
//! (`bench/shapes/matmuls.txt`), through the path the linear layers take
//! ([`ember_shaders::autocast_matmul`] on burn's flex backend): medians of 9 products, beside
//! `bench/torch_matmul.py`'s PyTorch figures in docs/PERFORMANCE.md.
//!
//! ```sh
//! cargo run --release --locked -p ember-shaders --example matmul_rate
//! ```

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

const SHAPES: &str = include_str!("../../bench/shapes/matmuls.txt");

fn main() {
    let device = Device::flex();
    for line in SHAPES.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [m, k, n]: [usize; 3] = [f[1], f[2], f[3]].map(|v| v.parse().expect("a size"));
        let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let b = if f[4] == "1" {
            Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).transpose()
        } else {
            Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device)
        };
        let mut times: Vec<f64> = (0..9)
            .map(|_| {
                let start = Instant::now();
                let product = ember_shaders::autocast_matmul(a.clone(), b.clone());
                drop(product.into_data()); // the flex backend runs eagerly; this only waits
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        let gflops = 2.0 * (m * n * k) as f64 / t / 1e9;
        println!("{:<32} [{m} x {k}] x [{k} x {n}]  {:6.1} ms  {gflops:5.0} GFLOP/s", f[0], t * 1e3);
    }
}
