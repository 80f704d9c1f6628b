//! Channel importance: one score per input channel (column) of a linear, from
//! its weight, its calibration Hessian and a reservoir of its calibration
//! activations ([`super::ActivationReservoir`]).
//!
//! Scores rank channels for bit allocation ([`super::allocation`]); only their
//! order and relative size matter, so each metric is defined up to a positive
//! factor and [`normalize_mean1`] puts any of them on a common scale.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use rayon::prelude::*;

use super::matrix::{to_host, HostMatrix};
use super::sparsegpt::NotPositiveDefinite;
use super::HessianAccumulator;
use crate::report::ImportanceNote;

/// An importance metric. Below, `W` is the weight `[out, in]`, `H` the
/// accumulated Hessian `2/n · Σ XᵀX` ([`HessianAccumulator::hessian`]) and `x_j`
/// channel `j`'s activations in the reservoir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `‖W[:, j]‖₂`: how much weight reads the channel.
    Magnitude,
    /// `√H_jj`: the channel's input energy (RMS activation up to the Hessian's
    /// `√2` factor).
    Activation,
    /// `Σ_i |W_ij| · √H_jj`: Wanda's per-weight score summed over the column.
    Wanda,
    /// The OBS saliency summed over the column, with SparseGPT's damping (see
    /// [`ObsDenominator`] for the two forms).
    Obs,
    /// How heavy-tailed the channel's activations are ([`OutlierStat`]); needs
    /// the reservoir.
    Outlier,
    /// Mutual information between the channel's activation and a summary of the
    /// linear's output ([`MiOptions`]); needs the reservoir.
    Mi,
    /// `Σ_m weight_m · score_m / mean(score_m)` over the metrics listed in
    /// [`ImportanceOptions::combined`].
    Combined,
}

impl Metric {
    /// Every metric, in documentation order.
    pub const ALL: [Metric; 7] = [
        Metric::Magnitude,
        Metric::Activation,
        Metric::Wanda,
        Metric::Obs,
        Metric::Outlier,
        Metric::Mi,
        Metric::Combined,
    ];

    /// The name scripts use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Magnitude => "magnitude",
            Metric::Activation => "activation",
            Metric::Wanda => "wanda",
            Metric::Obs => "obs",
            Metric::Outlier => "outlier",
            Metric::Mi => "mi",
            Metric::Combined => "combined",
        }
    }

    /// The metric called `name`; an unknown name is an error listing the valid
    /// ones.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .with_context(|| {
                format!(
                    "unknown importance metric `{name}`; valid metrics: {}",
                    names(&Self::ALL)
                )
            })
    }

    /// Whether the metric reads the activation reservoir (for `combined`, whether
    /// any of its components does).
    pub fn needs_reservoir(self, opts: &ImportanceOptions) -> Result<bool> {
        Ok(match self {
            Metric::Outlier | Metric::Mi => true,
            Metric::Combined => !opts.combined_components()?.1.is_empty(),
            _ => false,
        })
    }
}

impl FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn names(ms: &[Metric]) -> String {
    ms.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

/// Which channels get scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Axis {
    /// One score per input channel (column of `W`): the unit that the column-wise
    /// OBS sweep quantizes with its own width. Default.
    #[default]
    Input,
    /// One score per output channel (row of `W`). Defined for `magnitude`
    /// (`‖W[i, :]‖₂`), `activation` (`√(W H Wᵀ)_ii`, the output's energy),
    /// `wanda` (`Σ_j |W_ij| √H_jj`), `obs` (`Σ_j` of the per-weight saliency),
    /// `outlier` (over the reservoir's outputs `x Wᵀ`) and `combined` of those;
    /// `mi` has no output form and is an error.
    Output,
}

impl Axis {
    /// `input` or `output`; anything else is an error listing both.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "input" => Ok(Axis::Input),
            "output" => Ok(Axis::Output),
            _ => bail!("unknown axis `{name}`; valid axes: input, output"),
        }
    }
}

