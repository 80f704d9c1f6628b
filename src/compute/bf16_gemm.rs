//! A bf16 GEMM for x86-64 CPUs with AVX512-BF16 (`vdpbf16ps`): about twice the
//! multiply-add rate of an f32 FMA per instruction, for the forward linears and
//! the Hessians `XᵀX` where f32 inputs are not needed.
//!
//! Numerics: the f32 inputs are rounded to bf16 (round to nearest even, as
//! `vcvtne2ps2bf16` does: subnormal inputs become ±0, NaN stays NaN) while they
//! are packed; each input thus carries a relative error of at most 2⁻⁹. The
//! products of two bf16 values are exact in f32 and are accumulated in f32, so a
//! result differs from the f32 product of the same inputs by about 2⁻⁹·√2 per
//! term (a relative Frobenius error near 2⁻⁹ for random data), and from the exact
//! product of the rounded inputs only by the f32 accumulation order.
//!
//! Design (GotoBLAS-like): both operands are packed once, in parallel, into bf16
//! pair-interleaved panels (two consecutive `k` per 32-bit lane, an odd `k`
//! padded with zero; rows and columns padded to the tile with zeros); tiles of
//! `C` run in parallel on the global rayon pool, each looping over blocks of `k`
//! and calling a register-blocked micro-kernel (`MR` rows × `NR` columns of `C`
//! in zmm accumulators, `A` broadcast from memory, `B` loaded as vectors).

// `core::arch`'s AVX-512 intrinsics, types and feature names are stable since
// Rust 1.89, the crate's rust-version.

use candle_core::{Device, Result, Tensor};

use super::kernels::with_cpu_f32;

/// Whether this CPU can run the bf16 kernels: x86-64 with AVX512F, AVX512BW and
/// AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and
/// later), detected at run time. Always false on other architectures.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn unavailable(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{what}: the bf16 GEMM needs an x86-64 CPU with AVX512F, AVX512BW and AVX512-BF16, \
         which this machine does not have; use the f32 path (kernels::matmul_xwt, kernels::gram_update)"
    ))
}

/// Offset one past the last element of a `rows × cols` view (0 when empty).
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(row_stride)?
        .checked_add((cols - 1).checked_mul(col_stride)?)?
        .checked_add(1)
}

/// A read-only f32 matrix view with arbitrary strides: element `(i, j)` is
/// `data[i·row_stride + j·col_stride]`, so a transposed view costs no copy.
#[derive(Clone, Copy, Debug)]
pub struct StridedRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> StridedRef<'a> {
    /// A `rows × cols` view of `data`; an error when an element would lie outside
    /// `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        match extent(rows, cols, row_stride, col_stride) {
            Some(e) if e <= data.len() => Ok(Self {
                data,
                rows,
                cols,
                row_stride,
                col_stride,
            }),
            _ => candle_core::bail!(
                "bf16 gemm: a {rows}×{cols} view with strides ({row_stride}, {col_stride}) \
                 does not fit in {} elements",
                data.len()
            ),
        }
    }

    /// A row-major `rows × cols` view of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transposed view (`cols × rows`), same data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// A mutable f32 matrix view with arbitrary strides, element `(i, j)` at
