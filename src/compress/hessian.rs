//! The layer-input Hessian `H = 2/n · Σ XᵀX`, accumulated as the reference does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::compute::kernels;

/// Running accumulation of one linear's input statistics over calibration batches.
///
/// Follows SparseGPT/GPTQ `add_batch` exactly: for a batch of `t` new sequences,
/// `H *= n/(n+t); n += t; X *= sqrt(2/n); H += XᵀX`, where `X` is every token of
/// the batch flattened to `[tokens, columns]`. The count is of *sequences*
/// (`inp.shape[0]`), not tokens, so `H` is a mean over sequences of sums over
/// their tokens, which is what published figures used.
///
/// It also keeps Wanda's `scaler_row` (`WrappedGPT.add_batch` in the wanda
/// repository): `s *= n/(n+t); n += t; s += ‖X_j‖² / n`, the running mean over
/// sequences of each input column's squared norm.
///
/// Both live on the device of the accumulator in f32, and the update is a GEMM
/// there, so this runs on CPU or CUDA alike. On the CPU the update is applied in
/// place to one triangle of `H` (half the FLOPs, no `columns²` temporaries);
/// the other triangle is filled in when [`hessian`](Self::hessian) reads it.
/// There the rescale `H *= n/(n+t)` is also deferred: `H` is held as `s · H'`,
/// each batch adds `XᵀX / s` to `H'` inside the GEMM, and `s` is applied once,
/// when `H` is read. That is the same running mean up to f32 rounding, without
/// a pass over `columns²` floats per batch (an fc2 Hessian is 36 MiB).
#[derive(Debug)]
pub struct HessianAccumulator {
    h: Tensor,
    scaler_row: Tensor,
    nsamples: usize,
    columns: usize,
    /// The upper triangle of `h` lags behind its lower one (CPU updates).
    upper_stale: AtomicBool,
    /// `h`'s storage may be shared with a tensor handed out (a clone, or
    /// [`hessian`](Self::hessian)): the next in-place update copies it first.
    shared: AtomicBool,
    /// Precision of the CPU's `XᵀX`.
    gemm: kernels::CpuGemm,
    /// The factor `s` the stored lower triangle is still to be scaled by
    /// (CPU updates), as the bits of an f64.
    pending_scale: AtomicU64,
}

impl Clone for HessianAccumulator {
    fn clone(&self) -> Self {
        // Settle the pending mirror and rescale first: the two share `h`'s
        // storage, and each would otherwise apply the rescale to it.
        self.hessian();
        self.shared.store(true, Ordering::Relaxed);
        Self {
            h: self.h.clone(),
            scaler_row: self.scaler_row.clone(),
            nsamples: self.nsamples,
            columns: self.columns,
            upper_stale: AtomicBool::new(self.upper_stale.load(Ordering::Relaxed)),
            shared: AtomicBool::new(true),
            gemm: self.gemm,
            pending_scale: AtomicU64::new(self.pending_scale.load(Ordering::Relaxed)),
        }
    }
}

impl HessianAccumulator {
    /// An empty accumulator for a linear with `columns` input features.
    pub fn new(columns: usize, device: &Device) -> Result<Self> {
        if columns == 0 {
            bail!("a Hessian needs at least one input column");
        }
        Ok(Self {
            h: Tensor::zeros((columns, columns), DType::F32, device)?,
            scaler_row: Tensor::zeros(columns, DType::F32, device)?,
            nsamples: 0,
            columns,
            upper_stale: AtomicBool::new(false),
            shared: AtomicBool::new(false),
            gemm: kernels::CpuGemm::F32,
            pending_scale: AtomicU64::new(1f64.to_bits()),
        })
    }

    /// Sets the precision of the CPU's `XᵀX` for later batches (see
    /// [`kernels::CpuGemm`]); default f32.
    pub fn set_cpu_gemm(&mut self, gemm: kernels::CpuGemm) {
        self.gemm = gemm;
    }

