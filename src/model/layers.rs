//! Pieces both architectures share: linears, norms computed in f32, causal
//! self-attention with the softmax in f32.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use crate::compute::kernels::{MlpUp, WeightBias};

/// Called with (linear name within the layer, that linear's input) just before
/// each linear runs; calibration uses it to accumulate Hessians.
pub type LinearHook<'a> = dyn FnMut(&str, &Tensor) -> anyhow::Result<()> + 'a;

/// Returned by a [`LinearHook`] that has seen every input it needs: the layer's
/// forward pass stops there, so outputs nothing reads are not computed.
#[derive(Debug, thiserror::Error)]
#[error("forward pass stopped by a hook")]
pub struct StopForward;

/// A linear sublayer `y = x Wᵀ + b`, weight `[out, in]` as transformers stores it.
#[derive(Clone)]
pub struct Linear {
    /// Name within the decoder layer (`self_attn.q_proj`, `fc1`, …).
    pub name: &'static str,
    inner: candle_nn::Linear,
    /// Precision of its GEMM when it runs on the CPU in f32.
    gemm: crate::compute::kernels::CpuGemm,
}

impl Linear {
    /// Wraps a weight and optional bias.
    pub fn new(name: &'static str, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name,
            inner: candle_nn::Linear::new(weight, bias),
            gemm: crate::compute::kernels::CpuGemm::F32,
        }
    }

    /// Sets the precision of its CPU GEMM (see [`crate::compute::kernels::CpuGemm`]).
    pub fn set_cpu_gemm(&mut self, gemm: crate::compute::kernels::CpuGemm) {
        self.gemm = gemm;
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Replaces the weight (same shape), keeping the bias.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight().dims() {
            candle_core::bail!(
                "{}: new weight has shape {:?}, expected {:?}",
                self.name,
                weight.dims(),
                self.weight().dims()
            );
        }
        let weight = weight
            .to_dtype(self.weight().dtype())?
            .to_device(self.weight().device())?;
        self.inner = candle_nn::Linear::new(weight, self.bias().cloned());
        Ok(())
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// Applies the linear, reporting its input to `hook` first; an error from the
    /// hook (such as [`StopForward`]) ends the layer's forward pass there.
    pub fn forward(
        &self,
        x: &Tensor,
        hook: &mut Option<&mut LinearHook<'_>>,
    ) -> anyhow::Result<Tensor> {
        if let Some(h) = hook.as_mut() {
            h(self.name, x)?;
        }
        let w = self.weight();
        if crate::compute::kernels::is_cpu_f32(x) && crate::compute::kernels::is_cpu_f32(w) {
            let (rows, k, mut dims) = flat_rows(x)?;
            let x2 = x.reshape((rows, k))?;
            let y = match self.bias() {
                Some(b) if !crate::compute::kernels::is_cpu_f32(b) => {
                    crate::compute::kernels::linear_cpu(&x2, w, None, self.gemm)?
                        .broadcast_add(b)?
                }
                b => crate::compute::kernels::linear_cpu(&x2, w, b, self.gemm)?,
            };
            *dims.last_mut().expect("rank ≥ 1") = w.dim(0)?;
            return Ok(y.reshape(dims)?);
        }
        Ok(self.inner.forward(x)?)
    }
}

impl Linear {
    /// Whether `x` through this linear can take the fused f32 CPU kernels: f32
    /// GEMM precision, and `x`, weight and bias f32 on the CPU.
    fn fused_f32(&self, x: &Tensor) -> bool {
        use crate::compute::kernels::is_cpu_f32;
        self.gemm == crate::compute::kernels::CpuGemm::F32
            && is_cpu_f32(x)
            && is_cpu_f32(self.weight())
            && self.bias().is_none_or(is_cpu_f32)
    }

    /// `relu(self(x))`, the ReLU fused into the product on the f32 CPU path.
    pub fn forward_relu(
        &self,
        x: &Tensor,
        hook: &mut Option<&mut LinearHook<'_>>,
    ) -> anyhow::Result<Tensor> {
        if !self.fused_f32(x) {
            return Ok(self.forward(x, hook)?.relu()?);
        }
        if let Some(h) = hook.as_mut() {
            h(self.name, x)?;
        }
        let (rows, k, mut dims) = flat_rows(x)?;
        *dims.last_mut().expect("rank ≥ 1") = self.weight().dim(0)?;
        let y = crate::compute::kernels::linear_relu_f32(
            &x.reshape((rows, k))?,
            self.weight(),
            self.bias(),
        )?;
        Ok(y.reshape(dims)?)
    }

