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
    if crate::compute::kernels::is_cpu_f32(w)
        && crate::compute::kernels::is_cpu_f32(w_hat)
        && crate::compute::kernels::is_cpu_f32(h)
    {
        let (num, den) = quadratic_forms_cpu(w, w_hat, h, rows, cols)?;
        return ratio(num, den);
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
    ratio(quad(&(&w - &w_hat)?)?, quad(&w)?)
}

fn ratio(num: f64, den: f64) -> Result<f64> {
    if den == 0.0 {
        bail!("tr(W H Wᵀ) is zero: the weight or the Hessian is zero, the relative error is undefined");
    }
    Ok(num / den)
}

/// Rows of `[ΔW; W]` per product in [`quadratic_forms_cpu`]: bounds its
/// temporaries to two `ROWS × cols` buffers whatever the weight's size.
const ROWS: usize = 256;

/// `(tr(ΔW H ΔWᵀ), tr(W H Wᵀ))` on the CPU in f32 with f64 sums. `H` is
/// symmetric, so only its lower triangle `L` (diagonal included) is read:
/// `s H sᵀ = 2·s L sᵀ − Σ_j H_jj s_j²`, half the FLOPs of the full product — this
/// statistic would otherwise cost as much as the OBS sweep's own GEMMs.
fn quadratic_forms_cpu(
    w: &Tensor,
    w_hat: &Tensor,
    h: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<(f64, f64)> {
    use crate::compute::kernels::with_cpu_f32;
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    use faer::{Accum, MatMut, MatRef, Par};
    let quad = |s: &[f32], n: usize, hs: &[f32], sl: &mut [f32]| -> f64 {
        let sm = MatRef::from_row_major_slice(s, n, cols);
        // Row-major [n, cols] S·L is the column-major [cols, n] Lᵀ·Sᵀ; H's
        // row-major lower triangle is the column-major upper triangle of Hᵀ = H.
        let hm = MatRef::from_row_major_slice(hs, cols, cols);
        let dst = MatMut::from_column_major_slice_mut(sl, cols, n);
        matmul(
            dst,
            BlockStructure::Rectangular,
            Accum::Replace,
            hm.transpose(),
            BlockStructure::TriangularUpper,
            sm.transpose(),
            BlockStructure::Rectangular,
            1.0f32,
            Par::rayon(0),
        );
        let mut total = 0f64;
        for (srow, slrow) in s.chunks_exact(cols).zip(sl.chunks_exact(cols)) {
            for (j, (&x, &y)) in srow.iter().zip(slrow).enumerate() {
                let (x, y) = (x as f64, y as f64);
                total += 2.0 * x * y - hs[j * cols + j] as f64 * x * x;
            }
        }
        total
    };
    let (num, den) = with_cpu_f32(w, |ws| {
        with_cpu_f32(w_hat, |whs| {
            with_cpu_f32(h, |hs| {
                let chunk = ROWS.min(rows) * cols;
                let (mut delta, mut sl) = (vec![0f32; chunk], vec![0f32; chunk]);
                let (mut num, mut den) = (0f64, 0f64);
                for (wc, whc) in ws.chunks(chunk).zip(whs.chunks(chunk)) {
                    let n = wc.len() / cols;
                    let d = &mut delta[..wc.len()];
                    d.iter_mut()
                        .zip(wc.iter().zip(whc))
                        .for_each(|(d, (a, b))| *d = a - b);
                    num += quad(d, n, hs, &mut sl[..wc.len()]);
                    den += quad(wc, n, hs, &mut sl[..wc.len()]);
                }
                (num, den)
            })
        })
    })???;
    Ok((num, den))
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

    /// The CPU path (lower triangle, row chunks) against f64 sums over the full
    /// `H`, with more rows than one chunk.
    #[test]
    fn chunked_lower_triangle_matches_f64() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, cols, n) = (300, 40, 64);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev)?;
        let w_hat = (&w
            * Tensor::rand(0f32, 1.0, (rows, cols), &dev)?
                .ge(0.5)?
                .to_dtype(DType::F32)?)?;
        let x = Tensor::randn(0f32, 1.0, (n, cols), &dev)?;
        let h = x.t()?.matmul(&x)?;
        let got = relative_output_error(&w, &w_hat, &h)?;
        let (w64, wh64, h64) = (
            w.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            w_hat.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            h.to_dtype(DType::F64)?.to_vec2::<f64>()?,
        );
        let quad = |m: &dyn Fn(usize, usize) -> f64| -> f64 {
            let mut t = 0.0;
            for r in 0..rows {
                for (i, hrow) in h64.iter().enumerate() {
                    for (j, &hij) in hrow.iter().enumerate() {
                        t += m(r, i) * hij * m(r, j);
                    }
                }
            }
            t
        };
        let want = quad(&|r, j| w64[r][j] - wh64[r][j]) / quad(&|r, j| w64[r][j]);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        Ok(())
    }
}
