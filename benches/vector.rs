//! Native `Vector` operations from a script against the same loops in Rust, on
//! a 1,780,000-element vector (the per-channel count of a 13B model).
//!
//! ```sh
//! cargo bench --bench vector
//! ```
//!
//! Each operation runs as a compiled Rhai expression (`v.quantile(0.9)`) and as
//! plain Rust over a `Vec<f32>`; the table gives the best of several runs of
//! each and their ratio (the issue's target: within 2×). The last row is the
//! same sum as a script loop over a Rhai array, to show why the native type
//! exists. `SPARSELAB_BENCH_N` changes the length, `SPARSELAB_BENCH_REPS` the
//! repetitions.

use std::hint::black_box;
use std::time::Instant;

use rhai::{Dynamic, Scope};
use sparselab::script::session::Session;
use sparselab::script::vector::Vector;
use sparselab::script::ScriptOptions;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Best wall time of `reps` runs, in milliseconds.
fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n = env_usize("SPARSELAB_BENCH_N", 1_780_000);
    let reps = env_usize("SPARSELAB_BENCH_REPS", 15);
    // Deterministic values in [0, 1).
    let mut state = 0x2545F4914F6CDD1Du64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();

    let session = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let engine = &session.engine;
    let mut scope = Scope::new();
    scope.push("v", Vector::from_f32(data.clone()));

    type RustOp = Box<dyn Fn(&[f32]) -> f64>;
    let ops: Vec<(&str, &str, RustOp)> = vec![
        (
            "sum",
            "v.sum()",
            Box::new(|d| d.iter().map(|&x| x as f64).sum()),
        ),
        (
            "std",
            "v.std()",
            Box::new(|d| {
                let m = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
                (d.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
            }),
        ),
        (
            "v * 2.0 + 1.0",
            "v * 2.0 + 1.0",
            Box::new(|d| {
                let a: Vec<f32> = d.iter().map(|&x| x * 2.0).collect();
                let b: Vec<f32> = a.into_iter().map(|x| x + 1.0).collect();
                b[0] as f64
            }),
        ),
        (
            "(v > 0.5).count()",
            "(v > 0.5).count()",
            Box::new(|d| {
                let mask: Vec<f32> = d.iter().map(|&x| (x > 0.5) as i32 as f32).collect();
                mask.iter().filter(|&&m| m != 0.0).count() as f64
            }),
        ),
        (
            "v[v > 0.5]",
            "v[v > 0.5]",
            Box::new(|d| {
                let mask: Vec<f32> = d.iter().map(|&x| (x > 0.5) as i32 as f32).collect();
                let kept: Vec<f32> = d
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m != 0.0)
                    .map(|(&x, _)| x)
                    .collect();
                kept.len() as f64
            }),
        ),
        (
            "normalize()",
            "v.normalize()",
            Box::new(|d| {
                let inv = (d.len() as f64 / d.iter().map(|&x| x as f64).sum::<f64>()) as f32;
                let out: Vec<f32> = d.iter().map(|&x| x * inv).collect();
                out[0] as f64
            }),
        ),
        (
            "clamp(0.1, 0.9)",
            "v.clamp(0.1, 0.9)",
            Box::new(|d| {
                let out: Vec<f32> = d.iter().map(|&x| x.clamp(0.1, 0.9)).collect();
                out[0] as f64
            }),
        ),
        (
            "quantile(0.9)",
            "v.quantile(0.9)",
            Box::new(|d| {
                let mut c = d.to_vec();
                let k = ((c.len() - 1) as f64 * 0.9) as usize;
                let (_, &mut x, _) = c.select_nth_unstable_by(k, f32::total_cmp);
                x as f64
            }),
        ),
        (
            "histogram(32)",
            "v.histogram(32)",
            Box::new(|d| {
                let lo = d.iter().copied().fold(f32::INFINITY, f32::min) as f64;
                let hi = d.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let w = (hi - lo) / 32.0;
                let mut counts = [0i64; 32];
                for &x in d {
                    counts[(((x as f64 - lo) / w) as usize).min(31)] += 1;
                }
                counts[0] as f64
            }),
        ),
        (
            "argsort()",
            "v.argsort()",
            Box::new(|d| {
                let mut idx: Vec<u32> = (0..d.len() as u32).collect();
                idx.sort_by(|&a, &b| d[a as usize].total_cmp(&d[b as usize]));
                idx[0] as f64
            }),
        ),
    ];

    println!("Vector operations on {n} elements, best of {reps} runs (ms)\n");
    println!(
        "{:<20} {:>10} {:>10} {:>8}",
        "operation", "rust", "script", "ratio"
    );
    let mut worst: f64 = 0.0;
    for (name, expr, rust) in &ops {
        let ast = engine
            .compile_expression(expr)
            .expect("benchmark expression");
        let t_rust = best_ms(reps, || {
            black_box(rust(black_box(&data)));
        });
        let t_script = best_ms(reps, || {
            let _ = black_box(
                engine
                    .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                    .expect("benchmark expression runs"),
            );
        });
        let ratio = t_script / t_rust;
        worst = worst.max(ratio);
        println!("{name:<20} {t_rust:>10.3} {t_script:>10.3} {ratio:>7.2}x");
    }
    println!("\nworst ratio script/Rust: {worst:.2}x (target: within 2x)");

    // The same sum as a loop over a plain Rhai array.
    let arr: rhai::Array = data
        .iter()
        .map(|&x| Dynamic::from_float(x as f64))
        .collect();
    scope.push("arr", arr);
    let ast = engine
        .compile("let s = 0.0; for x in arr { s += x; } s")
        .unwrap();
    let t_loop = best_ms(3.min(reps), || {
        let _ = black_box(
            engine
                .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                .unwrap(),
        );
    });
    let t_sum = best_ms(reps, || {
        black_box(data.iter().map(|&x| x as f64).sum::<f64>());
    });
    println!(
        "for comparison, a script loop summing a Rhai array: {t_loop:.1} ms ({:.0}x the Rust sum)",
        t_loop / t_sum
    );
}