    /// `residual + self(x)`, the product added onto `residual + bias` on the
    /// f32 CPU path.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        hook: &mut Option<&mut LinearHook<'_>>,
    ) -> anyhow::Result<Tensor> {
        if !(self.fused_f32(x) && crate::compute::kernels::is_cpu_f32(residual)) {
            return Ok((residual + self.forward(x, hook)?)?);
        }
        if let Some(h) = hook.as_mut() {
            h(self.name, x)?;
        }
        let (rows, k, _) = flat_rows(x)?;
        let m = self.weight().dim(0)?;
        let y = crate::compute::kernels::linear_residual_f32(
            &x.reshape((rows, k))?,
            self.weight(),
            self.bias(),
            &residual.reshape((rows, m))?,
        )?;
        Ok(y.reshape(residual.dims())?)
    }
}

/// `x`'s rows (all dimensions but the last), its last dimension and its dims.
fn flat_rows(x: &Tensor) -> Result<(usize, usize, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let k = *dims
        .last()
        .ok_or_else(|| candle_core::Error::Msg("rank 0".into()))?;
    Ok((x.elem_count() / k.max(1), k, dims))
}

/// OPT's MLP with its residual, `residual + fc2(relu(fc1(x)))`. Without a
/// hook, on the f32 CPU path, by chunks of rows through one reused
/// intermediate ([`crate::compute::kernels::mlp_residual_f32`]).
pub fn mlp_relu_residual(
    fc1: &Linear,
    fc2: &Linear,
    x: &Tensor,
    residual: &Tensor,
    hook: &mut Option<&mut LinearHook<'_>>,
) -> anyhow::Result<Tensor> {
    if let Some(y) = fused_mlp(&[fc1], fc2, x, residual, hook, |w| MlpUp::Relu(w[0]))? {
        return Ok(y);
    }
    let h = fc1.forward_relu(x, hook)?;
    fc2.forward_residual(&h, residual, hook)
}

/// Llama's MLP with its residual, `residual + down(silu(gate(x)) · up(x))`.
/// Without a hook, on the f32 CPU path, by chunks of rows through reused
/// intermediates ([`crate::compute::kernels::mlp_residual_f32`]).
pub fn mlp_swiglu_residual<'a>(
    gate: &'a Linear,
    up: &'a Linear,
    down: &'a Linear,
    x: &Tensor,
    residual: &Tensor,
    hook: &mut Option<&mut LinearHook<'_>>,
) -> anyhow::Result<Tensor> {
    use crate::compute::kernels::{is_cpu_f32, silu_mul_f32};
    let swiglu = |w: &[WeightBias<'a>]| MlpUp::SwiGlu {
        gate: w[0],
        up: w[1],
    };
    if let Some(y) = fused_mlp(&[gate, up], down, x, residual, hook, swiglu)? {
        return Ok(y);
    }
    let g = gate.forward(x, hook)?;
    let u = up.forward(x, hook)?;
    let h = if is_cpu_f32(&g) && is_cpu_f32(&u) {
        silu_mul_f32(&g.contiguous()?, &u.contiguous()?)?
    } else {
        (candle_nn::ops::silu(&g)? * u)?
    };
    down.forward_residual(&h, residual, hook)
}

/// The chunked MLP ([`crate::compute::kernels::mlp_residual_f32`]) of
/// `ups` (made into an [`MlpUp`](crate::compute::kernels::MlpUp) by `kind`)
/// and `down`, when it applies: no hook (calibration must see every linear's
/// whole input) and every operand on the f32 CPU path. `None` otherwise.
fn fused_mlp<'a>(
    ups: &[&'a Linear],
    down: &'a Linear,
    x: &Tensor,
    residual: &Tensor,
    hook: &Option<&mut LinearHook<'_>>,
    kind: impl Fn(&[WeightBias<'a>]) -> MlpUp<'a>,
) -> anyhow::Result<Option<Tensor>> {
    // The intermediate `down` reads lives where `x` does, in its dtype.
    if hook.is_some()
        || !crate::compute::kernels::is_cpu_f32(residual)
        || !ups.iter().chain([&down]).all(|l| l.fused_f32(x))
    {
        return Ok(None);
    }
    let (rows, k, _) = flat_rows(x)?;
    let d = residual.dim(candle_core::D::Minus1)?;
    let weights: Vec<WeightBias<'a>> = ups.iter().map(|l| (l.weight(), l.bias())).collect();
    let y = crate::compute::kernels::mlp_residual_f32(
        &x.reshape((rows, k))?,
        &residual.reshape((rows, d))?,
        &kind(&weights),
        (down.weight(), down.bias()),
    )?;
    Ok(Some(y.reshape(residual.dims())?))
}

/// LayerNorm over the last dimension, computed in f32 and returned in `x`'s dtype.
/// `weight`/`bias` are f32.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let affine_f32 = |t: Option<&Tensor>| t.is_none_or(crate::compute::kernels::is_cpu_f32);
    if crate::compute::kernels::is_cpu_f32(x) && affine_f32(weight) && affine_f32(bias) {
        return crate::compute::kernels::layer_norm_f32(x, weight, bias, eps);
    }
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        y = y.broadcast_mul(w)?;
    }
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    y.to_dtype(dtype)
}