/// The denominator of the OBS saliency `w² / d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObsDenominator {
    /// `d = U_jj²`, with `U` the upper Cholesky factor of the damped `H⁻¹`
    /// (`H⁻¹ = UᵀU`): exactly the `W² / diag(Hinv)²` that SparseGPT's sweep
    /// ranks weights by. `U_jj²` is `[H⁻¹]_jj` conditioned on the columns before
    /// `j` being fixed, so it depends on column order, as the sweep does. Default.
    #[default]
    Cholesky,
    /// `d = [H⁻¹]_jj`: the classical OBS saliency `w² / [H⁻¹]_jj` (Hassibi &
    /// Stork; SparseGPT paper eq. 3), independent of column order.
    Inverse,
}

/// The OBS denominators `d_j` (see [`ObsDenominator`]) and the dead columns of
/// the Hessian `hessian`, after SparseGPT's preparation of `H`: `H_jj = 0 → 1`, then
/// `percdamp · mean(diag H)` on the diagonal. In f64 (SparseGPT runs f32;
/// the factorisation is the same, only more accurate).
pub(crate) fn obs_denominators(
    hessian: &Tensor,
    percdamp: f64,
    form: ObsDenominator,
) -> Result<(Vec<f64>, Vec<bool>)> {
    let hm = to_host(hessian, "Hessian")?;
    let n = hm.cols;
    let mut h = Mat::<f64>::from_fn(n, n, |i, j| hm.data[i * n + j] as f64);
    drop(hm);
    let mut dead = vec![false; n];
    for (j, d) in dead.iter_mut().enumerate() {
        if h[(j, j)] == 0.0 {
            h[(j, j)] = 1.0;
            *d = true;
        }
    }
    let mean = (0..n).map(|j| h[(j, j)]).sum::<f64>() / n as f64;
    let damp = percdamp * mean;
    for j in 0..n {
        h[(j, j)] += damp;
    }
    let not_pd = |what: &str| {
        anyhow::Error::new(NotPositiveDefinite {
            what: what.to_string(),
        })
    };
    let inv = h.llt(Side::Lower).map_err(|_| not_pd("H"))?.inverse();
    drop(h);
    let d = match form {
        ObsDenominator::Inverse => (0..n).map(|j| inv[(j, j)]).collect(),
        ObsDenominator::Cholesky => {
            // H⁻¹ = L Lᵀ = UᵀU with U = Lᵀ: U_jj = L_jj.
            let llt = inv.llt(Side::Lower).map_err(|_| not_pd("H⁻¹"))?;
            let l = llt.L();
            (0..n).map(|j| l[(j, j)].powi(2)).collect()
        }
    };
    Ok((d, dead))
}

/// The heavy-tailedness statistic of `outlier`, per channel over the reservoir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutlierStat {
    /// `max_t |x_tj| / mean_t |x_tj|`: the peak-to-average ratio, the quantity
    /// LLM.int8-style outlier features are defined by; it grows with the one or
    /// two extreme tokens that make a channel hard to quantize, which the
    /// fourth moment dilutes over 4096 tokens. 0 for a channel that is zero on
    /// every sampled token. Default.
    #[default]
    MaxOverMean,
    /// Pearson kurtosis `E[(x − μ)⁴] / E[(x − μ)²]²` (3 for a Gaussian, not
    /// excess), population moments; 0 for a constant channel.
    Kurtosis,
}

/// How a variable is cut into histogram bins for [`mutual_information`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binning {
    /// Equal-frequency bins: a value's bin is `⌊bins · r / N⌋`, `r` the number of
    /// samples strictly below it, so equal values share a bin (a channel that is
    /// zero on 90% of tokens after a ReLU has one bin for its zeros). Mutual
    /// information is invariant under monotone maps of either variable, and rank
    /// bins make it so for the estimate too: one outlier token cannot squeeze
    /// every other sample into a single bin. Default.
    #[default]
    Quantile,
    /// `bins` equal-width bins over `[min, max]` (a constant variable is one bin).
    Uniform,
}