/// `data[i·row_stride + j·col_stride]`; distinct elements must not share memory
/// (tiles are written from several threads).
#[derive(Debug)]
pub struct StridedMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> StridedMut<'a> {
    /// A `rows × cols` view of `data`; an error when an element would lie outside
    /// `data` or when two elements could overlap (the strides must nest: one of
    /// them at least the other times its extent).
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        let fits = matches!(extent(rows, cols, row_stride, col_stride), Some(e) if e <= data.len());
        // Element (i, j) ↦ i·rs + j·cs is injective when the strides nest.
        let r = rows > 1;
        let c = cols > 1;
        let disjoint = match (r, c) {
            (false, false) => true,
            (true, false) => row_stride > 0,
            (false, true) => col_stride > 0,
            (true, true) => {
                (col_stride > 0 && row_stride >= cols.saturating_mul(col_stride))
                    || (row_stride > 0 && col_stride >= rows.saturating_mul(row_stride))
            }
        };
        if !fits || !disjoint {
            candle_core::bail!(
                "bf16 gemm: a {rows}×{cols} output view with strides ({row_stride}, {col_stride}) \
                 over {} elements {}",
                data.len(),
                if fits {
                    "has overlapping elements"
                } else {
                    "does not fit"
                }
            );
        }
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A row-major `rows × cols` view of `data`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// `C ← beta·C + alpha·A·B` with `A` `m × k`, `B` `k × n` and `C` `m × n`, the
/// inputs rounded to bf16 and the products accumulated in f32 (see the module
/// docs for the error).
///
/// `beta == 0` overwrites `C` without reading it (NaN in `C` does not
/// propagate). With `lower_only` (`C` square), only the tiles of `C` touching
/// the lower triangle (`i ≥ j`) are computed, about half the work for `XᵀX`:
/// every element with `i ≥ j` is set; an element above the diagonal is either
/// left untouched or, inside a tile that crosses the diagonal, set exactly as a
/// full product would set it — callers must treat the strict upper triangle as
/// unspecified.
///
/// Errors when the shapes disagree, when `lower_only` is set for a non-square
/// `C`, or when [`available`] is false.
pub fn gemm_bf16(
    c: StridedMut<'_>,
    beta: f32,
    alpha: f32,
    a: StridedRef<'_>,
    b: StridedRef<'_>,
    lower_only: bool,
) -> Result<()> {
    let (m, k) = a.dims();
    let (k2, n) = b.dims();
    if k != k2 || c.rows != m || c.cols != n {
        candle_core::bail!(
            "gemm_bf16: C is {}×{} but A is {m}×{k} and B is {k2}×{n}",
            c.rows,
            c.cols
        );
    }
    if lower_only && m != n {
        candle_core::bail!("gemm_bf16: lower_only needs a square C, got {m}×{n}");
    }
    if !available() {
        return Err(unavailable("gemm_bf16"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `available()` checked the CPU features; the views were checked
        // to lie inside their slices and `C`'s elements not to overlap.
        unsafe { imp::gemm(c, beta, alpha, a, b, lower_only) };
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, beta, alpha);
        Err(unavailable("gemm_bf16"))
    }
}

/// `x · wᵀ` for `x` `[n, k]` and `w` `[m, k]` (f32, CPU) → `[n, m]` f32, like
/// [`matmul_xwt`](super::kernels::matmul_xwt) but with the inputs rounded to
/// bf16 (relative error 2⁻⁹ per input) and f32 accumulation. An error when
/// [`available`] is false (no silent fallback to f32).
pub fn matmul_xwt_bf16(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("matmul_xwt_bf16: x is [{n}, {k}] but w is [{m}, {k2}]");
    }
    if !available() {
        return Err(unavailable("matmul_xwt_bf16"));
    }
    let mut out = vec![0f32; n * m];
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| -> Result<()> {
            let a = StridedRef::row_major(xs, n, k)?;
            let b = StridedRef::row_major(ws, m, k)?.t();
            gemm_bf16(
                StridedMut::row_major(&mut out, n, m)?,
                0.0,
                1.0,
                a,
                b,
                false,
            )
        })
    })???;
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}

/// The lower triangle of `alpha·XᵀX` for a row-major `X` `[n, d]` into the
/// row-major `out` `[d, d]` (`accumulate`: added to `out`'s values instead of
/// replacing them), for Hessians: half the FLOPs of a full product, inputs
/// rounded to bf16, f32 accumulation. Elements with `i ≥ j` are set; those above
/// the diagonal are unspecified (untouched, or set to their value in the full
/// product near the diagonal). An error when [`available`] is false.
pub fn gram_lower_bf16(
    x: &[f32],
    n: usize,
    d: usize,
    alpha: f32,
    out: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    if x.len() != n * d || out.len() != d * d {
        candle_core::bail!(
            "gram_lower_bf16: x has {} elements for [{n}, {d}] and out {} for [{d}, {d}]",
            x.len(),
            out.len()
        );
    }
    let xr = StridedRef::row_major(x, n, d)?;
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_bf16(
        StridedMut::row_major(out, d, d)?,
        beta,
        alpha,
        xr.t(),
        xr,
        true,
    )
}

