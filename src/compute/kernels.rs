//! CPU fast paths where candle's generic ops are far from the machine's limit:
//! f32 GEMMs through faer (about twice candle's rate for the linears' shapes on
//! the machines measured, and a lower-triangle-only XᵀX for Hessians), the causal
//! softmax of attention (scale, mask and softmax in one parallel pass instead of
//! three single-threaded ones), and the vectorized exponential, maximum and
//! norms that the evaluation's negative log-likelihood (`eval::row_nlls`) and
//! the layers use.

use candle_core::{DType, Device, Result, Storage, Tensor};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Defines `fn $name(args) = $portable`: `$portable` (an `#[inline(always)]`
/// function written so that it vectorizes) compiled for AVX-512 or for
/// AVX2 + FMA when the CPU has them, else as is. The feature check is a cached
/// load, cheap next to a row or chunk of work.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:ident;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `avx2`.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

/// Precision of the CPU GEMMs of a calibration (the linears' forward passes and
/// the Hessians' `XᵀX`) on an f32 model. `Bf16` rounds both inputs of each
/// product to bf16 (relative error 2⁻⁹ per input) and accumulates in f32 with
/// AVX512-BF16 instructions ([`super::bf16_gemm`]): 1.6–2.4× faer's f32 rate on
/// the machines measured, at a relative error of the products of about 2⁻⁹.
/// Weights, attention, the OBS sweep and evaluation stay in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuGemm {
    /// f32 GEMMs through faer (the default).
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation (AVX512-BF16 CPUs: Zen 4 and later,
    /// Sapphire Rapids and later).
    Bf16,
}

impl CpuGemm {
    /// `"f32"` or `"bf16"`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => anyhow::bail!("unknown GEMM precision `{s}`: use f32 or bf16"),
        }
    }

    /// Its name, as [`parse`](Self::parse) reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// Refuses `Bf16` where it cannot run: off the CPU, on a model that is not
    /// f32, or on a CPU without AVX512-BF16.
    pub fn check(self, device: &Device, dtype: DType) -> anyhow::Result<()> {
        if self == Self::F32 {
            return Ok(());
        }
        if !device.is_cpu() {
            anyhow::bail!(
                "gemm bf16 is a CPU option; on an accelerator load the model in bf16 instead (--dtype bf16)"
            );
        }
        if dtype != DType::F32 {
            anyhow::bail!("gemm bf16 applies to an f32 model, this one computes in {dtype:?}");
        }
        if !super::bf16_gemm::available() {
            anyhow::bail!(
                "gemm bf16 needs a CPU with AVX512-BF16 (AMD Zen 4 or later, Intel Sapphire Rapids or later); this one has none: use gemm f32"
            );
        }
        Ok(())
    }
}

/// `x · wᵀ (+ b)` for `x` `[n, k]`, `w` `[m, k]`, `b` `[m]` (f32, CPU) in the
/// given precision.
pub fn linear_cpu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, gemm: CpuGemm) -> Result<Tensor> {
    match (gemm, b) {
        (CpuGemm::F32, Some(b)) => matmul_xwt_bias(x, w, b),
        (CpuGemm::F32, None) => matmul_xwt(x, w),
        (CpuGemm::Bf16, b) => {
            let (n, k) = x.dims2()?;
            let m = w.dim(0)?;
            let mut out = output_rows(n, m, b)?;
            use super::bf16_gemm::{gemm_bf16, StridedMut, StridedRef};
            with_cpu_f32(x, |xs| {
                with_cpu_f32(w, |ws| {
                    gemm_bf16(
                        StridedMut::row_major(&mut out, n, m)?,
                        if b.is_some() { 1.0 } else { 0.0 },
                        1.0,
                        StridedRef::row_major(xs, n, k)?,
                        StridedRef::row_major(ws, m, k)?.t(),
                        false,
                    )
                })
            })???;
            Tensor::from_vec(out, (n, m), &Device::Cpu)
        }
    }
}

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

/// `x · wᵀ + b` for `x` `[n, k]`, `w` `[m, k]` and `b` `[m]` (f32, CPU): the
/// bias is written first and the product added onto it, which spares the
/// separate broadcast pass (and its `[n, m]` temporary) of `y + b`.
pub fn matmul_xwt_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    xwt_f32(x, w, Some(b))
}

/// The `[n, m]` output of a linear before its product is added: `b` in every
/// row, or zeros.
fn output_rows(n: usize, m: usize, b: Option<&Tensor>) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n * m];
    if let Some(b) = bias_vec(b, m)? {
        fill_rows(&mut out, &b);
    }
    Ok(out)
}

/// A bias `[m]` as a vector, checked to have `m` elements.
fn bias_vec(b: Option<&Tensor>, m: usize) -> Result<Option<Vec<f32>>> {
    b.map(|b| {
        if b.dims() != [m] {
            candle_core::bail!("bias of shape {:?} for {m} outputs", b.dims());
        }
        b.to_vec1::<f32>()
    })
    .transpose()
}

/// Every row of the row-major `out` set to `row`, in parallel.
fn fill_rows(out: &mut [f32], row: &[f32]) {
    out.par_chunks_mut(row.len())
        .for_each(|r| r.copy_from_slice(row));
}

