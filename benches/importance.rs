//! Seconds spent scoring, allocating and sampling, on OPT-125M-sized linears
//! (CPU): every importance metric on fc1 (768 → 3072) and fc2 (3072 → 768)
//! with a 4096-token reservoir; the reservoir fed 128 sequences × 2048 tokens;
//! budget allocation and exact k-means over Vicuna-13B's 1,781,760 channels.
//!
//! `cargo bench --bench importance`.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use sparselab::compress::allocation::DEFAULT_TIERS;
use sparselab::compress::{
    allocate_bits, group_channels, score_importance, ActivationReservoir, AllocMethod,
    AllocOptions, GroupMethod, HessianAccumulator, ImportanceOptions, Metric,
    DEFAULT_RESERVOIR_CAPACITY,
};

fn main() -> Result<()> {
    let dev = Device::Cpu;
    println!("threads: {}", rayon::current_num_threads());

    // Reservoir throughput: 16 batches of 8 × 2048 tokens, 768 wide.
    let mut res = ActivationReservoir::new(DEFAULT_RESERVOIR_CAPACITY, 768, 0)?;
    let batch = Tensor::randn(0f32, 1.0, (8, 2048, 768), &dev)?;
    let start = Instant::now();
    for _ in 0..16 {
        res.add_batch(&batch)?;
    }
    println!(
        "reservoir: 128 × 2048 tokens (768 wide) in {:.3} s",
        start.elapsed().as_secs_f64()
    );

    for (name, out, inp) in [("fc1", 3072, 768), ("fc2", 768, 3072)] {
        // Inputs with unequal column scales and a few heavy tails.
        let scale = Tensor::randn(0f32, 1.0, (1, inp), &dev)?.exp()?;
        let x = Tensor::randn(0f32, 1.0, (2, 2048, inp), &dev)?.broadcast_mul(&scale)?;
        let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
        let mut acc = HessianAccumulator::new(inp, &dev)?;
        let mut res = ActivationReservoir::new(DEFAULT_RESERVOIR_CAPACITY, inp, 0)?;
        acc.add_batch(&x)?;
        res.add_batch(&x)?;
        let r = res.samples()?;
        let opts = ImportanceOptions::default();
        for m in Metric::ALL {
            let start = Instant::now();
            let s = score_importance(m.name(), &w, &acc, Some(&r), &opts)?;
            println!(
                "{name} [{out}, {inp}] {:<10} {:.3} s ({} scores)",
                m.name(),
                start.elapsed().as_secs_f64(),
                s.len()
            );
        }
    }

    let n = 1_781_760;
    let s: Vec<f32> = Tensor::randn(0f32, 0.7, n, &dev)?.exp()?.to_vec1()?;
    let start = Instant::now();
    let bits = allocate_bits(
        &s,
        &AllocOptions {
            tiers: DEFAULT_TIERS.to_vec(),
            method: AllocMethod::Budget { target_avg: 4.0 },
        },
    )?;
    println!(
        "budget 4.0 over {n} channels: {:.3} s (avg {:.6})",
        start.elapsed().as_secs_f64(),
        bits.iter().map(|&b| b as f64).sum::<f64>() / n as f64
    );
    let start = Instant::now();
    group_channels(&s, 5, GroupMethod::KMeans)?;
    println!(
        "k-means into 5 groups over {n} channels: {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
