//! GFLOP/s of the AVX512-BF16 GEMM (`sparselab::compute::bf16_gemm`) against
//! faer's f32 GEMM (`Par::rayon(0)`, as `compute::kernels` calls it), best of 5,
//! on OPT-125M's MLP shapes: `x·wᵀ` for fc1 and fc2 over 4096 tokens, and the
//! lower triangle of `XᵀX` (counted as n·d² FLOPs) for two Hessian shapes. Also
//! the relative Frobenius error of the bf16 result against the f32 one.
//!
//! `cargo bench --bench bf16_gemm`

use std::time::Instant;

use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use sparselab::compute::bf16_gemm::{self, StridedMut, StridedRef};

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

/// Best wall time of 5 runs (after one warm-up), in seconds.
fn best_of_5(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn rel_frobenius(got: impl Iterator<Item = f32>, want: impl Iterator<Item = f32>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den).sqrt()
}

fn report(name: &str, flops: f64, t_bf16: f64, t_f32: f64, err: f64) {
    let (g16, g32) = (flops / t_bf16 / 1e9, flops / t_f32 / 1e9);
    println!(
        "{name:<34} bf16 {g16:7.1} GFLOP/s ({:7.2} ms)   f32 faer {g32:7.1} GFLOP/s ({:7.2} ms)   \
         ×{:.2}   rel. Frobenius error {err:.2e}",
        t_bf16 * 1e3,
        t_f32 * 1e3,
        g16 / g32
    );
}

/// `x·wᵀ`, x `[n, k]`, w `[m, k]`.
fn xwt(n: usize, k: usize, m: usize) {
    let x = random(n * k, 1);
    let w = random(m * k, 2);
    let mut c16 = vec![0f32; n * m];
    let mut c32 = vec![0f32; n * m];
    let t16 = best_of_5(|| {
        let a = StridedRef::row_major(&x, n, k).unwrap();
        let b = StridedRef::row_major(&w, m, k).unwrap().t();
        bf16_gemm::gemm_bf16(
            StridedMut::row_major(&mut c16, n, m).unwrap(),
            0.0,
            1.0,
            a,
            b,
            false,
        )
        .unwrap();
    });
    let t32 = best_of_5(|| {
        let xr = MatRef::from_row_major_slice(&x, n, k);
        let wr = MatRef::from_row_major_slice(&w, m, k);
        let dst = MatMut::from_column_major_slice_mut(&mut c32, m, n);
        faer::linalg::matmul::matmul(
            dst,
            Accum::Replace,
            wr,
            xr.transpose(),
            1.0f32,
            Par::rayon(0),
        );
    });
    let err = rel_frobenius(c16.iter().copied(), c32.iter().copied());
    report(
        &format!("x·wᵀ x {n}×{k}, w {m}×{k}"),
        2.0 * (n * k * m) as f64,
        t16,
        t32,
        err,
    );
}

/// Lower triangle of `XᵀX`, X `[n, d]`.
fn gram(n: usize, d: usize) {
    let x = random(n * d, 3);
    let mut g16 = vec![0f32; d * d];
    let mut g32 = vec![0f32; d * d];
    let t16 = best_of_5(|| {
        bf16_gemm::gram_lower_bf16(&x, n, d, 1.0, &mut g16, false).unwrap();
    });
    let t32 = best_of_5(|| {
        let xr = MatRef::from_row_major_slice(&x, n, d);
        let dst = MatMut::from_column_major_slice_mut(&mut g32, d, d);
        faer::linalg::matmul::triangular::matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            xr.transpose(),
            BlockStructure::Rectangular,
            xr,
            BlockStructure::Rectangular,
            1.0f32,
            Par::rayon(0),
        );
    });
    // Row-major lower (i, j) against column-major lower at j·d + i.
    let lower = || (0..d).flat_map(|i| (0..=i).map(move |j| (i, j)));
    let err = rel_frobenius(
        lower().map(|(i, j)| g16[i * d + j]),
        lower().map(|(i, j)| g32[j * d + i]),
    );
    report(
        &format!("lower XᵀX, X {n}×{d}"),
        (n * d * d) as f64,
        t16,
        t32,
        err,
    );
}

fn main() {
    if !bf16_gemm::available() {
        println!("no AVX512-BF16 on this CPU: nothing to measure");
        return;
    }
    println!("threads: {}", rayon::current_num_threads());
    xwt(4096, 768, 3072);
    xwt(4096, 3072, 768);
    gram(512, 3072);
    gram(8192, 768);
}
