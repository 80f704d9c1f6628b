//! CPU fast paths where candle's generic ops are far from the machine's limit:
//! f32 GEMMs through faer (about twice candle's rate for the linears' shapes on
//! the machines measured, and a lower-triangle-only XᵀX for Hessians), the causal
//! softmax of attention (scale, mask and softmax in one parallel pass instead of
//! three single-threaded ones) and the per-token negative log-likelihood (no
//! `[tokens, vocab]` log-softmax materialised).

use candle_core::{DType, Device, Result, Storage, Tensor};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Whether `t` can take the f32 CPU fast paths.
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `x · wᵀ` for `x` `[n, k]` and `w` `[m, k]` on any device and dtype: through
/// faer for f32 on the CPU, through candle otherwise.
pub fn xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) && is_cpu_f32(w) {
        matmul_xwt(x, w)
    } else {
        x.matmul(&w.t()?)
    }
}

/// `x · wᵀ` for `x` `[n, k]` and `w` `[m, k]` (f32, CPU): `[n, m]`.
pub fn matmul_xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("matmul_xwt: x is [{n}, {k}] but w is [{m}, {k2}]");
    }
    let mut out = vec![0f32; n * m];
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| {
            let xr = MatRef::from_row_major_slice(xs, n, k);
            let wr = MatRef::from_row_major_slice(ws, m, k);
            // The row-major [n, m] result is the column-major [m, n] matrix W·Xᵀ.
            let dst = MatMut::from_column_major_slice_mut(&mut out, m, n);
            faer::linalg::matmul::matmul(
                dst,
                Accum::Replace,
                wr,
                xr.transpose(),
                1.0f32,
                Par::rayon(0),
            );
        })
    })??;
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}

/// `keep · h + alpha · xᵀx` for a symmetric `h` `[d, d]` and `x` `[n, d]` (f32,
/// CPU), computing only one triangle of `xᵀx` (half the FLOPs of a full GEMM).
pub fn gram_update(h: &Tensor, keep: f32, alpha: f32, x: &Tensor) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let mut g = vec![0f32; d * d];
    with_cpu_f32(x, |xs| {
        let xr = MatRef::from_row_major_slice(xs, n, d);
        let dst = MatMut::from_column_major_slice_mut(&mut g, d, d);
        faer::linalg::matmul::triangular::matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            xr.transpose(),
            BlockStructure::Rectangular,
            xr,
            BlockStructure::Rectangular,
            alpha,
            Par::rayon(0),
        );
    })?;
    let out = with_cpu_f32(h, |hs| {
        let mut out = vec![0f32; d * d];
        out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                // Column-major lower triangle: element (r, c), r ≥ c, at c·d + r.
                let gij = if i >= j { g[j * d + i] } else { g[i * d + j] };
                *o = keep * hs[i * d + j] + gij;
            }
        });
        out
    })?;
    Tensor::from_vec(out, (d, d), &Device::Cpu)
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("with_cpu_f32: tensor is not on the CPU")
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    Ok(f(&data[start..end]))
}

/// Query rows per block of the CPU attention: a block's scores stay in cache,
/// and keys after its last row are never touched (half the work of a full
/// `[t, t]` score matrix).
const ATTENTION_BLOCK: usize = 128;

