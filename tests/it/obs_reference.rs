//! SparseGPT against a slow, independent per-column OBS written here in f64:
//! no blocks of lazy updates (each column updates every later column at once),
//! its own Cholesky, its own quantizer. Masks must be identical and weights agree
//! within 1e-5 of max|W|.

// Index loops mirror the reference's math; iterator chains would hide it.
#![allow(clippy::needless_range_loop)]

use candle_core::{Device, Tensor};
use rand_mt::Mt64;

use crate::common::linalg::cholesky;
use sparselab::compress::{
    fasterprune, BitWidths, QuantOptions, SparseGptOptions, SparsityPattern,
};

const BLOCK: usize = 16;

fn gaussian(rng: &mut Mt64) -> f64 {
    // Box–Muller.
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Inverse of an SPD matrix through its Cholesky factor (solving L Lᵀ x = e_k).
fn spd_inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let l = cholesky(a);
    let mut inv = vec![vec![0.0; n]; n];
    for k in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let s: f64 = (0..i).map(|j| l[i][j] * y[j]).sum();
            y[i] = (if i == k { 1.0 } else { 0.0 } - s) / l[i][i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|j| l[j][i] * x[j]).sum();
            x[i] = (y[i] - s) / l[i][i];
        }
        for i in 0..n {
            inv[i][k] = x[i];
        }
    }
    inv
}

struct Case {
    w: Vec<Vec<f64>>,
    h: Vec<Vec<f64>>,
}

fn case(rows: usize, cols: usize, seed: u64) -> Case {
    let mut rng = Mt64::new(seed);
    let w = (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| gaussian(&mut rng) as f32 as f64)
                .collect()
        })
        .collect();
    // H = 2/n XᵀX from 4·cols correlated tokens (one sequence), rounded to f32.
    let tokens = 4 * cols;
    let x: Vec<Vec<f64>> = (0..tokens)
        .map(|_| {
            let base = gaussian(&mut rng);
            (0..cols)
                .map(|j| gaussian(&mut rng) * (1.0 + j as f64 / cols as f64) + 0.3 * base)
                .collect()
        })
        .collect();
    let h = (0..cols)
        .map(|i| {
            (0..cols)
                .map(|j| (2.0 * x.iter().map(|r| r[i] * r[j]).sum::<f64>()) as f32 as f64)
                .collect()
        })
        .collect();
    Case { w, h }
}

/// The per-column reference. `bits[j]` = None keeps floats.
fn reference(
    c: &Case,
    pattern: SparsityPattern,
    bits: Option<&[u32]>,
) -> (Vec<Vec<f64>>, Vec<Vec<bool>>) {
    let (rows, cols) = (c.w.len(), c.h.len());
    let mut w = c.w.clone();
    let mut h = c.h.clone();
    let damp = 0.01 * (0..cols).map(|i| h[i][i]).sum::<f64>() / cols as f64;
    for (i, row) in h.iter_mut().enumerate() {
        row[i] += damp;
    }
    // Upper factor U of H⁻¹ = UᵀU is the transpose of the lower factor.
    let l = cholesky(&spd_inverse(&h));
    let u = |i: usize, j: usize| l[j][i];
    // Row grids from the untouched weights: range [min(row,0), max(row,0)].
    let grid: Vec<(f64, f64)> = w
        .iter()
        .map(|r| {
            let lo = r.iter().copied().fold(0.0, f64::min);
            let hi = r.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        })
        .collect();
    let quant = |r: usize, j: usize, x: f64| -> f64 {
        let Some(b) = bits else { return x };
        let maxq = ((1u64 << b[j]) - 1) as f64;
        let (lo, hi) = grid[r];
        let scale = (hi - lo) / maxq;
        let zero = (-lo / scale).round_ties_even();
        let q = ((x / scale).round_ties_even() + zero).clamp(0.0, maxq);
        scale * (q - zero)
    };
    let mut mask = vec![vec![false; cols]; rows];
    for j in 0..cols {
        if j % BLOCK == 0 {
            if let SparsityPattern::Unstructured { sparsity } = pattern {
                let end = (j + BLOCK).min(cols);
                let mut sal: Vec<f64> = Vec::new();
                for r in 0..rows {
                    for k in j..end {
                        sal.push(w[r][k].powi(2) / u(k, k).powi(2));
                    }
                }
                let mut sorted = sal.clone();
                sorted.sort_by(f64::total_cmp);
                let thresh = sorted[(sal.len() as f64 * sparsity) as usize];
                for r in 0..rows {
                    for k in j..end {
                        mask[r][k] = sal[r * (end - j) + k - j] <= thresh;
                    }
                }
            }
        }
        if let SparsityPattern::NM { n, m } = pattern {
            if j % m == 0 {
                for (r, row) in w.iter().enumerate() {
                    let mut idx: Vec<usize> = (j..j + m).collect();
                    idx.sort_by(|&a, &b| {
                        (row[a].powi(2) / u(a, a).powi(2))
                            .total_cmp(&(row[b].powi(2) / u(b, b).powi(2)))
                            .then(a.cmp(&b))
                    });
                    for &k in &idx[..n] {
                        mask[r][k] = true;
                    }
                }
            }
        }
        let d = u(j, j);
        for r in 0..rows {
            let wv = w[r][j];
            let q = quant(r, j, if mask[r][j] { 0.0 } else { wv });
            let err = (wv - q) / d;
            for k in j + 1..cols {
                w[r][k] -= err * u(j, k);
            }
            w[r][j] = q;
        }
    }
    (w, mask)
}

