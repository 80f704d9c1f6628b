//! Seconds spent by the compression core on OPT-125M-sized linears (CPU):
//! Hessian accumulation over 128 sequences × 2048 tokens of random inputs, then
//! the OBS sweep at 50%, 50% + 4-bit, 2:4 and GPTQ 4-bit.
//!
//! `cargo bench --bench sparsegpt`; `SPARSELAB_BENCH_SEQS=16` shortens the
//! accumulation (its time scales linearly with the sequence count).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use sparselab::compress::{
    fasterprune, BitWidths, HessianAccumulator, QuantOptions, SparseGptOptions, SparsityPattern,
};

const SEQLEN: usize = 2048;
const BATCH: usize = 8;

fn main() -> Result<()> {
    let nseq: usize = std::env::var("SPARSELAB_BENCH_SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let dev = Device::Cpu;
    println!(
        "threads: {}, Hessian over {nseq} × {SEQLEN} tokens in batches of {BATCH}",
        rayon::current_num_threads()
    );
    let half = SparsityPattern::Unstructured { sparsity: 0.5 };
    let q4 = QuantOptions {
        bits: BitWidths::Uniform(4),
        ..Default::default()
    };
    let cases: [(&str, SparseGptOptions); 4] = [
        (
            "50%",
            SparseGptOptions {
                pattern: half,
                ..Default::default()
            },
        ),
        (
            "50% + 4-bit",
            SparseGptOptions {
                pattern: half,
                quant: Some(q4.clone()),
                ..Default::default()
            },
        ),
        (
            "2:4",
            SparseGptOptions {
                pattern: SparsityPattern::NM { n: 2, m: 4 },
                ..Default::default()
            },
        ),
        (
            "gptq 4-bit",
            SparseGptOptions {
                quant: Some(q4),
                ..Default::default()
            },
        ),
    ];

    let mut hessians: Vec<(usize, Tensor)> = Vec::new();
    for (rows, cols) in [(768, 768), (3072, 768), (768, 3072)] {
        let h = match hessians.iter().find(|(c, _)| *c == cols) {
            Some((_, h)) => {
                println!("{rows}×{cols}: Hessian of width {cols} as above");
                h.clone()
            }
            None => {
                // One random batch, fed repeatedly: the cost is the GEMM, not the data.
                let x = Tensor::randn(0f32, 1.0, (BATCH, SEQLEN, cols), &dev)?;
                let mut acc = HessianAccumulator::new(cols, &dev)?;
                let t = Instant::now();
                for _ in 0..nseq / BATCH {
                    acc.add_batch(&x)?;
                }
                let s = t.elapsed().as_secs_f64();
                let flop = 2.0 * (nseq * SEQLEN) as f64 * (cols * cols) as f64;
                println!(
                    "{rows}×{cols}: Hessian accumulation {s:.2} s ({:.0} GFLOP/s)",
                    flop / s / 1e9
                );
                hessians.push((cols, acc.hessian().clone()));
                acc.hessian().clone()
            }
        };
        let w = Tensor::randn(0f32, 0.02, (rows, cols), &dev)?;
        for (name, opts) in &cases {
            let t = Instant::now();
            let r = fasterprune(&w, &h, opts)?;
            println!(
                "{rows}×{cols}: fasterprune {name:<12} {:.3} s (loss {:.3e})",
                t.elapsed().as_secs_f64(),
                r.stats.loss.unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
