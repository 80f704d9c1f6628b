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
//! runs in parallel over tiles of rows, vectorized across the rows of a tile
//! (see `row_tiles`); the lazy update is one GEMM per block.
//!
//! What runs where: everything but the lazy update runs on the host in f32
//! (quantizer parameters, dead columns, permutation, the Cholesky steps with
//! faer, the masks and the in-block column loop with rayon). The lazy update,
//! the sweep's dominant GEMM (`rows × blocksize × remaining columns` per
//! block), runs where the weight lives: a faer GEMM in place on the host for a
//! CPU weight, a candle `matmul` on the device for a CUDA weight (see
//! [`Trailing`]), with `Hinv` uploaded once. The in-block loop stays on the
//! host: it is a chain of rank-1 updates of width ≤ `blocksize` with
//! data-dependent masks and rounding, which a device would run as hundreds of
//! tiny kernels; per block only the block's columns go down and its errors go
//! up (`rows × blocksize` each).
//!
//! Host memory: at most two `cols × cols` f32 matrices are alive at once (the
//! Hessian's buffer, which becomes `Hinv` in place, and `L⁻¹` while `H⁻¹` is
//! formed; see [`upper_cholesky_of_inverse`]); permutations run in place.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::matrix::{from_host, mask_tensor, to_host};
use super::pattern::{nm_valid, quantile_threshold, SparsityPattern};
use super::quant::{find_row_params, BitWidths, Levels, QuantGrid, QuantizerConfig};
use super::{CompressResult, CompressStats};

mod row_tiles;

use row_tiles::Isa;

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
            if !self.blocksize.is_multiple_of(m) {
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
/// [`super::HessianAccumulator`]). Any dtype and device; the result comes back
/// in `w`'s dtype and device. The sweep runs in f32 on the host, except, for a
/// CUDA weight, each block's lazy update of the later columns, which runs on the
/// device (see the module documentation for why).
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
    run_sweep(w, h, opts, w.device().is_cuda(), Isa::best())
}

