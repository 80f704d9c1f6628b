//! Means with their standard errors, quantiles, and the `value ± error` text.

/// Running sums of one per-token quantity, for its mean and the standard error
/// of that mean as llama.cpp computes it: `sqrt((E[x²] − E[x]²) / (n − 1))`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    /// Values added.
    pub n: usize,
    /// Σ x.
    pub sum: f64,
    /// Σ x².
    pub sum_sq: f64,
}

impl Moments {
    /// Adds one value.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// The population variance E[x²] − E[x]², never negative.
    pub fn variance(&self) -> f64 {
        let m = self.mean();
        (self.sum_sq / self.n as f64 - m * m).max(0.0)
    }

    /// The standard error of the mean (NaN with fewer than two values).
    pub fn se(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        (self.variance() / (self.n - 1) as f64).sqrt()
    }
}

/// Perplexity and its standard error from the per-token NLL moments: ppl =
/// exp(mean NLL), and by the delta method se(ppl) = ppl · se(mean NLL).
pub fn ppl_and_se(nll: &Moments) -> (f64, f64) {
    let ppl = nll.mean().exp();
    (ppl, ppl * nll.se())
}

/// The `q` quantile (0 ≤ q ≤ 1) of ascending `sorted` values, by linear
/// interpolation between the nearest ranks (numpy's default). NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

/// `value ± se` with the error rounded to two significant digits and the value
/// to the same decimal place: `format_pm(35.2137, 0.4213)` is `"35.21 ± 0.42"`.
/// A zero error shows the value with four decimals; a non-finite error prints
/// as it is (`35.2137 ± NaN`).
pub fn format_pm(value: f64, se: f64) -> String {
    if !se.is_finite() {
        return format!("{value:.4} ± {se}");
    }
    if se == 0.0 {
        return format!("{value:.4} ± 0");
    }
    let decimals = (1 - se.abs().log10().floor() as i32).clamp(0, 12) as usize;
    format!("{value:.decimals$} ± {se:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_error_matches_the_textbook_formula() {
        let xs = [1.0, 2.0, 4.0, 7.0];
        let mut m = Moments::default();
        xs.iter().for_each(|&x| m.add(x));
        let mean = 3.5;
        let sample_var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 3.0;
        let want = (sample_var / 4.0).sqrt();
        assert!((m.se() - want).abs() < 1e-12, "{} vs {want}", m.se());
    }

    #[test]
    fn plus_minus_text_and_quantiles() {
        assert_eq!(format_pm(35.2137, 0.4213), "35.21 ± 0.42");
        assert_eq!(format_pm(0.012346, 0.00067), "0.01235 ± 0.00067");
        assert_eq!(format_pm(293.4, 12.6), "293 ± 13");
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
    }
}
