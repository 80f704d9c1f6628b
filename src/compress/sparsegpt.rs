//! The OBS column sweep of SparseGPT (`SparseGPT.fasterprune`) and GPTQ
//! (`GPTQ.fasterquant`), once, serving pruning, quantization and both together.
//!
//! The steps are the reference's, in its order and in f32:
//! 1. quantizer parameters on the untouched weight (unless groups replace them);
//! 2. dead columns (`H_jj = 0`): `H_jj = 1`, `W[:, j] = 0`;
//! 3. static groups' parameters, then the `act_order` permutation;
//! 4. `damp = percdamp · mean(diag H)` on the diagonal, `Hinv = chol(H⁻¹)ᵀ` (upper);
//! 5. per block of `blocksize` columns: the unstructured mask over
//!    `W² / diag(Hinv)²` at the sparsity quantile; then per column: the n:m mask
//!    every `m` columns, prune, quantize, error `(w − q)/d`, update the rest of the
//!    block; then the lazy update of the later columns with the block's errors.
//!
//! Within a block, once its mask is chosen, rows are independent (a row's n:m
//! choice, quantizer groups and updates only read that row), so the column loop
//! runs in parallel over rows; the lazy update is one GEMM per block.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

use super::matrix::{from_host, mask_tensor, to_host};
use super::pattern::{mark_n_smallest, nm_valid, quantile_threshold, SparsityPattern};
use super::quant::{find_row_params, quantize, BitWidths, Levels, QuantGrid, QuantizerConfig};
use super::{CompressResult, CompressStats};

/// The damped Hessian (or its inverse) has no Cholesky factor. Callers can
/// recognise it (`err.downcast_ref::<NotPositiveDefinite>()`) and retry with more
/// damping, as the calibration loop does.
#[derive(Debug, thiserror::Error)]
#[error("Cholesky factorization of {what} failed: the damped Hessian is not positive definite (raise percdamp or add calibration data)")]
pub struct NotPositiveDefinite {
    /// Which matrix failed (`H` or `H⁻¹`).
    pub what: String,
}

/// Quantization settings of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOptions {
    /// Bit width, uniform or per input column. Default 4.
    pub bits: BitWidths,
    /// Grid choice (symmetry, MSE search). Default asymmetric min-max.
    pub quantizer: QuantizerConfig,
    /// GPTQ groups: parameters recomputed every `groupsize` columns from the
    /// current weight (in sweep order, so after `act_order`'s permutation), as
    /// `fasterquant` does. Default `None`: one grid per row, computed on the
    /// untouched weight before the sweep.
    pub groupsize: Option<usize>,
    /// With `groupsize`: compute every group's parameters up front, on the weight
    /// in its original column order (GPTQ `static_groups`), so that groups stay
    /// contiguous in the stored layout even under `act_order`. Default `false`.
    pub static_groups: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        Self {
            bits: BitWidths::Uniform(4),
            quantizer: QuantizerConfig::default(),
            groupsize: None,
            static_groups: false,
        }
    }
}

/// Settings of [`fasterprune`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGptOptions {
    /// What to prune. Default [`SparsityPattern::Dense`] (quantize only).
    pub pattern: SparsityPattern,
    /// What to quantize to; `None` (default) keeps float values.
    pub quant: Option<QuantOptions>,
    /// Columns per block (lazy batch). Default 128. An n:m pattern needs a
    /// multiple of `m`, since groups are counted from each block's start as in
    /// the reference.
    pub blocksize: usize,
    /// Dampening as a fraction of the mean Hessian diagonal. Default 0.01.
    pub percdamp: f64,
    /// Sweep columns in descending `diag H` order (GPTQ `--act-order`); the result
    /// is returned in the original order. Not allowed with n:m patterns, whose
    /// groups would then not be contiguous. Default `false`.
    pub act_order: bool,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        Self {
            pattern: SparsityPattern::Dense,
            quant: None,
            blocksize: 128,
            percdamp: 0.01,
            act_order: false,
        }
    }
}

