//! `Vector`: the native per-channel vector of scripts.
//!
//! Per-channel data is large (13,824 channels per linear, 1.78 million per model)
//! and a Rhai array of floats costs ~180 ns per element to loop over, so scripts
//! get a native type instead: f32 values in an `Arc`'d buffer (cheap to pass
//! around — Rhai clones values on assignment and argument passing) with a kind
//! tag saying how to read them:
//!
//! - `f32`: real values (scores, norms, statistics);
//! - `int`: integers (bit widths, group ids, indices); exact up to 2^24;
//! - `mask`: 0/1 flags, the result of a comparison.
//!
//! Every operation is a loop in Rust; a temporary whose buffer nobody else holds
//! is updated in place (`(v * 2.0 + 1.0)` allocates once).

use std::fmt;
use std::sync::Arc;

use rhai::plugin::*;
use rhai::{Array, Dynamic, Map, FLOAT, INT};

type ExclusiveRange = std::ops::Range<INT>;
type InclusiveRange = std::ops::RangeInclusive<INT>;

/// How a vector's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Real values.
    Float,
    /// Integers (bit widths, group ids, indices).
    Int,
    /// 0/1 flags.
    Mask,
}

impl Kind {
    /// The name scripts see (`v.dtype`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Float => "f32",
            Kind::Int => "int",
            Kind::Mask => "mask",
        }
    }
}

/// A native vector of f32 values with a kind tag. Cloning shares the buffer.
#[derive(Clone)]
pub struct Vector {
    data: Arc<Vec<f32>>,
    kind: Kind,
}

/// A script error with no position (Rhai fills in the call site).
pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, Box<EvalAltResult>> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        msg.into().into(),
        Position::NONE,
    )))
}

type R<T> = Result<T, Box<EvalAltResult>>;

impl Vector {
    /// A float vector.
    pub fn from_f32(data: Vec<f32>) -> Self {
        Self {
            data: Arc::new(data),
            kind: Kind::Float,
        }
    }
    /// An integer vector (values must fit f32 exactly, i.e. |v| ≤ 2^24).
    pub fn from_ints<I: IntoIterator<Item = i64>>(values: I) -> Self {
        Self {
            data: Arc::new(values.into_iter().map(|v| v as f32).collect()),
            kind: Kind::Int,
        }
    }
    /// A vector of `kind` over `data`.
    pub fn with_kind(data: Vec<f32>, kind: Kind) -> Self {
        Self {
            data: Arc::new(data),
            kind,
        }
    }
    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    /// The kind tag.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The values, copied only if the buffer is shared.
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|a| (*a).clone())
    }

    /// The values as non-negative integers (bit widths, group ids), or an error
    /// naming the first value that is not one.
    pub fn to_u32s(&self, what: &str) -> R<Vec<u32>> {
        self.data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.fract() == 0.0 && (0.0..=u32::MAX as f32).contains(&v) {
                    Ok(v as u32)
                } else {
                    err(format!(
                        "{what}: element {i} is {v}, not a non-negative integer"
                    ))
                }
            })
            .collect()
    }

    fn unary(self, kind: Kind, f: impl Fn(f32) -> f32) -> Self {
        let mut data = self.data;
        match Arc::get_mut(&mut data) {
            Some(d) => d.iter_mut().for_each(|x| *x = f(*x)),
            None => data = Arc::new(data.iter().map(|&x| f(x)).collect()),
        }
        Self { data, kind }
    }

    fn binary(self, other: &Vector, kind: Kind, op: &str, f: impl Fn(f32, f32) -> f32) -> R<Self> {
        if self.len() != other.len() {
            return err(format!(
                "`{op}` on vectors of different lengths: {} and {}",
                self.len(),
                other.len()
            ));
        }
        let mut data = self.data;
        match Arc::get_mut(&mut data) {
            Some(d) => d
                .iter_mut()
                .zip(other.data.iter())
                .for_each(|(x, &y)| *x = f(*x, y)),
            None => {
                data = Arc::new(
                    data.iter()
                        .zip(other.data.iter())
                        .map(|(&x, &y)| f(x, y))
                        .collect(),
                )
            }
        }
        Ok(Self { data, kind })
    }

    /// The kind of an arithmetic result (`+ - *`).
    fn arith_kind(a: Kind, b: Kind) -> Kind {
        if a == Kind::Float || b == Kind::Float {
            Kind::Float
        } else {
            Kind::Int
        }
    }

    /// Index from a script integer (negative counts from the end).
    fn index(&self, i: INT) -> R<usize> {
        let n = self.len() as INT;
        let j = if i < 0 { n + i } else { i };
        if j < 0 || j >= n {
            return err(format!(
                "index {i} is out of range for a Vector of length {n}"
            ));
        }
        Ok(j as usize)
    }

    fn value(&self, j: usize) -> Dynamic {
        let v = self.data[j];
        match self.kind {
            Kind::Float => Dynamic::from_float(v as FLOAT),
            Kind::Int => Dynamic::from_int(v as INT),
            Kind::Mask => Dynamic::from_bool(v != 0.0),
        }
    }

    /// Sum in f64.
    pub fn sum(&self) -> f64 {
        self.data.iter().map(|&x| x as f64).sum()
    }
    /// Mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum() / self.len() as f64
    }
    /// Population standard deviation (ddof = 0, as numpy's default).
    pub fn std(&self) -> f64 {
        let m = self.mean();
        let ss: f64 = self
            .data
            .iter()
            .map(|&x| {
                let d = x as f64 - m;
                d * d
            })
            .sum();
        (ss / self.len() as f64).sqrt()
    }
    /// Smallest value (NaNs ignored).
    pub fn min(&self) -> f32 {
        self.data.iter().copied().fold(f32::INFINITY, f32::min)
    }
    /// Largest value (NaNs ignored).
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    /// The `q`-quantile with numpy's default linear interpolation.
    pub fn quantile(&self, q: f64) -> R<f64> {
        if !(0.0..=1.0).contains(&q) {
            return err(format!("quantile: q must be in [0, 1], got {q}"));
        }
        if self.is_empty() {
            return err("quantile of an empty Vector");
        }
        if self.data.iter().any(|x| x.is_nan()) {
            return err("quantile of a Vector holding NaN");
        }
        let mut v = (*self.data).clone();
        let pos = q * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let frac = pos - lo as f64;
        let (_, &mut a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
        let a = a as f64;
        if frac == 0.0 || rest.is_empty() {
            return Ok(a);
        }
        let b = rest.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        Ok(a + (b - a) * frac)
    }
    /// Indices that sort the values ascending (stable; NaNs last).
    pub fn argsort(&self, descending: bool) -> Vector {
        let mut idx: Vec<u32> = (0..self.len() as u32).collect();
        let d = &self.data;
        if descending {
            idx.sort_by(|&a, &b| d[b as usize].total_cmp(&d[a as usize]));
        } else {
            idx.sort_by(|&a, &b| d[a as usize].total_cmp(&d[b as usize]));
        }
        Vector::with_kind(idx.into_iter().map(|i| i as f32).collect(), Kind::Int)
    }
    /// Counts in `bins` equal-width bins over `[lo, hi]` (the last bin closed),
    /// and the `bins + 1` edges. Values outside are not counted.
    pub fn histogram(&self, bins: usize, lo: f64, hi: f64) -> R<(Vec<i64>, Vec<f32>)> {
        if bins == 0 {
            return err("histogram: bins must be at least 1");
        }
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return err(format!(
                "histogram: range [{lo}, {hi}] is not a finite interval"
            ));
        }
        let mut counts = vec![0i64; bins];
        let width = (hi - lo) / bins as f64;
        for &x in self.data.iter() {
            let x = x as f64;
            if !(lo..=hi).contains(&x) {
                continue;
            }
            let b = if width > 0.0 {
                (((x - lo) / width) as usize).min(bins - 1)
            } else {
                0
            };
            counts[b] += 1;
        }
        let edges = (0..=bins).map(|i| (lo + width * i as f64) as f32).collect();
        Ok((counts, edges))
    }
}