/// Rows of `x` per thread from which [`gemm_xwt`] splits the rows among the
/// threads, each part through faer's single-threaded GEMM, instead of letting
/// faer split the product. On the 2-vCPU Xeon (2026-12-06), with the forward
/// passes' shapes (`k` 576–3072, `m` 192–3072, 1024–4096 rows per thread),
/// the split ran at 396–448 GFLOP/s against faer's own parallel 339–431 (MKL
/// through PyTorch: 346–472). With 64–256 rows per part it fell to 289–402:
/// below this, faer's own split (which also divides the outputs) does better.
const SPLIT_ROWS_PER_THREAD: usize = 1024;

/// Rows per thread from which [`gemm_xwt`] makes two parts per thread, so
/// that work stealing evens out a thread slowed by the rest of the machine
/// (measured within 1–2 % of one part per thread at 2048+ rows per part).
const SPLIT_TWO_PER_THREAD: usize = 4096;

/// `dst ← dst + x · wᵀ` (`add`) or `dst ← x · wᵀ` through faer, for row-major
/// `x` `[n, k]`, `w` `[m, k]` and `dst` `[n, m]`.
fn gemm_xwt(dst: &mut [f32], x: &[f32], w: &[f32], (n, k, m): (usize, usize, usize), add: bool) {
    let threads = rayon::current_num_threads();
    let per_thread = n / threads.max(1);
    if threads > 1 && per_thread >= SPLIT_ROWS_PER_THREAD {
        let per = if per_thread >= SPLIT_TWO_PER_THREAD {
            2
        } else {
            1
        };
        gemm_xwt_parts(dst, x, w, (n, k, m), add, threads * per);
    } else {
        gemm_xwt_with(dst, x, w, (n, k, m), add, Par::rayon(0));
    }
}

/// [`gemm_xwt`] by `parts` contiguous parts of the rows, in parallel, each
/// through faer's single-threaded GEMM.
fn gemm_xwt_parts(
    dst: &mut [f32],
    x: &[f32],
    w: &[f32],
    (n, k, m): (usize, usize, usize),
    add: bool,
    parts: usize,
) {
    if n == 0 || k == 0 || m == 0 {
        // Nothing to split (and no zero-sized chunks to ask rayon for).
        return gemm_xwt_with(dst, x, w, (n, k, m), add, Par::Seq);
    }
    let rows = n.div_ceil(parts.max(1));
    dst[..n * m]
        .par_chunks_mut(rows * m)
        .zip(x[..n * k].par_chunks(rows * k))
        .for_each(|(d, x)| gemm_xwt_with(d, x, w, (x.len() / k, k, m), add, Par::Seq));
}

/// [`gemm_xwt`] with faer's parallelism `par`.
fn gemm_xwt_with(
    dst: &mut [f32],
    x: &[f32],
    w: &[f32],
    (n, k, m): (usize, usize, usize),
    add: bool,
    par: Par,
) {
    let xr = MatRef::from_row_major_slice(x, n, k);
    let wr = MatRef::from_row_major_slice(w, m, k);
    // The row-major [n, m] result is the column-major [m, n] matrix W·Xᵀ.
    let dst = MatMut::from_column_major_slice_mut(dst, m, n);
    let accum = if add { Accum::Add } else { Accum::Replace };
    faer::linalg::matmul::matmul(dst, accum, wr, xr.transpose(), 1.0f32, par);
}

/// `x · wᵀ (+ b)` through faer: the product is added onto the bias rows.
fn xwt_f32(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, m, out) = xwt_vec(x, w, b)?;
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}

/// [`xwt_f32`]'s rows `n`, columns `m` and row-major data.
fn xwt_vec(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize, Vec<f32>)> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("matmul_xwt: x is [{n}, {k}] but w is [{m}, {k2}]");
    }
    let mut out = output_rows(n, m, b)?;
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| gemm_xwt(&mut out, xs, ws, (n, k, m), b.is_some()))
    })??;
    Ok((n, m, out))
}

/// `max(x · wᵀ + b, 0)` for `x` `[n, k]`, `w` `[m, k]`, `b` `[m]` (f32, CPU):
/// the ReLU in place on the product, in parallel, where candle's `relu` is a
/// single-threaded pass into a second `[n, m]` buffer.
pub fn linear_relu_f32(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, m, mut out) = xwt_vec(x, w, b)?;
    relu_slice(&mut out);
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}

fn relu_slice(ys: &mut [f32]) {
    ys.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// `residual + x · wᵀ (+ b)` for `x` `[n, k]`, `w` `[m, k]`, `b` `[m]` and
/// `residual` `[n, m]` (f32, CPU): the product is added onto `residual + b`,
/// which spares the separate residual add (single-threaded in candle) and its
/// `[n, m]` output.
pub fn linear_residual_f32(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 || residual.dims() != [n, m] {
        candle_core::bail!(
            "linear_residual: x {:?}, w {:?}, residual {:?}",
            x.dims(),
            w.dims(),
            residual.dims()
        );
    }
    let mut out = residual_rows(residual, b, m)?;
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| gemm_xwt(&mut out, xs, ws, (n, k, m), true))
    })??;
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}

/// `residual + b` row by row, as a fresh buffer.
fn residual_rows(residual: &Tensor, b: Option<&Tensor>, m: usize) -> Result<Vec<f32>> {
    let bias = bias_vec(b, m)?;
    with_cpu_f32(residual, |rs| {
        let mut out = vec![0f32; rs.len()];
        out.par_chunks_mut(m)
            .zip(rs.par_chunks(m))
            .for_each(|(o, r)| match &bias {
                Some(b) => o
                    .iter_mut()
                    .zip(r.iter().zip(b))
                    .for_each(|(o, (r, b))| *o = r + b),
                None => o.copy_from_slice(r),
            });
        out
    })
}