impl SparseGptOptions {
    /// Checks the options against a weight with `columns` input columns.
    pub fn validate(&self, columns: usize) -> Result<()> {
        self.pattern.validate(columns)?;
        if self.blocksize == 0 {
            bail!("blocksize must be positive");
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            bail!(
                "percdamp must be a non-negative number, got {}",
                self.percdamp
            );
        }
        if let Some((n, m)) = self.pattern.nm() {
            if self.blocksize % m != 0 {
                bail!(
                    "n:m pattern {n}:{m}: blocksize {} is not a multiple of m",
                    self.blocksize
                );
            }
            if self.act_order {
                bail!("act_order cannot be combined with an n:m pattern: the groups would not be contiguous columns");
            }
        }
        match &self.quant {
            Some(q) => {
                q.bits.validate(columns)?;
                q.quantizer.validate()?;
                if q.groupsize == Some(0) {
                    bail!("groupsize must be positive");
                }
                if q.static_groups && q.groupsize.is_none() {
                    bail!("static_groups needs a groupsize");
                }
            }
            None => {
                if !self.pattern.prunes() {
                    bail!("nothing to do: the options ask for neither pruning (pattern) nor quantization (quant)");
                }
            }
        }
        Ok(())
    }
}

/// Prunes and/or quantizes `w` (`[rows, columns]`) with the OBS updates of
/// SparseGPT/GPTQ, given the Hessian `h` (`[columns, columns]`, e.g. from
/// [`super::HessianAccumulator`]). Any dtype and device; the sweep runs on the
/// host in f32 and the result comes back in `w`'s dtype and device.
///
/// Pure pruning and joint pruning + quantization follow `SparseGPT.fasterprune`;
/// pure quantization (a [`SparsityPattern::Dense`] pattern) is `GPTQ.fasterquant`,
/// whose groups, `act_order` and static groups also apply to the joint case.
/// Where this differs from the reference code, it is on purpose and documented:
/// an unstructured sparsity of 0 prunes nothing (the reference would prune the
/// block minimum), per-column bit widths are an extension, and requests the
/// reference would silently mishandle (n:m with `act_order`, a block size that
/// splits n:m groups, no work at all) are errors.
///
/// The returned stats carry the mask in the original column order, the OBS loss
/// as the reference prints it, and the number of dead columns.
pub fn fasterprune(w: &Tensor, h: &Tensor, opts: &SparseGptOptions) -> Result<CompressResult> {
    let start = Instant::now();
    let wm = to_host(w, "weight")?;
    let (rows, cols) = (wm.rows, wm.cols);
    let mut wd = wm.data;
    opts.validate(cols)?;
    let hm = to_host(h, "Hessian")?;
    if (hm.rows, hm.cols) != (cols, cols) {
        bail!(
            "the Hessian must be [{cols}, {cols}] for a weight with {cols} input columns, got [{}, {}]",
            hm.rows,
            hm.cols
        );
    }
    let mut hd = hm.data;

    let quant = opts.quant.as_ref();
    let mut levels = quant.map(|q| Levels::new(&q.bits, cols));
    let nl = levels.as_ref().map_or(0, |l| l.maxq.len());
    // Per row, (scale, zero) for each distinct width (one unused slot without
    // quantization, so that every row still has its chunk); with dynamic groups,
    // one such set per group, so that the grid of every group is kept.
    let dynamic_groups = match quant {
        Some(QuantOptions {
            groupsize: Some(gs),
            static_groups: false,
            ..
        }) => cols.div_ceil(*gs),
        _ => 1,
    };
    let mut params = vec![0f32; rows * dynamic_groups * (2 * nl).max(1)];
    if let (Some(q), Some(lv)) = (quant, &levels) {
        // Groups overwrite these at column 0, so only the ungrouped case needs them;
        // they come from the weight before dead columns are zeroed, as in the reference.
        if q.groupsize.is_none() {
            params
                .par_chunks_mut(2 * nl)
                .zip(wd.par_chunks(cols))
                .for_each(|(p, row)| fill_params(p, row, &lv.maxq, &q.quantizer));
        }
    }

    let mut dead_columns = 0;
    for j in 0..cols {
        if hd[j * cols + j] == 0.0 {
            hd[j * cols + j] = 1.0;
            dead_columns += 1;
            for r in 0..rows {
                wd[r * cols + j] = 0.0;
            }
        }
    }

    let static_groups = match quant {
        Some(QuantOptions {
            groupsize: Some(gs),
            static_groups: true,
            quantizer,
            ..
        }) => {
            let lv = levels.as_ref().unwrap();
            let ngroups = cols.div_ceil(*gs);
            let mut table = vec![0f32; rows * ngroups * 2 * nl];
            table
                .par_chunks_mut(ngroups * 2 * nl)
                .zip(wd.par_chunks(cols))
                .for_each(|(t, row)| {
                    for (g, p) in t.chunks_mut(2 * nl).enumerate() {
                        let part = &row[g * gs..((g + 1) * gs).min(cols)];
                        fill_params(p, part, &lv.maxq, quantizer);
                    }
                });
            Some((table, ngroups))
        }
        _ => None,
    };

    let perm = if opts.act_order {
        let mut perm: Vec<usize> = (0..cols).collect();
        // Stable, so equal diagonals (dead columns) keep their order.
        perm.sort_by(|&a, &b| hd[b * cols + b].total_cmp(&hd[a * cols + a]));
        wd = permute_columns(&wd, cols, &perm);
        let mut hp = vec![0f32; cols * cols];
        hp.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let src = &hd[perm[i] * cols..(perm[i] + 1) * cols];
            for (x, &p) in row.iter_mut().zip(&perm) {
                *x = src[p];
            }
        });
        hd = hp;
        if let Some(lv) = levels.as_mut() {
            lv.permute(&perm);
        }
        Some(perm)
    } else {
        None
    };

    let mean_diag = (0..cols).map(|j| hd[j * cols + j] as f64).sum::<f64>() / cols as f64;
    let damp = (opts.percdamp * mean_diag) as f32;
    for j in 0..cols {
        hd[j * cols + j] += damp;
    }
    let hinv = upper_cholesky_of_inverse(&hd, cols)?;
    drop(hd);

    let sweep = Sweep {
        rows,
        cols,
        hinv: &hinv,
        pattern: opts.pattern,
        blocksize: opts.blocksize,
        quant: quant.map(|q| QuantSweep {
            cfg: &q.quantizer,
            levels: levels.as_ref().unwrap(),
            groupsize: q.groupsize,
            static_groups: static_groups.as_ref().map(|(t, n)| (t.as_slice(), *n)),
            perm: perm.as_deref(),
        }),
    };
    let (mut mask, loss) = sweep.run(&mut wd, &mut params);

    // Sweep position of each original column.
    let mut position: Vec<usize> = (0..cols).collect();
    if let Some(perm) = &perm {
        for (j, &p) in perm.iter().enumerate() {
            position[p] = j;
        }
        wd = permute_columns(&wd, cols, &position);
        mask = permute_columns(&mask, cols, &position);
    }
    let grid = quant.map(|q| {
        let mut widths: Vec<u32> = (0..cols).map(|j| q.bits.column(j)).collect();
        widths.sort_unstable();
        widths.dedup();
        let column_width = Levels::new(&q.bits, cols).col;
        let (groups, column_group, params) = match (q.groupsize, static_groups) {
            (None, _) => (1, vec![0u32; cols], params),
            (Some(gs), Some((table, n))) => {
                (n, (0..cols).map(|j| (j / gs) as u32).collect(), table)
            }
            (Some(gs), None) => (
                dynamic_groups,
                position.iter().map(|&p| (p / gs) as u32).collect(),
                params,
            ),
        };
        QuantGrid {
            rows,
            widths,
            column_width,
            groupsize: q.groupsize,
            column_group,
            groups,
            params,
        }
    });

    let pruned = mask.iter().filter(|&&m| m).count();
    let nm_valid = opts.pattern.nm().map(|(n, m)| nm_valid(&wd, cols, n, m));
    let mask = mask_tensor(&mask, rows, cols, w.device())?;
    let weight = from_host(wd, rows, cols, w)?;
    Ok(CompressResult {
        weight,
        stats: CompressStats {
            sparsity: pruned as f64 / (rows * cols) as f64,
            nm_valid,
            avg_bits: quant.map(|q| q.bits.average(cols)),
            loss: Some(loss),
            dead_columns,
            seconds: start.elapsed().as_secs_f64(),
            mask,
            grid,
        },
    })
}