/// Causal attention over `[heads, t, d]` f32 CPU tensors: per head and block of
/// query rows, scores against the keys up to the block's end (faer), a fused
/// masked softmax, and the weighted sum of values (faer). Heads run in parallel.
pub fn causal_attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (heads, t, d) = q.dims3()?;
    let mut out = vec![0f32; heads * t * d];
    with_cpu_f32(q, |qs| {
        with_cpu_f32(k, |ks| {
            with_cpu_f32(v, |vs| {
                out.par_chunks_mut(t * d).enumerate().for_each(|(h, o)| {
                    let span = h * t * d..(h + 1) * t * d;
                    let (qh, kh, vh) = (&qs[span.clone()], &ks[span.clone()], &vs[span]);
                    let mut scores = vec![0f32; ATTENTION_BLOCK * t];
                    for r0 in (0..t).step_by(ATTENTION_BLOCK) {
                        let rows = ATTENTION_BLOCK.min(t - r0);
                        let keys = r0 + rows;
                        let s = &mut scores[..rows * keys];
                        // Row-major S [rows, keys] is column-major Sᵀ = K·Q_blockᵀ.
                        let kr = MatRef::from_row_major_slice(&kh[..keys * d], keys, d);
                        let qr = MatRef::from_row_major_slice(&qh[r0 * d..keys * d], rows, d);
                        let dst = MatMut::from_column_major_slice_mut(s, keys, rows);
                        faer::linalg::matmul::matmul(
                            dst,
                            Accum::Replace,
                            kr,
                            qr.transpose(),
                            scale,
                            Par::Seq,
                        );
                        for (i, row) in s.chunks_mut(keys).enumerate() {
                            let visible = r0 + i + 1;
                            let max = row[..visible]
                                .iter()
                                .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                            let mut sum = 0f32;
                            for x in &mut row[..visible] {
                                *x = (*x - max).exp();
                                sum += *x;
                            }
                            let inv = 1.0 / sum;
                            row[..visible].iter_mut().for_each(|x| *x *= inv);
                            row[visible..].iter_mut().for_each(|x| *x = 0.0);
                        }
                        // Row-major O_block [rows, d] is column-major O_blockᵀ = Vᵀ·Pᵀ.
                        let pr = MatRef::from_row_major_slice(&scores[..rows * keys], rows, keys);
                        let vr = MatRef::from_row_major_slice(&vh[..keys * d], keys, d);
                        let dst =
                            MatMut::from_column_major_slice_mut(&mut o[r0 * d..keys * d], d, rows);
                        faer::linalg::matmul::matmul(
                            dst,
                            Accum::Replace,
                            vr.transpose(),
                            pr.transpose(),
                            1.0f32,
                            Par::Seq,
                        );
                    }
                });
            })
        })
    })???;
    Tensor::from_vec(out, (heads, t, d), &Device::Cpu)
}

/// Causal softmax of `scores` (`[heads, rows, cols]`, f32, CPU) scaled by `scale`,
/// where row `i` holds query position `row_offset + i` and may only attend to key
/// positions `0..=row_offset + i`; masked entries come out as exactly 0.
pub fn causal_softmax(scores: &Tensor, row_offset: usize, scale: f32) -> Result<Tensor> {
    let (heads, rows, cols) = scores.dims3()?;
    let out = with_cpu_f32(scores, |s| {
        let mut out = vec![0f32; s.len()];
        out.par_chunks_mut(cols)
            .zip(s.par_chunks(cols))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let visible = (row_offset + r % rows + 1).min(cols);
                let x = &x[..visible];
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(x) {
                    let e = (v * scale - max).exp();
                    *o = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                o[..visible].iter_mut().for_each(|v| *v *= inv);
            });
        out
    })?;
    Tensor::from_vec(out, (heads, rows, cols), &Device::Cpu)
}

/// Σ over rows of −log softmax(logits[r])[targets[r]], in f64; `logits` is
/// `[rows, vocab]` f32 on the CPU.
pub fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let (rows, vocab) = logits.dims2()?;
    if targets.len() != rows {
        candle_core::bail!("nll_sum: {} targets for {rows} rows", targets.len());
    }
    let logits = logits.to_dtype(DType::F32)?;
    with_cpu_f32(&logits, |l| {
        let per_row: Vec<f64> = l
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                // f32 exponentials (each term in (0, 1]), summed in f64.
                let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
                (max as f64 + sum.ln()) - row[t as usize] as f64
            })
            .collect();
        // Summed in row order: a parallel reduction's order follows the
        // scheduler, and the same weights must give the same perplexity bits.
        per_row.iter().sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_softmax_matches_masked_softmax() -> Result<()> {
        let s = Tensor::randn(0f32, 2., (2, 3, 5), &Device::Cpu)?;
        let got = causal_softmax(&s, 2, 0.5)?.to_vec3::<f32>()?;
        let s = s.to_vec3::<f32>()?;
        for h in 0..2 {
            for r in 0..3 {
                let visible = r + 3;
                let m = s[h][r][..visible]
                    .iter()
                    .fold(f32::MIN, |a, &b| a.max(b * 0.5));
                let z: f32 = s[h][r][..visible].iter().map(|v| (v * 0.5 - m).exp()).sum();
                for c in 0..5 {
                    let want = if c < visible {
                        (s[h][r][c] * 0.5 - m).exp() / z
                    } else {
                        0.0
                    };
                    assert!((got[h][r][c] - want).abs() < 1e-6);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn nll_matches_log_softmax() -> Result<()> {
        let l = Tensor::randn(0f32, 3., (4, 11), &Device::Cpu)?;
        let targets = [0u32, 10, 5, 3];
        let got = nll_sum(&l, &targets)?;
        let lp = candle_nn::ops::log_softmax(&l, 1)?.to_vec2::<f32>()?;
        let want: f64 = targets
            .iter()
            .enumerate()
            .map(|(r, &t)| -lp[r][t as usize] as f64)
            .sum();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        Ok(())
    }
}