/// Bytes of the `[rows, ffn]` intermediates of one chunk of rows in
/// [`mlp_residual_f32`]: below the allocator's mmap threshold
/// (`runtime::alloc`), so that they are reused from the heap instead of
/// faulted in afresh for every layer.
const MLP_CHUNK_BYTES: usize = 48 << 20;

/// A linear's f32 weight `[out, in]` and optional bias `[out]`.
pub type WeightBias<'a> = (&'a Tensor, Option<&'a Tensor>);

/// The first half of an MLP: what maps the input to the `[rows, ffn]`
/// intermediate.
pub enum MlpUp<'a> {
    /// OPT's `relu(x·w1ᵀ + b1)`.
    Relu(WeightBias<'a>),
    /// Llama's SwiGLU, `silu(x·gateᵀ + b) · (x·upᵀ + b)`.
    SwiGlu {
        /// `gate_proj`.
        gate: WeightBias<'a>,
        /// `up_proj`.
        up: WeightBias<'a>,
    },
}

impl MlpUp<'_> {
    /// The projections into the intermediate (one or two).
    fn projections(&self) -> Vec<WeightBias<'_>> {
        match self {
            MlpUp::Relu(w1) => vec![*w1],
            MlpUp::SwiGlu { gate, up } => vec![*gate, *up],
        }
    }
}

/// An MLP with its residual, `residual + up(x)·w2ᵀ + b2`, for `x`,
/// `residual` `[n, d]` (f32, CPU), by chunks of rows whose `[rows, ffn]`
/// intermediates stay below [`MLP_CHUNK_BYTES`]: the intermediates are
/// reused from chunk to chunk, the activation runs in place on them in
/// parallel, and the second GEMM of each chunk adds onto `residual + b2` in
/// the output. Spares the full-size intermediates (fresh pages for every layer
/// at long sequences), candle's single-threaded activation and residual add,
/// and their extra `[n, ffn]` and `[n, d]` buffers.
pub fn mlp_residual_f32(
    x: &Tensor,
    residual: &Tensor,
    up: &MlpUp<'_>,
    down: WeightBias<'_>,
) -> Result<Tensor> {
    let f = down.0.dim(1)?;
    let chunk = MLP_CHUNK_BYTES / 4 / (f * up.projections().len()).max(1);
    mlp_chunked(x, residual, up, down, chunk)
}

/// [`mlp_residual_f32`] by chunks of `chunk` rows.
fn mlp_chunked(
    x: &Tensor,
    residual: &Tensor,
    up: &MlpUp<'_>,
    (w2, b2): WeightBias<'_>,
    chunk: usize,
) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let (d2, f) = w2.dims2()?;
    let projections = up.projections();
    let bad = projections.iter().any(|(w, _)| w.dims() != [f, d]);
    if bad || d2 != d || residual.dims() != [n, d] {
        candle_core::bail!(
            "mlp: x {:?}, residual {:?}, up {:?}, down {:?}",
            x.dims(),
            residual.dims(),
            projections
                .iter()
                .map(|(w, _)| w.dims())
                .collect::<Vec<_>>(),
            w2.dims()
        );
    }
    let biases = projections
        .iter()
        .map(|(_, b)| bias_vec(*b, f))
        .collect::<Result<Vec<_>>>()?;
    let mut out = residual_rows(residual, b2, d)?;
    let chunk = chunk.clamp(1, n.max(1));
    let mut mids = vec![vec![0f32; chunk * f]; projections.len()];
    let project = |mid: &mut [f32], xc: &[f32], (w, _): WeightBias<'_>, bias: &Option<Vec<f32>>| {
        if let Some(b) = bias {
            fill_rows(mid, b);
        }
        with_cpu_f32(w, |ws| {
            gemm_xwt(mid, xc, ws, (xc.len() / d, d, f), bias.is_some())
        })
    };
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w2, |w2s| -> Result<()> {
            for r0 in (0..n).step_by(chunk) {
                let rows = chunk.min(n - r0);
                let xc = &xs[r0 * d..(r0 + rows) * d];
                for ((mid, p), bias) in mids.iter_mut().zip(&projections).zip(&biases) {
                    project(&mut mid[..rows * f], xc, *p, bias)?;
                }
                let (first, rest) = mids.split_first_mut().expect("one projection or two");
                let h = &mut first[..rows * f];
                match rest.first() {
                    None => relu_slice(h),
                    Some(u) => silu_mul_in_place(h, &u[..rows * f]),
                }
                let oc = &mut out[r0 * d..(r0 + rows) * d];
                gemm_xwt(oc, h, w2s, (rows, f, d), true);
            }
            Ok(())
        })
    })???;
    Tensor::from_vec(out, (n, d), &Device::Cpu)
}

/// LayerNorm over the last dimension of an f32 CPU tensor in one parallel
/// pass per row (mean, variance, normalise, scale, shift), where the generic
/// version makes nine passes, each with a full-size temporary. Same formula:
/// `(x − mean) / sqrt(var + eps) · w + b`, variance about the mean, in f32.
pub fn layer_norm_f32(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    let dims = x.dims().to_vec();
    let w = weight.map(|w| w.to_vec1::<f32>()).transpose()?;
    let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let (w, b) = (w.as_deref(), b.as_deref());
    let out = with_cpu_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(d)
            .zip(xs.par_chunks(d))
            .for_each(|(o, row)| layer_norm_row(o, row, w, b, eps as f32));
        out
    })?;
    Tensor::from_vec(out, dims, &Device::Cpu)
}