/// Which summary of the linear's output `y = x Wᵀ` channel activations are
/// compared with by `mi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MiTarget {
    /// `‖x_t Wᵀ‖₂` per token: the size of the linear's response. Every output
    /// row contributes, and the sign convention of the rows does not matter.
    /// One `[k, in] × [in, out]` product on the weight's device. Default.
    #[default]
    OutputNorm,
    /// `Σ_i (x_t Wᵀ)_i` per token: a single fixed projection, linear in `x`
    /// (channel `j` enters with the coefficient `Σ_i W_ij`). Cheap, but rows of
    /// opposite sign cancel.
    OutputSum,
}

/// Settings of the `mi` metric and of [`mutual_information`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MiOptions {
    /// Bins per variable (the joint histogram is `bins × bins`). Default 16.
    pub bins: usize,
    /// How bins are cut. Default [`Binning::Quantile`].
    pub binning: Binning,
    /// Apply the Miller–Madow bias correction. Default `true`.
    pub miller_madow: bool,
    /// What the channel is compared with. Default [`MiTarget::OutputNorm`].
    pub target: MiTarget,
}

impl Default for MiOptions {
    fn default() -> Self {
        Self {
            bins: 16,
            binning: Binning::Quantile,
            miller_madow: true,
            target: MiTarget::OutputNorm,
        }
    }
}

/// The weighted metrics of `combined`, and those of them that need the reservoir.
type Components = (Vec<(Metric, f64)>, Vec<Metric>);

/// Settings of [`score_importance`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImportanceOptions {
    /// Input (default) or output channels.
    pub axis: Axis,
    /// `obs`: damping as a fraction of the mean Hessian diagonal, after dead
    /// columns get `H_jj = 1`, exactly as SparseGPT damps. Default 0.01.
    pub percdamp: f64,
    /// `obs`: which denominator. Default [`ObsDenominator::Cholesky`].
    pub obs: ObsDenominator,
    /// `outlier`: which statistic. Default [`OutlierStat::MaxOverMean`].
    pub outlier: OutlierStat,
    /// `mi`: estimator settings.
    pub mi: MiOptions,
    /// `combined`: `(metric, weight)` pairs. Default: `magnitude`, `activation`,
    /// `obs`, `outlier`, `mi`, weight 1 each — one metric per kind of evidence
    /// (weights, input energy, second-order sensitivity, tails, information);
    /// `wanda` is left out as it is the product of the first two.
    pub combined: Vec<(String, f64)>,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        Self {
            axis: Axis::Input,
            percdamp: 0.01,
            obs: ObsDenominator::Cholesky,
            outlier: OutlierStat::MaxOverMean,
            mi: MiOptions::default(),
            combined: ["magnitude", "activation", "obs", "outlier", "mi"]
                .into_iter()
                .map(|m| (m.to_string(), 1.0))
                .collect(),
        }
    }
}

impl ImportanceOptions {
    /// The parsed `combined` components, and those of them that need the
    /// reservoir. Errors on an unknown or nested metric, a repeated one, a weight
    /// that is negative or not finite, or an empty or all-zero list.
    fn combined_components(&self) -> Result<Components> {
        if self.combined.is_empty() {
            bail!("combined: the list of metrics is empty");
        }
        let mut out: Vec<(Metric, f64)> = Vec::new();
        for (name, w) in &self.combined {
            let m = Metric::parse(name).context("combined")?;
            if m == Metric::Combined {
                bail!("combined cannot contain `combined`");
            }
            if out.iter().any(|(o, _)| *o == m) {
                bail!("combined lists `{name}` twice");
            }
            if !(w.is_finite() && *w >= 0.0) {
                bail!("combined: the weight of `{name}` must be a non-negative number, got {w}");
            }
            out.push((m, *w));
        }
        if out.iter().all(|(_, w)| *w == 0.0) {
            bail!("combined: every weight is zero");
        }
        let needs = out
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| matches!(m, Metric::Outlier | Metric::Mi))
            .collect();
        Ok((out, needs))
    }

    fn validate(&self) -> Result<()> {
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            bail!(
                "percdamp must be a non-negative number, got {}",
                self.percdamp
            );
        }
        if self.mi.bins < 2 || self.mi.bins > u16::MAX as usize {
            bail!("mi bins must be in 2..=65535, got {}", self.mi.bins);
        }
        Ok(())
    }
}

