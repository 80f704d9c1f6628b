//! Magnitude pruning: remove the smallest `|W|` (wanda's `prune_magnitude`).

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;

use super::matrix::to_host;
use super::pattern::{mark_n_smallest, masked_result, quantile_threshold, SparsityPattern};
use super::CompressResult;

/// Prunes one linear's weight `[rows, columns]` by magnitude.
///
/// Unstructured: one threshold over the whole matrix, the value at index
/// `⌊numel · sparsity⌋` of the sorted `|W|`, and every weight `<=` it is pruned
/// (ties included, as the reference). n:m: in every row, the `n` smallest `|W|`
/// of each group of `m` columns (lowest index first among ties).
pub fn magnitude_prune(w: &Tensor, pattern: &SparsityPattern) -> Result<CompressResult> {
    let start = Instant::now();
    let m = to_host(w, "weight")?;
    pattern.validate(m.cols)?;
    let mut mask = vec![false; m.data.len()];
    if let Some(sparsity) = pattern.unstructured() {
        let scores: Vec<f32> = m.data.par_iter().map(|x| x.abs()).collect();
        let thresh = quantile_threshold(&scores, sparsity);
        mask.par_iter_mut()
            .zip(&m.data)
            .for_each(|(k, x)| *k = x.abs() <= thresh);
    } else if let Some((n, gm)) = pattern.nm() {
        mask.par_chunks_mut(m.cols)
            .zip(m.data.par_chunks(m.cols))
            .for_each(|(mrow, wrow)| {
                for (mg, wg) in mrow.chunks_mut(gm).zip(wrow.chunks(gm)) {
                    mark_n_smallest(n, mg, |k| wg[k].abs());
                }
            });
    } else {
        anyhow::bail!("magnitude pruning needs a pattern that prunes something, got {pattern:?}");
    }
    masked_result(w, m.data, m.rows, m.cols, mask, pattern, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn prunes_smallest_and_keeps_nm() -> Result<()> {
        let data: Vec<f32> = (0..32)
            .map(|i| ((i * 37 % 32) as f32 - 15.5) / 4.0)
            .collect();
        let w = Tensor::from_vec(data.clone(), (4, 8), &Device::Cpu)?;
        let r = magnitude_prune(&w, &SparsityPattern::Unstructured { sparsity: 0.5 })?;
        // |W| comes in equal pairs; the reference prunes everything <= the value at
        // index 16 of the sorted 32, so 17 weights plus the one tied with the 17th.
        assert_eq!(r.stats.sparsity, 18.0 / 32.0);
        let out = r.weight.flatten_all()?.to_vec1::<f32>()?;
        let kept_min = out
            .iter()
            .filter(|x| **x != 0.0)
            .map(|x| x.abs())
            .fold(f32::INFINITY, f32::min);
        let pruned_max = data
            .iter()
            .zip(&out)
            .filter(|(_, o)| **o == 0.0)
            .map(|(x, _)| x.abs())
            .fold(0.0, f32::max);
        assert!(pruned_max <= kept_min);

        let r = magnitude_prune(&w, &SparsityPattern::NM { n: 2, m: 4 })?;
        assert_eq!(r.stats.nm_valid, Some(true));
        assert_eq!(r.stats.sparsity, 0.5);
        assert!(magnitude_prune(&w, &SparsityPattern::Dense).is_err());
        Ok(())
    }
}