simd_dispatch! {
    /// One row of [`layer_norm_f32`].
    fn layer_norm_row(o: &mut [f32], row: &[f32], w: Option<&[f32]>, b: Option<&[f32]>, eps: f32)
        = layer_norm_row_portable;
}

/// Two passes (mean, then the variance about it), each summed in sixteen
/// lanes: a single running sum is a chain of dependent adds that cost more
/// than the rest of the normalization.
#[inline(always)]
fn layer_norm_row_portable(
    o: &mut [f32],
    row: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f32,
) {
    let d = row.len() as f32;
    let mean = lane_sum(row, |v| v) / d;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (o, &v) in o.iter_mut().zip(row) {
        *o = (v - mean) * inv;
    }
    if let Some(w) = w {
        o.iter_mut().zip(w).for_each(|(o, w)| *o *= w);
    }
    if let Some(b) = b {
        o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
    }
}

/// `Σ f(x)` over `xs` in sixteen independent partial sums.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (chunks, rest) = xs.as_chunks::<LANES>();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| f(x)).sum::<f32>()
}

/// `x · wᵀ` for `x` `[n, k]` and `w` `[m, k]` (f32, CPU): `[n, m]`.
pub fn matmul_xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    xwt_f32(x, w, None)
}

/// `h ← h + alpha · xᵀx` (`accumulate`) or `h ← alpha · xᵀx` on the lower
/// triangle (diagonal included) of a square f32 CPU tensor `h` `[d, d]`, in
/// place, for `x` `[n, d]`: one triangle of the product (half the FLOPs of a
/// full GEMM), no `d × d` temporary and no merge pass. The upper triangle is
/// left as it was, or, near the diagonal with bf16, set to the full product's
/// values; [`mirror_lower`] fills it in.
///
/// Without `accumulate`, `h` is only written: a freshly zeroed `h` then takes
/// its pages by plain write faults, where reading the zero page first would
/// make every first write a copy-on-write fault with a TLB shootdown, a large
/// part of the first batch's time.
///
/// `h`'s storage is changed in place: every clone of `h` sees the update.
pub fn gram_lower_add(
    h: &Tensor,
    alpha: f32,
    x: &Tensor,
    accumulate: bool,
    gemm: CpuGemm,
) -> Result<()> {
    let (n, d) = x.dims2()?;
    if h.dims() != [d, d] || !is_cpu_f32(h) || !h.is_contiguous() {
        candle_core::bail!("gram_lower_add: h must be a contiguous f32 CPU [{d}, {d}] tensor");
    }
    with_cpu_f32(x, |xs| {
        h.inplace_op1(&GramLowerAdd {
            x: xs,
            n,
            d,
            alpha,
            accumulate,
            gemm,
        })
    })?
}

/// The contiguous `d × d` f32 matrix an in-place op was handed.
fn square_f32<'a>(
    storage: &'a mut candle_core::CpuStorage,
    layout: &candle_core::Layout,
    d: usize,
    op: &str,
) -> Result<&'a mut [f32]> {
    let candle_core::CpuStorage::F32(v) = storage else {
        candle_core::bail!("{op}: not f32")
    };
    let start = layout.start_offset();
    Ok(&mut v[start..start + d * d])
}

struct GramLowerAdd<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    alpha: f32,
    accumulate: bool,
    gemm: CpuGemm,
}

impl candle_core::InplaceOp1 for GramLowerAdd<'_> {
    fn name(&self) -> &'static str {
        "gram-lower-add"
    }
    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<()> {
        let d = self.d;
        let h = square_f32(storage, layout, d, "gram_lower_add")?;
        if self.gemm == CpuGemm::Bf16 {
            return super::bf16_gemm::gram_lower_bf16(
                self.x,
                self.n,
                d,
                self.alpha,
                h,
                self.accumulate,
            );
        }
        let xr = MatRef::from_row_major_slice(self.x, self.n, d);
        // Row-major lower triangle = column-major upper triangle of the same matrix.
        let dst = MatMut::from_column_major_slice_mut(h, d, d);
        let accum = if self.accumulate {
            Accum::Add
        } else {
            Accum::Replace
        };
        faer::linalg::matmul::triangular::matmul(
            dst,
            BlockStructure::TriangularUpper,
            accum,
            xr.transpose(),
            BlockStructure::Rectangular,
            xr,
            BlockStructure::Rectangular,
            self.alpha,
            Par::rayon(0),
        );
        Ok(())
    }
}

/// Scales the lower triangle (diagonal included) of a square f32 CPU tensor by
/// `scale` and copies it onto the upper one, in place (after
/// [`gram_lower_add`]).
pub fn mirror_lower(h: &Tensor, scale: f32) -> Result<()> {
    let (d, d2) = h.dims2()?;
    if d != d2 || !is_cpu_f32(h) || !h.is_contiguous() {
        candle_core::bail!("mirror_lower: h must be a square contiguous f32 CPU tensor");
    }
    h.inplace_op1(&MirrorLower { d, scale })
}

struct MirrorLower {
    d: usize,
    scale: f32,
}