/// RMSNorm as transformers' `LlamaRMSNorm`: normalise in f32, cast back to the
/// input dtype, then scale by `weight` (in the input dtype).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    use crate::compute::kernels::{is_cpu_f32, rms_norm_f32};
    if is_cpu_f32(x) && is_cpu_f32(weight) {
        return rms_norm_f32(x, weight, eps);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x32.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    y.broadcast_mul(weight)
}

/// An additive causal mask `[t, t]` (0 on and below the diagonal, −∞ above).
///
/// On an accelerator it is built there: filling `t²` floats on the host and
/// copying them over for every layer of every window costs more than the
/// attention itself at t = 2048.
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    if !device.is_cpu() {
        let idx = Tensor::arange(0u32, t as u32, device)?;
        // Row i, column j: masked where j > i.
        let above = idx.unsqueeze(0)?.broadcast_gt(&idx.unsqueeze(1)?)?;
        let neg = Tensor::full(f32::NEG_INFINITY, (t, t), device)?;
        let zero = Tensor::zeros((t, t), DType::F32, device)?;
        return above.where_cond(&neg, &zero);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// Scaled dot-product attention with a causal mask.
///
/// `q`: `[b, t, heads·d]`; `k`, `v`: `[b, t, kv_heads·d]`, as the projections
/// produce them (query head `h` attends with kv head `h / (heads / kv_heads)`,
/// grouped-query attention). Scores and softmax in f32 (as transformers'
/// eager attention), the weighted sum in the input dtype. Returns
/// `[b, t, heads·d]`, as the output projection reads it.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if crate::compute::kernels::is_cpu_f32(q) {
        return crate::compute::kernels::causal_attention_f32(
            q,
            k,
            v,
            heads,
            kv_heads,
            scale as f32,
        );
    }
    let (b, t, width) = q.dims3()?;
    let d = width / heads;
    let q = split_heads(q, heads, d)?;
    let rep = heads / kv_heads;
    let k = candle_transformers::utils::repeat_kv(split_heads(k, kv_heads, d)?, rep)?;
    let v = candle_transformers::utils::repeat_kv(split_heads(v, kv_heads, d)?, rep)?;
    let out = if q.device().is_cpu() {
        cpu_causal_attention(
            &q.reshape((b * heads, t, d))?,
            &k.reshape((b * heads, t, d))?,
            &v.reshape((b * heads, t, d))?,
            scale,
        )?
        .reshape((b, heads, t, d))?
    } else {
        let dtype = q.dtype();
        let scores = q.matmul(&k.t()?.contiguous()?)?.to_dtype(DType::F32)?;
        let scores = (scores * scale)?.broadcast_add(&causal_mask(t, q.device())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        probs.matmul(&v.contiguous()?)?
    };
    out.transpose(1, 2)?.reshape((b, t, heads * d))
}

/// Query rows per block of the CPU attention: scores for one block of rows over
/// all heads stay cache-sized, and keys after the block's last row are never
/// touched (half the work of a full `[t, t]` score matrix).
const ATTENTION_BLOCK: usize = 256;

