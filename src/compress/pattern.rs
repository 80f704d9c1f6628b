//! Which weights a pruning method removes: none, a fraction, or n of every m.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::matrix::{from_host, mask_tensor};
use super::{CompressResult, CompressStats};

/// A sparsity pattern.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SparsityPattern {
    /// Prune nothing (quantization only).
    #[default]
    Dense,
    /// Prune this fraction of the weights, chosen by the method's saliency.
    /// Methods that threshold (SparseGPT per block, magnitude per matrix) prune,
    /// as the reference does, every score `<=` the one at index `⌊n · sparsity⌋`
    /// of the `n` sorted scores: `⌊n · sparsity⌋ + 1` weights, more with ties.
    /// Wanda prunes exactly `⌊columns · sparsity⌋` per row. `0.0` prunes nothing. (The reference scripts, given 0, still prune the
    /// weights tied with the smallest saliency, because they threshold with
    /// `<=` at index 0 of the sorted scores; a request for no pruning should not
    /// do that.)
    Unstructured {
        /// Fraction in `[0, 1)`.
        sparsity: f64,
    },
    /// In every row, prune `n` of every `m` consecutive columns (2:4, 4:8).
    NM {
        /// Weights pruned per group, `0 < n < m`.
        n: usize,
        /// Group width.
        m: usize,
    },
}

impl SparsityPattern {
    /// Checks the pattern against a weight with `columns` input columns.
    pub fn validate(&self, columns: usize) -> Result<()> {
        match *self {
            SparsityPattern::Dense => Ok(()),
            SparsityPattern::Unstructured { sparsity } => {
                if !(sparsity.is_finite() && (0.0..1.0).contains(&sparsity)) {
                    bail!("sparsity must be in [0, 1), got {sparsity}");
                }
                Ok(())
            }
            SparsityPattern::NM { n, m } => {
                if m == 0 {
                    bail!("n:m pattern {n}:{m}: prune_m must be positive");
                }
                if n == 0 || n >= m {
                    bail!("n:m pattern {n}:{m}: prune_n must satisfy 0 < n < m");
                }
                // A trailing partial group has no defined n:m meaning (the reference's
                // topk fails on it once it is narrower than n).
                if !columns.is_multiple_of(m) {
                    bail!("n:m pattern {n}:{m}: the weight's {columns} input columns are not a multiple of m = {m}");
                }
                Ok(())
            }
        }
    }

    /// `(n, m)` for an n:m pattern.
    pub fn nm(&self) -> Option<(usize, usize)> {
        match *self {
            SparsityPattern::NM { n, m } => Some((n, m)),
            _ => None,
        }
    }

    /// The unstructured fraction, when it prunes anything.
    pub fn unstructured(&self) -> Option<f64> {
        match *self {
            SparsityPattern::Unstructured { sparsity } if sparsity > 0.0 => Some(sparsity),
            _ => None,
        }
    }

    /// Whether the pattern prunes anything at all.
    pub fn prunes(&self) -> bool {
        self.nm().is_some() || self.unstructured().is_some()
    }
}

/// The reference's threshold: the value at index `⌊len · sparsity⌋` of the sorted
/// scores (`torch.sort(x.flatten())[0][int(x.numel() * sparsity)]`); everything
/// `<=` it is pruned, ties included. Scores are ordered as `f32::total_cmp` does.
pub(crate) fn quantile_threshold(scores: &[f32], sparsity: f64) -> f32 {
    let k = ((scores.len() as f64) * sparsity) as usize;
    kth_smallest(scores, k.min(scores.len() - 1))
}

/// Below this many scores one selection on a copy is cheapest.
const RADIX_MIN: usize = 1 << 14;
/// Leading bits of the order key counted in the histogram: sign, exponent and
/// three mantissa bits, so eight buckets per octave.
const RADIX_BITS: u32 = 12;

