//! Measured quantization error per input channel and width, and the
//! allocation of widths that minimises its sum under an average-bits budget.
//!
//! A channel's *error curve* says how much output error each tier would cost
//! it: `e_j(b) = ω_j · Σ_i (w_ij − q_b,i(w_ij))²` over the weights that survive
//! the sparsity mask, with the grid `q_b,i` that `prune_layer` will use for row
//! `i` at `b` bits and `ω_j` the channel's Hessian weight ([`ErrorWeight`]).
//! Units: squared output error summed over the calibration tokens, in the
//! Hessian's scale (`H = 2/n · Σ xxᵀ`), so curves of different linears can be
//! added and one budget can be spread over a whole model.
//!
//! [`allocate_min_error`] then picks one tier per channel minimising
//! `Σ_j e_j(b_j)` subject to the weighted average width.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::allocation::check_tiers;
use super::importance::{obs_denominators, ObsDenominator};
use super::matrix::to_host;
use super::pattern::{mark_n_smallest, quantile_threshold, SparsityPattern};
use super::quant::{find_row_params, maxq, quantize, QuantizerConfig};
use super::HessianAccumulator;

/// How a channel's squared weight error becomes output error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorWeight {
    /// `1 / U_jj²` with `U` the upper Cholesky factor of the damped `H⁻¹`: the
    /// loss SparseGPT's sweep itself books for quantizing column `j` once the
    /// columns after it compensate (`(w − q)² / Hinv[j, j]²` in the reference).
    /// It is `H_jj` minus what the later columns can absorb, so it never exceeds
    /// `diag`. Default.
    #[default]
    Obs,
    /// `H_jj`: the output error of the rounding alone, with no compensation.
    Diag,
}

impl ErrorWeight {
    /// The names scripts use.
    pub const NAMES: [&'static str; 2] = ["obs", "diag"];

    /// `obs` or `diag`; anything else is an error listing both.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "obs" => Ok(ErrorWeight::Obs),
            "diag" => Ok(ErrorWeight::Diag),
            _ => bail!("unknown error weight `{name}`; valid: obs, diag"),
        }
    }
}

/// Settings of [`channel_errors`]: the compression the curves predict.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelErrorOptions {
    /// The widths to measure, strictly ascending, each in `1..=16`.
    pub tiers: Vec<u32>,
    /// The sparsity `prune_layer` will apply; its mask is estimated as the
    /// sweep's first choice (see [`channel_errors`]). Default dense.
    pub pattern: SparsityPattern,
    /// The grid (symmetry, MSE search), as `prune_layer` will use it.
    pub quantizer: QuantizerConfig,
    /// GPTQ groups of this many columns, contiguous in the original order.
    pub groupsize: Option<usize>,
    /// The sweep's block width, over which unstructured masks are chosen.
    /// Default 128.
    pub blocksize: usize,
    /// Hessian damping, as a fraction of its mean diagonal. Default 0.01.
    pub percdamp: f64,
    /// How squared weight error becomes output error.
    pub weight: ErrorWeight,
    /// Divide every error by the linear's dense output energy `tr(W H Wᵀ)`,
    /// making the curves *relative* output errors: scale-free, so that a
    /// model-wide budget does not simply follow the residual stream's growth
    /// with depth. Default `false` (absolute, the sweep's units).
    pub relative: bool,
}

impl Default for ChannelErrorOptions {
    fn default() -> Self {
        Self {
            tiers: super::allocation::DEFAULT_TIERS.to_vec(),
            pattern: SparsityPattern::Dense,
            quantizer: QuantizerConfig::default(),
            groupsize: None,
            blocksize: 128,
            percdamp: 0.01,
            weight: ErrorWeight::Obs,
            relative: false,
        }
    }
}

/// Error curves of one linear's input channels: `error(j, t)` is the output
/// error of channel `j` at `tiers[t]` bits.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCurves {
    /// The widths measured, ascending.
    pub tiers: Vec<u32>,
    /// Output rows of the linear: every channel stores one weight per row, so
    /// a tier step of one channel costs `rows` bits of the model's budget.
    pub rows: usize,
    /// `[channels, tiers]`, row-major.
    pub errors: Vec<f64>,
}