fn check(name: &str, c: &Case, pattern: SparsityPattern, bits: Option<Vec<u32>>) {
    let (rows, cols) = (c.w.len(), c.h.len());
    let flat = |m: &[Vec<f64>]| m.iter().flatten().map(|&v| v as f32).collect::<Vec<f32>>();
    let w = Tensor::from_vec(flat(&c.w), (rows, cols), &Device::Cpu).unwrap();
    let h = Tensor::from_vec(flat(&c.h), (cols, cols), &Device::Cpu).unwrap();
    let opts = SparseGptOptions {
        pattern,
        quant: bits.clone().map(|b| QuantOptions {
            bits: BitWidths::PerColumn(b),
            ..QuantOptions::default()
        }),
        blocksize: BLOCK,
        ..SparseGptOptions::default()
    };
    let got = fasterprune(&w, &h, &opts).unwrap();
    let (want, want_mask) = reference(c, pattern, bits.as_deref());
    let ours = got.weight.to_vec2::<f32>().unwrap();
    let mask = got.stats.mask.to_vec2::<u8>().unwrap();
    let wmax = c.w.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for r in 0..rows {
        for k in 0..cols {
            assert_eq!(
                mask[r][k] == 1,
                want_mask[r][k],
                "{name}: mask differs at ({r}, {k})"
            );
            worst = worst.max((ours[r][k] as f64 - want[r][k]).abs());
        }
    }
    println!("{name}: max |Δw| = {worst:.2e} (max|W| = {wmax:.2})");
    assert!(worst <= 1e-5 * wmax, "{name}: weights differ by {worst:e}");
}

#[test]
fn pruning_matches_the_per_column_reference() {
    let c = case(24, 64, 1);
    check(
        "50% unstructured",
        &c,
        SparsityPattern::Unstructured { sparsity: 0.5 },
        None,
    );
    check("2:4", &c, SparsityPattern::NM { n: 2, m: 4 }, None);
}

#[test]
fn quantization_matches_the_per_column_reference() {
    let c = case(24, 64, 2);
    check("GPTQ 8 bits", &c, SparsityPattern::Dense, Some(vec![8; 64]));
    let mixed: Vec<u32> = (0..64).map(|j| [8, 6, 7, 8][j % 4]).collect();
    check(
        "mixed 6-8 bits",
        &c,
        SparsityPattern::Dense,
        Some(mixed.clone()),
    );
    check(
        "50% + mixed bits",
        &c,
        SparsityPattern::Unstructured { sparsity: 0.5 },
        Some(mixed),
    );
}