impl fmt::Display for Vector {
    /// `Vector<f32>[13824] [0.1234, 0.5, 0.33, …, 1.2, 0.8]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.len();
        write!(f, "Vector<{}>[{n}] [", self.kind.name())?;
        let show = |f: &mut fmt::Formatter<'_>, i: usize| -> fmt::Result {
            let v = self.data[i];
            match self.kind {
                Kind::Float => f.write_str(&format_num(v as f64)),
                Kind::Int => write!(f, "{}", v as i64),
                Kind::Mask => write!(f, "{}", v != 0.0),
            }
        };
        let indices: Vec<usize> = if n <= 8 {
            (0..n).collect()
        } else {
            (0..5).chain(n - 2..n).collect()
        };
        for (k, &i) in indices.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            if n > 8 && k == 5 {
                f.write_str("…, ")?;
            }
            show(f, i)?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A number in at most ~5 significant digits: `0.1234`, `12.5`, `1.23e-5`.
pub fn format_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = (4 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Iterating a Vector yields its elements (float, int or bool).
impl IntoIterator for Vector {
    type Item = Dynamic;
    type IntoIter = VectorIter;
    fn into_iter(self) -> VectorIter {
        VectorIter { v: self, i: 0 }
    }
}

/// Iterator over a [`Vector`]'s elements as script values.
pub struct VectorIter {
    v: Vector,
    i: usize,
}

impl Iterator for VectorIter {
    type Item = Dynamic;
    fn next(&mut self) -> Option<Dynamic> {
        (self.i < self.v.len()).then(|| {
            self.i += 1;
            self.v.value(self.i - 1)
        })
    }
}

fn scalar(x: &Dynamic, what: &str) -> R<(f32, bool)> {
    if let Ok(i) = x.as_int() {
        Ok((i as f32, true))
    } else if let Ok(f) = x.as_float() {
        Ok((f as f32, false))
    } else if let Ok(b) = x.as_bool() {
        Ok((b as i32 as f32, true))
    } else {
        err(format!("{what}: expected a number, got {}", x.type_name()))
    }
}

/// Builds a Vector from a Rhai array: all integers → `int`, all booleans →
/// `mask`, numbers → `f32`; anything else is an error naming the element.
pub fn from_array(arr: &Array) -> R<Vector> {
    let mut data = Vec::with_capacity(arr.len());
    let (mut all_int, mut all_bool) = (true, true);
    for (i, x) in arr.iter().enumerate() {
        if let Ok(b) = x.as_bool() {
            all_int = false;
            data.push(b as i32 as f32);
            continue;
        }
        all_bool = false;
        match scalar(x, "from_array") {
            Ok((v, is_int)) => {
                all_int &= is_int;
                data.push(v);
            }
            Err(_) => {
                return err(format!(
                    "from_array: element {i} is {}, not a number",
                    x.type_name()
                ))
            }
        }
    }
    let kind = if arr.is_empty() {
        Kind::Float
    } else if all_bool {
        Kind::Mask
    } else if all_int {
        Kind::Int
    } else {
        Kind::Float
    };
    Ok(Vector::with_kind(data, kind))
}

fn range_of(v: &Vector, start: INT, end: INT) -> R<std::ops::Range<usize>> {
    let n = v.len() as INT;
    let fix = |i: INT| if i < 0 { (n + i).max(0) } else { i.min(n) };
    let (s, e) = (fix(start), fix(end));
    Ok(s as usize..(e.max(s)) as usize)
}

fn check_mask(v: &Vector, what: &str) -> R<()> {
    if v.kind != Kind::Mask {
        return err(format!(
            "{what} needs a mask (a comparison's result), got a Vector<{}>",
            v.kind.name()
        ));
    }
    Ok(())
}

/// The script functions of `Vector` (registered by [`super::new_engine`]).
#[export_module]
pub mod vector_api {
    use super::*;

    /// Makes a Vector from an array: all integers give an `int` Vector, all
    /// booleans a `mask`, numbers an `f32` Vector.
    #[rhai_fn(return_raw)]
    pub fn from_array(arr: Array) -> R<Vector> {
        super::from_array(&arr)
    }
    /// Same as `from_array(arr)`.
    #[rhai_fn(name = "vector", return_raw)]
    pub fn vector_from_array(arr: Array) -> R<Vector> {
        super::from_array(&arr)
    }
    /// The elements as an array of floats (ints for `int`, booleans for `mask`).
    #[rhai_fn(pure)]
    pub fn to_array(v: &mut Vector) -> Array {
        (0..v.len()).map(|i| v.value(i)).collect()
    }
    /// An `f32` Vector of `n` zeros.
    #[rhai_fn(return_raw)]
    pub fn zeros(n: INT) -> R<Vector> {
        full(n, 0.0)
    }
    /// An `f32` Vector of `n` ones.
    #[rhai_fn(return_raw)]
    pub fn ones(n: INT) -> R<Vector> {
        full(n, 1.0)
    }
    /// An `f32` Vector of `n` copies of `value`.
    #[rhai_fn(return_raw)]
    pub fn full(n: INT, value: FLOAT) -> R<Vector> {
        if n < 0 {
            return err(format!("length must be non-negative, got {n}"));
        }
        Ok(Vector::from_f32(vec![value as f32; n as usize]))
    }
    /// An `int` Vector of `n` copies of `value` (e.g. a uniform bit width).
    #[rhai_fn(name = "full", return_raw)]
    pub fn full_int(n: INT, value: INT) -> R<Vector> {
        if n < 0 {
            return err(format!("length must be non-negative, got {n}"));
        }
        Ok(Vector::with_kind(vec![value as f32; n as usize], Kind::Int))
    }
    /// The `int` Vector 0, 1, …, n−1.
    #[rhai_fn(return_raw)]
    pub fn arange(n: INT) -> R<Vector> {
        if n < 0 {
            return err(format!("length must be non-negative, got {n}"));
        }
        Ok(Vector::from_ints(0..n))
    }

    /// Number of elements.
    #[rhai_fn(name = "len", get = "len", pure)]
    pub fn len(v: &mut Vector) -> INT {
        v.len() as INT
    }
    /// `f32`, `int` or `mask`.
    #[rhai_fn(get = "dtype", pure)]
    pub fn dtype(v: &mut Vector) -> String {
        v.kind.name().to_string()
    }
    /// `Vector<f32>[n] [first values, …, last values]`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(v: &mut Vector) -> String {
        v.to_string()
    }

    /// Sum of the elements (accumulated in f64).
    #[rhai_fn(pure)]
    pub fn sum(v: &mut Vector) -> FLOAT {
        v.sum()
    }
    /// Mean of the elements.
    #[rhai_fn(pure, return_raw)]
    pub fn mean(v: &mut Vector) -> R<FLOAT> {
        if v.is_empty() {
            return err("mean of an empty Vector");
        }
        Ok(v.mean())
    }
    /// Population standard deviation (ddof = 0).
    #[rhai_fn(pure, return_raw)]
    pub fn std(v: &mut Vector) -> R<FLOAT> {
        if v.is_empty() {
            return err("std of an empty Vector");
        }
        Ok(v.std())
    }
    /// Smallest element.
    #[rhai_fn(name = "min", pure, return_raw)]
    pub fn min(v: &mut Vector) -> R<FLOAT> {
        if v.is_empty() {
            return err("min of an empty Vector");
        }
        Ok(v.min() as FLOAT)
    }
    /// Largest element.
    #[rhai_fn(name = "max", pure, return_raw)]
    pub fn max(v: &mut Vector) -> R<FLOAT> {
        if v.is_empty() {
            return err("max of an empty Vector");
        }
        Ok(v.max() as FLOAT)
    }
    /// Index of the smallest element.
    #[rhai_fn(pure, return_raw)]
    pub fn argmin(v: &mut Vector) -> R<INT> {
        if v.is_empty() {
            return err("argmin of an empty Vector");
        }
        let (i, _) = v
            .data
            .iter()
            .enumerate()
            .fold(
                (0, f32::INFINITY),
                |(bi, b), (i, &x)| if x < b { (i, x) } else { (bi, b) },
            );
        Ok(i as INT)
    }
    /// Index of the largest element.
    #[rhai_fn(pure, return_raw)]
    pub fn argmax(v: &mut Vector) -> R<INT> {
        if v.is_empty() {
            return err("argmax of an empty Vector");
        }
        let (i, _) = v
            .data
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |(bi, b), (i, &x)| if x > b { (i, x) } else { (bi, b) },
            );
        Ok(i as INT)
    }
    /// The `q`-quantile, `q` in [0, 1], interpolated linearly as numpy's default.
    #[rhai_fn(pure, return_raw)]
    pub fn quantile(v: &mut Vector, q: FLOAT) -> R<FLOAT> {
        v.quantile(q)
    }
    /// The `q`-quantile (integer `q` 0 or 1).
    #[rhai_fn(name = "quantile", pure, return_raw)]
    pub fn quantile_int(v: &mut Vector, q: INT) -> R<FLOAT> {
        v.quantile(q as FLOAT)
    }
    /// Indices that sort the elements ascending (a stable sort), as an `int` Vector.
    #[rhai_fn(pure)]
    pub fn argsort(v: &mut Vector) -> Vector {
        v.argsort(false)
    }
    /// Indices that sort the elements, descending when `descending` is true.
    #[rhai_fn(name = "argsort", pure)]
    pub fn argsort_dir(v: &mut Vector, descending: bool) -> Vector {
        v.argsort(descending)
    }
    /// The elements sorted ascending.
    #[rhai_fn(pure)]
    pub fn sorted(v: &mut Vector) -> Vector {
        let mut d = (*v.data).clone();
        d.sort_by(f32::total_cmp);
        Vector::with_kind(d, v.kind)
    }
    /// The elements in reverse order.
    #[rhai_fn(pure)]
    pub fn reversed(v: &mut Vector) -> Vector {
        let mut d = (*v.data).clone();
        d.reverse();
        Vector::with_kind(d, v.kind)
    }
    /// Running sums.
    #[rhai_fn(pure)]
    pub fn cumsum(v: &mut Vector) -> Vector {
        let mut acc = 0f64;
        let d = v
            .data
            .iter()
            .map(|&x| {
                acc += x as f64;
                acc as f32
            })
            .collect();
        Vector::with_kind(d, Vector::arith_kind(v.kind, Kind::Int))
    }
    /// Divides by the mean (mean-normalised scores, mean 1).
    #[rhai_fn(pure, return_raw)]
    pub fn normalize(v: &mut Vector) -> R<Vector> {
        normalize_by(v, "mean".into())
    }
    /// Normalises by `method`: `"mean"` (÷ mean), `"sum"` (÷ sum), `"max"` (÷ max |x|),
    /// `"l2"` (÷ ‖x‖₂), `"minmax"` (to [0, 1]) or `"zscore"` ((x − mean) / std).
    #[rhai_fn(name = "normalize", pure, return_raw)]
    pub fn normalize_by(v: &mut Vector, method: ImmutableString) -> R<Vector> {
        if v.is_empty() {
            return err("normalize of an empty Vector");
        }
        let (shift, scale) = match method.as_str() {
            "mean" => (0.0, v.mean()),
            "sum" => (0.0, v.sum()),
            "max" => (0.0, v.data.iter().fold(0f32, |m, x| m.max(x.abs())) as f64),
            "l2" => (
                0.0,
                v.data
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
                    .sqrt(),
            ),
            "minmax" => (v.min() as f64, (v.max() - v.min()) as f64),
            "zscore" => (v.mean(), v.std()),
            other => {
                return err(format!(
                    "normalize: unknown method `{other}`; valid: mean, sum, max, l2, minmax, zscore"
                ))
            }
        };
        if scale == 0.0 || !scale.is_finite() {
            return err(format!(
                "normalize(\"{method}\"): the divisor is {scale}, the Vector cannot be normalised"
            ));
        }
        let (shift, inv) = (shift as f32, (1.0 / scale) as f32);
        Ok(v.clone().unary(Kind::Float, |x| (x - shift) * inv))
    }
    /// Each element limited to [lo, hi].
    #[rhai_fn(pure, return_raw)]
    pub fn clamp(v: &mut Vector, lo: Dynamic, hi: Dynamic) -> R<Vector> {
        let (lo, li) = scalar(&lo, "clamp")?;
        let (hi, hi_int) = scalar(&hi, "clamp")?;
        if lo > hi {
            return err(format!("clamp: lo {lo} is above hi {hi}"));
        }
        let kind = if v.kind == Kind::Float || !(li && hi_int) {
            Kind::Float
        } else {
            Kind::Int
        };
        // Branch-free min/max that keeps NaN (vectorises, unlike f32::clamp
        // with bounds only known at run time).
        Ok(v.clone().unary(kind, |x| {
            let y = if x < lo { lo } else { x };
            if y > hi {
                hi
            } else {
                y
            }
        }))
    }
    /// `#{counts, edges}`: counts in `bins` equal-width bins between the minimum
    /// and the maximum (`int` Vector) and the `bins + 1` edges.
    #[rhai_fn(pure, return_raw)]
    pub fn histogram(v: &mut Vector, bins: INT) -> R<Map> {
        if v.is_empty() {
            return err("histogram of an empty Vector");
        }
        let (lo, hi) = (v.min() as f64, v.max() as f64);
        histogram_range(v, bins, lo, hi)
    }
    /// Histogram over the range [lo, hi]; values outside are not counted.
    #[rhai_fn(name = "histogram", pure, return_raw)]
    pub fn histogram_range(v: &mut Vector, bins: INT, lo: FLOAT, hi: FLOAT) -> R<Map> {
        if bins < 1 {
            return err(format!("histogram: bins must be at least 1, got {bins}"));
        }
        let (counts, edges) = v.histogram(bins as usize, lo, hi)?;
        let mut m = Map::new();
        m.insert("counts".into(), Dynamic::from(Vector::from_ints(counts)));
        m.insert("edges".into(), Dynamic::from(Vector::from_f32(edges)));
        Ok(m)
    }
    /// Distinct values and how often each occurs, ascending: `#{values, counts}`.
    #[rhai_fn(pure)]
    pub fn value_counts(v: &mut Vector) -> Map {
        let mut d = (*v.data).clone();
        d.sort_by(f32::total_cmp);
        let (mut values, mut counts) = (Vec::new(), Vec::new());
        for x in d {
            if values.last() == Some(&x) {
                *counts.last_mut().unwrap() += 1;
            } else {
                values.push(x);
                counts.push(1i64);
            }
        }
        let mut m = Map::new();
        m.insert(
            "values".into(),
            Dynamic::from(Vector::with_kind(values, v.kind)),
        );
        m.insert("counts".into(), Dynamic::from(Vector::from_ints(counts)));
        m
    }

    /// The element at `i` (negative counts from the end).
    #[rhai_fn(index_get, pure, return_raw)]
    pub fn get(v: &mut Vector, i: INT) -> R<Dynamic> {
        Ok(v.value(v.index(i)?))
    }
    /// Sets the element at `i`.
    #[rhai_fn(index_set, return_raw)]
    pub fn set(v: &mut Vector, i: INT, value: Dynamic) -> R<()> {
        let j = v.index(i)?;
        let (x, is_int) = scalar(&value, "Vector element")?;
        if v.kind != Kind::Float && !is_int {
            v.kind = Kind::Float;
        }
        Arc::make_mut(&mut v.data)[j] = x;
        Ok(())
    }
    /// Elements `start..end` (`v[2..10]`).
    #[rhai_fn(index_get, pure, return_raw)]
    pub fn get_range(v: &mut Vector, r: ExclusiveRange) -> R<Vector> {
        slice(v, r.start, r.end)
    }
    /// Elements `start..=end`.
    #[rhai_fn(index_get, pure, return_raw)]
    pub fn get_range_incl(v: &mut Vector, r: InclusiveRange) -> R<Vector> {
        slice(v, *r.start(), *r.end() + 1)
    }
    /// With a mask: the elements where it is true; with an `int` Vector: the
    /// elements at those indices (`v[v.argsort()]` sorts).
    #[rhai_fn(index_get, pure, return_raw)]
    pub fn get_vector(v: &mut Vector, idx: Vector) -> R<Vector> {
        match idx.kind {
            Kind::Mask => filter(v, idx),
            _ => gather(v, idx),
        }
    }
    /// Elements `start..end`; negative bounds count from the end.
    #[rhai_fn(pure, return_raw)]
    pub fn slice(v: &mut Vector, start: INT, end: INT) -> R<Vector> {
        let r = range_of(v, start, end)?;
        Ok(Vector::with_kind(v.data[r].to_vec(), v.kind))
    }
    /// The elements where `mask` is true.
    #[rhai_fn(pure, return_raw)]
    pub fn filter(v: &mut Vector, mask: Vector) -> R<Vector> {
        check_mask(&mask, "filter")?;
        if mask.len() != v.len() {
            return err(format!(
                "filter: mask of length {} for a Vector of length {}",
                mask.len(),
                v.len()
            ));
        }
        let d = v
            .data
            .iter()
            .zip(mask.data.iter())
            .filter(|(_, &m)| m != 0.0)
            .map(|(&x, _)| x)
            .collect();
        Ok(Vector::with_kind(d, v.kind))
    }
    /// The elements at the indices of `idx`.
    #[rhai_fn(pure, return_raw)]
    pub fn gather(v: &mut Vector, idx: Vector) -> R<Vector> {
        let n = v.len();
        let mut d = Vec::with_capacity(idx.len());
        for &i in idx.data.iter() {
            if i.fract() != 0.0 || i < 0.0 || i as usize >= n {
                return err(format!(
                    "index {i} is out of range for a Vector of length {n}"
                ));
            }
            d.push(v.data[i as usize]);
        }
        Ok(Vector::with_kind(d, v.kind))
    }
    /// The elements in a random order drawn with `seed` (Fisher–Yates on
    /// SplitMix64): the same seed gives the same order on every machine.
    #[rhai_fn(pure)]
    pub fn shuffled(v: &mut Vector, seed: INT) -> Vector {
        let mut d = v.as_slice().to_vec();
        let mut rng = crate::compress::reservoir::SplitMix64(seed as u64);
        for i in (1..d.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            d.swap(i, j);
        }
        Vector::with_kind(d, v.kind)
    }
    /// The elements of `a` followed by those of `b`.
    #[rhai_fn(pure)]
    pub fn concat(a: &mut Vector, b: Vector) -> Vector {
        let mut d = Vec::with_capacity(a.len() + b.len());
        d.extend_from_slice(&a.data);
        d.extend_from_slice(&b.data);
        let kind = if a.kind == b.kind {
            a.kind
        } else {
            Vector::arith_kind(a.kind, b.kind)
        };
        Vector::with_kind(d, kind)
    }
    /// The vectors of an array, one after another.
    #[rhai_fn(name = "concat", return_raw)]
    pub fn concat_all(parts: Array) -> R<Vector> {
        let mut out: Option<Vector> = None;
        for (i, p) in parts.into_iter().enumerate() {
            let t = p.type_name();
            let Some(p) = p.try_cast::<Vector>() else {
                return err(format!("concat: element {i} is {t}, not a Vector"));
            };
            out = Some(match out {
                None => p,
                Some(mut acc) => concat(&mut acc, p),
            });
        }
        Ok(out.unwrap_or_else(|| Vector::from_f32(Vec::new())))
    }
    /// Converts to an `f32` Vector.
    #[rhai_fn(pure)]
    pub fn to_float(v: &mut Vector) -> Vector {
        Vector::with_kind((*v.data).clone(), Kind::Float)
    }
    /// Rounds to the nearest integer (ties to even) and makes an `int` Vector.
    #[rhai_fn(pure)]
    pub fn to_int(v: &mut Vector) -> Vector {
        v.clone().unary(Kind::Int, f32::round_ties_even)
    }

    /// Elementwise |x|.
    #[rhai_fn(name = "abs", pure)]
    pub fn abs(v: &mut Vector) -> Vector {
        let k = if v.kind == Kind::Mask {
            Kind::Int
        } else {
            v.kind
        };
        v.clone().unary(k, f32::abs)
    }
    /// Elementwise √x.
    #[rhai_fn(name = "sqrt", pure)]
    pub fn sqrt(v: &mut Vector) -> Vector {
        v.clone().unary(Kind::Float, f32::sqrt)
    }
    /// Elementwise natural logarithm.
    #[rhai_fn(name = "ln", pure)]
    pub fn ln(v: &mut Vector) -> Vector {
        v.clone().unary(Kind::Float, f32::ln)
    }
    /// Elementwise eˣ.
    #[rhai_fn(name = "exp", pure)]
    pub fn exp(v: &mut Vector) -> Vector {
        v.clone().unary(Kind::Float, f32::exp)
    }
    /// Elementwise rounding to the nearest integer (ties to even), still `f32`.
    #[rhai_fn(name = "round", pure)]
    pub fn round(v: &mut Vector) -> Vector {
        v.clone().unary(v.kind, f32::round_ties_even)
    }
    /// Elementwise xᵖ.
    #[rhai_fn(name = "**", name = "pow", return_raw)]
    pub fn pow(v: Vector, p: Dynamic) -> R<Vector> {
        let (p, _) = scalar(&p, "**")?;
        Ok(v.unary(Kind::Float, |x| x.powf(p)))
    }

    /// Number of true elements of a mask (non-zero elements otherwise).
    #[rhai_fn(pure)]
    pub fn count(v: &mut Vector) -> INT {
        v.data.iter().filter(|&&x| x != 0.0).count() as INT
    }
    /// Whether any element is true (non-zero).
    #[rhai_fn(pure)]
    pub fn any(v: &mut Vector) -> bool {
        v.data.iter().any(|&x| x != 0.0)
    }
    /// Whether every element is true (non-zero).
    #[rhai_fn(pure)]
    pub fn all(v: &mut Vector) -> bool {
        v.data.iter().all(|&x| x != 0.0)
    }
    /// Elementwise choice: `a` where `mask` is true, else `b` (Vectors or numbers).
    #[rhai_fn(return_raw)]
    pub fn select(mask: Vector, a: Dynamic, b: Dynamic) -> R<Vector> {
        check_mask(&mask, "select")?;
        let n = mask.len();
        let side = |x: Dynamic, name: &str| -> R<(Vec<f32>, Kind)> {
            if x.is::<Vector>() {
                let v = x.cast::<Vector>();
                if v.len() != n {
                    return err(format!(
                        "select: `{name}` has length {}, the mask {n}",
                        v.len()
                    ));
                }
                let k = v.kind;
                Ok((v.into_vec(), k))
            } else {
                let (s, is_int) = scalar(&x, "select")?;
                Ok((vec![s; n], if is_int { Kind::Int } else { Kind::Float }))
            }
        };
        let (a, ka) = side(a, "a")?;
        let (b, kb) = side(b, "b")?;
        let d = mask
            .data
            .iter()
            .zip(a.iter().zip(b.iter()))
            .map(|(&m, (&x, &y))| if m != 0.0 { x } else { y })
            .collect();
        Ok(Vector::with_kind(d, Vector::arith_kind(ka, kb)))
    }
    /// Dot product.
    #[rhai_fn(pure, return_raw)]
    pub fn dot(a: &mut Vector, b: Vector) -> R<FLOAT> {
        if a.len() != b.len() {
            return err(format!(
                "dot of vectors of different lengths: {} and {}",
                a.len(),
                b.len()
            ));
        }
        Ok(a.data
            .iter()
            .zip(b.data.iter())
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum())
    }

    // ---- arithmetic -------------------------------------------------------

    /// Elementwise sum.
    #[rhai_fn(name = "+", return_raw)]
    pub fn add_vv(a: Vector, b: Vector) -> R<Vector> {
        let k = Vector::arith_kind(a.kind, b.kind);
        a.binary(&b, k, "+", |x, y| x + y)
    }
    /// Elementwise difference.
    #[rhai_fn(name = "-", return_raw)]
    pub fn sub_vv(a: Vector, b: Vector) -> R<Vector> {
        let k = Vector::arith_kind(a.kind, b.kind);
        a.binary(&b, k, "-", |x, y| x - y)
    }
    /// Elementwise product.
    #[rhai_fn(name = "*", return_raw)]
    pub fn mul_vv(a: Vector, b: Vector) -> R<Vector> {
        let k = Vector::arith_kind(a.kind, b.kind);
        a.binary(&b, k, "*", |x, y| x * y)
    }
    /// Elementwise quotient (always `f32`).
    #[rhai_fn(name = "/", return_raw)]
    pub fn div_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Float, "/", |x, y| x / y)
    }
    /// Negation.
    #[rhai_fn(name = "-")]
    pub fn neg(a: Vector) -> Vector {
        let k = Vector::arith_kind(a.kind, Kind::Int);
        a.unary(k, |x| -x)
    }

    /// Adds a number to every element.
    #[rhai_fn(name = "+")]
    pub fn add_vf(a: Vector, b: FLOAT) -> Vector {
        let b = b as f32;
        a.unary(Kind::Float, |x| x + b)
    }
    /// Adds an integer to every element.
    #[rhai_fn(name = "+")]
    pub fn add_vi(a: Vector, b: INT) -> Vector {
        let (b, k) = (b as f32, Vector::arith_kind(a.kind, Kind::Int));
        a.unary(k, |x| x + b)
    }
    /// Adds a number to every element.
    #[rhai_fn(name = "+")]
    pub fn add_fv(a: FLOAT, b: Vector) -> Vector {
        add_vf(b, a)
    }
    /// Adds an integer to every element.
    #[rhai_fn(name = "+")]
    pub fn add_iv(a: INT, b: Vector) -> Vector {
        add_vi(b, a)
    }
    /// Subtracts a number from every element.
    #[rhai_fn(name = "-")]
    pub fn sub_vf(a: Vector, b: FLOAT) -> Vector {
        let b = b as f32;
        a.unary(Kind::Float, |x| x - b)
    }
    /// Subtracts an integer from every element.
    #[rhai_fn(name = "-")]
    pub fn sub_vi(a: Vector, b: INT) -> Vector {
        let (b, k) = (b as f32, Vector::arith_kind(a.kind, Kind::Int));
        a.unary(k, |x| x - b)
    }
    /// A number minus every element.
    #[rhai_fn(name = "-")]
    pub fn sub_fv(a: FLOAT, b: Vector) -> Vector {
        let a = a as f32;
        b.unary(Kind::Float, |x| a - x)
    }
    /// An integer minus every element.
    #[rhai_fn(name = "-")]
    pub fn sub_iv(a: INT, b: Vector) -> Vector {
        let (a, k) = (a as f32, Vector::arith_kind(b.kind, Kind::Int));
        b.unary(k, |x| a - x)
    }
    /// Multiplies every element by a number.
    #[rhai_fn(name = "*")]
    pub fn mul_vf(a: Vector, b: FLOAT) -> Vector {
        let b = b as f32;
        a.unary(Kind::Float, |x| x * b)
    }
    /// Multiplies every element by an integer.
    #[rhai_fn(name = "*")]
    pub fn mul_vi(a: Vector, b: INT) -> Vector {
        let (b, k) = (b as f32, Vector::arith_kind(a.kind, Kind::Int));
        a.unary(k, |x| x * b)
    }
    /// Multiplies every element by a number.
    #[rhai_fn(name = "*")]
    pub fn mul_fv(a: FLOAT, b: Vector) -> Vector {
        mul_vf(b, a)
    }
    /// Multiplies every element by an integer.
    #[rhai_fn(name = "*")]
    pub fn mul_iv(a: INT, b: Vector) -> Vector {
        mul_vi(b, a)
    }
    /// Divides every element by a number.
    #[rhai_fn(name = "/")]
    pub fn div_vf(a: Vector, b: FLOAT) -> Vector {
        let b = b as f32;
        a.unary(Kind::Float, |x| x / b)
    }
    /// Divides every element by an integer (the result is `f32`).
    #[rhai_fn(name = "/")]
    pub fn div_vi(a: Vector, b: INT) -> Vector {
        let b = b as f32;
        a.unary(Kind::Float, |x| x / b)
    }
    /// A number divided by every element.
    #[rhai_fn(name = "/")]
    pub fn div_fv(a: FLOAT, b: Vector) -> Vector {
        let a = a as f32;
        b.unary(Kind::Float, |x| a / x)
    }
    /// An integer divided by every element.
    #[rhai_fn(name = "/")]
    pub fn div_iv(a: INT, b: Vector) -> Vector {
        let a = a as f32;
        b.unary(Kind::Float, |x| a / x)
    }

    // ---- comparisons into masks --------------------------------------------

    /// Elementwise `<` into a mask.
    #[rhai_fn(name = "<", return_raw)]
    pub fn lt_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, "<", |x, y| (x < y) as i32 as f32)
    }
    /// Elementwise `<=` into a mask.
    #[rhai_fn(name = "<=", return_raw)]
    pub fn le_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, "<=", |x, y| (x <= y) as i32 as f32)
    }
    /// Elementwise `>` into a mask.
    #[rhai_fn(name = ">", return_raw)]
    pub fn gt_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, ">", |x, y| (x > y) as i32 as f32)
    }
    /// Elementwise `>=` into a mask.
    #[rhai_fn(name = ">=", return_raw)]
    pub fn ge_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, ">=", |x, y| (x >= y) as i32 as f32)
    }
    /// Elementwise `==` into a mask.
    #[rhai_fn(name = "==", return_raw)]
    pub fn eq_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, "==", |x, y| (x == y) as i32 as f32)
    }
    /// Elementwise `!=` into a mask.
    #[rhai_fn(name = "!=", return_raw)]
    pub fn ne_vv(a: Vector, b: Vector) -> R<Vector> {
        a.binary(&b, Kind::Mask, "!=", |x, y| (x != y) as i32 as f32)
    }
    /// Elementwise `<` against a number.
    #[rhai_fn(name = "<", return_raw)]
    pub fn lt_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, "<")?;
        Ok(a.unary(Kind::Mask, |x| (x < b) as i32 as f32))
    }
    /// Elementwise `<=` against a number.
    #[rhai_fn(name = "<=", return_raw)]
    pub fn le_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, "<=")?;
        Ok(a.unary(Kind::Mask, |x| (x <= b) as i32 as f32))
    }
    /// Elementwise `>` against a number.
    #[rhai_fn(name = ">", return_raw)]
    pub fn gt_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, ">")?;
        Ok(a.unary(Kind::Mask, |x| (x > b) as i32 as f32))
    }
    /// Elementwise `>=` against a number.
    #[rhai_fn(name = ">=", return_raw)]
    pub fn ge_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, ">=")?;
        Ok(a.unary(Kind::Mask, |x| (x >= b) as i32 as f32))
    }
    /// Elementwise `==` against a number.
    #[rhai_fn(name = "==", return_raw)]
    pub fn eq_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, "==")?;
        Ok(a.unary(Kind::Mask, |x| (x == b) as i32 as f32))
    }
    /// Elementwise `!=` against a number.
    #[rhai_fn(name = "!=", return_raw)]
    pub fn ne_vs(a: Vector, b: Dynamic) -> R<Vector> {
        let (b, _) = scalar(&b, "!=")?;
        Ok(a.unary(Kind::Mask, |x| (x != b) as i32 as f32))
    }

    /// Elementwise AND of two masks.
    #[rhai_fn(name = "&", return_raw)]
    pub fn and(a: Vector, b: Vector) -> R<Vector> {
        check_mask(&a, "&")?;
        check_mask(&b, "&")?;
        a.binary(&b, Kind::Mask, "&", |x, y| {
            ((x != 0.0) && (y != 0.0)) as i32 as f32
        })
    }
    /// Elementwise OR of two masks.
    #[rhai_fn(name = "|", return_raw)]
    pub fn or(a: Vector, b: Vector) -> R<Vector> {
        check_mask(&a, "|")?;
        check_mask(&b, "|")?;
        a.binary(&b, Kind::Mask, "|", |x, y| {
            ((x != 0.0) || (y != 0.0)) as i32 as f32
        })
    }
    /// Elementwise NOT of a mask.
    #[rhai_fn(name = "!", name = "not", return_raw)]
    pub fn not(a: Vector) -> R<Vector> {
        check_mask(&a, "!")?;
        Ok(a.unary(Kind::Mask, |x| (x == 0.0) as i32 as f32))
    }
}

