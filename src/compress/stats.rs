//! Error statistics computed from the Hessian, without the activations.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Relative output error of a compressed linear on the calibration inputs:
/// `‖WX − ŴX‖² / ‖WX‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ`, since `H`
/// is proportional to `Σ xxᵀ` (the proportionality cancels). Use the
/// accumulated `H`, not a damped one. Computed on the tensors' device: the
/// matrix products in f32, the final sums in f64.
pub fn relative_output_error(w: &Tensor, w_hat: &Tensor, h: &Tensor) -> Result<f64> {
    let (rows, cols) = w.dims2()?;
    if w_hat.dims() != [rows, cols] {
        bail!(
            "compressed weight has shape {:?}, the original {:?}",
            w_hat.dims(),
            w.dims()
        );
    }
    if h.dims() != [cols, cols] {
        bail!("the Hessian must be [{cols}, {cols}], got {:?}", h.dims());
    }
    let dev = w.device();
    let w = w.to_dtype(DType::F32)?;
    let w_hat = w_hat.to_dtype(DType::F32)?.to_device(dev)?;
    let h = h.to_dtype(DType::F32)?.to_device(dev)?;
    let quad = |m: &Tensor| -> Result<f64> {
        let mh = m.matmul(&h)?;
        Ok((mh * m)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?)
    };
    let num = quad(&(&w - &w_hat)?)?;
    let den = quad(&w)?;
    if den == 0.0 {
        bail!("tr(W H Wᵀ) is zero: the weight or the Hessian is zero, the relative error is undefined");
    }
    Ok(num / den)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_direct_output_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(
            (0..30)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect::<Vec<_>>(),
            (10, 3),
            &dev,
        )?;
        let w = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75], (2, 3), &dev)?;
        let w_hat = Tensor::from_vec(vec![0.5f32, 0.0, 2.0, 1.5, 0.0, -0.75], (2, 3), &dev)?;
        let h = x.t()?.matmul(&x)?.affine(2.0 / 10.0, 0.0)?;
        let got = relative_output_error(&w, &w_hat, &h)?;
        let y = x.matmul(&w.t()?)?;
        let y_hat = x.matmul(&w_hat.t()?)?;
        let want = ((&y - &y_hat)?.sqr()?.sum_all()?.to_scalar::<f32>()?
            / y.sqr()?.sum_all()?.to_scalar::<f32>()?) as f64;
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        Ok(())
    }
}
