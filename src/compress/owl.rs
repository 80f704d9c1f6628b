//! OWL, outlier-weighted layer-wise sparsity (Yin et al., "Outlier Weighed
//! Layerwise Sparsity: A Missing Secret Sauce for Pruning LLMs to High
//! Sparsity", 2023): layers with more outlier weights keep more of them.
//!
//! A layer's outlier ratio is the share of its weights whose Wanda score
//! `|W_ij| · ‖x_j‖` exceeds `M` times the mean score over all linears of the
//! layer; the ratios are scaled linearly onto `[0, 2λ]` and each layer's
//! density is `1 − target + (scaled − mean(scaled))`, so the densest layer
//! prunes `λ` less than the target and the sparsest `λ` more, around the mean.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::matrix::to_host;

/// The fraction (0–1) of the weights of `linears` (each a weight `[rows,
/// columns]` with the diagonal of its input Hessian) whose score
/// `|W_ij| · √H_jj` exceeds `m` times the mean score over all of them. `√H_jj`
/// is Wanda's `‖x_j‖₂` up to a factor common to the layer, which the ratio
/// does not see.
pub fn outlier_ratio(linears: &[(Tensor, Vec<f64>)], m: f64) -> Result<f64> {
    if !(m.is_finite() && m > 0.0) {
        bail!("the outlier multiple M must be a positive number, got {m}");
    }
    if linears.is_empty() {
        bail!("no linears to measure");
    }
    let mut scores: Vec<f64> = Vec::new();
    for (w, hdiag) in linears {
        let h = to_host(w, "weight")?;
        if hdiag.len() != h.cols {
            bail!(
                "the weight has {} input columns, the Hessian diagonal {}",
                h.cols,
                hdiag.len()
            );
        }
        let norms: Vec<f64> = hdiag.iter().map(|d| d.max(0.0).sqrt()).collect();
        scores.extend(
            h.data
                .chunks_exact(h.cols)
                .flat_map(|row| row.iter().zip(&norms).map(|(x, n)| (*x as f64).abs() * n)),
        );
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let above = scores.iter().filter(|&&s| s > m * mean).count();
    Ok(above as f64 / scores.len() as f64)
}

/// Per-layer sparsities from outlier ratios (OWL's rule, see the module):
/// their mean is exactly `target` and they span `target ± λ`. Equal ratios
/// give every layer `target`. Errors: no ratios, non-finite ratios, a target
/// outside `[0, 1)`, a negative λ, or a layer that would leave `[0, 1)`.
pub fn owl_sparsities(ratios: &[f64], target: f64, lambda: f64) -> Result<Vec<f64>> {
    if ratios.is_empty() {
        bail!("no layers: OWL needs one outlier ratio per layer");
    }
    if let Some(r) = ratios.iter().find(|r| !r.is_finite()) {
        bail!("outlier ratios must be finite, got {r}");
    }
    if !(0.0..1.0).contains(&target) {
        bail!("sparsity must be in [0, 1), got {target}");
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        bail!("lambda must be a non-negative number, got {lambda}");
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
            (a.min(r), b.max(r))
        });
    let scaled: Vec<f64> = if hi > lo {
        ratios
            .iter()
            .map(|r| (r - lo) / (hi - lo) * 2.0 * lambda)
            .collect()
    } else {
        vec![0.0; ratios.len()]
    };
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    let out: Vec<f64> = scaled
        .iter()
        .map(|s| 1.0 - (s - mean + 1.0 - target))
        .collect();
    if let Some((i, s)) = out
        .iter()
        .enumerate()
        .find(|(_, s)| !(0.0..1.0).contains(*s))
    {
        bail!(
            "OWL would give layer {i} a sparsity of {s:.4}, outside [0, 1): lower lambda \
             ({lambda}) or move the target ({target})"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ratio_counts_scores_above_m_times_the_mean() {
        // Scores |w|·√h: [1, 1, 1, 9] with h = 1: mean 3; above 2·3 = 6: one.
        let w = Tensor::from_vec(vec![1f32, -1.0, 1.0, 9.0], (1, 4), &Device::Cpu).unwrap();
        let r = outlier_ratio(&[(w.clone(), vec![1.0; 4])], 2.0).unwrap();
        assert_eq!(r, 0.25);
        // √h scales a column: h_3 = 0 removes the outlier (mean 0.75, 1 > 1.5? no).
        let r = outlier_ratio(&[(w, vec![1.0, 1.0, 1.0, 0.0])], 2.0).unwrap();
        assert_eq!(r, 0.0);
    }

    #[test]
    fn sparsities_average_to_the_target_and_span_lambda() {
        let s = owl_sparsities(&[0.01, 0.03, 0.02, 0.05], 0.7, 0.08).unwrap();
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.7).abs() < 1e-12, "{s:?}");
        let (lo, hi) = (
            s.iter().cloned().fold(1.0, f64::min),
            s.iter().cloned().fold(0.0, f64::max),
        );
        assert!((hi - lo - 0.16).abs() < 1e-12, "{s:?}");
        // More outliers, less pruning.
        assert!(s[3] < s[1] && s[1] < s[2] && s[2] < s[0], "{s:?}");
        assert_eq!(
            owl_sparsities(&[0.2, 0.2], 0.5, 0.1).unwrap(),
            vec![0.5, 0.5]
        );
        assert!(owl_sparsities(&[0.0, 1.0], 0.95, 0.1).is_err());
    }
}