/// Scores the channels of one linear with `metric` (a name from
/// [`Metric::ALL`]): one f32 per input channel (per output channel with
/// [`Axis::Output`]).
///
/// `w` is the weight `[out, in]`, `acc` the Hessian of its inputs (`in` columns),
/// `reservoir` a sample of its input rows `[k, in]`
/// ([`super::ActivationReservoir::samples`]), needed by `outlier`, `mi` and a
/// `combined` that lists either. Any dtype and device; the scores come back on
/// the host. Scores are raw (not normalised) and non-negative.
///
/// Errors: an unknown metric (listing the valid ones); a metric that needs the
/// reservoir without one; `mi` on the output axis; mismatched shapes; non-finite
/// inputs; a damped Hessian that is not positive definite (`obs`, as
/// [`NotPositiveDefinite`]).
pub fn score_importance(
    metric: &str,
    w: &Tensor,
    acc: &HessianAccumulator,
    reservoir: Option<&Tensor>,
    opts: &ImportanceOptions,
) -> Result<Vec<f32>> {
    let metric = Metric::parse(metric)?;
    opts.validate()?;
    if metric.needs_reservoir(opts)? && reservoir.is_none() {
        let what = match metric {
            Metric::Combined => format!("its components {}", names(&opts.combined_components()?.1)),
            _ => "it".to_string(),
        };
        bail!(
            "metric `{metric}` needs the activation reservoir (a sample of this linear's calibration \
             inputs), since {what} measure(s) activations, but none was given"
        );
    }
    let wm = to_host(w, "weight")?;
    if wm.cols != acc.columns() {
        bail!(
            "the weight has {} input columns but the Hessian has {}",
            wm.cols,
            acc.columns()
        );
    }
    let res = match reservoir {
        Some(r) => {
            let m = to_host(r, "activation reservoir")?;
            if m.cols != wm.cols {
                bail!(
                    "the activation reservoir has {} columns, the weight {} input columns",
                    m.cols,
                    wm.cols
                );
            }
            Some((m, r))
        }
        None => None,
    };
    let scorer = Scorer {
        w,
        wm: &wm,
        acc,
        res: res.as_ref().map(|(m, t)| (m, *t)),
        opts,
    };
    let scores: Vec<f32> = scorer
        .score(metric)?
        .into_iter()
        .map(|s| s as f32)
        .collect();
    // The Hessian's diagonal is read without a full finiteness check, and f32
    // can overflow: say which metric broke rather than let allocation choke.
    if let Some(j) = scores.iter().position(|s| !s.is_finite()) {
        bail!(
            "metric `{metric}` gave channel {j} a non-finite score ({}); check the weight and \
             the Hessian for non-finite values",
            scores[j]
        );
    }
    Ok(scores)
}

/// Everything a metric may read.
struct Scorer<'a> {
    w: &'a Tensor,
    wm: &'a HostMatrix,
    acc: &'a HessianAccumulator,
    res: Option<(&'a HostMatrix, &'a Tensor)>,
    opts: &'a ImportanceOptions,
}