    /// Adds a batch of inputs: `[batch, seq, columns]` counts `batch` sequences;
    /// a 2-D `[tokens, columns]` input counts as one sequence, as the reference's
    /// `unsqueeze(0)` makes it. Any float dtype; it is moved to the accumulator's
    /// device and used in f32.
    pub fn add_batch(&mut self, inp: &Tensor) -> Result<()> {
        let (t, x) = match *inp.dims() {
            [tokens, d] => (1, inp.reshape((tokens, d))?),
            [b, s, d] => (b, inp.reshape((b * s, d))?),
            _ => bail!(
                "Hessian input must be [batch, seq, columns] or [tokens, columns], got {:?}",
                inp.dims()
            ),
        };
        let d = x.dim(1)?;
        if d != self.columns {
            bail!(
                "Hessian input has {d} columns, the accumulator expects {}",
                self.columns
            );
        }
        if t == 0 || x.dim(0)? == 0 {
            bail!("empty calibration batch {:?}", inp.dims());
        }
        let x = x.to_device(self.h.device())?.to_dtype(DType::F32)?;
        let n = self.nsamples;
        let keep = n as f64 / (n + t) as f64;
        self.nsamples += t;
        let n = self.nsamples as f64;

        // X is scaled before the product, as the reference does, so that
        // rounding (and hence tie-breaking in the masks) follows it.
        let xs = x.affine((2.0 / n).sqrt(), 0.0)?;
        if kernels::is_cpu_f32(&xs) && kernels::is_cpu_f32(&self.h) {
            if self.shared.swap(false, Ordering::Relaxed) {
                self.h = self.h.copy()?;
            }
            // H = s·H'; after this batch H = keep·H + XᵀX, so s ← keep·s and
            // H' += XᵀX / s. The first batch (keep 0) starts from H' = 0, s = 1.
            let s = match keep {
                0.0 => 1.0,
                k => k * f64::from_bits(self.pending_scale.load(Ordering::Relaxed)),
            };
            self.pending_scale.store(s.to_bits(), Ordering::Relaxed);
            // The first batch only writes `h` (see `gram_lower_add` for why).
            kernels::gram_lower_add(&self.h, (1.0 / s) as f32, &xs, keep != 0.0, self.gemm)?;
            self.upper_stale.store(true, Ordering::Relaxed);
        } else {
            let gram = xs.t()?.matmul(&xs)?;
            self.h = (self.h.affine(keep, 0.0)? + gram)?;
        }

        // ‖X_j‖² as a sum of squares; the reference squares torch.norm, which is
        // the same up to one rounding.
        let sq = if kernels::is_cpu_f32(&x) {
            let sums = kernels::column_sq_sums(&x)?;
            Tensor::from_vec(sums, d, &Device::Cpu)?
        } else {
            x.sqr()?.sum(0)?
        };
        self.scaler_row = (self.scaler_row.affine(keep, 0.0)? + sq.affine(1.0 / n, 0.0)?)?;
        Ok(())
    }

    /// The accumulated Hessian, f32 `[columns, columns]` (zeros before any batch).
    pub fn hessian(&self) -> &Tensor {
        if self.upper_stale.swap(false, Ordering::Relaxed) {
            // Cannot fail: h is the contiguous square f32 CPU tensor the updates wrote.
            let s = f64::from_bits(self.pending_scale.swap(1f64.to_bits(), Ordering::Relaxed));
            kernels::mirror_lower(&self.h, s as f32)
                .expect("mirroring the Hessian's lower triangle");
        }
        self.shared.store(true, Ordering::Relaxed);
        &self.h
    }

    /// Wanda's per-column scale, f32 `[columns]`: the running mean over
    /// sequences of `‖X_j‖²`.
    pub fn scaler_row(&self) -> &Tensor {
        &self.scaler_row
    }

    /// Sequences seen so far (the reference's `nsamples`).
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// Input columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// `diag H` in f64, gathered on the Hessian's device (no full copy to the
    /// host).
    pub fn diagonal(&self) -> Result<Vec<f64>> {
        let h = self.hessian();
        let n = self.columns;
        let idx: Vec<u32> = (0..n).map(|j| (j * (n + 1)) as u32).collect();
        let idx = Tensor::from_vec(idx, n, h.device())?;
        let d = h
            .flatten_all()?
            .index_select(&idx, 0)?
            .to_dtype(DType::F64)?;
        Ok(d.to_vec1::<f64>()?)
    }

    /// An accumulator restored from its parts (a statistics cache): the Hessian
    /// `[columns, columns]`, the Wanda scale `[columns]` and the sequences seen.
    pub fn from_parts(h: Tensor, scaler_row: Tensor, nsamples: usize) -> Result<Self> {
        let columns = scaler_row.dim(0)?;
        if h.dims() != [columns, columns] || scaler_row.rank() != 1 {
            bail!(
                "a Hessian of shape {:?} does not match a scale of shape {:?}",
                h.dims(),
                scaler_row.dims()
            );
        }
        // With no sequence seen, the first batch replaces H outright (its rescale
        // factor is 0), as in the reference.
        let h = if nsamples == 0 { h.zeros_like()? } else { h };
        Ok(Self {
            h: h.to_dtype(DType::F32)?,
            scaler_row: scaler_row.to_dtype(DType::F32)?,
            nsamples,
            columns,
            upper_stale: AtomicBool::new(false),
            shared: AtomicBool::new(true),
            gemm: kernels::CpuGemm::F32,
            pending_scale: AtomicU64::new(1f64.to_bits()),
        })
    }

