//! The GPTQ/SparseGPT min-max weight quantizer (`quant.py`'s `Quantizer` with
//! `perchannel=True`), extended to a bit width per input column.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::matrix::{from_host, to_host};

/// How the per-row grid is chosen. The bit width is given separately
/// ([`BitWidths`]) because one row may carry several.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizerConfig {
    /// Symmetric grid: range `[−a, a]` with `a = max(|min|, max)` and the zero
    /// point fixed at `(maxq + 1) / 2`, exactly as the reference (which, for a row
    /// with no negative value, keeps `min = 0` yet still centres the zero point,
    /// clipping the top of the range). Default `false` (asymmetric, as SparseGPT
    /// quantizes).
    pub sym: bool,
    /// Search a shrunk range that minimises `Σ |q − x|^norm` per row (GPTQ's
    /// `--mse`-style grid). Default `false`.
    pub mse: bool,
    /// Error norm of the search. Default 2.4.
    pub norm: f64,
    /// Grid resolution of the search: shrink factors `1 − i/grid`. Default 100.
    pub grid: usize,
    /// Largest shrink tried: `i < ⌊maxshrink · grid⌋`. Default 0.8.
    pub maxshrink: f64,
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        Self {
            sym: false,
            mse: false,
            norm: 2.4,
            grid: 100,
            maxshrink: 0.8,
        }
    }
}

impl QuantizerConfig {
    /// Checks the search parameters (only consulted when `mse` is set).
    pub fn validate(&self) -> Result<()> {
        if self.mse {
            if !(self.norm.is_finite() && self.norm > 0.0) {
                bail!("norm must be a positive number, got {}", self.norm);
            }
            if self.grid == 0 {
                bail!("grid must be positive");
            }
            if !(self.maxshrink > 0.0 && self.maxshrink <= 1.0) {
                bail!("maxshrink must be in (0, 1], got {}", self.maxshrink);
            }
        }
        Ok(())
    }
}

/// Bit widths of a weight's input columns.
#[derive(Debug, Clone, PartialEq)]
pub enum BitWidths {
    /// Every column at the same width (plain GPTQ/SparseGPT).
    Uniform(u32),
    /// Column `j` at `bits[j]`: its grid spans the row's range with `2^bits[j]`
    /// levels (mixed precision per input channel).
    PerColumn(Vec<u32>),
}

impl BitWidths {
    /// Checks every width is in `1..=16` and a per-column vector has one entry
    /// per column.
    pub fn validate(&self, columns: usize) -> Result<()> {
        let check = |b: u32| -> Result<()> {
            if !(1..=16).contains(&b) {
                bail!("bits must be in 1..=16, got {b}");
            }
            Ok(())
        };
        match self {
            BitWidths::Uniform(b) => check(*b),
            BitWidths::PerColumn(v) => {
                if v.len() != columns {
                    bail!(
                        "per-column bits has {} entries, the weight has {columns} input columns",
                        v.len()
                    );
                }
                v.iter().try_for_each(|&b| check(b))
            }
        }
    }

    /// The width of column `j`.
    pub fn column(&self, j: usize) -> u32 {
        match self {
            BitWidths::Uniform(b) => *b,
            BitWidths::PerColumn(v) => v[j],
        }
    }

    /// Mean width over `columns` columns.
    pub fn average(&self, columns: usize) -> f64 {
        match self {
            BitWidths::Uniform(b) => *b as f64,
            BitWidths::PerColumn(v) => v.iter().map(|&b| b as f64).sum::<f64>() / columns as f64,
        }
    }
}

/// The distinct widths of a [`BitWidths`] and, per column, which one it uses:
/// parameters are kept once per width and row, not once per column.
#[derive(Debug, Clone)]
pub(crate) struct Levels {
    /// `2^bits − 1` of each distinct width, ascending.
    pub maxq: Vec<f32>,
    /// Index into `maxq` of each column.
    pub col: Vec<u8>,
}

