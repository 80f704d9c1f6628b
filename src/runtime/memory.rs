//! Running out of memory during a calibration, reported as such.
//!
//! Two sources end up here:
//! - a device backend that fails an allocation (candle's CUDA backend wraps
//!   cudarc's `DriverError(CUDA_ERROR_OUT_OF_MEMORY, …)`, cuBLAS's
//!   `CUBLAS_STATUS_ALLOC_FAILED`, cuDNN's `CUDNN_STATUS_ALLOC_FAILED`, the
//!   runtime's `cudaErrorMemoryAllocation`): recognised from the error text,
//!   because candle boxes them as `dyn Error` and the cudarc types only exist in
//!   a `cuda` build;
//! - the host memory limit a calibration may run under
//!   ([`crate::calibrate::CalibOptions::memory_limit`]): before its large
//!   buffers (layer inputs and outputs, Hessians, the OBS work matrices) are
//!   allocated, their size is checked against the limit ([`MemoryLimit`]),
//!   because a failed host allocation in Rust aborts the process instead of
//!   returning an error.
//!
//! The calibration loop wraps either into [`OutOfMemory`], which names the
//! device, the stage, the decoder layer and the linear, so a 40-minute run that
//! dies says where and why instead of printing a backend string.

use std::fmt;

use anyhow::Result;
use candle_core::Device;

use crate::runtime::device::device_name;

/// What the calibration was doing when memory ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Running the calibration windows through the embedding.
    Embedding,
    /// Running a layer over the windows to collect its linears' Hessians.
    Hessians,
    /// Compressing one linear (the OBS sweep and its work matrices).
    Compressing,
    /// Running the compressed layer to produce the next layer's inputs.
    Forward,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Embedding => "embedding the calibration windows",
            Stage::Hessians => "collecting the Hessians of",
            Stage::Compressing => "compressing",
            Stage::Forward => "running the compressed",
        })
    }
}

/// A calibration step ran out of memory. Recognise it with
/// `err.downcast_ref::<OutOfMemory>()`.
#[derive(Debug)]
pub struct OutOfMemory {
    /// The device whose memory ran out (`cpu`, `cuda:0`, …).
    pub device: String,
    /// What was being done.
    pub stage: Stage,
    /// The decoder layer, when the step belongs to one.
    pub layer: Option<usize>,
    /// The linear, when the step belongs to one.
    pub linear: Option<String>,
    /// The first line of the underlying error (the backend's words, or the
    /// memory limit's accounting).
    pub detail: String,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory on {} while {}{}: {}{}",
            self.device,
            self.stage,
            self.location(),
            self.detail,
            self.hint()
        )
    }
}

impl std::error::Error for OutOfMemory {}

impl OutOfMemory {
    fn location(&self) -> String {
        match (self.layer, &self.linear) {
            (Some(l), Some(lin)) => format!(" layer {l} (linear {lin})"),
            (Some(l), None) => format!(" layer {l}"),
            _ => String::new(),
        }
    }

    fn hint(&self) -> &'static str {
        // What the user can change to need less, by what dominates each stage.
        match self.stage {
            Stage::Embedding | Stage::Forward => {
                "; fewer or shorter windows (nsamples, seqlen) need less"
            }
            Stage::Hessians => {
                "; a smaller input sample (reservoir) or batch needs less (a Hessian is columns² floats)"
            }
            Stage::Compressing => {
                "; this linear needs more free memory (a larger device, or a higher memory limit)"
            }
        }
    }
}

/// A buffer would take the calibration past its host memory limit.
#[derive(Debug, thiserror::Error)]
#[error("{what} needs {} with {} already in use, over the memory limit of {}",
    human(*.needed), human(*.in_use), human(*.limit))]
pub struct LimitExceeded {
    /// The buffer.
    pub what: String,
    /// Its size in bytes.
    pub needed: u64,
    /// Bytes the calibration already holds.
    pub in_use: u64,
    /// The limit in bytes.
    pub limit: u64,
}

/// The host memory limit of a calibration: the large buffers it is about to
/// allocate are checked against it ([`MemoryLimit::check`]). `None` checks
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimit(pub Option<u64>);

impl MemoryLimit {
    /// Fails with [`LimitExceeded`] when `in_use + needed` bytes exceed the limit.
    pub fn check(&self, what: impl FnOnce() -> String, in_use: u64, needed: u64) -> Result<()> {
        match self.0 {
            Some(limit) if in_use.saturating_add(needed) > limit => Err(LimitExceeded {
                what: what(),
                needed,
                in_use,
                limit,
            }
            .into()),
            _ => Ok(()),
        }
    }
}

/// The backends' names for a failed allocation (cudarc's driver, runtime,
/// cuBLAS, cuDNN, cuTENSOR and cuRAND enums, Metal's message).
const OOM_MARKERS: &[&str] = &[
    "CUDA_ERROR_OUT_OF_MEMORY",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUTENSOR_STATUS_ALLOC_FAILED",
    "CURAND_STATUS_ALLOCATION_FAILED",
    "out of memory",
];