/// Rounds `x` to bf16 bits the way `vcvtne2ps2bf16` does: nearest even,
/// subnormals to ±0, NaN to a quiet NaN.
#[cfg(target_arch = "x86_64")]
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    if bits & 0x7f80_0000 == 0 {
        return (bits >> 16) & 0x8000;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::mem::transmute;

    use rayon::prelude::*;

    use super::{bf16_bits, StridedMut, StridedRef};
    use crate::compute::SendPtr;

    /// Rows of `C` per micro-tile.
    pub const MR: usize = 14;
    /// zmm vectors (16 columns each) of `C` per micro-tile row.
    pub const NV: usize = 2;
    /// Columns of `C` per micro-tile.
    pub const NR: usize = 16 * NV;
    /// `k` pairs per block: a `B` micro-panel (`KCP·NR·4` bytes) stays in L1.
    const KCP: usize = 192;
    /// Rows of `C` per parallel tile (a multiple of `MR`).
    const MC: usize = MR * 8;
    /// Columns of `C` per parallel tile (a multiple of `NR`), at most; fewer
    /// when that would leave too few tiles to keep the threads busy.
    const NC: usize = NR * 8;

    /// Interleaves the two halves of 32 words: `[a0, b0, a1, b1, …]`.
    const INTERLEAVE: [u16; 32] = {
        let mut t = [0u16; 32];
        let mut i = 0;
        while i < 16 {
            t[2 * i] = i as u16;
            t[2 * i + 1] = 16 + i as u16;
            i += 1;
        }
        t
    };

    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// A matrix to pack as `lines` (rows of `A`, columns of `B`) of depth `k`:
    /// element `(l, kk)` at `data[l·ls + kk·ks]`.
    struct Lines<'a> {
        data: &'a [f32],
        ls: usize,
        ks: usize,
        lines: usize,
        k: usize,
    }

    /// Packs pairs `p0 .. p1` of lines `l0 .. l0 + R` (zero beyond `lines`)
    /// into the strip at `o` (`kp·R` words): word `p·R + l` holds the bf16 pair
    /// `(2p, 2p + 1)` of line `l0 + l`, the even `k` in the low half; every
    /// word of those pairs is written. With pairs adjacent in memory (`ks ==
    /// 1`), `p0` must be a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_strip<const R: usize>(
        src: &Lines<'_>,
        l0: usize,
        o: *mut u32,
        p0: usize,
        p1: usize,
    ) {
        let lines = R.min(src.lines - l0);
        let k = src.k;
        let base = src.data.as_ptr();
        for p in p0..p1 {
            for l in lines..R {
                *o.add(p * R + l) = 0;
            }
        }
        if src.ks == 1 {
            // Pairs are adjacent in memory: per line, 32 floats → 16 words; 16
            // lines of those are transposed in registers, so that each pair's
            // words go out as one store. Chunks of k outermost, so that the
            // words written stay in L1.
            let mut kk = 2 * p0;
            while kk < (2 * p1).min(k) {
                let rem = k - kk;
                let pa = kk / 2;
                let pairs = (p1 - pa).min(16);
                for lb in (0..lines).step_by(16) {
                    let n = (lines - lb).min(16);
                    let mut words = [_mm512_setzero_si512(); 16];
                    for (l, w) in words.iter_mut().enumerate().take(n) {
                        let row = base.add((l0 + lb + l) * src.ls);
                        let lo = _mm512_maskz_loadu_ps(mask16(rem), row.add(kk));
                        let hi = if rem > 16 {
                            _mm512_maskz_loadu_ps(mask16(rem - 16), row.add(kk + 16))
                        } else {
                            _mm512_setzero_ps()
                        };
                        *w = transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                    }
                    let by_pair = transpose16(words);
                    let m = mask16(n);
                    for (t, v) in by_pair.iter().enumerate().take(pairs) {
                        _mm512_mask_storeu_epi32(o.add((pa + t) * R + lb) as *mut _, m, *v);
                    }
                }
                kk += 32;
            }
        } else if src.ls == 1 {
            // Lines are adjacent: two depth rows of 16 lines → 16 words.
            let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _);
            for p in p0..p1 {
                let r0 = base.add(l0 + 2 * p * src.ks);
                let has1 = 2 * p + 1 < k;
                let mut c = 0;
                while c < lines {
                    let m = mask16(lines - c);
                    let x0 = _mm512_maskz_loadu_ps(m, r0.add(c));
                    let x1 = if has1 {
                        _mm512_maskz_loadu_ps(m, r0.add(src.ks + c))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let bf: __m512i = transmute(_mm512_cvtne2ps_pbh(x1, x0));
                    let v = _mm512_permutexvar_epi16(idx, bf);
                    _mm512_mask_storeu_epi32(o.add(p * R + c) as *mut _, m, v);
                    c += 16;
                }
            }
        } else {
            for l in 0..lines {
                let row = base.add((l0 + l) * src.ls);
                for p in p0..p1 {
                    let lo = bf16_bits(*row.add(2 * p * src.ks));
                    let hi = if 2 * p + 1 < k {
                        bf16_bits(*row.add((2 * p + 1) * src.ks))
                    } else {
                        0
                    };
                    *o.add(p * R + l) = lo | (hi << 16);
                }
            }
        }
    }

    /// The transpose of a 16 × 16 matrix of 32-bit words held as 16 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Within 128-bit lanes: after these two steps `u[4g + c]` holds, in lane
        // `L`, rows `4g .. 4g + 4` of column `4L + c`.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (a, b) = (t[4 * g], t[4 * g + 2]);
            let (c, d) = (t[4 * g + 1], t[4 * g + 3]);
            u[4 * g] = _mm512_unpacklo_epi64(a, b);
            u[4 * g + 1] = _mm512_unpackhi_epi64(a, b);
            u[4 * g + 2] = _mm512_unpacklo_epi64(c, d);
            u[4 * g + 3] = _mm512_unpackhi_epi64(c, d);
        }
        // Across lanes: column `4L + c` gathers lane `L` of `u[c]`, `u[4 + c]`,
        // `u[8 + c]`, `u[12 + c]`.
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
            let p = _mm512_shuffle_i32x4::<0x44>(a, b);
            let q = _mm512_shuffle_i32x4::<0x44>(cc, d);
            let r2 = _mm512_shuffle_i32x4::<0xEE>(a, b);
            let s = _mm512_shuffle_i32x4::<0xEE>(cc, d);
            out[c] = _mm512_shuffle_i32x4::<0x88>(p, q);
            out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(p, q);
            out[8 + c] = _mm512_shuffle_i32x4::<0x88>(r2, s);
            out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(r2, s);
        }
        out
    }

    thread_local! {
        /// Packing buffers kept between calls on this thread: fresh pages cost
        /// more (faults, zeroing) than the packing itself.
        static BUFFERS: std::cell::Cell<(Vec<u32>, Vec<u32>)> =
            const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    }

    /// Buffers above this many words (1 GiB) are not kept.
    const KEEP_WORDS: usize = 1 << 28;

    /// Pairs per parallel packing task when lines are adjacent in memory.
    const PACK_PAIRS: usize = 32;

    /// Packs all lines into strips of `R`, in parallel, into `buf` (grown as
    /// needed); returns the packed words.
    fn pack<'b, const R: usize>(src: &Lines<'_>, buf: &'b mut Vec<u32>) -> &'b [u32] {
        let kp = src.k.div_ceil(2);
        let strips = src.lines.div_ceil(R);
        let len = strips * kp * R;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = &mut buf[..len];
        if kp == 0 {
            return out;
        }
        if src.ls == 1 && src.ks != 1 {
            // Lines adjacent: a task takes a few depth rows, read whole, and
            // writes them into every strip.
            let o = SendPtr(out.as_mut_ptr());
            (0..kp.div_ceil(PACK_PAIRS)).into_par_iter().for_each(|ci| {
                let (p0, p1) = (ci * PACK_PAIRS, (ci * PACK_PAIRS + PACK_PAIRS).min(kp));
                for s in 0..strips {
                    // SAFETY: tasks write disjoint pair ranges of each strip.
                    unsafe { pack_strip::<R>(src, s * R, o.get().add(s * kp * R), p0, p1) };
                }
            });
        } else {
            out.par_chunks_mut(kp * R)
                .enumerate()
                .for_each(|(s, chunk)| {
                    // SAFETY: features checked by the caller; `chunk` is the strip.
                    unsafe { pack_strip::<R>(src, s * R, chunk.as_mut_ptr(), 0, kp) }
                });
        }
        out
    }

    /// One `MR × NR` micro-tile over `kcp` pairs: `C ← c_scale·C + alpha·A·B`
    /// for the `rows × cols` valid part (`c_scale == 0`: `C` not read).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn micro(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        rs: usize,
        cs: usize,
        rows: usize,
        cols: usize,
        alpha: f32,
        c_scale: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for p in 0..kcp {
            let bp = b.add(p * NR);
            let mut bv: [__m512bh; NV] = [transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv =
                    transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16 * v) as *const _));
            }
            let ap = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                for v in 0..NV {
                    acc[v] = _mm512_dpbf16_ps(acc[v], av, bv[v]);
                }
            }
        }
        let va = _mm512_set1_ps(alpha);
        let vs = _mm512_set1_ps(c_scale);
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let crow = c.add(r * rs);
            for (v, &x) in acc.iter().enumerate() {
                let j0 = 16 * v;
                if j0 >= cols {
                    break;
                }
                let n = (cols - j0).min(16);
                if cs == 1 {
                    let m = mask16(n);
                    let p = crow.add(j0);
                    let y = if c_scale == 0.0 {
                        _mm512_mul_ps(va, x)
                    } else {
                        let old = _mm512_maskz_loadu_ps(m, p);
                        _mm512_fmadd_ps(va, x, _mm512_mul_ps(vs, old))
                    };
                    _mm512_mask_storeu_ps(p, m, y);
                } else {
                    let mut t = [0f32; 16];
                    _mm512_storeu_ps(t.as_mut_ptr(), x);
                    for (j, &t) in t.iter().enumerate().take(n) {
                        let p = crow.add((j0 + j) * cs);
                        *p = if c_scale == 0.0 {
                            alpha * t
                        } else {
                            alpha * t + c_scale * *p
                        };
                    }
                }
            }
        }
    }

    /// See [`super::gemm_bf16`]; the caller checked shapes, bounds and features.
    pub unsafe fn gemm(
        c: StridedMut<'_>,
        beta: f32,
        alpha: f32,
        a: StridedRef<'_>,
        b: StridedRef<'_>,
        lower_only: bool,
    ) {
        let (m, k) = a.dims();
        let n = b.cols;
        let kp = k.div_ceil(2);
        // Taken out of the cell, so that a nested call on this thread (rayon
        // work stealing) finds it empty and allocates its own.
        let (mut buf_a, mut buf_b) = BUFFERS.take();
        let (pa, pb) = rayon::join(
            || {
                pack::<MR>(
                    &Lines {
                        data: a.data,
                        ls: a.row_stride,
                        ks: a.col_stride,
                        lines: m,
                        k,
                    },
                    &mut buf_a,
                )
            },
            || {
                pack::<NR>(
                    &Lines {
                        data: b.data,
                        ls: b.col_stride,
                        ks: b.row_stride,
                        lines: n,
                        k,
                    },
                    &mut buf_b,
                )
            },
        );
        let (rs, cs) = (c.row_stride, c.col_stride);
        let cp = SendPtr(c.data.as_mut_ptr());
        // Narrower tiles until there are enough for load balance (about 8
        // per thread, counting half of them for a lower triangle).
        let mt = m.div_ceil(MC);
        let want = 8 * rayon::current_num_threads() * if lower_only { 2 } else { 1 };
        let mut strips = NC / NR;
        while strips > 1 && mt * n.div_ceil(strips * NR) < want {
            strips /= 2;
        }
        let nc = strips * NR;
        let nt = n.div_ceil(nc);
        let tiles: Vec<(usize, usize)> = (0..mt)
            .flat_map(|ti| (0..nt).map(move |tj| (ti, tj)))
            .filter(|&(ti, tj)| !lower_only || (ti * MC + MC).min(m) > tj * nc)
            .collect();
        tiles.into_par_iter().for_each(|(ti, tj)| {
            let (i0, i1) = (ti * MC, (ti * MC + MC).min(m));
            let (j0, j1) = (tj * nc, (tj * nc + nc).min(n));
            let mut pc = 0;
            loop {
                let kcp = KCP.min(kp - pc);
                let c_scale = if pc == 0 { beta } else { 1.0 };
                for jr in (j0..j1).step_by(NR) {
                    let bpanel = pb.as_ptr().add((jr / NR) * kp * NR + pc * NR);
                    let cols = NR.min(n - jr);
                    for ir in (i0..i1).step_by(MR) {
                        let rows = MR.min(m - ir);
                        if lower_only && ir + rows <= jr {
                            continue;
                        }
                        let apanel = pa.as_ptr().add((ir / MR) * kp * MR + pc * MR);
                        micro(
                            kcp,
                            apanel,
                            bpanel,
                            cp.get().add(ir * rs + jr * cs),
                            rs,
                            cs,
                            rows,
                            cols,
                            alpha,
                            c_scale,
                        );
                    }
                }
                pc += kcp;
                if pc >= kp {
                    break;
                }
            }
        });
        if buf_a.len() > KEEP_WORDS {
            buf_a = Vec::new();
        }
        if buf_b.len() > KEEP_WORDS {
            buf_b = Vec::new();
        }
        BUFFERS.set((buf_a, buf_b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 rounding, written independently of the kernel's.
    fn round_bf16(x: f32) -> f64 {
        let b = x.to_bits();
        let r = (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16;
        f32::from_bits(r << 16) as f64
    }

    /// Deterministic values in roughly [-1, 1].
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn skip() -> bool {
        if !available() {
            eprintln!("skipping: no AVX512-BF16 on this CPU");
            return true;
        }
        false
    }

    /// Element `(i, j)` of a strided view.
    fn at(d: &[f32], rs: usize, cs: usize, i: usize, j: usize) -> f32 {
        d[i * rs + j * cs]
    }

    /// Runs `gemm_bf16` on (m, k, n) with A and B optionally transposed in
    /// memory and checks it against an f64 product of the bf16-rounded inputs.
    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        k: usize,
        n: usize,
        a_t: bool,
        b_t: bool,
        alpha: f32,
        beta: f32,
        lower_only: bool,
    ) {
        let ad = random(m * k, 1 + m as u64);
        let bd = random(k * n, 2 + n as u64);
        let (ars, acs) = if a_t { (1, m) } else { (k, 1) };
        let (brs, bcs) = if b_t { (1, k) } else { (n, 1) };
        let c0 = random(m * n, 3);
        let mut c = c0.clone();
        let a = StridedRef::new(&ad, m, k, ars, acs).unwrap();
        let b = StridedRef::new(&bd, k, n, brs, bcs).unwrap();
        gemm_bf16(
            StridedMut::row_major(&mut c, m, n).unwrap(),
            beta,
            alpha,
            a,
            b,
            lower_only,
        )
        .unwrap();
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                if lower_only && i < j {
                    let got = c[i * n + j];
                    let old = c0[i * n + j];
                    // Untouched or the full product's value: check below via
                    // the same bound when it changed.
                    if got == old {
                        continue;
                    }
                }
                let (mut s, mut abs) = (0f64, 0f64);
                for kk in 0..k {
                    let p =
                        round_bf16(at(&ad, ars, acs, i, kk)) * round_bf16(at(&bd, brs, bcs, kk, j));
                    s += p;
                    abs += p.abs();
                }
                let want = beta as f64 * c0[i * n + j] as f64 + alpha as f64 * s;
                let err = (c[i * n + j] as f64 - want).abs();
                let tol = 1e-5
                    * (alpha.abs() as f64 * abs + (beta as f64 * c0[i * n + j] as f64).abs())
                    + 1e-30;
                worst = worst.max(err / tol);
                assert!(
                    err <= tol,
                    "m={m} k={k} n={n} ({i},{j}): got {} want {want} (err {err}, tol {tol})",
                    c[i * n + j]
                );
            }
        }
        eprintln!(
            "m={m} k={k} n={n} a_t={a_t} b_t={b_t} lower={lower_only}: worst err/tol {worst:.3}"
        );
    }

    #[test]
    fn transpose16_transposes() {
        if skip() {
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: `skip` checked the CPU features; loads and stores of 16 words
        // inside 256-word buffers.
        let got = unsafe {
            let rows: [__m512i; 16] =
                std::array::from_fn(|i| _mm512_loadu_si512(m[16 * i..].as_ptr() as *const _));
            let t = super::imp::transpose16(rows);
            let mut out = vec![0u32; 256];
            for (i, v) in t.iter().enumerate() {
                _mm512_storeu_si512(out[16 * i..].as_mut_ptr() as *mut _, *v);
            }
            out
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * i + j], m[16 * j + i], "({i}, {j})");
            }
        }
    }

    #[test]
    fn bf16_gemm_odd_sizes() {
        if skip() {
            return;
        }
        check(37, 131, 53, false, false, 1.0, 0.0, false);
        check(37, 130, 53, false, false, 1.0, 0.0, false);
        check(5, 1, 7, false, false, 1.0, 0.0, false);
        check(1, 3, 1, false, false, 1.0, 0.0, false);
        // k = 0: C ← beta·C.
        check(5, 0, 7, false, false, 1.0, 0.5, false);
        // Several tiles and several k blocks.
        check(250, 517, 300, false, false, 1.0, 0.0, false);
    }

    #[test]
    fn bf16_gemm_transposed_strides() {
        if skip() {
            return;
        }
        check(37, 131, 53, true, false, 1.0, 0.0, false);
        check(37, 131, 53, false, true, 1.0, 0.0, false);
        check(37, 131, 53, true, true, 1.0, 0.0, false);
        check(130, 401, 70, true, true, 1.0, 0.0, false);
    }

    #[test]
    fn bf16_gemm_alpha_beta() {
        if skip() {
            return;
        }
        check(37, 131, 53, false, true, 0.37, 1.0, false);
        check(37, 131, 53, false, false, -2.0, 0.5, false);
        check(200, 600, 70, true, false, 1.5, 1.0, false);
    }

    #[test]
    fn bf16_gemm_lower_only() {
        if skip() {
            return;
        }
        check(53, 131, 53, true, false, 1.0, 0.0, true);
        check(300, 77, 300, true, false, 0.5, 1.0, true);
        check(300, 77, 300, false, true, 1.0, 0.0, true);
    }

    #[test]
    fn bf16_gemm_strided_output() {
        if skip() {
            return;
        }
        // C written column-major (col stride m) inside a padded buffer.
        let (m, k, n) = (21, 19, 35);
        let ad = random(m * k, 4);
        let bd = random(k * n, 5);
        let mut c = vec![7f32; (m + 3) * n];
        let a = StridedRef::row_major(&ad, m, k).unwrap();
        let b = StridedRef::row_major(&bd, k, n).unwrap();
        gemm_bf16(
            StridedMut::new(&mut c, m, n, 1, m + 3).unwrap(),
            0.0,
            1.0,
            a,
            b,
            false,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| round_bf16(ad[i * k + kk]) * round_bf16(bd[kk * n + j]))
                    .sum();
                let abs: f64 = (0..k)
                    .map(|kk| (round_bf16(ad[i * k + kk]) * round_bf16(bd[kk * n + j])).abs())
                    .sum();
                assert!((c[j * (m + 3) + i] as f64 - s).abs() <= 1e-5 * abs + 1e-30);
            }
            assert_eq!(c[m..m + 3], [7.0; 3][..], "padding touched");
        }
        // beta = 0 does not read C: NaN there does not propagate.
        let mut c = vec![f32::NAN; m * n];
        gemm_bf16(
            StridedMut::row_major(&mut c, m, n).unwrap(),
            0.0,
            1.0,
            a,
            b,
            false,
        )
        .unwrap();
        assert!(c.iter().all(|v| v.is_finite()));
        // Overlapping output views are refused.
        assert!(StridedMut::new(&mut c, 4, 4, 2, 1).is_err());
    }

    fn rel_frobenius(got: &[f32], want: &[f32]) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for (&g, &w) in got.iter().zip(want) {
            num += (g as f64 - w as f64).powi(2);
            den += (w as f64).powi(2);
        }
        (num / den).sqrt()
    }

    #[test]
    fn bf16_matmul_xwt_matches_f32() {
        if skip() {
            return;
        }
        let dev = Device::Cpu;
        let (n, k, m) = (77, 301, 45);
        let x = Tensor::from_vec(random(n * k, 6), (n, k), &dev).unwrap();
        let w = Tensor::from_vec(random(m * k, 7), (m, k), &dev).unwrap();
        let got = matmul_xwt_bf16(&x, &w).unwrap();
        let want = super::super::kernels::matmul_xwt(&x, &w).unwrap();
        assert_eq!(got.dims(), &[n, m]);
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let f: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let e = rel_frobenius(&g, &f);
        eprintln!("matmul_xwt_bf16 vs f32: relative Frobenius error {e:.2e}");
        assert!(e < 2f64.powi(-8), "{e}");
        assert!(matmul_xwt_bf16(&x, &x.t().unwrap().contiguous().unwrap()).is_err());
    }

    #[test]
    fn bf16_gram_lower_matches_f32() {
        if skip() {
            return;
        }
        let dev = Device::Cpu;
        let (n, d) = (333, 150);
        let xd = random(n * d, 8);
        let x = Tensor::from_vec(xd.clone(), (n, d), &dev).unwrap();
        let want: Vec<f32> = (x.t().unwrap().matmul(&x).unwrap() * 0.5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let lower = |v: &[f32]| -> Vec<f32> {
            (0..d)
                .flat_map(|i| (0..=i).map(move |j| (i, j)))
                .map(|(i, j)| v[i * d + j])
                .collect()
        };
        let mut out = vec![0f32; d * d];
        gram_lower_bf16(&xd, n, d, 0.5, &mut out, false).unwrap();
        let e = rel_frobenius(&lower(&out), &lower(&want));
        eprintln!("gram_lower_bf16 vs f32: relative Frobenius error {e:.2e}");
        assert!(e < 2f64.powi(-8), "{e}");
        // Accumulating a second time doubles the lower triangle.
        let first = out.clone();
        gram_lower_bf16(&xd, n, d, 0.5, &mut out, true).unwrap();
        for i in 0..d {
            for j in 0..=i {
                assert_eq!(out[i * d + j], 2.0 * first[i * d + j]);
            }
        }
        assert!(gram_lower_bf16(&xd, n, d + 1, 0.5, &mut out, false).is_err());
    }

    #[test]
    fn bf16_fc1_shape_error_vs_f32() {
        if skip() {
            return;
        }
        let dev = Device::Cpu;
        let (n, k, m) = (512, 768, 3072);
        let x = Tensor::from_vec(random(n * k, 9), (n, k), &dev).unwrap();
        let w = Tensor::from_vec(random(m * k, 10), (m, k), &dev).unwrap();
        let g: Vec<f32> = matmul_xwt_bf16(&x, &w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let f: Vec<f32> = super::super::kernels::matmul_xwt(&x, &w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let e = rel_frobenius(&g, &f);
        eprintln!(
            "fc1 shape 512×768 · 768×3072: bf16 vs f32 relative Frobenius error {e:.3e} (2^{:.2})",
            e.log2()
        );
        assert!(e <= 2f64.powi(-8), "{e}");
    }
}