/// Causal attention on `[heads, t, d]` tensors, block by block of query rows.
fn cpu_causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, t, _) = q.dims3()?;
    let dtype = q.dtype();
    let mut outs = Vec::with_capacity(t.div_ceil(ATTENTION_BLOCK));
    for r0 in (0..t).step_by(ATTENTION_BLOCK) {
        let rows = ATTENTION_BLOCK.min(t - r0);
        let keys = r0 + rows;
        let qb = q.narrow(1, r0, rows)?.contiguous()?;
        let kb = k.narrow(1, 0, keys)?.contiguous()?;
        let scores = qb.matmul(&kb.t()?)?.to_dtype(DType::F32)?;
        let probs =
            crate::compute::kernels::causal_softmax(&scores, r0, scale as f32)?.to_dtype(dtype)?;
        outs.push(probs.matmul(&v.narrow(1, 0, keys)?.contiguous()?)?);
    }
    Tensor::cat(&outs, 1)
}

/// Splits `[b, t, heads·d]` into `[b, heads, t, d]` (contiguous).
fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    x.reshape((b, t, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_definition() -> anyhow::Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3., 6.]], &Device::Cpu)?;
        let y = layer_norm(&x, None, None, 0.0)?.to_vec2::<f32>()?;
        // mean 3, variance (4+1+0+9)/4 = 3.5
        let s = 3.5f32.sqrt();
        let want = [-2. / s, -1. / s, 0., 3. / s];
        for (a, b) in y[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        Ok(())
    }

    /// Causal softmax attention in f64, straight from the definition, on
    /// `q` `[b, t, heads·d]` and `k`, `v` `[b, t, kv_heads·d]`.
    #[allow(clippy::too_many_arguments)]
    fn reference_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (b, t, heads, kv_heads, d): (usize, usize, usize, usize, usize),
        scale: f64,
    ) -> Vec<f64> {
        let rep = heads / kv_heads;
        let mut out = vec![0f64; b * t * heads * d];
        for bi in 0..b {
            for h in 0..heads {
                let kh = h / rep;
                let q_at = |i: usize, c: usize| q[(bi * t + i) * heads * d + h * d + c] as f64;
                let k_at = |j: usize, c: usize| k[(bi * t + j) * kv_heads * d + kh * d + c] as f64;
                let v_at = |j: usize, c: usize| v[(bi * t + j) * kv_heads * d + kh * d + c] as f64;
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| (0..d).map(|c| q_at(i, c) * k_at(j, c)).sum::<f64>() * scale)
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        out[(bi * t + i) * heads * d + h * d + c] = e
                            .iter()
                            .enumerate()
                            .map(|(j, p)| p * v_at(j, c))
                            .sum::<f64>()
                            / sum;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_an_f64_reference() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        // (b, t, heads, kv_heads, d): lengths that end inside a 128-row block,
        // a single position, grouped-query attention with 3 heads per kv head.
        for dims in [
            (2, 300, 6, 2, 64),
            (1, 129, 3, 1, 32),
            (1, 1, 2, 2, 32),
            (2, 77, 4, 4, 16),
        ] {
            let (b, t, heads, kv_heads, d) = dims;
            let q = Tensor::randn(0f32, 1., (b, t, heads * d), &dev)?;
            let k = Tensor::randn(0f32, 1., (b, t, kv_heads * d), &dev)?;
            let v = Tensor::randn(0f32, 1., (b, t, kv_heads * d), &dev)?;
            let scale = (d as f64).powf(-0.5);
            let want = reference_attention(
                &q.flatten_all()?.to_vec1()?,
                &k.flatten_all()?.to_vec1()?,
                &v.flatten_all()?.to_vec1()?,
                dims,
                scale,
            );
            for dtype in [DType::F32, DType::BF16] {
                let got = causal_attention(
                    &q.to_dtype(dtype)?,
                    &k.to_dtype(dtype)?,
                    &v.to_dtype(dtype)?,
                    heads,
                    kv_heads,
                    scale,
                )?;
                assert_eq!(got.dims(), [b, t, heads * d]);
                let got = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0f64, f64::max);
                // bf16 rounds the inputs and the probabilities (2⁻⁹ each).
                let tol = if dtype == DType::F32 { 2e-6 } else { 5e-2 };
                assert!(diff < tol, "{dims:?} {dtype:?}: max difference {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn attention_is_causal() -> anyhow::Result<()> {
        // With v = one-hot positions, row i of the output may only mix positions ≤ i.
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 4, 4), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 4, 4), &dev)?;
        let v = Tensor::eye(4, DType::F32, &dev)?.reshape((1, 4, 4))?;
        let out = causal_attention(&q, &k, &v, 1, 1, 0.5)?
            .reshape((4, 4))?
            .to_vec2::<f32>()?;
        for (i, row) in out.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                if j > i {
                    assert_eq!(*p, 0.0);
                }
            }
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        Ok(())
    }
}
