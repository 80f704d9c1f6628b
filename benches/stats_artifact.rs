//! Size and speed of the calibration statistics artifact
//! (docs/stats-format.md) for one 13B-shaped decoder layer: hidden 5120, MLP
//! 13824, so four distinct inputs — q/k/v share one 5120-wide input, o_proj
//! reads its own 5120, gate/up share 5120, down_proj reads 13824 — each with
//! its Hessian (lower triangle, packed) and a 4096-row activation reservoir,
//! without the layer inputs (as a `sequential: false` calibration writes it).
//!
//! The statistics are synthetic (deterministic pseudo-random symmetric
//! Hessians and reservoir rows): size and speed do not depend on the values.
//! Each write is checked by reading the entry back and comparing every
//! Hessian bit for bit. Peak memory is about 2.5 GB (the four full f32
//! Hessians, 1.08 GB, and the reservoirs, 0.48 GB, plus one tensor's bytes).
//! The read follows the write, so it comes from the page cache: it times
//! decoding, not the disk.
//!
//! `cargo bench --bench stats_artifact`. Environment: `SPARSELAB_BENCH_DIR`
//! (where the entry is written; default the system temporary directory),
//! `SPARSELAB_BENCH_RESERVOIR` (reservoir rows, default 4096, the calibration
//! default).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use sparselab::calibrate::cache::{StatCache, StatsDType, StoreOptions};
use sparselab::compress::reservoir::ActivationReservoir;
use sparselab::compress::HessianAccumulator;
use sparselab::compute::kernels::{mirror_lower, with_cpu_f32};

/// The distinct inputs of a 13B (LLaMA/Vicuna) decoder layer: linears, columns.
const INPUTS: [(&[&str], usize); 4] = [
    (&["q_proj", "k_proj", "v_proj"], 5120),
    (&["o_proj"], 5120),
    (&["gate_proj", "up_proj"], 5120),
    (&["down_proj"], 13824),
];
const NSAMPLES: usize = 128;
const SEQLEN: usize = 2048;

/// A SplitMix64 value in [-1, 1).
fn unit(seed: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// A symmetric synthetic `n × n` Hessian (positive diagonal), built in place.
fn hessian(n: usize, seed: u64) -> Result<Tensor> {
    let mut h = vec![0f32; n * n];
    h.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, x) in row[..=i].iter_mut().enumerate() {
            *x = unit(seed ^ ((i * n + j) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        }
        row[i] = row[i].abs() + n as f32;
    });
    let t = Tensor::from_vec(h, (n, n), &Device::Cpu)?;
    mirror_lower(&t, 1.0)?;
    Ok(t)
}

fn fingerprint(t: &Tensor) -> Result<u64> {
    Ok(with_cpu_f32(t, |v| {
        let parts: Vec<u64> = v
            .par_chunks(1 << 16)
            .map(|chunk| {
                chunk.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
                    (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
                })
            })
            .collect();
        parts.iter().fold(0u64, |h, p| {
            (h.rotate_left(7) ^ p).wrapping_mul(0x100_0000_01b3)
        })
    })?)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let reservoir: usize = std::env::var("SPARSELAB_BENCH_RESERVOIR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let base = std::env::var_os("SPARSELAB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    println!(
        "statistics artifact of one 13B-shaped layer (hidden 5120, MLP 13824; inputs of \
         5120/5120/5120/13824 columns), {reservoir}-row reservoirs, no layer inputs; \
         SYNTHETIC Hessians and reservoirs (size and speed do not depend on the values); \
         {} threads; written to {}",
        rayon::current_num_threads(),
        tmp.path().display()
    );

    let t = Instant::now();
    let mut accs = Vec::new();
    let mut reservoirs = Vec::new();
    let mut owner = Vec::new();
    for (i, (linears, n)) in INPUTS.iter().enumerate() {
        let scale = Tensor::from_vec(
            (0..*n)
                .map(|j| unit(j as u64 + 7).abs())
                .collect::<Vec<f32>>(),
            *n,
            &Device::Cpu,
        )?;
        accs.push(HessianAccumulator::from_parts(
            hessian(*n, i as u64 + 1)?,
            scale,
            NSAMPLES,
        )?);
        let rows: Vec<f32> = (0..reservoir * n)
            .into_par_iter()
            .map(|k| unit(k as u64 ^ 0xABCD))
            .collect();
        reservoirs.push(ActivationReservoir::from_parts(
            reservoir,
            *n,
            rows,
            (NSAMPLES * SEQLEN) as u64,
            42,
        )?);
        owner.extend(linears.iter().map(|l| (l.to_string(), i)));
    }
    let want: Vec<u64> = accs
        .iter()
        .map(|a| fingerprint(a.hessian()))
        .collect::<Result<_>>()?;
    println!(
        "synthetic statistics built in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let run = serde_json::json!({
        "model": "synthetic-13b-layer", "dtype": "bf16", "dataset": "synthetic",
        "nsamples": NSAMPLES, "seqlen": SEQLEN, "reservoir": reservoir,
    });
    // Both entries are written first, then the statistics are dropped and the
    // entries read back, so that the originals and a read-back copy are never
    // held together.
    let variants = [
        ("f32", StatsDType::F32),
        ("model dtype (bf16)", StatsDType::Model),
    ];
    let mut written = Vec::new();
    for (label, dtype) in variants {
        let dir = tmp.path().join(format!("{dtype:?}"));
        let mut cache = StatCache::with_run(&dir, run.clone(), DType::BF16, false)?;
        cache.set_options(StoreOptions {
            dtype,
            inputs: None,
        })?;
        let key = cache.key(20, 1, 2);
        let t = Instant::now();
        let entry = cache.store(&key, &accs, &reservoirs, &owner, None)?;
        let write = t.elapsed().as_secs_f64();
        written.push((label, dtype, cache, key, dir_bytes(&entry), write));
    }
    drop((accs, reservoirs));
    for (label, dtype, cache, key, bytes, write) in written {
        let t = Instant::now();
        let back = cache
            .load(&key, &Device::Cpu)?
            .expect("the entry just written");
        let read = t.elapsed().as_secs_f64();
        if dtype == StatsDType::F32 {
            for (k, (a, w)) in back.accs.iter().zip(&want).enumerate() {
                assert_eq!(
                    fingerprint(a.hessian())?,
                    *w,
                    "input {k} differs after the round trip"
                );
            }
        }
        drop(back);
        println!(
            "{label:>18}: {:.3} GB per layer ({:.2} GiB; 40 layers {:.1} GB), write {write:.2} s \
             ({:.2} GB/s), read {read:.2} s{}",
            bytes as f64 / 1e9,
            bytes as f64 / (1u64 << 30) as f64,
            40.0 * bytes as f64 / 1e9,
            bytes as f64 / 1e9 / write,
            if dtype == StatsDType::F32 {
                ", Hessians bit-identical"
            } else {
                ""
            }
        );
    }
    let inputs = (NSAMPLES * SEQLEN * 5120 * 4) as f64 / 1e9;
    println!(
        "for comparison: the layer inputs (128 x 2048 x 5120 f32) are {inputs:.2} GB, stored \
         only for the inner layers of a sequential calibration"
    );
    Ok(())
}