    /// The Hessian and the Wanda scale, consuming the accumulator.
    pub fn into_parts(self) -> (Tensor, Tensor) {
        self.hessian();
        (self.h, self.scaler_row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_equals_one_shot() -> Result<()> {
        // Two batches of 1 and 3 sequences give 2/4 · Σ XᵀX over all 4 sequences.
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24.0, &dev)?
            .reshape((1, 8, 3))?
            .affine(0.1, -1.0)?;
        let b = Tensor::arange(0f32, 72.0, &dev)?
            .reshape((3, 8, 3))?
            .affine(-0.05, 0.7)?;
        let mut acc = HessianAccumulator::new(3, &dev)?;
        acc.add_batch(&a)?;
        acc.add_batch(&b)?;
        assert_eq!(acc.nsamples(), 4);

        let all = Tensor::cat(&[a.reshape((8, 3))?, b.reshape((24, 3))?], 0)?;
        let want = all.t()?.matmul(&all)?.affine(2.0 / 4.0, 0.0)?;
        let diff = (acc.hessian() - &want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "diff {diff}");

        let want_s = all.sqr()?.sum(0)?.affine(1.0 / 4.0, 0.0)?;
        let diff = (acc.scaler_row() - &want_s)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "diff {diff}");
        Ok(())
    }

    /// The in-place triangle update and the mirroring on a width that is no
    /// multiple of the mirror's tile; a Hessian read between two batches keeps
    /// its value (the update copies shared storage first).
    #[test]
    fn in_place_updates_leave_handed_out_hessians_alone() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 50, 130), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (1, 70, 130), &dev)?;
        let mut acc = HessianAccumulator::new(130, &dev)?;
        acc.add_batch(&a)?;
        let first = acc.hessian().clone();
        let snapshot = first.copy()?;
        let copy = acc.clone();
        acc.add_batch(&b)?;
        let max_diff = |x: &Tensor, y: &Tensor| -> Result<f32> {
            Ok((x - y)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(max_diff(&first, &snapshot)?, 0.0);
        assert_eq!(max_diff(copy.hessian(), &snapshot)?, 0.0);

        let xa = a.reshape((100, 130))?;
        let want_a = xa.t()?.matmul(&xa)?.affine(2.0 / 2.0, 0.0)?;
        assert!(max_diff(&snapshot, &want_a)? < 1e-3);
        let all = Tensor::cat(&[xa, b.reshape((70, 130))?], 0)?;
        let want = all.t()?.matmul(&all)?.affine(2.0 / 3.0, 0.0)?;
        let h = acc.hessian();
        assert!(max_diff(h, &want)? < 1e-3, "{}", max_diff(h, &want)?);
        assert_eq!(max_diff(h, &h.t()?)?, 0.0, "exactly symmetric");
        Ok(())
    }

    /// The deferred rescale is applied exactly once to storage that a clone
    /// shares, whichever of the two reads the Hessian first (q, k and v each
    /// compress from a clone of one accumulator).
    #[test]
    fn clones_read_the_rescaled_hessian_once() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (1, 40, 70), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (3, 40, 70), &dev)?;
        let mut acc = HessianAccumulator::new(70, &dev)?;
        acc.add_batch(&a)?;
        acc.add_batch(&b)?;
        let all = Tensor::cat(&[a.reshape((40, 70))?, b.reshape((120, 70))?], 0)?;
        let want = all.t()?.matmul(&all)?.affine(2.0 / 4.0, 0.0)?;
        let rel = |h: &Tensor| -> Result<f32> {
            let num = (h - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(num / want.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let first = acc.clone();
        let second = acc.clone();
        for h in [first.hessian(), second.hessian(), acc.hessian()] {
            assert!(rel(h)? < 1e-5, "relative difference {}", rel(h)?);
        }
        Ok(())
    }

    #[test]
    fn rejects_wrong_width_and_rank() -> Result<()> {
        let dev = Device::Cpu;
        let mut acc = HessianAccumulator::new(4, &dev)?;
        let e = acc
            .add_batch(&Tensor::zeros((2, 3), DType::F32, &dev)?)
            .unwrap_err();
        assert!(e.to_string().contains("expects 4"));
        let e = acc
            .add_batch(&Tensor::zeros(4, DType::F32, &dev)?)
            .unwrap_err();
        assert!(e.to_string().contains("[batch, seq, columns]"));
        Ok(())
    }
}