/// `(scale, zero)` of each width for one row (or group) into `out`.
fn fill_params(out: &mut [f32], row: &[f32], maxq: &[f32], cfg: &QuantizerConfig) {
    for (p, &mq) in out.chunks_exact_mut(2).zip(maxq) {
        let rp = find_row_params(row, mq, cfg);
        p[0] = rp.scale;
        p[1] = rp.zero;
    }
}

/// `out[:, j] = m[:, perm[j]]` for a row-major matrix with `cols` columns.
fn permute_columns<T: Copy + Send + Sync + Default>(
    m: &[T],
    cols: usize,
    perm: &[usize],
) -> Vec<T> {
    let mut out = vec![T::default(); m.len()];
    out.par_chunks_mut(cols)
        .zip(m.par_chunks(cols))
        .for_each(|(o, src)| {
            for (x, &p) in o.iter_mut().zip(perm) {
                *x = src[p];
            }
        });
    out
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), row-major: the
/// reference's `cholesky` → `cholesky_inverse` → `cholesky(upper=True)`, in f32.
fn upper_cholesky_of_inverse(h: &[f32], n: usize) -> Result<Vec<f32>> {
    let not_pd = |what: &str| {
        anyhow::Error::new(NotPositiveDefinite {
            what: what.to_string(),
        })
    };
    let hm = Mat::<f32>::from_fn(n, n, |i, j| h[i * n + j]);
    let inv = hm.llt(Side::Lower).map_err(|_| not_pd("H"))?.inverse();
    drop(hm);
    let llt = inv.llt(Side::Lower).map_err(|_| not_pd("H⁻¹"))?;
    let l = llt.L();
    let mut u = vec![0f32; n * n];
    u.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let col = l.col(i);
        for (j, x) in row.iter_mut().enumerate().skip(i) {
            *x = col[j];
        }
    });
    Ok(u)
}