impl Scorer<'_> {
    fn score(&self, metric: Metric) -> Result<Vec<f64>> {
        let out = self.opts.axis == Axis::Output;
        let (rows, cols) = (self.wm.rows, self.wm.cols);
        let scores = match metric {
            Metric::Magnitude => {
                let sq = if out {
                    row_sums(self.wm, |_, x| (x as f64).powi(2))
                } else {
                    column_sums(self.wm, |_, x| (x as f64).powi(2))
                };
                sq.into_iter().map(f64::sqrt).collect()
            }
            Metric::Activation => {
                if out {
                    // (W H Wᵀ)_ii = Σ_j W_ij (W H)_ij, on the Hessian's device.
                    let h = self.acc.hessian();
                    let w = self.w.to_device(h.device())?.to_dtype(DType::F32)?;
                    let e = (w.matmul(h)? * &w)?.sum(1)?;
                    host_vec(&e)?
                        .into_iter()
                        .map(|v| (v as f64).max(0.0).sqrt())
                        .collect()
                } else {
                    self.acc
                        .diagonal()?
                        .into_iter()
                        .map(|h| h.max(0.0).sqrt())
                        .collect()
                }
            }
            Metric::Wanda => {
                let s: Vec<f64> = self
                    .acc
                    .diagonal()?
                    .into_iter()
                    .map(|h| h.max(0.0).sqrt())
                    .collect();
                if out {
                    row_sums(self.wm, |j, x| (x as f64).abs() * s[j])
                } else {
                    column_sums(self.wm, |j, x| (x as f64).abs() * s[j])
                }
            }
            Metric::Obs => {
                let (d, dead) = self.obs_denominators()?;
                // SparseGPT zeroes the weights of dead columns: they score 0.
                let sal = |j: usize, x: f32| {
                    if dead[j] {
                        0.0
                    } else {
                        (x as f64).powi(2) / d[j]
                    }
                };
                if out {
                    row_sums(self.wm, sal)
                } else {
                    column_sums(self.wm, sal)
                }
            }
            Metric::Outlier => {
                let (res, res_t) = self.res.expect("checked by score_importance");
                if out {
                    let y = self.outputs(res_t)?;
                    outlier_scores(&y, self.opts.outlier)
                } else {
                    outlier_scores(res, self.opts.outlier)
                }
            }
            Metric::Mi => {
                if out {
                    bail!(
                        "metric `mi` has no output-axis form: it measures what an input channel tells \
                         about the output; use axis `input`"
                    );
                }
                let (res, res_t) = self.res.expect("checked by score_importance");
                self.mi_scores(res, res_t)?
            }
            Metric::Combined => {
                let (parts, _) = self.opts.combined_components()?;
                let n = if out { rows } else { cols };
                let mut total = vec![0f64; n];
                for (m, weight) in parts {
                    let mut s: Vec<f32> = self.score(m)?.into_iter().map(|v| v as f32).collect();
                    normalize_mean1(&mut s)
                        .with_context(|| format!("combined: normalising `{m}`"))?;
                    for (t, v) in total.iter_mut().zip(&s) {
                        *t += weight * *v as f64;
                    }
                }
                total
            }
        };
        Ok(scores)
    }

    /// [`obs_denominators`] with this scorer's damping and form.
    fn obs_denominators(&self) -> Result<(Vec<f64>, Vec<bool>)> {
        obs_denominators(self.acc.hessian(), self.opts.percdamp, self.opts.obs)
    }

    /// The linear's outputs on the reservoir rows, `[k, out]` on the host,
    /// computed on the weight's device.
    fn outputs(&self, res: &Tensor) -> Result<HostMatrix> {
        let w = self.w.to_dtype(DType::F32)?;
        let x = res.to_device(w.device())?.to_dtype(DType::F32)?;
        to_host(&x.matmul(&w.t()?)?, "reservoir outputs")
    }

    /// `mi` per input channel: [`mutual_information`] between each reservoir
    /// column and the output summary, clamped at 0 (the bias correction can
    /// push an independent channel slightly below).
    fn mi_scores(&self, res: &HostMatrix, res_t: &Tensor) -> Result<Vec<f64>> {
        let mo = &self.opts.mi;
        let y: Vec<f32> = match mo.target {
            MiTarget::OutputNorm => self
                .outputs(res_t)?
                .data
                .chunks(self.wm.rows)
                .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32)
                .collect(),
            MiTarget::OutputSum => {
                // Σ_i (x Wᵀ)_i = x · (Σ_i W_i), with the column sums in f64.
                let s = column_sums(self.wm, |_, x| x as f64);
                res.data
                    .chunks(res.cols)
                    .map(|r| r.iter().zip(&s).map(|(&x, &c)| x as f64 * c).sum::<f64>() as f32)
                    .collect()
            }
        };
        let k = res.rows;
        if k < 2 {
            bail!("metric `mi` needs at least 2 reservoir rows, got {k}");
        }
        let by = bin_values(&y, mo.bins, mo.binning);
        let cols = transpose(res);
        Ok(cols
            .par_chunks(k)
            .map(|x| {
                let bx = bin_values(x, mo.bins, mo.binning);
                mi_from_bins(&bx, &by, mo.bins, mo.miller_madow).max(0.0)
            })
            .collect())
    }
}