impl candle_core::InplaceOp1 for MirrorLower {
    fn name(&self) -> &'static str {
        "mirror-lower"
    }
    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<()> {
        let d = self.d;
        let h = square_f32(storage, layout, d, "mirror_lower")?;
        if self.scale != 1.0 {
            let scale = self.scale;
            h.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                row[..=i].iter_mut().for_each(|x| *x *= scale);
            });
        }
        // Tiles of the upper triangle, each filled from its transposed lower tile,
        // so that both the reads and the writes stay in cache.
        const T: usize = 64;
        let tiles: Vec<(usize, usize)> = (0..d.div_ceil(T))
            .flat_map(|bi| (bi..d.div_ceil(T)).map(move |bj| (bi * T, bj * T)))
            .collect();
        let base = h.as_mut_ptr() as usize;
        tiles.par_iter().for_each(|&(i0, j0)| {
            let p = base as *mut f32;
            for i in i0..(i0 + T).min(d) {
                for j in j0.max(i + 1)..(j0 + T).min(d) {
                    // SAFETY: (i, j) with j > i is written by exactly one tile and
                    // (j, i) with j > i is only read; both lie inside `h`.
                    unsafe { *p.add(i * d + j) = *p.add(j * d + i) };
                }
            }
        });
        Ok(())
    }
}

/// `Σ_i x[i, j]²` per column of an f32 CPU matrix `x` `[n, d]`, without the
/// `[n, d]` temporary of `x.sqr()?.sum(0)` (25 MiB for an fc2 input of 2048
/// tokens). Rows are split among threads, each summing into its own row of
/// partial sums.
pub fn column_sq_sums(x: &Tensor) -> Result<Vec<f32>> {
    let (n, d) = x.dims2()?;
    with_cpu_f32(x, |xs| {
        let parts = rayon::current_num_threads().clamp(1, n.max(1));
        let rows_per = n.div_ceil(parts).max(1);
        xs.par_chunks(rows_per * d)
            .map(|chunk| {
                let mut acc = vec![0f32; d];
                for row in chunk.chunks_exact(d) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v * v);
                }
                acc
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    })
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

/// Query rows per block of the CPU attention: a block's scores (`128 × t`
/// floats, 1 MiB at t = 2048) stay in L2, and keys after its last row are
/// never touched, so the score GEMMs do half the work of a full `[t, t]`
/// matrix plus half a block per block row.
const ATTENTION_BLOCK: usize = 128;

/// Causal attention on f32 CPU tensors laid out as the projections produce
/// them: `q` `[b, t, heads·d]`, `k` and `v` `[b, t, kv_heads·d]` (query head
/// `h` reads kv head `h / (heads / kv_heads)`); returns `[b, t, heads·d]`, the
/// layout the output projection reads. Queries are read and outputs written
/// in place through strides, so the `[b, heads, t, d]` copies of q, k, v and
/// of the output, and the repeated kv heads of grouped-query attention, are
/// never made.
///
/// Heads run in parallel. Per head, its keys and values are gathered, then
/// per block of query rows: scores against the keys up to the block's end
/// (faer), a masked softmax per row (max, then `e^(s − max)` and its sum in
/// one pass), the weighted sum of values (faer), and the division by the
/// row's sum on the `d` outputs rather than on the `t` probabilities.
pub fn causal_attention_f32(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    scale: f32,
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    if heads == 0 || kv_heads == 0 || !qw.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!("causal_attention_f32: {heads} heads, {kv_heads} kv heads, width {qw}")
    }
    let d = qw / heads;
    let kw = kv_heads * d;
    if k.dims() != [b, t, kw] || v.dims() != [b, t, kw] {
        candle_core::bail!(
            "causal_attention_f32: q {:?} with k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let rep = heads / kv_heads;
    let mut out = vec![0f32; b * t * qw];
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    with_cpu_f32(q, |qs| {
        with_cpu_f32(k, |ks| {
            with_cpu_f32(v, |vs| {
                (0..b * heads).into_par_iter().for_each_init(
                    || vec![0f32; 2 * t * d + ATTENTION_BLOCK * t + ATTENTION_BLOCK],
                    |scratch, bh| {
                        let (bi, h) = (bh / heads, bh % heads);
                        let (kh, rest) = scratch.split_at_mut(t * d);
                        let (vh, rest) = rest.split_at_mut(t * d);
                        let (scores, inv) = rest.split_at_mut(ATTENTION_BLOCK * t);
                        // The head's keys and values, gathered: strided they span
                        // `t` pages each, and the TLB misses cost more than the copy.
                        let kv_off = bi * t * kw + (h / rep) * d;
                        for (j, (kr, vr)) in kh
                            .chunks_exact_mut(d)
                            .zip(vh.chunks_exact_mut(d))
                            .enumerate()
                        {
                            kr.copy_from_slice(&ks[kv_off + j * kw..][..d]);
                            vr.copy_from_slice(&vs[kv_off + j * kw..][..d]);
                        }
                        for r0 in (0..t).step_by(ATTENTION_BLOCK) {
                            let rows = ATTENTION_BLOCK.min(t - r0);
                            let keys = r0 + rows;
                            let s = &mut scores[..rows * keys];
                            let q_off = (bi * t + r0) * qw + h * d;
                            let qr = MatRef::from_row_major_slice_with_stride(
                                &qs[q_off..q_off + (rows - 1) * qw + d],
                                rows,
                                d,
                                qw,
                            );
                            let kr = MatRef::from_row_major_slice(&kh[..keys * d], keys, d);
                            let vr = MatRef::from_row_major_slice(&vh[..keys * d], keys, d);
                            // Row-major S [rows, keys] is column-major Sᵀ = K·Q_blockᵀ.
                            faer::linalg::matmul::matmul(
                                MatMut::from_column_major_slice_mut(s, keys, rows),
                                Accum::Replace,
                                kr,
                                qr.transpose(),
                                scale,
                                Par::Seq,
                            );
                            for (i, row) in s.chunks_mut(keys).enumerate() {
                                let visible = r0 + i + 1;
                                let max = max_f32(&row[..visible]);
                                inv[i] = 1.0 / exp_sub_sum(&mut row[..visible], max);
                                row[visible..].fill(0.0);
                            }
                            // SAFETY: this task alone writes columns h·d..(h+1)·d of
                            // batch bi, all inside `out`; nothing reads `out` until
                            // every task is done.
                            let o = unsafe {
                                MatMut::from_raw_parts_mut(
                                    out_ptr.get().add(q_off),
                                    d,
                                    rows,
                                    1,
                                    qw as isize,
                                )
                            };
                            // O_blockᵀ [d, rows] = Vᵀ·Pᵀ, P row-major [rows, keys].
                            faer::linalg::matmul::matmul(
                                o,
                                Accum::Replace,
                                vr.transpose(),
                                MatRef::from_column_major_slice(s, keys, rows),
                                1.0f32,
                                Par::Seq,
                            );
                            for (i, &inv) in inv[..rows].iter().enumerate() {
                                // SAFETY: row r0 + i of this task's head, as above.
                                let row = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out_ptr.get().add(q_off + i * qw),
                                        d,
                                    )
                                };
                                row.iter_mut().for_each(|x| *x *= inv);
                            }
                        }
                    },
                );
            })
        })
    })???;
    Tensor::from_vec(out, (b, t, qw), &Device::Cpu)
}