/// [`fasterprune`], with the lazy updates on `w`'s device (a candle `matmul`)
/// when `lazy_on_device`, else on the host (faer), with the in-block loop's
/// kernel built for `isa`. The unit tests force the device path on the CPU
/// device, and each kernel build.
fn run_sweep(
    w: &Tensor,
    h: &Tensor,
    opts: &SparseGptOptions,
    lazy_on_device: bool,
    isa: Isa,
) -> Result<CompressResult> {
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
        permute_columns(&mut wd, cols, &perm);
        // H[perm][:, perm], in place (no second n×n buffer).
        permute_columns(&mut hd, cols, &perm);
        permute_rows(&mut hd, cols, &perm);
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
    // From here on the Hessian's buffer holds Hinv (the only n×n host buffer of
    // the sweep; a second one, L⁻¹, lives only inside the factorization).
    let hinv = upper_cholesky_of_inverse(hd, cols)?;
    let mut trailing = if lazy_on_device {
        Trailing::on_device(&wd, &hinv, rows, cols, w.device())?
    } else {
        Trailing::Host
    };

    let sweep = Sweep {
        isa,
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
    let (mut mask, loss) = sweep.run(&mut wd, &mut params, &mut trailing)?;
    drop(trailing);

    // Sweep position of each original column.
    let mut position: Vec<usize> = (0..cols).collect();
    if let Some(perm) = &perm {
        for (j, &p) in perm.iter().enumerate() {
            position[p] = j;
        }
        permute_columns(&mut wd, cols, &position);
        permute_columns(&mut mask, cols, &position);
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

/// `m[:, j] ← m[:, perm[j]]` in place, for a row-major matrix with `cols` columns.
fn permute_columns<T: Copy + Send + Sync + Default>(m: &mut [T], cols: usize, perm: &[usize]) {
    m.par_chunks_mut(cols)
        .for_each_init(Vec::new, |tmp: &mut Vec<T>, row| {
            tmp.clear();
            tmp.extend_from_slice(row);
            for (x, &p) in row.iter_mut().zip(perm) {
                *x = tmp[p];
            }
        });
}

/// `m[i, :] ← m[perm[i], :]` in place, for a row-major matrix with `cols`
/// columns: each cycle of `perm` with one row of scratch.
fn permute_rows<T: Copy + Default>(m: &mut [T], cols: usize, perm: &[usize]) {
    let mut done = vec![false; perm.len()];
    let mut tmp = vec![T::default(); cols];
    for s in 0..perm.len() {
        if done[s] {
            continue;
        }
        done[s] = true;
        if perm[s] == s {
            continue;
        }
        tmp.copy_from_slice(&m[s * cols..(s + 1) * cols]);
        let mut i = s;
        loop {
            let j = perm[i];
            if j == s {
                m[i * cols..(i + 1) * cols].copy_from_slice(&tmp);
                break;
            }
            done[j] = true;
            m.copy_within(j * cols..(j + 1) * cols, i * cols);
            i = j;
        }
    }
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), row-major: the matrix
/// the reference gets from `cholesky` → `cholesky_inverse` → `cholesky(upper=True)`,
/// in f32, with half its work.
///
/// With `J` the order-reversing permutation and `JHJ = L'L'ᵀ`, `U = J·L'⁻¹·J`:
/// it is upper triangular with a positive diagonal, and
/// `UᵀU = J L'⁻ᵀ L'⁻¹ J = J (JHJ)⁻¹ J = H⁻¹`, so it is that unique factor. One
/// Cholesky and one triangular inverse (`2n³/3` flops) replace the reference's
/// Cholesky, inverse and second Cholesky (`4n³/3`), and `H⁻¹` is never formed.
///
/// Consumes the damped Hessian's row-major buffer (its lower triangle is read,
/// as `torch.linalg.cholesky` does: it is factored in place) and returns `U`
/// in the buffer `L'⁻¹` was written to. Host n×n f32 buffers alive at the
/// peak: two (the factor and `L'⁻¹`).
fn upper_cholesky_of_inverse(mut a: Vec<f32>, n: usize) -> Result<Vec<f32>> {
    assert_eq!(a.len(), n * n);
    // Reversed, the row-major buffer is J·H·J; seen column-major, its lower
    // triangle (all that the factorization reads) holds exactly H's row-major
    // lower triangle, so H's upper one is never read.
    a.reverse();
    let par = faer::get_global_parallelism();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f32>(n, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    let mut m = MatMut::from_column_major_slice_mut(&mut a, n, n);
    cholesky_in_place(
        m.rb_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    )
    .map_err(|_| {
        anyhow::Error::new(NotPositiveDefinite {
            what: "H".to_string(),
        })
    })?;
    // L'⁻¹ written row-major: reversing that buffer is J·L'⁻¹·J = U, row-major.
    let mut u = vec![0f32; n * n];
    invert_lower_triangular(MatMut::from_row_major_slice_mut(&mut u, n, n), m.rb(), par);
    drop(a);
    u.reverse();
    u.par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, row)| row[..i].fill(0.0));
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
    /// Build of the in-block loop's kernel.
    isa: Isa,
    rows: usize,
    cols: usize,
    /// Upper Cholesky factor of the damped H⁻¹, row-major.
    hinv: &'a [f32],
    pattern: SparsityPattern,
    blocksize: usize,
    quant: Option<QuantSweep<'a>>,
}

/// Where the columns the sweep has not reached yet live, and so where each
/// block's lazy update `W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]` runs. The rest of
/// the sweep is the same on both.
enum Trailing {
    /// In the host weight itself: the update is a faer GEMM in place.
    Host,
    /// On the weight's device (CUDA), in f32: `rest` is `W[:, i1:]` as of the
    /// current block's start (it shrinks by a block each time), `hinv` the upper
    /// factor, uploaded once. Each block downloads its columns (and, with
    /// dynamic groups, the rest of a group that starts in it) into `window`,
    /// `width` columns wide, and uploads its errors for the update.
    Device {
        rest: Tensor,
        hinv: Tensor,
        window: Vec<f32>,
        width: usize,
    },
}

impl Trailing {
    /// Uploads the (dead-column-zeroed, permuted) weight and `Hinv` to `device`.
    fn on_device(
        w: &[f32],
        hinv: &[f32],
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Trailing::Device {
            rest: Tensor::from_slice(w, (rows, cols), device)?,
            hinv: Tensor::from_slice(hinv, (cols, cols), device)?,
            window: Vec::new(),
            width: 0,
        })
    }

    /// Copies the block `W[:, i1:i2]`, as it stands after the earlier blocks'
    /// updates, into `w1` (`rows × (i2 − i1)`), and makes `W[:, i1:reach]`
    /// readable through [`Trailing::outer`].
    fn load(
        &mut self,
        w: &[f32],
        cols: usize,
        i1: usize,
        i2: usize,
        reach: usize,
        w1: &mut [f32],
    ) -> Result<()> {
        let count = i2 - i1;
        match self {
            Trailing::Host => w1
                .par_chunks_mut(count)
                .zip(w.par_chunks(cols))
                .for_each(|(dst, src)| dst.copy_from_slice(&src[i1..i2])),
            Trailing::Device {
                rest,
                window,
                width,
                ..
            } => {
                *width = reach - i1;
                // `contiguous` first: a strided tensor would come down whole.
                *window = rest
                    .narrow(1, 0, *width)?
                    .contiguous()?
                    .to_device(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                w1.par_chunks_mut(count)
                    .zip(window.par_chunks(*width))
                    .for_each(|(dst, src)| dst.copy_from_slice(&src[..count]));
            }
        }
        Ok(())
    }

    /// The weight as it stood at the start of block `i1` (readable from `i1` to
    /// the `reach` given to [`Trailing::load`]).
    fn outer<'a>(&'a self, w: &'a [f32], cols: usize, i1: usize) -> Outer<'a> {
        match self {
            Trailing::Host => Outer {
                data: w,
                stride: cols,
                first: 0,
            },
            Trailing::Device { window, width, .. } => Outer {
                data: window,
                stride: *width,
                first: i1,
            },
        }
    }

    /// `W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]` with the block's scaled errors
    /// `err1` (`rows × (i2 − i1)`), `i2 < cols`.
    fn update(
        &mut self,
        sweep: &Sweep,
        w: &mut [f32],
        err1: &[f32],
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        let (rows, cols) = (sweep.rows, sweep.cols);
        let count = i2 - i1;
        match self {
            Trailing::Host => {
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
                let lhs = MatRef::from_row_major_slice(err1, rows, count);
                let rhs = MatRef::from_row_major_slice_with_stride(
                    &sweep.hinv[i1 * cols + i2..],
                    count,
                    cols - i2,
                    cols,
                );
                faer::linalg::matmul::matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::rayon(0));
            }
            Trailing::Device { rest, hinv, .. } => {
                let device = rest.device().clone();
                let err = Tensor::from_slice(err1, (rows, count), &device)?;
                // cuBLAS wants the right factor's rows packed: copy the
                // `count × (cols − i2)` panel (small next to the GEMM).
                let panel = hinv
                    .narrow(0, i1, count)?
                    .narrow(1, i2, cols - i2)?
                    .contiguous()?;
                let later = rest.narrow(1, count, cols - i2)?;
                *rest = later.sub(&err.matmul(&panel)?)?;
            }
        }
        Ok(())
    }
}

/// Columns `first..` of the weight, row-major with row stride `stride`, as they
/// stood at the start of a block (what dynamic groups' parameters are computed
/// from, as the reference reads its outer `W`).
#[derive(Clone, Copy)]
struct Outer<'a> {
    data: &'a [f32],
    stride: usize,
    first: usize,
}

