//! The layer-input Hessian `H = 2/n · Σ XᵀX`, accumulated as the reference does.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

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
/// there, so this runs on CPU or CUDA alike.
#[derive(Debug, Clone)]
pub struct HessianAccumulator {
    h: Tensor,
    scaler_row: Tensor,
    nsamples: usize,
    columns: usize,
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
        })
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

        if crate::model::kernels::is_cpu_f32(&x) {
            // One triangle of XᵀX through faer: half the FLOPs of the full product.
            // X is scaled before the product, as the reference does, so that
            // rounding (and hence tie-breaking in the masks) follows it.
            let xs = x.affine((2.0 / n).sqrt(), 0.0)?;
            self.h = crate::model::kernels::gram_update(&self.h, keep as f32, 1.0, &xs)?;
        } else {
            let xs = x.affine((2.0 / n).sqrt(), 0.0)?;
            let gram = xs.t()?.matmul(&xs)?;
            self.h = (self.h.affine(keep, 0.0)? + gram)?;
        }

        // ‖X_j‖² as a sum of squares; the reference squares torch.norm, which is
        // the same up to one rounding.
        let sq = x.sqr()?.sum(0)?;
        self.scaler_row = (self.scaler_row.affine(keep, 0.0)? + sq.affine(1.0 / n, 0.0)?)?;
        Ok(())
    }

    /// The accumulated Hessian, f32 `[columns, columns]` (zeros before any batch).
    pub fn hessian(&self) -> &Tensor {
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
        Ok(Self {
            h: h.to_dtype(DType::F32)?,
            scaler_row: scaler_row.to_dtype(DType::F32)?,
            nsamples,
            columns,
        })
    }

    /// The Hessian and the Wanda scale, consuming the accumulator.
    pub fn into_parts(self) -> (Tensor, Tensor) {
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