impl Levels {
    pub fn new(bits: &BitWidths, columns: usize) -> Self {
        let mut distinct: Vec<u32> = match bits {
            BitWidths::Uniform(b) => vec![*b],
            BitWidths::PerColumn(v) => v.clone(),
        };
        distinct.sort_unstable();
        distinct.dedup();
        let col = (0..columns)
            .map(|j| distinct.binary_search(&bits.column(j)).unwrap() as u8)
            .collect();
        Self {
            maxq: distinct.iter().map(|&b| maxq(b)).collect(),
            col,
        }
    }

    /// Reorders the columns (`col[j] ← col[perm[j]]`).
    pub fn permute(&mut self, perm: &[usize]) {
        self.col = perm.iter().map(|&p| self.col[p]).collect();
    }
}

/// `2^bits − 1`, the largest integer level.
pub fn maxq(bits: u32) -> f32 {
    ((1u64 << bits) - 1) as f32
}

/// The reference `quantize`: `scale · (clamp(round(x/scale) + zero, 0, maxq) − zero)`
/// with round-half-to-even as `torch.round`.
#[inline]
pub fn quantize(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    let q = ((x / scale).round_ties_even() + zero).clamp(0.0, maxq);
    scale * (q - zero)
}

/// Grid parameters of one row at one width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowParams {
    /// Step between levels.
    pub scale: f32,
    /// Integer level of 0.
    pub zero: f32,
}

/// `find_params` for one row (or one group of a row): the range
/// `[min(row.min, 0), max(row.max, 0)]` (`[−1, 1]` for an all-zero row), made
/// symmetric if asked, then optionally shrunk by the MSE search.
pub fn find_row_params(row: &[f32], maxq: f32, cfg: &QuantizerConfig) -> RowParams {
    let (lo, hi) = row
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let mut xmin = lo.min(0.0);
    let mut xmax = hi.max(0.0);
    if cfg.sym {
        xmax = xmin.abs().max(xmax);
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let sym_zero = (maxq + 1.0) / 2.0;
    let params_for = |xmin: f32, xmax: f32| {
        let scale = (xmax - xmin) / maxq;
        let zero = if cfg.sym {
            sym_zero
        } else {
            (-xmin / scale).round_ties_even()
        };
        RowParams { scale, zero }
    };
    let mut best_params = params_for(xmin, xmax);
    if cfg.mse {
        let norm = cfg.norm as f32;
        let mut best = f64::INFINITY;
        let steps = (cfg.maxshrink * cfg.grid as f64) as usize;
        for i in 0..steps {
            // The reference multiplies f32 tensors by the Python float p.
            let p = (1.0 - i as f64 / cfg.grid as f64) as f32;
            let cand = params_for(p * xmin, p * xmax);
            let err: f64 = row
                .iter()
                .map(|&x| {
                    ((quantize(x, cand.scale, cand.zero, maxq) - x)
                        .abs()
                        .powf(norm)) as f64
                })
                .sum();
            if err < best {
                best = err;
                best_params = cand;
            }
        }
    }
    best_params
}

/// The quantization grid a compression used, enough to turn each weight back
/// into its integer code and to recompute it bit for bit
/// (`scale · (code − zero)` in f32): what the packed export stores.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantGrid {
    /// Output rows.
    pub rows: usize,
    /// The distinct bit widths, ascending.
    pub widths: Vec<u32>,
    /// Per input column (original order), its index into `widths`.
    pub column_width: Vec<u8>,
    /// GPTQ group size, when parameters were recomputed per group of columns.
    pub groupsize: Option<usize>,
    /// Per input column (original order), the group whose parameters it uses
    /// (all 0 without groups; under `act_order` with dynamic groups, groups are
    /// runs of the sweep order, so not contiguous columns).
    pub column_group: Vec<u32>,
    /// Number of parameter groups per row (1 without groups).
    pub groups: usize,
    /// `(scale, zero)` per row, group and width: `[rows, groups, widths, 2]`.
    pub params: Vec<f32>,
}

impl QuantGrid {
    /// Input columns.
    pub fn columns(&self) -> usize {
        self.column_width.len()
    }

    /// The bit width of column `j`.
    pub fn bits(&self, j: usize) -> u32 {
        self.widths[self.column_width[j] as usize]
    }

