//! The in-block column loop of the sweep, run on tiles of [`TILE`] rows.
//!
//! Once a block's unstructured mask is chosen, rows are independent. Run one
//! row at a time, each column is a scalar rounding followed by an update of at
//! most `blocksize` later entries of that row: short loops, with the
//! quantizer's rounding (a libm call on baseline x86-64) in between, that
//! cannot use the vector units. Here a tile of rows goes through the loop
//! together, transposed so that one column of the tile is one contiguous
//! vector: the rounding is a vector operation, and the update of a later
//! column is a vector multiply-subtract with one broadcast `Hinv` entry. The
//! kernel is compiled for AVX-512 or AVX2 where the CPU has them.
//!
//! Every element goes through the same f32 operations in the same order as in
//! the row-at-a-time loop (no fused multiply-add, updates in column order), so
//! the results are the same bit for bit; only the layout differs.

use rayon::prelude::*;

use super::{fill_params, Outer, Sweep};
use crate::compress::pattern::mark_n_smallest;
use crate::compress::quant::quantize;

/// Which build of the tile kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// 256-bit vectors.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 512-bit vectors.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest this CPU runs.
    pub(super) fn best() -> Self {
        Self::available()
            .pop()
            .expect("the portable kernel is always available")
    }

    /// Every build this CPU can run, narrowest first.
    pub(super) fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }
}

/// Rows per tile: 32 f32 lanes are two AVX-512 vectors (four AVX2 ones), and a
/// full block of them (`32 × 128` floats, 16 KiB) stays in L1.
const TILE: usize = 32;

/// One tile's block, column by column (`[count][TILE]`), and its scratch.
struct TileBuf {
    w: Vec<f32>,
    err: Vec<f32>,
    mask: Vec<bool>,
    group: Vec<bool>,
}

impl TileBuf {
    fn new(count: usize) -> Self {
        Self {
            w: vec![0.0; count * TILE],
            err: vec![0.0; count * TILE],
            mask: vec![false; count * TILE],
            group: Vec::new(),
        }
    }
}

/// The block a tile works in: columns `i1..i2`, `per_row` quantizer values per
/// row, and the weight as it stood at the block's start (dynamic groups read it).
#[derive(Clone, Copy)]
struct Block<'a> {
    i1: usize,
    i2: usize,
    per_row: usize,
    outer: Outer<'a>,
}

/// One tile's rows of the block's buffers, row-major as the sweep keeps them.
struct TileRows<'a> {
    w1: &'a mut [f32],
    err1: &'a mut [f32],
    mask1: &'a mut [bool],
    state: TileState<'a>,
}

/// One tile's per-row state, which the column loop reads and updates.
struct TileState<'a> {
    /// First row of the tile in the weight.
    r0: usize,
    /// Rows in this tile (`TILE`, or fewer in the last one).
    n: usize,
    params: &'a mut [f32],
    losses: &'a mut [f64],
}