simd_dispatch! {
    /// `x ← e^(x − shift)` over `x`, returning the sum: the inner loop of softmax.
    /// libm's scalar `expf` costs more than the attention GEMMs around it; this is
    /// Cephes' `expf` (range reduction by ln 2, degree-6 polynomial; relative error
    /// about 1e-7), written so that it vectorizes, and compiled for AVX-512 or
    /// AVX2 + FMA when the CPU has them. Meant for `x ≤ shift` (softmax); NaN stays
    /// NaN.
    pub fn exp_sub_sum(x: &mut [f32], shift: f32) -> f32 = exp_sub_sum_portable;
}

simd_dispatch! {
    /// The largest value of `x` (−∞ for none), NaN ignored as `f32::max`
    /// ignores it: in sixteen lanes, where a fold over `f32::max` stays scalar.
    pub fn max_f32(x: &[f32]) -> f32 = max_portable;
}

#[inline(always)]
fn max_portable(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            // `v > a` is false for NaN, so NaN never enters the maximum.
            *a = if v > *a { v } else { *a };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        max = if v > max { v } else { max };
    }
    max
}

#[inline(always)]
fn exp_sub_sum_portable(x: &mut [f32], shift: f32) -> f32 {
    const LANES: usize = 16;
    // Sixteen partial sums, so that the sum vectorizes as well.
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_cephes(*v - shift);
            *a += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_cephes(*v - shift);
        sum += *v;
    }
    acc.iter().sum::<f32>() + sum
}

#[inline(always)]
fn exp_cephes(x: f32) -> f32 {
    // Below −87.3 the result would leave the normal range; 88 keeps 2ⁿ finite.
    let x = x.clamp(-87.336_54, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from n's bits: adding 1.5·2²³ puts the integer n (|n| ≤ 127) in the
    // low mantissa bits. `n as i32` would be a saturating conversion, which
    // does not vectorize (one scalar convert and NaN check per element).
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
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
                let max = max_f32(x) * scale;
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = v * scale;
                }
                let sum = exp_sub_sum(&mut o[..visible], max);
                let inv = 1.0 / sum;
                o[..visible].iter_mut().for_each(|v| *v *= inv);
            });
        out
    })?;
    Tensor::from_vec(out, (heads, rows, cols), &Device::Cpu)
}

/// Elements per partial sum of [`exp_sum_f64`]: a stack buffer's worth.
const EXP_SUM_CHUNK: usize = 1024;

/// `Σ e^(x − shift)` over `x` (each term in (0, 1] for `shift = max x`): the
/// exponentials vectorized ([`exp_sub_sum`]) in f32 over chunks of 1024, whose
/// sums are added in f64. Over a 49152-entry vocabulary row, scalar libm
/// `expf` into one f64 accumulator would dominate the evaluation's time.
pub fn exp_sum_f64(x: &[f32], shift: f32) -> f64 {
    let mut buf = [0f32; EXP_SUM_CHUNK];
    x.chunks(EXP_SUM_CHUNK)
        .map(|c| {
            let b = &mut buf[..c.len()];
            b.copy_from_slice(c);
            exp_sub_sum(b, shift) as f64
        })
        .sum()
}

/// `silu(g) · u` elementwise for f32 CPU tensors of one shape (Llama's gated
/// MLP), with the vectorized exponential of [`exp_sub_sum`]; candle's `silu`
/// calls libm's scalar `expf` per element.
pub fn silu_mul_f32(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.shape() != u.shape() {
        candle_core::bail!(
            "silu_mul: shapes {:?} and {:?} differ",
            g.shape(),
            u.shape()
        );
    }
    let out = with_cpu_f32(g, |gs| {
        with_cpu_f32(u, |us| {
            let mut out = vec![0f32; gs.len()];
            out.par_chunks_mut(4096)
                .zip(gs.par_chunks(4096).zip(us.par_chunks(4096)))
                .for_each(|(o, (g, u))| silu_mul_chunk(o, g, u));
            out
        })
    })??;
    Tensor::from_vec(out, g.shape(), &Device::Cpu)
}