/// Quantizer state the sweep reads.
struct QuantSweep<'a> {
    cfg: &'a QuantizerConfig,
    levels: &'a Levels,
    groupsize: Option<usize>,
    /// Per row, per group, per width `(scale, zero)`, and the group count.
    static_groups: Option<(&'a [f32], usize)>,
    /// Sweep position → original column, under `act_order`.
    perm: Option<&'a [usize]>,
}

/// One column sweep over a (possibly permuted) weight.
struct Sweep<'a> {
    rows: usize,
    cols: usize,
    /// Upper Cholesky factor of the damped H⁻¹, row-major.
    hinv: &'a [f32],
    pattern: SparsityPattern,
    blocksize: usize,
    quant: Option<QuantSweep<'a>>,
}

impl Sweep<'_> {
    /// Runs the sweep on `w` in place (it ends holding the compressed weight);
    /// `params` holds each row's current `(scale, zero)` per width. Returns the
    /// mask (sweep order) and the total loss.
    fn run(&self, w: &mut [f32], params: &mut [f32]) -> (Vec<bool>, f64) {
        let (rows, cols, bs) = (self.rows, self.cols, self.blocksize);
        let per_row = params.len() / rows;
        // Buffers sized once for a full block, reused by every block.
        let mut w1 = vec![0f32; rows * bs.min(cols)];
        let mut err1 = vec![0f32; rows * bs.min(cols)];
        let mut mask1 = vec![false; rows * bs.min(cols)];
        let mut scratch = match self.pattern.unstructured() {
            Some(_) => vec![0f32; rows * bs.min(cols)],
            None => Vec::new(),
        };
        let mut mask = vec![false; rows * cols];
        let mut losses = vec![0f64; rows];

        for i1 in (0..cols).step_by(bs) {
            let i2 = (i1 + bs).min(cols);
            let count = i2 - i1;
            let w1 = &mut w1[..rows * count];
            let err1 = &mut err1[..rows * count];
            let mask1 = &mut mask1[..rows * count];
            w1.par_chunks_mut(count)
                .zip(w.par_chunks(cols))
                .for_each(|(dst, src)| dst.copy_from_slice(&src[i1..i2]));
            mask1.fill(false);

            if let Some(sparsity) = self.pattern.unstructured() {
                let scratch = &mut scratch[..rows * count];
                let saliency = |idx: usize| {
                    let x = w1[idx];
                    let c = i1 + idx % count;
                    let d = self.hinv[c * cols + c];
                    (x * x) / (d * d)
                };
                scratch
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(idx, s)| *s = saliency(idx));
                let thresh = quantile_threshold(scratch, sparsity);
                mask1
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(idx, m)| *m = saliency(idx) <= thresh);
            }

            let w_outer: &[f32] = w;
            w1.par_chunks_mut(count)
                .zip(err1.par_chunks_mut(count))
                .zip(mask1.par_chunks_mut(count))
                .zip(params.par_chunks_mut(per_row))
                .zip(losses.par_iter_mut())
                .enumerate()
                .with_min_len(4)
                .for_each(|(r, ((((wrow, erow), mrow), prow), loss))| {
                    *loss += self.sweep_row(r, i1, i2, wrow, erow, mrow, prow, w_outer);
                });

            w.par_chunks_mut(cols)
                .zip(w1.par_chunks(count))
                .for_each(|(dst, q)| dst[i1..i2].copy_from_slice(q));
            mask.par_chunks_mut(cols)
                .zip(mask1.par_chunks(count))
                .for_each(|(dst, m)| dst[i1..i2].copy_from_slice(m));

            if i2 < cols {
                // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
                // faer 0.24.4's `from_row_major_slice_with_stride_mut` builds a
                // column-major view (strides swapped) and writes out of bounds, so
                // the row-major view is made as the transpose of a column-major one.
                let dst = MatMut::from_column_major_slice_with_stride_mut(
                    &mut w[i2..],
                    cols - i2,
                    rows,
                    cols,
                )
                .transpose_mut();
                let lhs = MatRef::from_row_major_slice(&*err1, rows, count);
                let rhs = MatRef::from_row_major_slice_with_stride(
                    &self.hinv[i1 * cols + i2..],
                    count,
                    cols - i2,
                    cols,
                );
                faer::linalg::matmul::matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::rayon(0));
            }
        }
        (mask, losses.iter().sum::<f64>() / 2.0)
    }

    /// One row of one block: columns `i1..i2`. `wrow` holds the row's block
    /// (updated in place, ending as the quantized/pruned values), `erow` receives
    /// the scaled errors, `mrow` the block mask (pre-filled when unstructured),
    /// `prow` the row's quantizer parameters. Returns the row's loss
    /// `Σ (w − q)² / d²` (not yet halved).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn sweep_row(
        &self,
        r: usize,
        i1: usize,
        i2: usize,
        wrow: &mut [f32],
        erow: &mut [f32],
        mrow: &mut [bool],
        prow: &mut [f32],
        w_outer: &[f32],
    ) -> f64 {
        let cols = self.cols;
        let hinv = self.hinv;
        let nm = self.pattern.nm();
        let mut loss = 0f64;
        for i in 0..(i2 - i1) {
            let c = i1 + i;
            // Hinv1[i, i:]
            let hrow = &hinv[c * cols + c..c * cols + i2];
            let d = hrow[0];
            if let Some((n, m)) = nm {
                if i % m == 0 {
                    let wr: &[f32] = wrow;
                    mark_n_smallest(n, &mut mrow[i..i + m], |k| {
                        let x = wr[i + k];
                        let dk = hinv[(c + k) * cols + c + k];
                        (x * x) / (dk * dk)
                    });
                }
            }
            let x = wrow[i];
            let mut q = if mrow[i] { 0.0 } else { x };
            if let Some(qs) = &self.quant {
                let l = qs.levels.col[c] as usize;
                let (scale, zero) = match (qs.groupsize, qs.static_groups) {
                    (Some(gs), Some((table, ngroups))) => {
                        let g = qs.perm.map_or(c, |p| p[c]) / gs;
                        let base = ((r * ngroups + g) * qs.levels.maxq.len() + l) * 2;
                        (table[base], table[base + 1])
                    }
                    (Some(gs), None) => {
                        // Each group keeps its own slot, so that the grid survives the sweep.
                        let nl2 = 2 * qs.levels.maxq.len();
                        let p = &mut prow[(c / gs) * nl2..(c / gs + 1) * nl2];
                        if c % gs == 0 {
                            // From the weight as it stood at the block's start (the
                            // reference reads its outer W, not the in-block copy).
                            let row = &w_outer[r * cols..(r + 1) * cols];
                            fill_params(p, &row[c..(c + gs).min(cols)], &qs.levels.maxq, qs.cfg);
                        }
                        (p[2 * l], p[2 * l + 1])
                    }
                    _ => (prow[2 * l], prow[2 * l + 1]),
                };
                q = quantize(q, scale, zero, qs.levels.maxq[l]);
            }
            let e = x - q;
            loss += ((e * e) / (d * d)) as f64;
            let err = e / d;
            for (v, h) in wrow[i..].iter_mut().zip(hrow) {
                *v -= err * h;
            }
            wrow[i] = q;
            erow[i] = err;
        }
        loss
    }
}