/// Whether `err` (any cause in its chain) is a failed allocation: a backend's
/// out-of-memory error, an exceeded [`MemoryLimit`], or an [`OutOfMemory`].
pub fn is_out_of_memory(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.is::<LimitExceeded>() || cause.is::<OutOfMemory>() {
            return true;
        }
        let text = cause.to_string();
        OOM_MARKERS
            .iter()
            .any(|m| text.to_ascii_lowercase().contains(&m.to_ascii_lowercase()))
    })
}

/// Rewrites an out-of-memory error into an [`OutOfMemory`] that names `device`,
/// `stage`, `layer` and `linear`; any other error (and one already rewritten)
/// is returned unchanged.
pub fn locate(
    err: anyhow::Error,
    device: &Device,
    stage: Stage,
    layer: Option<usize>,
    linear: Option<&str>,
) -> anyhow::Error {
    if err.chain().any(|c| c.is::<OutOfMemory>()) || !is_out_of_memory(&err) {
        return err;
    }
    // The innermost cause holds the backend's words; candle appends a backtrace
    // on later lines, which is noise here.
    let root = err.root_cause().to_string();
    let detail = root.lines().next().unwrap_or("").trim().to_string();
    OutOfMemory {
        device: device_name(device),
        stage,
        layer,
        linear: linear.map(str::to_string),
        detail,
    }
    .into()
}

/// A size in bytes as an option takes it: an integer, or text such as `"8G"`
/// ([`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl crate::options::OptionValue for ByteSize {
    const LABEL: &'static str = "a byte count or a size such as \"8G\"";
    const VALUE_NAME: &'static str = "SIZE";
    fn from_dynamic(v: &rhai::Dynamic) -> Result<Self, crate::options::ValueError> {
        use crate::options::ValueError;
        match (v.as_int(), v.is_string()) {
            (Ok(i), _) if i >= 0 => Ok(Self(i as u64)),
            (Ok(i), _) => Err(ValueError::Invalid(format!(
                "must be a non-negative size, got {i}"
            ))),
            (_, true) => parse_size(&v.clone().into_string().unwrap_or_default())
                .map(Self)
                .map_err(|e| ValueError::Invalid(format!("is not a size ({e})"))),
            _ => Err(ValueError::WrongType),
        }
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        parse_size(s).map(Self).map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// Parses a size such as `512M`, `24G`, `1.5GiB` or a plain byte count (K, M,
/// G, T are powers of 1024, as `free -h` prints them).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        anyhow::anyhow!("invalid size `{text}`: expected a number with K, M, G or T")
    })?;
    let scale: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => anyhow::bail!("invalid size `{text}`: unknown unit `{unit}` (K, M, G or T)"),
    };
    Ok((value * scale as f64) as u64)
}

/// A byte count as `free -h` would print it.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cudarc's `DriverError` prints (its Display is its Debug).
    #[derive(Debug)]
    struct DriverError;
    impl fmt::Display for DriverError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")")
        }
    }
    impl std::error::Error for DriverError {}

    #[test]
    fn a_candle_cuda_oom_is_named_with_the_layer() {
        // As candle's CUDA backend returns it: boxed in Error::Cuda, with a backtrace.
        let e: anyhow::Error = candle_core::Error::Cuda(Box::new(DriverError)).bt().into();
        let e = e.context("matmul");
        let out = locate(e, &Device::Cpu, Stage::Compressing, Some(7), Some("fc1"));
        let msg = out.to_string();
        assert!(
            msg.starts_with(
                "out of memory on cpu while compressing layer 7 (linear fc1): \
                 DriverError(CUDA_ERROR_OUT_OF_MEMORY"
            ),
            "{msg}"
        );
        assert!(out.downcast_ref::<OutOfMemory>().is_some());
        // Mapping twice keeps the first (innermost) location.
        let again = locate(out, &Device::Cpu, Stage::Forward, Some(9), None);
        assert!(again.to_string().contains("layer 7 (linear fc1)"));
    }

    #[test]
    fn other_errors_pass_unchanged() {
        let e = anyhow::anyhow!("shape mismatch in matmul");
        let out = locate(e, &Device::Cpu, Stage::Hessians, Some(0), None);
        assert_eq!(out.to_string(), "shape mismatch in matmul");
        assert!(out.downcast_ref::<OutOfMemory>().is_none());
    }

    #[test]
    fn cublas_alloc_failure_counts() {
        let e = anyhow::anyhow!("CublasError(CUBLAS_STATUS_ALLOC_FAILED)");
        assert!(is_out_of_memory(&e));
    }

    #[test]
    fn limit_and_sizes() {
        let l = MemoryLimit(Some(1000));
        assert!(l.check(|| "x".into(), 500, 500).is_ok());
        let e = l.check(|| "the Hessian".into(), 500, 501).unwrap_err();
        assert!(is_out_of_memory(&e));
        assert_eq!(
            e.to_string(),
            "the Hessian needs 501 B with 500 B already in use, over the memory limit of 1000 B"
        );
        assert!(MemoryLimit(None).check(|| "x".into(), u64::MAX, 1).is_ok());
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