simd_dispatch! {
    fn silu_mul_chunk(o: &mut [f32], g: &[f32], u: &[f32]) = silu_mul_portable;
}

/// `g ← silu(g) · u` elementwise, in parallel.
fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    g.par_chunks_mut(4096)
        .zip(u.par_chunks(4096))
        .for_each(|(g, u)| silu_mul_chunk_in_place(g, u));
}

simd_dispatch! {
    fn silu_mul_chunk_in_place(g: &mut [f32], u: &[f32]) = silu_mul_in_place_portable;
}

#[inline(always)]
fn silu_mul_in_place_portable(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = silu_mul_one(*g, u);
    }
}

#[inline(always)]
fn silu_mul_portable(o: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = silu_mul_one(g, u);
    }
}

/// `silu(g) · u`.
#[inline(always)]
fn silu_mul_one(g: f32, u: f32) -> f32 {
    // e^(−g) saturates at e^88 for g < −88: g / (1 + 1.7e38) is −0, as silu is.
    g / (1.0 + exp_cephes(-g)) * u
}

/// RMSNorm over the last dimension of an f32 CPU tensor with an f32 weight, in
/// one parallel pass per row, as transformers' `LlamaRMSNorm` computes it in
/// f32: `x · 1/sqrt(mean(x²) + eps) · w`. The generic version makes five
/// passes, each with a full-size temporary.
pub fn rms_norm_f32(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    let w = weight.to_vec1::<f32>()?;
    if w.len() != d {
        candle_core::bail!("rms_norm: weight of {} for rows of {d}", w.len());
    }
    let out = with_cpu_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(d)
            .zip(xs.par_chunks(d))
            .for_each(|(o, row)| rms_norm_row(o, row, &w, eps as f32));
        out
    })?;
    Tensor::from_vec(out, x.shape(), &Device::Cpu)
}

simd_dispatch! {
    fn rms_norm_row(o: &mut [f32], row: &[f32], w: &[f32], eps: f32) = rms_norm_row_portable;
}