/// The `k`-th smallest (from 0) of `xs` under `total_cmp`. One selection over
/// a whole SparseGPT block is single-threaded and, for fc1's 3072 × 128
/// scores, an order of magnitude slower than this: a parallel histogram of the
/// leading bits of each value's order key finds the bucket that holds the
/// answer, and only that bucket is selected from.
fn kth_smallest(xs: &[f32], k: usize) -> f32 {
    if xs.len() < RADIX_MIN {
        let mut v = xs.to_vec();
        let (_, kth, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
        return *kth;
    }
    let bucket_of = |x: f32| (order_key(x) >> (32 - RADIX_BITS)) as usize;
    let chunk = xs.len().div_ceil(4 * rayon::current_num_threads().max(1));
    let hist = xs
        .par_chunks(chunk)
        .map(|c| {
            let mut h = vec![0usize; 1 << RADIX_BITS];
            for &x in c {
                h[bucket_of(x)] += 1;
            }
            h
        })
        .reduce(
            || vec![0usize; 1 << RADIX_BITS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let mut below = 0;
    let mut bucket = 0;
    for (i, &count) in hist.iter().enumerate() {
        if below + count > k {
            bucket = i;
            break;
        }
        below += count;
    }
    let mut inside: Vec<f32> = xs
        .par_chunks(chunk)
        .map(|c| {
            c.iter()
                .copied()
                .filter(|&x| bucket_of(x) == bucket)
                .collect::<Vec<f32>>()
        })
        .flatten_iter()
        .collect();
    let (_, kth, _) = inside.select_nth_unstable_by(k - below, |a, b| a.total_cmp(b));
    *kth
}

/// A `u32` whose unsigned order is `f32::total_cmp`'s order of `x`.
#[inline]
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    // Negative values: every bit flipped (larger magnitude sorts lower);
    // non-negative ones: the sign bit set, so that they sort above.
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Marks in `mask` the `n` smallest of `m` scores given by `score(k)`, the lowest
/// index first among ties (as a stable sort would). `mask` must be all false on
/// entry; it doubles as the "already chosen" marker so that nothing is allocated.
#[inline]
pub(crate) fn mark_n_smallest(n: usize, mask: &mut [bool], score: impl Fn(usize) -> f32) {
    for _ in 0..n {
        let mut best = usize::MAX;
        let mut best_score = f32::INFINITY;
        for (k, chosen) in mask.iter().enumerate() {
            if *chosen {
                continue;
            }
            let s = score(k);
            if best == usize::MAX || s.total_cmp(&best_score).is_lt() {
                best = k;
                best_score = s;
            }
        }
        mask[best] = true;
    }
}

/// Whether every group of `m` consecutive columns of every row of a row-major
/// `[rows, columns]` matrix holds at most `m − n` non-zeros.
pub(crate) fn nm_valid(w: &[f32], columns: usize, n: usize, m: usize) -> bool {
    w.chunks_exact(columns).all(|row| {
        row.chunks(m)
            .all(|g| g.iter().filter(|x| **x != 0.0).count() <= m - n)
    })
}

/// Zeroes the masked weights of a row-major host copy of `like` and packages the
/// result of a mask-only method (magnitude, Wanda).
pub(crate) fn masked_result(
    like: &Tensor,
    mut w: Vec<f32>,
    rows: usize,
    cols: usize,
    mask: Vec<bool>,
    pattern: &SparsityPattern,
    start: Instant,
) -> Result<CompressResult> {
    for (x, &m) in w.iter_mut().zip(&mask) {
        if m {
            *x = 0.0;
        }
    }
    let pruned = mask.iter().filter(|&&m| m).count();
    let nm = pattern.nm().map(|(n, m)| nm_valid(&w, cols, n, m));
    let mask = mask_tensor(&mask, rows, cols, like.device())?;
    let weight = from_host(w, rows, cols, like)?;
    Ok(CompressResult {
        weight,
        stats: CompressStats {
            sparsity: pruned as f64 / (rows * cols) as f64,
            nm_valid: nm,
            avg_bits: None,
            loss: None,
            dead_columns: 0,
            seconds: start.elapsed().as_secs_f64(),
            mask,
            grid: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let err = |p: SparsityPattern, c| p.validate(c).unwrap_err().to_string();
        assert!(err(SparsityPattern::Unstructured { sparsity: 1.0 }, 8).contains("[0, 1)"));
        assert!(err(SparsityPattern::Unstructured { sparsity: -0.1 }, 8).contains("[0, 1)"));
        assert!(err(SparsityPattern::Unstructured { sparsity: f64::NAN }, 8).contains("[0, 1)"));
        assert!(err(SparsityPattern::NM { n: 4, m: 4 }, 8).contains("0 < n < m"));
        assert!(err(SparsityPattern::NM { n: 0, m: 4 }, 8).contains("0 < n < m"));
        assert!(err(SparsityPattern::NM { n: 2, m: 0 }, 8).contains("positive"));
        assert!(err(SparsityPattern::NM { n: 2, m: 4 }, 10).contains("multiple"));
        SparsityPattern::NM { n: 2, m: 4 }.validate(8).unwrap();
        SparsityPattern::Unstructured { sparsity: 0.0 }
            .validate(8)
            .unwrap();
        assert!(!SparsityPattern::Unstructured { sparsity: 0.0 }.prunes());
    }

    #[test]
    fn n_smallest_breaks_ties_by_index() {
        let s = [3.0f32, 1.0, 1.0, 0.5];
        let mut mask = [false; 4];
        mark_n_smallest(2, &mut mask, |k| s[k]);
        assert_eq!(mask, [false, true, false, true]);
        let mut mask = [false; 4];
        mark_n_smallest(3, &mut mask, |k| s[k]);
        assert_eq!(mask, [false, true, true, true]);
    }

    #[test]
    fn threshold_matches_sorted_index() {
        let v = vec![5.0f32, 1.0, 4.0, 2.0, 3.0, 0.0];
        // ⌊6 · 0.5⌋ = 3 → sorted [0,1,2,3,4,5][3] = 3.
        assert_eq!(quantile_threshold(&v, 0.5), 3.0);
    }

    #[test]
    fn radix_selection_matches_a_sort() {
        // Above the radix cutoff: mixed signs, zeros of both signs, infinities,
        // heavy ties, and values spanning many octaves.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 3 * RADIX_MIN + 17;
        let v: Vec<f32> = (0..n)
            .map(|i| match next() % 10 {
                0 => 0.0,
                1 => -0.0,
                2 => 1.5,
                3 if i % 7 == 0 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                r => {
                    let m = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    let e = (next() % 40) as i32 - 20;
                    let s = if r % 2 == 0 { 1.0 } else { -1.0 };
                    s * m * 2f32.powi(e)
                }
            })
            .collect();
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        for k in [0, 1, n / 10, n / 2, n / 2 + 1, 9 * n / 10, n - 1] {
            assert_eq!(
                kth_smallest(&v, k).to_bits(),
                sorted[k].to_bits(),
                "k = {k}"
            );
        }
        for sparsity in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let k = ((n as f64 * sparsity) as usize).min(n - 1);
            assert_eq!(
                quantile_threshold(&v, sparsity).to_bits(),
                sorted[k].to_bits()
            );
        }
    }
}