impl ErrorCurves {
    /// Input channels.
    pub fn channels(&self) -> usize {
        self.errors.len() / self.tiers.len().max(1)
    }

    /// Channel `j`'s errors, one per tier.
    pub fn curve(&self, j: usize) -> &[f64] {
        let t = self.tiers.len();
        &self.errors[j * t..(j + 1) * t]
    }

    /// The error of an assignment: `Σ_j e_j(bits[j])`. Errors when a width is
    /// not a tier or the length is not one per channel.
    pub fn total(&self, bits: &[u32]) -> Result<f64> {
        if bits.len() != self.channels() {
            bail!("{} widths for {} channels", bits.len(), self.channels());
        }
        bits.iter()
            .enumerate()
            .map(|(j, b)| match self.tiers.iter().position(|t| t == b) {
                Some(t) => Ok(self.curve(j)[t]),
                None => bail!("width {b} of channel {j} is not a tier of {:?}", self.tiers),
            })
            .sum()
    }

    /// The curves with channel `j`'s errors multiplied by `weights[j]`: how an
    /// importance score steers the allocation (a channel twice as important
    /// counts its error twice). Weights must be finite and non-negative.
    pub fn weighted(&self, weights: &[f32]) -> Result<ErrorCurves> {
        if weights.len() != self.channels() {
            bail!("{} weights for {} channels", weights.len(), self.channels());
        }
        if let Some(j) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            bail!(
                "weight of channel {j} is {}; weights must be finite and non-negative",
                weights[j]
            );
        }
        let t = self.tiers.len();
        let errors = self
            .errors
            .iter()
            .enumerate()
            .map(|(k, e)| e * weights[k / t] as f64)
            .collect();
        Ok(ErrorCurves {
            tiers: self.tiers.clone(),
            rows: self.rows,
            errors,
        })
    }
}