#[inline(always)]
fn rms_norm_row_portable(o: &mut [f32], row: &[f32], w: &[f32], eps: f32) {
    let inv = 1.0 / (lane_sum(row, |v| v * v) / row.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
        *o = v * inv * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_linears_match_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (n, d, f) = (37, 24, 56);
        let x = Tensor::randn(0f32, 1., (n, d), &dev)?;
        let r = Tensor::randn(0f32, 1., (n, d), &dev)?;
        let w1 = Tensor::randn(0f32, 1., (f, d), &dev)?;
        let b1 = Tensor::randn(0f32, 1., f, &dev)?;
        let w2 = Tensor::randn(0f32, 1., (d, f), &dev)?;
        let b2 = Tensor::randn(0f32, 1., d, &dev)?;
        let lin = |x: &Tensor, w: &Tensor, b: &Tensor| x.matmul(&w.t()?)?.broadcast_add(b);
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        let h = lin(&x, &w1, &b1)?.relu()?;
        assert!(diff(&linear_relu_f32(&x, &w1, Some(&b1))?, &h)? < 1e-4);
        let y = (&r + lin(&x, &w1.narrow(0, 0, d)?, &b2)?)?;
        let got = linear_residual_f32(&x, &w1.narrow(0, 0, d)?, Some(&b2), &r)?;
        assert!(diff(&got, &y)? < 1e-4);
        let got = linear_residual_f32(&x, &w1.narrow(0, 0, d)?, None, &r)?;
        assert!(diff(&got, &(&r + x.matmul(&w1.narrow(0, 0, d)?.t()?)?)?)? < 1e-4);
        let want = (&r + lin(&h, &w2, &b2)?)?;
        // One chunk, chunks that divide the rows, and a short last chunk.
        for chunk in [n, 1, 8, 1 << 20] {
            let got = mlp_chunked(
                &x,
                &r,
                &MlpUp::Relu((&w1, Some(&b1))),
                (&w2, Some(&b2)),
                chunk,
            )?;
            assert!(diff(&got, &want)? < 1e-3, "chunk {chunk}");
        }
        let h0 = x.matmul(&w1.t()?)?.relu()?;
        let want = (&r + h0.matmul(&w2.t()?)?)?;
        let got = mlp_chunked(&x, &r, &MlpUp::Relu((&w1, None)), (&w2, None), 8)?;
        assert!(diff(&got, &want)? < 1e-3);
        // SwiGLU: gate w1, up w1 reversed, with and without biases.
        let wu = w1.flip(&[0])?.contiguous()?;
        let bu = b1.flip(&[0])?.contiguous()?;
        for biased in [false, true] {
            let (bg, bu) = if biased {
                (Some(&b1), Some(&bu))
            } else {
                (None, None)
            };
            let lin = |w: &Tensor, b: Option<&Tensor>| -> Result<Tensor> {
                let y = x.matmul(&w.t()?)?;
                b.map_or(Ok(y.clone()), |b| y.broadcast_add(b))
            };
            let h = (candle_nn::ops::silu(&lin(&w1, bg)?)? * lin(&wu, bu)?)?;
            let want = (&r + h.matmul(&w2.t()?)?)?;
            for chunk in [n, 1, 8] {
                let up = MlpUp::SwiGlu {
                    gate: (&w1, bg),
                    up: (&wu, bu),
                };
                let got = mlp_chunked(&x, &r, &up, (&w2, None), chunk)?;
                assert!(
                    diff(&got, &want)? < 1e-3,
                    "swiglu chunk {chunk} biased {biased}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gemm_by_parts_of_rows_matches_one_gemm() {
        let (k, m) = (19, 23);
        let fill = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed) % 113) as f32 / 56.0 - 1.0)
                .collect()
        };
        // Rows that divide into the parts, that do not, fewer rows than
        // parts, and no rows.
        for (n, parts) in [(12, 3), (10, 3), (2, 5), (0, 2)] {
            let (x, w) = (fill(n * k, 1), fill(m * k, 2));
            for add in [false, true] {
                let mut want = fill(n * m, 3);
                gemm_xwt_with(&mut want, &x, &w, (n, k, m), add, Par::Seq);
                let mut got = fill(n * m, 3);
                gemm_xwt_parts(&mut got, &x, &w, (n, k, m), add, parts);
                // faer may order a part's sums differently by its row count
                // (one row is a matrix-vector product): rounding only.
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{n} rows in {parts} parts, add {add}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_sum_and_silu_match_libm() -> Result<()> {
        // 2500 values: two full chunks and a remainder.
        let x: Vec<f32> = (0..2500)
            .map(|i| ((i * 37) % 101) as f32 * 0.2 - 15.0)
            .collect();
        let max = x.iter().fold(f32::MIN, |a, &b| a.max(b));
        let want: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let got = exp_sum_f64(&x, max);
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        let g = Tensor::from_vec(x.clone(), (50, 50), &Device::Cpu)?;
        let u = Tensor::from_vec(
            x.iter().map(|v| v * 0.5 + 1.0).collect::<Vec<f32>>(),
            (50, 50),
            &Device::Cpu,
        )?;
        let got = silu_mul_f32(&g, &u)?.flatten_all()?.to_vec1::<f32>()?;
        let want = (candle_nn::ops::silu(&g)? * &u)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 2e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
        // Very negative gates: silu → −0, never NaN.
        let g = Tensor::from_vec(vec![-200f32, -90.0, 90.0], 3, &Device::Cpu)?;
        let u = Tensor::from_vec(vec![1f32, 1.0, 1.0], 3, &Device::Cpu)?;
        let got = silu_mul_f32(&g, &u)?.to_vec1::<f32>()?;
        assert!(
            got[0].abs() < 1e-30 && got[1].abs() < 1e-30 && got[2] == 90.0,
            "{got:?}"
        );
        Ok(())
    }

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
    fn layer_norm_matches_f64_on_wide_rows() -> Result<()> {
        // 773 columns: 48 full chunks of the lane sums and a remainder of 5;
        // an offset mean, so that the variance pass matters.
        let (rows, d) = (3, 773);
        let x = Tensor::randn(4f32, 2., (rows, d), &Device::Cpu)?;
        let w = Tensor::randn(1f32, 0.5, d, &Device::Cpu)?;
        let b = Tensor::randn(0f32, 0.5, d, &Device::Cpu)?;
        let got = layer_norm_f32(&x, Some(&w), Some(&b), 1e-5)?.to_vec2::<f32>()?;
        let (x, w, b) = (
            x.to_vec2::<f32>()?,
            w.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        for (row, out) in x.iter().zip(&got) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = (row[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                assert!(
                    (out[j] as f64 - want).abs() < 1e-5,
                    "{j}: {} vs {want}",
                    out[j]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn rms_norm_matches_f64_on_wide_rows() -> Result<()> {
        // 773 columns: 48 full chunks of the lane sums and a remainder of 5.
        let (rows, d) = (3, 773);
        let x = Tensor::randn(0.5f32, 2., (rows, d), &Device::Cpu)?;
        let w = Tensor::randn(1f32, 0.5, d, &Device::Cpu)?;
        let got = rms_norm_f32(&x, &w, 1e-5)?.to_vec2::<f32>()?;
        let (x, w) = (x.to_vec2::<f32>()?, w.to_vec1::<f32>()?);
        for (row, out) in x.iter().zip(&got) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = row[j] as f64 / (ms + 1e-5).sqrt() * w[j] as f64;
                assert!(
                    (out[j] as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{j}: {} vs {want}",
                    out[j]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn max_f32_is_fold_max() {
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
        for n in [1, 15, 16, 17, 100] {
            let mut x: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max_f32(&x), want, "{n}");
            // NaN is ignored, in a lane and in the remainder alike.
            x[0] = f32::NAN;
            x[n - 1] = f32::NAN;
            let want = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max_f32(&x).to_bits(), want.to_bits(), "{n} with NaN");
        }
    }

    #[test]
    fn exp_sub_sum_matches_libm() {
        let mut x: Vec<f32> = (0..1000).map(|i| -90.0 + i as f32 * 0.0905).collect();
        x.push(f32::NEG_INFINITY);
        let want: Vec<f64> = x.iter().map(|&v| ((v - 0.5) as f64).exp()).collect();
        let sum = exp_sub_sum(&mut x, 0.5);
        for (g, w) in x.iter().zip(&want) {
            let tol = 3e-7 * w + 2e-38;
            assert!((*g as f64 - w).abs() <= tol, "{g} vs {w}");
        }
        let want_sum: f64 = want.iter().sum();
        assert!((sum as f64 - want_sum).abs() < 1e-6 * want_sum);
        let mut nan = vec![f32::NAN; 3];
        assert!(exp_sub_sum(&mut nan, 0.0).is_nan());
    }
}