/// Rich display in notebooks (`text/html` and `text/plain`), with the glue
/// `plot::display` gives its own types; it lives here so that `plot` need not
/// know about scripts.
mod display {
    use std::fmt::Write as _;

    use super::{format_num, Kind, Vector};
    use crate::plot::display::{escape, rich_display, TD, TDL};

    rich_display!(Vector);

    impl Vector {
        /// `text/html` (a table of its length, kind and statistics, then its first
        /// values) and `text/plain` (what `print(v)` shows).
        pub fn mime_bundle(&self) -> Vec<(&'static str, String)> {
            vec![("text/html", self.html()), ("text/plain", self.to_string())]
        }

        /// The vector as HTML: length, kind, and for a non-empty one min, mean,
        /// std and max, then up to 10 leading values. Well-formed (XHTML).
        pub fn html(&self) -> String {
            let n = self.len();
            let mut h = format!(
                "<table class=\"sparselab-vector\"><caption>Vector&lt;{}&gt; of {n}</caption><tbody>",
                self.kind().name()
            );
            if n > 0 {
                for (name, v) in [
                    ("min", self.min() as f64),
                    ("mean", self.mean()),
                    ("std", self.std()),
                    ("max", self.max() as f64),
                ] {
                    let _ = write!(h, "<tr>{TDL}{name}</td>{TD}{}</td></tr>", format_num(v));
                }
                let head: Vec<String> = self.as_slice()[..n.min(10)]
                    .iter()
                    .map(|&x| match self.kind() {
                        Kind::Float => format_num(x as f64),
                        Kind::Int => format!("{}", x as i64),
                        Kind::Mask => format!("{}", x != 0.0),
                    })
                    .collect();
                let more = if n > 10 { ", …" } else { "" };
                let _ = write!(
                    h,
                    "<tr>{TDL}values</td>{TDL}{}{more}</td></tr>",
                    escape(&head.join(", "))
                );
            }
            h += "</tbody></table>";
            h
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn vector_blocks_exactly() {
            let v = Vector::from_f32(vec![1.0, 2.0, 3.0, 6.0]);
            let mut out = Vec::new();
            v.write_evcxr(&mut out).unwrap();
            let expected = "EVCXR_BEGIN_CONTENT text/html\n\
                 <table class=\"sparselab-vector\"><caption>Vector&lt;f32&gt; of 4</caption><tbody>\
                 <tr><td style=\"text-align:left\">min</td><td style=\"text-align:right\">1</td></tr>\
                 <tr><td style=\"text-align:left\">mean</td><td style=\"text-align:right\">3</td></tr>\
                 <tr><td style=\"text-align:left\">std</td><td style=\"text-align:right\">1.8708</td></tr>\
                 <tr><td style=\"text-align:left\">max</td><td style=\"text-align:right\">6</td></tr>\
                 <tr><td style=\"text-align:left\">values</td><td style=\"text-align:left\">1, 2, 3, 6</td></tr>\
                 </tbody></table>\n\
                 EVCXR_END_CONTENT\n\
                 EVCXR_BEGIN_CONTENT text/plain\n\
                 Vector<f32>[4] [1, 2, 3, 6]\n\
                 EVCXR_END_CONTENT\n";
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            // The HTML is well-formed XML.
            roxmltree::Document::parse(&v.html()).unwrap();
            // Masks and integers show as such; an empty vector has no statistics.
            let m = Vector::with_kind(vec![1.0, 0.0], Kind::Mask);
            assert!(m.html().contains("true, false"));
            assert!(!Vector::from_f32(vec![]).html().contains("min"));
        }
    }
}
