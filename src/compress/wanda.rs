//! Wanda: prune by `|W_ij| · ‖X_j‖` within each output row (wanda's `prune_wanda`).

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;

use super::matrix::{to_host, vector_to_host};
use super::pattern::{mark_n_smallest, masked_result, SparsityPattern};
use super::CompressResult;

/// Prunes one linear's weight `[rows, columns]` by the Wanda score
/// `|W_ij| · sqrt(scaler_row_j)`, where `scaler_row` is
/// [`super::HessianAccumulator::scaler_row`].
///
/// Unstructured: in every row, the `⌊columns · sparsity⌋` lowest scores (a
/// stable sort, so the lowest index first among ties), exactly that many per row.
/// n:m: in every row, the `n` lowest scores of each group of `m` columns.
/// (The reference's optional `use_variant` cumulative-score search is not
/// implemented.)
pub fn wanda_prune(
    w: &Tensor,
    scaler_row: &Tensor,
    pattern: &SparsityPattern,
) -> Result<CompressResult> {
    let start = Instant::now();
    let m = to_host(w, "weight")?;
    pattern.validate(m.cols)?;
    let scale: Vec<f32> = vector_to_host(scaler_row, m.cols, "scaler_row")?
        .iter()
        .map(|s| s.sqrt())
        .collect();
    let score = |row: &[f32], j: usize| row[j].abs() * scale[j];
    let mut mask = vec![false; m.data.len()];
    if let Some(sparsity) = pattern.unstructured() {
        let k = (m.cols as f64 * sparsity) as usize;
        mask.par_chunks_mut(m.cols)
            .zip(m.data.par_chunks(m.cols))
            .for_each(|(mrow, wrow)| {
                let mut order: Vec<usize> = (0..m.cols).collect();
                order.sort_by(|&a, &b| score(wrow, a).total_cmp(&score(wrow, b)));
                for &j in &order[..k] {
                    mrow[j] = true;
                }
            });
    } else if let Some((n, gm)) = pattern.nm() {
        mask.par_chunks_mut(m.cols)
            .zip(m.data.par_chunks(m.cols))
            .for_each(|(mrow, wrow)| {
                for (g, mg) in mrow.chunks_mut(gm).enumerate() {
                    mark_n_smallest(n, mg, |k| score(wrow, g * gm + k));
                }
            });
    } else {
        anyhow::bail!("Wanda pruning needs a pattern that prunes something, got {pattern:?}");
    }
    masked_result(w, m.data, m.rows, m.cols, mask, pattern, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activation_scale_changes_the_choice() -> Result<()> {
        // Column 0 has small weights but a huge input norm: Wanda keeps it.
        let w = Tensor::from_vec(
            vec![0.1f32, 1.0, 0.9, 0.8, 0.1, 0.7, 1.0, 0.9],
            (2, 4),
            &Device::Cpu,
        )?;
        let s = Tensor::from_vec(vec![10000f32, 1.0, 1.0, 1.0], 4, &Device::Cpu)?;
        let r = wanda_prune(&w, &s, &SparsityPattern::Unstructured { sparsity: 0.5 })?;
        let mask = r.stats.mask.to_vec2::<u8>()?;
        assert_eq!(mask, vec![vec![0, 0, 1, 1], vec![0, 1, 0, 1]]);
        let r = wanda_prune(&w, &s, &SparsityPattern::NM { n: 2, m: 4 })?;
        assert_eq!(r.stats.nm_valid, Some(true));
        assert!(wanda_prune(&w, &s.narrow(0, 0, 3)?, &SparsityPattern::NM { n: 2, m: 4 }).is_err());
        Ok(())
    }
}
