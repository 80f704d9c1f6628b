//! Compute devices and dtypes by name, as the CLI and scripts spell them.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda` or `cuda:N`.
///
/// Asking for CUDA from a build without the `cuda` feature is an error that says
/// how to get one, never a panic deep inside candle.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "cuda" | "gpu" => Some(0),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = ordinal else {
        bail!("unknown device `{name}`: expected cpu, cuda or cuda:N");
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("cannot open CUDA device {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    bail!(
        "device cuda:{ordinal} requested, but this sparselab was built without CUDA; \
         rebuild with `cargo build --release --features cuda` on a machine with nvcc"
    )
}

/// The name of a device as [`parse_device`] accepts it.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        Device::Metal(_) => "metal".to_string(),
    }
}

/// Parses `f32`/`float32`, `f16`/`float16`/`half`, `bf16`/`bfloat16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => DType::F32,
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown dtype `{other}`: expected f32, f16 or bf16"),
    })
}

/// The short name of a dtype (`f32`, `f16`, `bf16`, …).
pub fn dtype_name(dtype: DType) -> &'static str {
    dtype.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(matches!(parse_device("CPU").unwrap(), Device::Cpu));
        assert_eq!(parse_dtype("bfloat16").unwrap(), DType::BF16);
        assert!(parse_dtype("int8")
            .unwrap_err()
            .to_string()
            .contains("f32, f16 or bf16"));
        assert!(parse_device("tpu").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