/// Measures the error curve of every input channel of the weight `w`
/// `[rows, columns]` whose inputs have the Hessian `acc`.
///
/// What is predicted, and how closely:
/// - **Mask.** The weights SparseGPT would prune first: per block of
///   `blocksize` columns, those with the lowest `w² / U_jj²` (the reference's
///   block threshold) or, for n:m, the `n` lowest of every `m` in a row. The
///   sweep chooses on weights its compensation has already moved, so its mask
///   differs in a few percent of positions; pruned weights cost nothing here.
/// - **Grid.** Per row and width, the min-max (or MSE-searched) parameters of
///   the untouched row, as the sweep computes them before it starts; with
///   `groupsize`, per contiguous group (the sweep recomputes group parameters
///   from compensated weights).
/// - **Compensation.** [`ErrorWeight::Obs`] counts what the sweep books; it
///   ignores that compensation also moves the later columns' rounding errors.
///
/// Dead channels (`H_jj = 0`, zeroed by the sweep) have zero curves.
pub fn channel_errors(
    w: &Tensor,
    acc: &HessianAccumulator,
    opts: &ChannelErrorOptions,
) -> Result<ErrorCurves> {
    check_tiers(&opts.tiers)?;
    opts.quantizer.validate()?;
    let m = to_host(w, "weight")?;
    let (rows, cols) = (m.rows, m.cols);
    if cols != acc.columns() {
        bail!(
            "the weight has {cols} input columns but the Hessian has {}",
            acc.columns()
        );
    }
    opts.pattern.validate(cols)?;
    if opts.blocksize == 0 {
        bail!("blocksize must be positive");
    }
    if let Some((_, mm)) = opts.pattern.nm() {
        if !opts.blocksize.is_multiple_of(mm) {
            bail!(
                "blocksize {} is not a multiple of the n:m group width {mm}",
                opts.blocksize
            );
        }
    }
    if opts.groupsize == Some(0) {
        bail!("groupsize must be positive");
    }
    if !(opts.percdamp.is_finite() && opts.percdamp >= 0.0) {
        bail!(
            "percdamp must be a non-negative number, got {}",
            opts.percdamp
        );
    }
    let (d, dead) = obs_denominators(acc.hessian(), opts.percdamp, ObsDenominator::Cholesky)?;
    let m_dense = w.clone();
    let mut w = m.data;
    for (j, _) in dead.iter().enumerate().filter(|(_, d)| **d) {
        for r in 0..rows {
            w[r * cols + j] = 0.0;
        }
    }
    let keep = estimate_mask(&w, rows, cols, &d, opts);
    let omega: Vec<f64> = match opts.weight {
        ErrorWeight::Obs => d.iter().map(|d| 1.0 / d).collect(),
        ErrorWeight::Diag => acc.diagonal()?,
    };
    let nt = opts.tiers.len();
    let maxqs: Vec<f32> = opts.tiers.iter().map(|&b| maxq(b)).collect();
    let group = opts.groupsize.unwrap_or(cols);
    // Σ over rows of the squared rounding error, per channel and tier; each
    // rayon task owns a block of rows and its partial sums.
    let sums = w
        .par_chunks(cols)
        .zip(keep.par_chunks(cols))
        .fold(
            || vec![0f64; cols * nt],
            |mut acc, (row, keep)| {
                for g0 in (0..cols).step_by(group) {
                    let g1 = (g0 + group).min(cols);
                    for (t, &mq) in maxqs.iter().enumerate() {
                        let p = find_row_params(&row[g0..g1], mq, &opts.quantizer);
                        for j in g0..g1 {
                            if keep[j] {
                                let x = row[j];
                                let e = (quantize(x, p.scale, p.zero, mq) - x) as f64;
                                acc[j * nt + t] += e * e;
                            }
                        }
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0f64; cols * nt],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let scale = if opts.relative {
        let energy = output_energy(&m_dense, acc)?;
        if !(energy.is_finite() && energy > 0.0) {
            bail!("relative errors need a non-zero output energy tr(W H Wᵀ), got {energy}");
        }
        1.0 / energy
    } else {
        1.0
    };
    let errors = sums
        .iter()
        .enumerate()
        .map(|(k, s)| {
            if dead[k / nt] {
                0.0
            } else {
                s * omega[k / nt] * scale
            }
        })
        .collect();
    Ok(ErrorCurves {
        tiers: opts.tiers.clone(),
        rows,
        errors,
    })
}

/// `tr(W H Wᵀ)`: the energy of the linear's outputs on the calibration tokens,
/// in the Hessian's scale.
fn output_energy(w: &Tensor, acc: &HessianAccumulator) -> Result<f64> {
    let h = acc.hessian();
    let w = w.to_device(h.device())?.to_dtype(candle_core::DType::F32)?;
    let e = (w.matmul(h)? * &w)?
        .to_dtype(candle_core::DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(e)
}

/// `keep[r · cols + j]`: whether weight `(r, j)` survives the estimated mask.
fn estimate_mask(
    w: &[f32],
    rows: usize,
    cols: usize,
    d: &[f64],
    opts: &ChannelErrorOptions,
) -> Vec<bool> {
    let mut keep = vec![true; rows * cols];
    // The reference's saliency `w² / diag(Hinv)²`, in f32 as it computes it.
    let sal = |r: usize, j: usize| {
        let x = w[r * cols + j];
        x * x / d[j] as f32
    };
    match (opts.pattern.unstructured(), opts.pattern.nm()) {
        (Some(sparsity), _) if sparsity > 0.0 => {
            for b0 in (0..cols).step_by(opts.blocksize) {
                let b1 = (b0 + opts.blocksize).min(cols);
                let scores: Vec<f32> = (0..rows)
                    .flat_map(|r| (b0..b1).map(move |j| (r, j)))
                    .map(|(r, j)| sal(r, j))
                    .collect();
                let thresh = quantile_threshold(&scores, sparsity);
                for r in 0..rows {
                    for j in b0..b1 {
                        if sal(r, j) <= thresh {
                            keep[r * cols + j] = false;
                        }
                    }
                }
            }
        }
        (_, Some((n, m))) => {
            for r in 0..rows {
                for g0 in (0..cols).step_by(m) {
                    let g1 = (g0 + m).min(cols);
                    let mut pruned = vec![false; g1 - g0];
                    mark_n_smallest(n.min(g1 - g0), &mut pruned, |k| sal(r, g0 + k));
                    for (k, p) in pruned.iter().enumerate() {
                        if *p {
                            keep[r * cols + g0 + k] = false;
                        }
                    }
                }
            }
        }
        _ => {}
    }
    keep
}

/// The result of [`allocate_min_error`].
#[derive(Debug, Clone, PartialEq)]
pub struct MinErrorAllocation {
    /// Widths per linear, in the order the curves were given.
    pub bits: Vec<Vec<u32>>,
    /// `Σ e_j(b_j)` over every channel.
    pub error: f64,
    /// Achieved average bits per weight (channels weighted by their rows).
    pub avg_bits: f64,
    /// The Lagrange multiplier (error per weight-bit) of the last upgrade
    /// taken in order: the marginal price of one more bit.
    pub lambda: f64,
}

/// Widths for the channels of one or several linears that minimise the total
/// measured error `Σ_j e_j(b_j)` while the average width over all their
/// weights (each channel weighted by its linear's rows) meets `target_avg`.
///
/// The solution: every curve is replaced by its lower convex hull over the
/// tiers, whose segments have falling gains per bit; all segments of all
/// channels are taken in descending order of gain per weight-bit while they fit
/// the budget. Every prefix of that order minimises the Lagrangian
/// `Σ e_j(b_j) + λ Σ rows_j b_j` for the gain `λ` of its last segment, hence is
/// the exact optimum among all assignments spending no more bits (a convex
/// hull's vertex beats every point above it). Where the next segment does not
/// fit, later ones that fit are still taken, and the last bits (fewer than one
/// channel's largest step) go to the single-channel upgrades, hull or not, that
/// lower the error most. The total never exceeds `round(target · Σ rows·cols)`
/// and falls short of it by less than one channel's largest tier step; the
/// budget is spent even where a wider tier does not lower a channel's error.
///
/// Errors: no curves, curves with different tiers, non-finite errors, a
/// target outside `[min tier, max tier]`.
pub fn allocate_min_error(curves: &[&ErrorCurves], target_avg: f64) -> Result<MinErrorAllocation> {
    let Some(first) = curves.first() else {
        bail!("no error curves: there are no channels to allocate");
    };
    let tiers = first.tiers.clone();
    check_tiers(&tiers)?;
    for (k, c) in curves.iter().enumerate() {
        if c.tiers != tiers {
            bail!(
                "error curves {k} have tiers {:?}, the first {:?}: one allocation needs one set of tiers",
                c.tiers,
                tiers
            );
        }
        if let Some(i) = c.errors.iter().position(|e| !e.is_finite()) {
            bail!(
                "error curves {k}: channel {} has a non-finite error",
                i / tiers.len()
            );
        }
    }
    let (lo, hi) = (tiers[0] as f64, *tiers.last().unwrap() as f64);
    if !(target_avg.is_finite() && target_avg >= lo && target_avg <= hi) {
        bail!("target_avg {target_avg} is outside the tiers' range [{lo}, {hi}] ({tiers:?})");
    }
    let weights: u64 = curves.iter().map(|c| (c.rows * c.channels()) as u64).sum();
    if weights == 0 {
        bail!("no channels to allocate");
    }
    let budget = (target_avg * weights as f64).round() as i64;
    let mut remaining = budget - tiers[0] as i64 * weights as i64;

    // Channels are addressed by (curve set, channel); `pos` holds each
    // channel's tier index, `hulls` its hull vertices (tier indices).
    let offsets: Vec<usize> = curves
        .iter()
        .scan(0, |s, c| {
            let o = *s;
            *s += c.channels();
            Some(o)
        })
        .collect();
    let total_channels: usize = curves.iter().map(|c| c.channels()).sum();
    let locate = |g: usize| {
        let k = offsets.partition_point(|&o| o <= g) - 1;
        (k, g - offsets[k])
    };
    let hulls: Vec<Vec<u8>> = (0..total_channels)
        .into_par_iter()
        .map(|g| {
            let (k, j) = locate(g);
            lower_hull(&tiers, curves[k].curve(j))
        })
        .collect();
    struct Segment {
        rate: f64,
        channel: u32,
        index: u8,
    }
    let mut segments: Vec<Segment> = Vec::new();
    for (g, h) in hulls.iter().enumerate() {
        let (k, j) = locate(g);
        let e = curves[k].curve(j);
        for (s, v) in h.windows(2).enumerate() {
            let (a, b) = (v[0] as usize, v[1] as usize);
            let cost = ((tiers[b] - tiers[a]) as usize * curves[k].rows) as f64;
            segments.push(Segment {
                rate: (e[a] - e[b]) / cost,
                channel: g as u32,
                index: s as u8,
            });
        }
    }
    segments.par_sort_unstable_by(|x, y| {
        y.rate
            .total_cmp(&x.rate)
            .then(x.channel.cmp(&y.channel))
            .then(x.index.cmp(&y.index))
    });
    let mut pos = vec![0u8; total_channels]; // tier index
    let mut hull_at = vec![0u8; total_channels]; // hull vertex index
    let mut lambda = f64::NAN;
    for s in &segments {
        let g = s.channel as usize;
        if hull_at[g] != s.index {
            continue; // an earlier segment of this channel did not fit
        }
        let (k, _) = locate(g);
        let h = &hulls[g];
        let (a, b) = (
            h[s.index as usize] as usize,
            h[s.index as usize + 1] as usize,
        );
        let cost = ((tiers[b] - tiers[a]) as usize * curves[k].rows) as i64;
        if cost <= remaining {
            remaining -= cost;
            pos[g] = b as u8;
            hull_at[g] += 1;
            lambda = s.rate;
        }
    }
    // The last bits: the best single upgrades that fit, hull or not.
    loop {
        let best = (0..total_channels)
            .into_par_iter()
            .filter_map(|g| {
                let (k, j) = locate(g);
                let e = curves[k].curve(j);
                let a = pos[g] as usize;
                (a + 1..tiers.len())
                    .filter(|&b| {
                        ((tiers[b] - tiers[a]) as usize * curves[k].rows) as i64 <= remaining
                    })
                    .map(|b| (e[a] - e[b], g, b))
                    .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)))
            })
            .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
        let Some((_, g, b)) = best else { break };
        let (k, _) = locate(g);
        remaining -= ((tiers[b] - tiers[pos[g] as usize]) as usize * curves[k].rows) as i64;
        pos[g] = b as u8;
    }
    let mut bits = Vec::with_capacity(curves.len());
    let mut error = 0.0;
    let mut used = 0u64;
    for (k, c) in curves.iter().enumerate() {
        let b: Vec<u32> = (0..c.channels())
            .map(|j| tiers[pos[offsets[k] + j] as usize])
            .collect();
        for (j, &bj) in b.iter().enumerate() {
            error += c.curve(j)[pos[offsets[k] + j] as usize];
            used += bj as u64 * c.rows as u64;
        }
        bits.push(b);
    }
    Ok(MinErrorAllocation {
        bits,
        error,
        avg_bits: used as f64 / weights as f64,
        lambda,
    })
}

/// The vertices (tier indices, ascending) of the lower convex hull of the
/// points `(tiers[t], e[t])`, starting at the lowest tier. Collinear points
/// are kept: they let the budget be spent in smaller steps at the same price.
fn lower_hull(tiers: &[u32], e: &[f64]) -> Vec<u8> {
    let mut h: Vec<u8> = Vec::with_capacity(tiers.len());
    for t in 0..tiers.len() {
        while h.len() >= 2 {
            let (a, b) = (h[h.len() - 2] as usize, h[h.len() - 1] as usize);
            // b lies strictly above the chord a → t: not on the hull.
            let (x1, y1) = ((tiers[b] - tiers[a]) as f64, e[b] - e[a]);
            let (x2, y2) = ((tiers[t] - tiers[a]) as f64, e[t] - e[a]);
            if x1 * y2 - x2 * y1 < 0.0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(t as u8);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_drops_points_above_the_chord() {
        // (2, 10), (3, 9), (4, 2): 3 lies above the chord 2 → 4.
        assert_eq!(lower_hull(&[2, 3, 4], &[10.0, 9.0, 2.0]), vec![0, 2]);
        // Convex already: every point stays.
        assert_eq!(lower_hull(&[2, 3, 4], &[10.0, 4.0, 2.0]), vec![0, 1, 2]);
        // Collinear points stay.
        assert_eq!(lower_hull(&[2, 3, 4], &[4.0, 3.0, 2.0]), vec![0, 1, 2]);
    }
}