/// `Σ_i f(j, W_ij)` for every column `j`, in f64, rows in parallel.
fn column_sums(m: &HostMatrix, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    let cols = m.cols;
    m.data
        .par_chunks(cols)
        .fold(
            || vec![0f64; cols],
            |mut acc, row| {
                for (j, (a, &x)) in acc.iter_mut().zip(row).enumerate() {
                    *a += f(j, x);
                }
                acc
            },
        )
        .reduce(
            || vec![0f64; cols],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// `Σ_j f(j, W_ij)` for every row `i`, in f64.
fn row_sums(m: &HostMatrix, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    m.data
        .par_chunks(m.cols)
        .map(|row| row.iter().enumerate().map(|(j, &x)| f(j, x)).sum())
        .collect()
}

/// A 1-D tensor (any dtype/device) as host f32.
fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()?)
}

/// Column-major copy of a row-major matrix: each column contiguous.
fn transpose(m: &HostMatrix) -> Vec<f32> {
    let (rows, cols) = (m.rows, m.cols);
    let mut t = vec![0f32; rows * cols];
    t.par_chunks_mut(rows).enumerate().for_each(|(j, col)| {
        for (i, v) in col.iter_mut().enumerate() {
            *v = m.data[i * cols + j];
        }
    });
    t
}

