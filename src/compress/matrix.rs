//! Moving matrices between candle tensors (any dtype, any device) and row-major
//! f32 buffers on the host, where the column sweeps run.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// A row-major f32 copy of a 2-D tensor, with its shape.
pub(crate) struct HostMatrix {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// Copies a 2-D tensor to the host as row-major f32; `what` names it in errors.
pub(crate) fn to_host(t: &Tensor, what: &str) -> Result<HostMatrix> {
    let (rows, cols) = t
        .dims2()
        .with_context(|| format!("{what} must be a 2-D matrix, got shape {:?}", t.dims()))?;
    let data = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()
        .with_context(|| format!("reading {what}"))?;
    if rows == 0 || cols == 0 {
        bail!("{what} is empty ({rows}×{cols})");
    }
    // A NaN or infinity would silently poison every later column through the
    // error feedback (or the Cholesky factorization): refuse it up front.
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        bail!(
            "{what} has a non-finite value ({}) at [{}, {}]",
            data[i],
            i / cols,
            i % cols
        );
    }
    Ok(HostMatrix { data, rows, cols })
}

/// Copies a 1-D tensor of `len` values to the host as f32.
pub(crate) fn vector_to_host(t: &Tensor, len: usize, what: &str) -> Result<Vec<f32>> {
    if t.dims() != [len] {
        bail!("{what} must have shape [{len}], got {:?}", t.dims());
    }
    let v = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what} has a non-finite value ({}) at [{i}]", v[i]);
    }
    Ok(v)
}

/// A tensor of `like`'s dtype and device from a row-major f32 buffer.
pub(crate) fn from_host(data: Vec<f32>, rows: usize, cols: usize, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())?)
}

/// A `u8` mask tensor (1 = pruned) on `device` from a row-major bool buffer.
pub(crate) fn mask_tensor(
    mask: &[bool],
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<Tensor> {
    let bytes: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
    Ok(Tensor::from_vec(bytes, (rows, cols), &Device::Cpu)?.to_device(device)?)
}