    /// `(scale, zero)` of the weight at row `r`, column `j`.
    #[inline]
    pub fn scale_zero(&self, r: usize, j: usize) -> (f32, f32) {
        let nw = self.widths.len();
        let base = ((r * self.groups + self.column_group[j] as usize) * nw
            + self.column_width[j] as usize)
            * 2;
        (self.params[base], self.params[base + 1])
    }

    /// The dequantized value of integer `code` at `(r, j)`: exactly what the
    /// quantizer wrote there.
    #[inline]
    pub fn dequantize(&self, r: usize, j: usize, code: u32) -> f32 {
        let (scale, zero) = self.scale_zero(r, j);
        scale * (code as f32 - zero)
    }

    /// The integer code of value `x` at `(r, j)`: `round(x / scale) + zero`,
    /// clamped to `[0, 2^bits − 1]`. For a value the quantizer produced, this
    /// is the code it chose (checked by [`dequantize`](Self::dequantize)).
    #[inline]
    pub fn code(&self, r: usize, j: usize, x: f32) -> u32 {
        let (scale, zero) = self.scale_zero(r, j);
        let mq = maxq(self.bits(j));
        ((x / scale).round_ties_even() + zero).clamp(0.0, mq) as u32
    }

    /// Checks the shapes agree with each other and with a `[rows, columns]` weight.
    pub fn validate(&self, rows: usize, columns: usize) -> Result<()> {
        let nw = self.widths.len();
        if self.rows != rows
            || self.columns() != columns
            || self.column_group.len() != columns
            || self.params.len() != rows * self.groups * nw * 2
            || nw == 0
        {
            bail!(
                "quantization grid does not fit a [{rows}, {columns}] weight \
                 (grid: {} rows, {} columns, {} groups, {nw} widths, {} parameters)",
                self.rows,
                self.columns(),
                self.groups,
                self.params.len()
            );
        }
        if self.column_width.iter().any(|&w| w as usize >= nw)
            || self.column_group.iter().any(|&g| g as usize >= self.groups)
            || self.widths.iter().any(|b| !(1..=16).contains(b))
        {
            bail!("quantization grid has an out-of-range width or group index");
        }
        Ok(())
    }
}