/// The chosen heavy-tailedness statistic of every column of `m` (tokens × channels).
fn outlier_scores(m: &HostMatrix, stat: OutlierStat) -> Vec<f64> {
    let k = m.rows as f64;
    match stat {
        OutlierStat::MaxOverMean => {
            let max = m.data.par_chunks(m.cols).fold(
                || vec![0f64; m.cols],
                |mut acc, row| {
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a = a.max((x as f64).abs());
                    }
                    acc
                },
            );
            let max = max.reduce(
                || vec![0f64; m.cols],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x = x.max(*y));
                    a
                },
            );
            let sum = column_sums(m, |_, x| (x as f64).abs());
            max.iter()
                .zip(&sum)
                .map(|(&mx, &s)| if s > 0.0 { mx / (s / k) } else { 0.0 })
                .collect()
        }
        OutlierStat::Kurtosis => {
            let mean: Vec<f64> = column_sums(m, |_, x| x as f64)
                .into_iter()
                .map(|s| s / k)
                .collect();
            let m2 = column_sums(m, |j, x| (x as f64 - mean[j]).powi(2));
            let m4 = column_sums(m, |j, x| (x as f64 - mean[j]).powi(4));
            m2.iter()
                .zip(&m4)
                .map(|(&a, &b)| {
                    let (a, b) = (a / k, b / k);
                    if a > 0.0 {
                        b / (a * a)
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    }
}

/// Histogram estimate of the mutual information `I(X; Y)` in nats from paired
/// samples.
///
/// Each variable is cut into `opts.bins` bins ([`Binning`]); with `n_ab` the
/// joint counts and `n_a`, `n_b` the marginals over `N` pairs, the plug-in
/// estimate is `Î = Σ_ab (n_ab/N) ln(n_ab N / (n_a n_b))`. The plug-in estimate
/// is biased upwards: for independent variables its expectation is about
/// `(m_a − 1)(m_b − 1) / 2N` (0.027 nats for 16 × 16 bins and N = 4096), so two
/// independent channels would not score 0. With `miller_madow` each entropy
/// gets the Miller–Madow term `(m − 1)/2N` (`m` = occupied bins), which
/// subtracts `(m_ab − m_a − m_b + 1) / 2N` from `Î` and removes that first-order
/// bias; the result may then be slightly negative. Binning also loses
/// information (a downward bias for continuous variables that shrinks with more
/// bins): with quantile bins and N = 200 000 Gaussian pairs the estimate is
/// within 0.03 nats of `−½ ln(1 − ρ²)` for |ρ| ≤ 0.9 (see the tests).
///
/// `opts.target` is not used here; it picks `Y` for the `mi` metric.
pub fn mutual_information(x: &[f32], y: &[f32], opts: &MiOptions) -> Result<f64> {
    if x.len() != y.len() {
        bail!(
            "mutual information needs paired samples: {} x values, {} y values",
            x.len(),
            y.len()
        );
    }
    if x.len() < 2 {
        bail!(
            "mutual information needs at least 2 samples, got {}",
            x.len()
        );
    }
    if opts.bins < 2 || opts.bins > u16::MAX as usize {
        bail!("mi bins must be in 2..=65535, got {}", opts.bins);
    }
    if let Some(v) = x.iter().chain(y).find(|v| !v.is_finite()) {
        bail!("mutual information of non-finite samples ({v})");
    }
    let bx = bin_values(x, opts.bins, opts.binning);
    let by = bin_values(y, opts.bins, opts.binning);
    Ok(mi_from_bins(&bx, &by, opts.bins, opts.miller_madow))
}

/// Bin index of every value (see [`Binning`]).
fn bin_values(v: &[f32], bins: usize, binning: Binning) -> Vec<u16> {
    let n = v.len();
    let mut out = vec![0u16; n];
    match binning {
        Binning::Quantile => {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_unstable_by(|&a, &b| v[a as usize].total_cmp(&v[b as usize]));
            let mut start = 0;
            while start < n {
                // A run of equal values shares the bin of its first rank.
                let val = v[order[start] as usize];
                let mut end = start + 1;
                while end < n && v[order[end] as usize] == val {
                    end += 1;
                }
                let b = (start as u64 * bins as u64 / n as u64) as u16;
                for &i in &order[start..end] {
                    out[i as usize] = b;
                }
                start = end;
            }
        }
        Binning::Uniform => {
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x as f64), hi.max(x as f64))
                });
            let width = (hi - lo) / bins as f64;
            if width > 0.0 {
                for (o, &x) in out.iter_mut().zip(v) {
                    *o = (((x as f64 - lo) / width) as usize).min(bins - 1) as u16;
                }
            }
        }
    }
    out
}

/// Plug-in mutual information (nats) of two binned variables, optionally with
/// the Miller–Madow correction (see [`mutual_information`]).
fn mi_from_bins(bx: &[u16], by: &[u16], bins: usize, miller_madow: bool) -> f64 {
    let n = bx.len() as f64;
    let mut joint = vec![0u32; bins * bins];
    let mut ca = vec![0u32; bins];
    let mut cb = vec![0u32; bins];
    for (&a, &b) in bx.iter().zip(by) {
        joint[a as usize * bins + b as usize] += 1;
        ca[a as usize] += 1;
        cb[b as usize] += 1;
    }
    let mut mi = 0.0;
    for a in 0..bins {
        for b in 0..bins {
            let c = joint[a * bins + b];
            if c > 0 {
                let c = c as f64;
                mi += c / n * (c * n / (ca[a] as f64 * cb[b] as f64)).ln();
            }
        }
    }
    if miller_madow {
        let occupied = |v: &[u32]| v.iter().filter(|&&c| c > 0).count() as f64;
        mi -= (occupied(&joint) - occupied(&ca) - occupied(&cb) + 1.0) / (2.0 * n);
    }
    mi
}