impl Sweep<'_> {
    /// Runs columns `i1..i2` of the block for every row. `w1`, `err1` and
    /// `mask1` are the block's `rows × (i2 − i1)` buffers (row-major; the mask
    /// pre-filled when unstructured), `params` holds `per_row` quantizer values
    /// per row, `losses` each row's loss so far, `outer` the weight as it
    /// stood at the block's start (dynamic groups read it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sweep_block(
        &self,
        i1: usize,
        i2: usize,
        w1: &mut [f32],
        err1: &mut [f32],
        mask1: &mut [bool],
        params: &mut [f32],
        per_row: usize,
        losses: &mut [f64],
        outer: Outer,
    ) {
        let count = i2 - i1;
        let block = Block {
            i1,
            i2,
            per_row,
            outer,
        };
        w1.par_chunks_mut(TILE * count)
            .zip(err1.par_chunks_mut(TILE * count))
            .zip(mask1.par_chunks_mut(TILE * count))
            .zip(params.par_chunks_mut(TILE * per_row))
            .zip(losses.par_chunks_mut(TILE))
            .enumerate()
            .for_each_init(
                || TileBuf::new(count),
                |buf, (t, ((((w1, err1), mask1), params), losses))| {
                    let state = TileState {
                        r0: t * TILE,
                        n: losses.len(),
                        params,
                        losses,
                    };
                    let tile = TileRows {
                        w1,
                        err1,
                        mask1,
                        state,
                    };
                    self.sweep_tile(block, tile, buf);
                },
            );
    }

    /// One tile: its rows transposed into `buf`, the column loop (compiled for
    /// the widest vectors the CPU has), and back.
    fn sweep_tile(&self, block: Block, tile: TileRows, buf: &mut TileBuf) {
        let TileRows {
            w1,
            err1,
            mask1,
            state,
        } = tile;
        let (count, n) = (block.i2 - block.i1, state.n);
        // The transposes stay in baseline code: compiled for AVX-512 they
        // become gathers, slower than plain moves.
        let (wt, mt) = (&mut buf.w[..count * TILE], &mut buf.mask[..count * TILE]);
        wt.fill(0.0);
        mt.fill(false);
        for (l, (wrow, mrow)) in w1
            .chunks_exact(count)
            .zip(mask1.chunks_exact(count))
            .enumerate()
        {
            for (i, (&x, &m)) in wrow.iter().zip(mrow).enumerate() {
                wt[i * TILE + l] = x;
                mt[i * TILE + l] = m;
            }
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only chosen on CPUs with AVX-512F.
            Isa::Avx512 => unsafe { self.tile_avx512(block, state, buf) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen on CPUs with AVX2.
            Isa::Avx2 => unsafe { self.tile_avx2(block, state, buf) },
            Isa::Portable => self.tile_kernel::<Portable>(block, state, buf),
        }
        let (wt, et, mt) = (&buf.w, &buf.err, &buf.mask);
        for (l, ((wrow, erow), mrow)) in w1
            .chunks_exact_mut(count)
            .zip(err1.chunks_exact_mut(count))
            .zip(mask1.chunks_exact_mut(count))
            .enumerate()
            .take(n)
        {
            for i in 0..count {
                wrow[i] = wt[i * TILE + l];
                erow[i] = et[i * TILE + l];
                mrow[i] = mt[i * TILE + l];
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn tile_avx512(&self, block: Block, state: TileState, buf: &mut TileBuf) {
        self.tile_kernel::<Avx512>(block, state, buf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn tile_avx2(&self, block: Block, state: TileState, buf: &mut TileBuf) {
        self.tile_kernel::<Avx2>(block, state, buf)
    }

    /// The column loop of one tile: per column, the n:m choice (every `m`
    /// columns), prune, quantize, the scaled error `(w − q)/d`, and the update
    /// of the block's later columns. Lanes past `tile.n` carry zeros and are
    /// never written back.
    #[inline(always)]
    fn tile_kernel<U: Update>(&self, block: Block, tile: TileState, buf: &mut TileBuf) {
        let Block {
            i1,
            i2,
            per_row,
            outer,
        } = block;
        let (cols, hinv, count, n) = (self.cols, self.hinv, i2 - i1, tile.n);
        let (wt, et, mt) = (
            &mut buf.w[..count * TILE],
            &mut buf.err[..count * TILE],
            &mut buf.mask[..count * TILE],
        );

        // The current grid of each lane; padding lanes keep (1, 0), which maps
        // their zeros to zero.
        let mut scale = [1f32; TILE];
        let mut zero = [0f32; TILE];
        // Which (group, width) `scale`/`zero` hold.
        let mut held = usize::MAX;
        let mut loss = [0f64; TILE];
        let nm = self.pattern.nm();
        for i in 0..count {
            let c = i1 + i;
            // Hinv1[i, i:]
            let hrow = &hinv[c * cols + c..c * cols + i2];
            let d = hrow[0];
            if let Some((keep, m)) = nm {
                if i % m == 0 {
                    buf.group.resize(m, false);
                    for l in 0..n {
                        let chosen = &mut buf.group[..m];
                        chosen.fill(false);
                        mark_n_smallest(keep, chosen, |k| {
                            let x = wt[(i + k) * TILE + l];
                            let dk = hinv[(c + k) * cols + c + k];
                            (x * x) / (dk * dk)
                        });
                        for (k, &p) in chosen.iter().enumerate() {
                            mt[(i + k) * TILE + l] = p;
                        }
                    }
                }
            }
            let mut maxq = 0f32;
            if let Some(qs) = &self.quant {
                let nl = qs.levels.maxq.len();
                let li = qs.levels.col[c] as usize;
                maxq = qs.levels.maxq[li];
                match (qs.groupsize, qs.static_groups) {
                    (Some(gs), Some((table, ngroups))) => {
                        let g = qs.perm.map_or(c, |p| p[c]) / gs;
                        if g * nl + li != held {
                            for l in 0..n {
                                let base = (((tile.r0 + l) * ngroups + g) * nl + li) * 2;
                                scale[l] = table[base];
                                zero[l] = table[base + 1];
                            }
                            held = g * nl + li;
                        }
                    }
                    (Some(gs), None) => {
                        // Each group keeps its own slot, so that the grid survives the sweep.
                        let slot = (c / gs) * 2 * nl;
                        if c.is_multiple_of(gs) {
                            for l in 0..n {
                                // From the weight as it stood at the block's start (the
                                // reference reads its outer W, not the in-block copy).
                                let part = outer.row(tile.r0 + l, c, (c + gs).min(cols));
                                let p = &mut tile.params[l * per_row + slot..][..2 * nl];
                                fill_params(p, part, &qs.levels.maxq, qs.cfg);
                            }
                            held = usize::MAX;
                        }
                        if (c / gs) * nl + li != held {
                            for l in 0..n {
                                let p = &tile.params[l * per_row + slot..];
                                scale[l] = p[2 * li];
                                zero[l] = p[2 * li + 1];
                            }
                            held = (c / gs) * nl + li;
                        }
                    }
                    _ => {
                        if li != held {
                            for l in 0..n {
                                scale[l] = tile.params[l * per_row + 2 * li];
                                zero[l] = tile.params[l * per_row + 2 * li + 1];
                            }
                            held = li;
                        }
                    }
                }
            }

            let (done, later) = wt[i * TILE..].split_at_mut(TILE);
            let col: &mut [f32; TILE] = done.try_into().expect("one tile column");
            let mcol = &mt[i * TILE..(i + 1) * TILE];
            let ecol: &mut [f32; TILE] = (&mut et[i * TILE..(i + 1) * TILE])
                .try_into()
                .expect("one tile column");
            let mut q = [0f32; TILE];
            for l in 0..TILE {
                q[l] = if mcol[l] { 0.0 } else { col[l] };
            }
            if self.quant.is_some() {
                for l in 0..TILE {
                    q[l] = quantize(q[l], scale[l], zero[l], maxq);
                }
            }
            let mut e = [0f32; TILE];
            for l in 0..TILE {
                e[l] = col[l] - q[l];
                ecol[l] = e[l] / d;
                col[l] = q[l];
            }
            let d2 = d * d;
            for l in 0..TILE {
                loss[l] += ((e[l] * e[l]) / d2) as f64;
            }
            let err = *ecol;
            let (later, _) = later.as_chunks_mut::<TILE>();
            U::update(later, &hrow[1..], &err);
        }

        for (total, l) in tile.losses.iter_mut().zip(loss) {
            *total += l;
        }
    }
}

/// The rank-1 update of a tile's later columns, `v[j] ← v[j] − err · h[j]`
/// (a multiply, then a subtract: the rounding of the row-at-a-time loop).
/// Left to itself the compiler vectorizes across `j` with gathers, so each
/// instruction set gets its own explicit version.
trait Update {
    fn update(later: &mut [[f32; TILE]], h: &[f32], err: &[f32; TILE]);
}

/// Any CPU.
struct Portable;

impl Update for Portable {
    #[inline(always)]
    fn update(later: &mut [[f32; TILE]], h: &[f32], err: &[f32; TILE]) {
        for (v, &h) in later.iter_mut().zip(h) {
            for (x, e) in v.iter_mut().zip(err) {
                *x -= e * h;
            }
        }
    }
}

/// An [`Update`] for one x86-64 vector width: the marker type, its impl, and
/// the update compiled for the feature (two copies that differ only in the
/// intrinsics' names).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_update {
    ($isa:ident, $f:ident, $feature:literal, $vec:ident, $lanes:literal,
     $load:ident, $store:ident, $set1:ident, $sub:ident, $mul:ident) => {
        struct $isa;

        impl Update for $isa {
            #[inline(always)]
            fn update(later: &mut [[f32; TILE]], h: &[f32], err: &[f32; TILE]) {
                // SAFETY: only instantiated in the tile kernel built for this
                // feature, which runs on CPUs that have it.
                unsafe { $f(later, h, err) }
            }
        }

        #[target_feature(enable = $feature)]
        #[inline]
        fn $f(later: &mut [[f32; TILE]], h: &[f32], err: &[f32; TILE]) {
            use std::arch::x86_64::*;
            const V: usize = $lanes;
            // SAFETY: every load and store is of `V` floats inside one `[f32; TILE]`.
            unsafe {
                let e: [$vec; TILE / V] = std::array::from_fn(|k| $load(err.as_ptr().add(k * V)));
                for (v, &h) in later.iter_mut().zip(h) {
                    let hb = $set1(h);
                    for (k, ek) in e.iter().enumerate() {
                        let p = v.as_mut_ptr().add(k * V);
                        $store(p, $sub($load(p), $mul(*ek, hb)));
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_update!(
    Avx512,
    update_avx512,
    "avx512f",
    __m512,
    16,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_sub_ps,
    _mm512_mul_ps
);

#[cfg(target_arch = "x86_64")]
x86_update!(
    Avx2,
    update_avx2,
    "avx2",
    __m256,
    8,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_sub_ps,
    _mm256_mul_ps
);