impl<'a> Outer<'a> {
    /// Row `r`, columns `c0..c1`.
    fn row(&self, r: usize, c0: usize, c1: usize) -> &'a [f32] {
        let base = r * self.stride;
        &self.data[base + c0 - self.first..base + c1 - self.first]
    }
}

impl Sweep<'_> {
    /// The last column (exclusive) the block `i1..i2` reads before its update:
    /// `i2`, or, with dynamic groups, the end of the last group that starts in
    /// the block (its parameters come from all its columns).
    fn reach(&self, i1: usize, i2: usize) -> usize {
        match &self.quant {
            Some(QuantSweep {
                groupsize: Some(gs),
                static_groups: None,
                ..
            }) => {
                let last = (i2 - 1) / gs * gs;
                if last >= i1 {
                    (last + gs).min(self.cols).max(i2)
                } else {
                    i2
                }
            }
            _ => i2,
        }
    }

    /// Runs the sweep on `w` in place (it ends holding the compressed weight);
    /// `params` holds each row's current `(scale, zero)` per width; `trailing`
    /// says where the columns not yet swept live (on the device, `w`'s columns
    /// are only written, block by block). Returns the mask (sweep order) and
    /// the total loss.
    fn run(
        &self,
        w: &mut [f32],
        params: &mut [f32],
        trailing: &mut Trailing,
    ) -> Result<(Vec<bool>, f64)> {
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
            trailing.load(w, cols, i1, i2, self.reach(i1, i2), w1)?;
            mask1.fill(false);

            if let Some(sparsity) = self.pattern.unstructured() {
                // W1² / diag(Hinv1)², row by row.
                let d2: Vec<f32> = (i1..i2)
                    .map(|c| {
                        let d = self.hinv[c * cols + c];
                        d * d
                    })
                    .collect();
                let scratch = &mut scratch[..rows * count];
                scratch
                    .par_chunks_mut(count)
                    .zip(w1.par_chunks(count))
                    .for_each(|(s, w)| {
                        for ((s, &x), &d2) in s.iter_mut().zip(w).zip(&d2) {
                            *s = (x * x) / d2;
                        }
                    });
                let thresh = quantile_threshold(scratch, sparsity);
                mask1
                    .par_chunks_mut(count)
                    .zip(scratch.par_chunks(count))
                    .for_each(|(m, s)| {
                        m.iter_mut().zip(s).for_each(|(m, &s)| *m = s <= thresh);
                    });
            }

            let outer = trailing.outer(w, cols, i1);
            self.sweep_block(i1, i2, w1, err1, mask1, params, per_row, &mut losses, outer);

            w.par_chunks_mut(cols)
                .zip(w1.par_chunks(count))
                .for_each(|(dst, q)| dst[i1..i2].copy_from_slice(q));
            mask.par_chunks_mut(cols)
                .zip(mask1.par_chunks(count))
                .for_each(|(dst, m)| dst[i1..i2].copy_from_slice(m));

            if i2 < cols {
                trailing.update(self, w, err1, i1, i2)?;
            }
        }
        Ok((mask, losses.iter().sum::<f64>() / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) of uniform values in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// A weight `[rows, cols]` and an SPD Hessian `XᵀX / s` with correlated
    /// columns, row-major.
    fn problem(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
        let samples = 2 * cols;
        let mut x: Vec<f32> = (0..samples * cols).map(|_| rng.next()).collect();
        for s in 0..samples {
            for j in 1..cols {
                x[s * cols + j] += 0.5 * x[s * cols + j - 1];
            }
        }
        let mut h = vec![0f32; cols * cols];
        h.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                let mut acc = 0f64;
                for s in 0..samples {
                    acc += (x[s * cols + i] * x[s * cols + j]) as f64;
                }
                *v = (acc / samples as f64) as f32;
            }
        });
        (w, h)
    }

    /// `U` with `UᵀU = H⁻¹` along the reference's own route (Cholesky, inverse,
    /// Cholesky of the inverse), in f64.
    fn upper_cholesky_of_inverse_f64(h: &[f32], n: usize) -> Vec<f64> {
        let chol = |m: &[f64]| -> Vec<f64> {
            let mut l = vec![0f64; n * n];
            for j in 0..n {
                let d = m[j * n + j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
                l[j * n + j] = d.sqrt();
                for i in j + 1..n {
                    let s = m[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
                    l[i * n + j] = s / l[j * n + j];
                }
            }
            l
        };
        let hd: Vec<f64> = h.iter().map(|&x| x as f64).collect();
        let l = chol(&hd);
        // H⁻¹ column by column: solve L y = e_c, then Lᵀ x = y.
        let mut inv = vec![0f64; n * n];
        for c in 0..n {
            let mut y = vec![0f64; n];
            for i in 0..n {
                let e = if i == c { 1.0 } else { 0.0 };
                y[i] = (e - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
            }
            let mut x = vec![0f64; n];
            for i in (0..n).rev() {
                x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
            }
            for i in 0..n {
                inv[i * n + c] = x[i];
            }
        }
        let l2 = chol(&inv);
        let mut u = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                u[i * n + j] = l2[j * n + i];
            }
        }
        u
    }

    #[test]
    fn reversed_factor_matches_the_references_route_in_f64() {
        for n in [1, 3, 17, 64, 100, 130, 257] {
            let (_, mut h) = problem(1, n, n as u64);
            for j in 0..n {
                h[j * n + j] += 0.01;
            }
            let want = upper_cholesky_of_inverse_f64(&h, n);
            let got = upper_cholesky_of_inverse(h, n).unwrap();
            let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0f64, f64::max);
            assert!(
                worst <= 1e-4 * scale,
                "n = {n}: max |Δ| {worst:e} of {scale:e}"
            );
            for i in 0..n {
                assert!(
                    got[i * n..i * n + i].iter().all(|&x| x == 0.0),
                    "upper triangular"
                );
            }
        }
    }

    #[test]
    fn a_singular_hessian_is_not_positive_definite() {
        let n = 4;
        let h = vec![1f32; n * n];
        let err = upper_cholesky_of_inverse(h, n).unwrap_err();
        assert!(err.downcast_ref::<NotPositiveDefinite>().is_some(), "{err}");
    }

    #[test]
    fn permutations_in_place() {
        let (rows, cols) = (7, 9);
        let m: Vec<usize> = (0..rows * cols).collect();
        let perm = [3, 0, 8, 1, 2, 4, 7, 6, 5];
        let mut got = m.clone();
        permute_columns(&mut got, cols, &perm);
        for r in 0..rows {
            for j in 0..cols {
                assert_eq!(got[r * cols + j], m[r * cols + perm[j]]);
            }
        }
        let sq: Vec<usize> = (0..cols * cols).collect();
        let mut got = sq.clone();
        permute_rows(&mut got, cols, &perm);
        for i in 0..cols {
            for j in 0..cols {
                assert_eq!(got[i * cols + j], sq[perm[i] * cols + j]);
            }
        }
    }

    /// The device path's bookkeeping (the shrinking `rest`, windows reaching
    /// into later blocks for dynamic groups, errors uploaded per block), run
    /// with candle on the CPU device, against the host path: only the GEMM's
    /// summation order differs.
    #[test]
    fn device_lazy_update_matches_host_on_the_cpu_device() -> Result<()> {
        let (rows, cols) = (48, 200);
        let (w, h) = problem(rows, cols, 7);
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu)?;
        let h = Tensor::from_vec(h, (cols, cols), &Device::Cpu)?;
        let q = |groupsize, static_groups| QuantOptions {
            groupsize,
            static_groups,
            ..QuantOptions::default()
        };
        let cases = [
            SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
                quant: Some(q(None, false)),
                blocksize: 32,
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                pattern: SparsityPattern::NM { n: 2, m: 4 },
                blocksize: 32,
                ..SparseGptOptions::default()
            },
            // Groups of 48 straddle blocks of 32: the window reaches past the block.
            SparseGptOptions {
                quant: Some(q(Some(48), false)),
                blocksize: 32,
                act_order: true,
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.3 },
                quant: Some(q(Some(48), true)),
                blocksize: 64,
                act_order: true,
                ..SparseGptOptions::default()
            },
        ];
        for opts in cases {
            let host = run_sweep(&w, &h, &opts, false, Isa::best())?;
            let dev = run_sweep(&w, &h, &opts, true, Isa::best())?;
            let (a, b) = (
                host.stats.mask.flatten_all()?.to_vec1::<u8>()?,
                dev.stats.mask.flatten_all()?.to_vec1::<u8>()?,
            );
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
            let (x, y) = (
                host.weight.flatten_all()?.to_vec1::<f32>()?,
                dev.weight.flatten_all()?.to_vec1::<f32>()?,
            );
            let num: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            let (la, lb) = (host.stats.loss.unwrap(), dev.stats.loss.unwrap());
            println!(
                "{opts:?}: mask agreement {agree}, rel. weight diff {rel:e}, loss {la} vs {lb}"
            );
            assert!(agree >= 0.995, "{opts:?}: masks agree on {agree}");
            assert!(rel < 1e-2, "{opts:?}: relative difference {rel}");
            assert!((la - lb).abs() <= 1e-3 * la, "{opts:?}: loss {la} vs {lb}");
            assert_eq!(host.stats.grid.is_some(), dev.stats.grid.is_some());
            if let (Some(ga), Some(gb)) = (&host.stats.grid, &dev.stats.grid) {
                assert_eq!(ga.column_group, gb.column_group);
                // Every quantized value on its own grid.
                for r in 0..rows {
                    for j in 0..cols {
                        let v = y[r * cols + j];
                        if b[r * cols + j] == 0 {
                            let back = gb.dequantize(r, j, gb.code(r, j, v));
                            assert!(
                                (back - v).abs() <= 1e-5 * v.abs().max(1.0),
                                "({r}, {j}): {v} vs {back}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn row_tile_kernels_agree_bit_for_bit() -> Result<()> {
        // 45 rows: one full tile of 32 and a partial one.
        let (rows, cols) = (45, 192);
        let (w, h) = problem(rows, cols, 11);
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu)?;
        let h = Tensor::from_vec(h, (cols, cols), &Device::Cpu)?;
        let q = |bits, groupsize, static_groups| {
            Some(QuantOptions {
                bits,
                groupsize,
                static_groups,
                ..QuantOptions::default()
            })
        };
        let mixed = BitWidths::PerColumn((0..cols).map(|j| [3, 4, 8][j % 3]).collect());
        let cases = [
            SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
                quant: q(BitWidths::Uniform(4), None, false),
                blocksize: 64,
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.6 },
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                pattern: SparsityPattern::NM { n: 4, m: 8 },
                quant: q(mixed.clone(), Some(40), false),
                blocksize: 64,
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                pattern: SparsityPattern::NM { n: 2, m: 4 },
                quant: q(mixed, None, false),
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                quant: q(BitWidths::Uniform(3), Some(48), false),
                blocksize: 32,
                act_order: true,
                ..SparseGptOptions::default()
            },
            SparseGptOptions {
                quant: q(BitWidths::Uniform(3), Some(48), true),
                blocksize: 32,
                act_order: true,
                ..SparseGptOptions::default()
            },
        ];
        let isas = Isa::available();
        println!("kernel builds on this CPU: {isas:?}");
        for opts in cases {
            let runs = isas
                .iter()
                .map(|&isa| run_sweep(&w, &h, &opts, false, isa))
                .collect::<Result<Vec<_>>>()?;
            let first = &runs[0];
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            for (isa, run) in isas.iter().zip(&runs).skip(1) {
                assert_eq!(
                    bits(&run.weight)?,
                    bits(&first.weight)?,
                    "{isa:?}, {opts:?}"
                );
                assert_eq!(
                    run.stats.mask.flatten_all()?.to_vec1::<u8>()?,
                    first.stats.mask.flatten_all()?.to_vec1::<u8>()?,
                    "{isa:?}, {opts:?}"
                );
                assert_eq!(run.stats.loss, first.stats.loss, "{isa:?}, {opts:?}");
                assert_eq!(
                    run.stats.grid.as_ref().map(|g| &g.params),
                    first.stats.grid.as_ref().map(|g| &g.params),
                    "{isa:?}, {opts:?}"
                );
            }
        }
        Ok(())
    }
}