/// Scales `scores` in place to mean 1. Errors on an empty slice, a non-finite
/// value, or a mean that is not positive (nothing to scale by).
pub fn normalize_mean1(scores: &mut [f32]) -> Result<()> {
    check_scores(scores)?;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / scores.len() as f64;
    if mean <= 0.0 || !mean.is_finite() {
        bail!("scores have mean {mean}: normalising to mean 1 needs a positive mean");
    }
    for s in scores.iter_mut() {
        *s = (*s as f64 / mean) as f32;
    }
    Ok(())
}

/// `(min, max)` of `scores`. Errors on an empty slice or a non-finite value.
pub fn score_range(scores: &[f32]) -> Result<(f32, f32)> {
    check_scores(scores)?;
    Ok(scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        }))
}

/// The note a report carries (the calibration's `LayerWork::set_importance`):
/// the metric's name and the range of the scores normalised to mean 1.
pub fn importance_note(metric: &str, scores: &[f32]) -> Result<ImportanceNote> {
    let mut s = scores.to_vec();
    normalize_mean1(&mut s).with_context(|| format!("importance `{metric}`"))?;
    let (min, max) = score_range(&s)?;
    Ok(ImportanceNote {
        metric: metric.to_string(),
        min: min as f64,
        max: max as f64,
    })
}

fn check_scores(scores: &[f32]) -> Result<()> {
    if scores.is_empty() {
        bail!("no scores");
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!("score {i} is not finite ({})", scores[i]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_metric_lists_valid_ones() {
        let e = Metric::parse("entropy").unwrap_err().to_string();
        assert!(
            e.contains("entropy")
                && e.contains("magnitude, activation, wanda, obs, outlier, mi, combined"),
            "{e}"
        );
    }

    #[test]
    fn quantile_bins_keep_ties_together() {
        let v = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0];
        let b = bin_values(&v, 4, Binning::Quantile);
        assert_eq!(b, vec![0, 0, 0, 0, 0, 0, 3, 3]);
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(bin_values(&v, 4, Binning::Quantile), vec![3, 0, 2, 1]);
        assert_eq!(bin_values(&v, 3, Binning::Uniform), vec![2, 0, 2, 1]);
    }

    #[test]
    fn independent_variables_have_near_zero_corrected_mi() -> Result<()> {
        // x uniform-ish, y a deterministic scramble with no relation to x.
        let n = 4096;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32).collect();
        let y: Vec<f32> = (0..n).map(|i| ((i * 104_729 + 17) % 4099) as f32).collect();
        let plain = mutual_information(
            &x,
            &y,
            &MiOptions {
                miller_madow: false,
                ..Default::default()
            },
        )?;
        let mm = mutual_information(&x, &y, &MiOptions::default())?;
        assert!(plain > 0.01, "plug-in bias should show: {plain}");
        assert!(mm.abs() < plain / 2.0, "corrected {mm} vs plug-in {plain}");
        Ok(())
    }

    #[test]
    fn normalise_and_range() -> Result<()> {
        let mut s = vec![1.0, 2.0, 3.0];
        normalize_mean1(&mut s)?;
        assert_eq!(s, vec![0.5, 1.0, 1.5]);
        assert_eq!(score_range(&s)?, (0.5, 1.5));
        assert!(normalize_mean1(&mut [0.0, 0.0]).is_err());
        assert!(normalize_mean1(&mut []).is_err());
        assert!(score_range(&[1.0, f32::NAN]).is_err());
        let note = importance_note("wanda", &[2.0, 4.0])?;
        assert_eq!(note.metric, "wanda");
        assert!((note.min - 2.0 / 3.0).abs() < 1e-6 && (note.max - 4.0 / 3.0).abs() < 1e-6);
        Ok(())
    }
}