/// Round-to-nearest quantization of a whole weight `[rows, columns]` with per-row
/// grids (no error feedback): the baseline GPTQ improves on. Returns the
/// dequantized weight in the input's dtype and device.
pub fn quantize_rtn(w: &Tensor, bits: &BitWidths, cfg: &QuantizerConfig) -> Result<Tensor> {
    let m = to_host(w, "weight")?;
    bits.validate(m.cols)?;
    cfg.validate()?;
    let levels = Levels::new(bits, m.cols);
    let mut out = m.data.clone();
    out.par_chunks_mut(m.cols).for_each(|row| {
        let params: Vec<RowParams> = levels
            .maxq
            .iter()
            .map(|&mq| find_row_params(row, mq, cfg))
            .collect();
        for (x, &l) in row.iter_mut().zip(&levels.col) {
            let p = params[l as usize];
            *x = quantize(*x, p.scale, p.zero, levels.maxq[l as usize]);
        }
    });
    from_host(out, m.rows, m.cols, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 0.8
            })
            .collect()
    }

    #[test]
    fn range_always_contains_zero() {
        let cfg = QuantizerConfig::default();
        // All positive: min clamps to 0, so 0 is exactly representable.
        let p = find_row_params(&[0.5, 1.5, 3.0], maxq(4), &cfg);
        assert_eq!(p.zero, 0.0);
        assert_eq!(p.scale, 3.0 / 15.0);
        assert_eq!(quantize(0.0, p.scale, p.zero, 15.0), 0.0);
        // All-zero row gets [−1, 1].
        let p = find_row_params(&[0.0; 4], maxq(2), &cfg);
        assert_eq!(p.scale, 2.0 / 3.0);
        assert_eq!(p.zero, 2.0); // round(1.5) = 2, half to even
    }

    #[test]
    fn rounds_half_to_even_like_torch() {
        // torch.round: 2.5 → 2, 3.5 → 4, −2.5 → −2 (f32::round would give 3 and −3).
        assert_eq!(quantize(2.5, 1.0, 0.0, 15.0), 2.0);
        assert_eq!(quantize(3.5, 1.0, 0.0, 15.0), 4.0);
        assert_eq!(quantize(-2.5, 1.0, 8.0, 15.0), -2.0);
        // Clamped to [0, maxq] in integer levels.
        assert_eq!(quantize(100.0, 1.0, 8.0, 15.0), 7.0);
        assert_eq!(quantize(-100.0, 1.0, 8.0, 15.0), -8.0);
    }

    #[test]
    fn symmetric_matches_reference_zero_point() {
        let cfg = QuantizerConfig {
            sym: true,
            ..Default::default()
        };
        let p = find_row_params(&[-2.0, 1.0], maxq(4), &cfg);
        assert_eq!(p.scale, 4.0 / 15.0);
        assert_eq!(p.zero, 8.0);
    }

    #[test]
    fn values_land_on_grid_and_are_idempotent() {
        let row = pseudo_random(257, 7);
        for bits in [2u32, 3, 4, 8] {
            for sym in [false, true] {
                for mse in [false, true] {
                    let cfg = QuantizerConfig {
                        sym,
                        mse,
                        ..Default::default()
                    };
                    let mq = maxq(bits);
                    let p = find_row_params(&row, mq, &cfg);
                    let mut levels = std::collections::BTreeSet::new();
                    for &x in &row {
                        let q = quantize(x, p.scale, p.zero, mq);
                        let k = q / p.scale + p.zero;
                        assert!((k - k.round()).abs() < 1e-3, "{q} off grid");
                        assert!(k.round() >= 0.0 && k.round() <= mq);
                        levels.insert(k.round() as i64);
                        assert_eq!(quantize(q, p.scale, p.zero, mq), q, "not idempotent");
                    }
                    assert!(levels.len() <= (mq as usize) + 1);
                }
            }
        }
    }

    #[test]
    fn mse_never_worse_than_minmax() {
        let row = pseudo_random(300, 3);
        let mq = maxq(3);
        let err = |p: RowParams| -> f64 {
            row.iter()
                .map(|&x| ((quantize(x, p.scale, p.zero, mq) - x).abs() as f64).powf(2.4))
                .sum()
        };
        let plain = find_row_params(&row, mq, &QuantizerConfig::default());
        let searched = find_row_params(
            &row,
            mq,
            &QuantizerConfig {
                mse: true,
                ..Default::default()
            },
        );
        assert!(err(searched) <= err(plain) * (1.0 + 1e-6));
    }

    #[test]
    fn bit_width_validation() {
        assert!(BitWidths::Uniform(0).validate(4).is_err());
        assert!(BitWidths::Uniform(17).validate(4).is_err());
        let e = BitWidths::PerColumn(vec![4; 3]).validate(4).unwrap_err();
        assert!(e.to_string().contains("3 entries"));
        assert!(BitWidths::PerColumn(vec![2, 3, 16, 1]).validate(4).is_ok());
        assert_eq!(BitWidths::PerColumn(vec![2, 4]).average(2), 3.0);
    }

    #[test]
    fn rtn_mixed_columns_use_their_own_width() -> Result<()> {
        let data = pseudo_random(4 * 6, 11);
        let w = Tensor::from_vec(data, (4, 6), &Device::Cpu)?;
        let bits = BitWidths::PerColumn(vec![2, 8, 2, 8, 3, 3]);
        let q = quantize_rtn(&w, &bits, &QuantizerConfig::default())?;
        let q = q.to_vec2::<f32>()?;
        let w = w.to_vec2::<f32>()?;
        for (qr, wr) in q.iter().zip(&w) {
            for (j, (&qv, _)) in qr.iter().zip(wr).enumerate() {
                let mq = maxq(bits.column(j));
                let p = find_row_params(wr, mq, &QuantizerConfig::default());
                assert_eq!(quantize(qv, p.scale, p.zero, mq), qv);
            }
        }
        Ok(())
    }
}
