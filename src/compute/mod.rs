//! CPU compute kernels shared by the model's forward passes, the Hessians and
//! the evaluation: f32 GEMMs through faer, the bf16 GEMM for AVX512-BF16 CPUs,
//! and the fused softmax / negative log-likelihood passes ([`kernels`],
//! [`bf16_gemm`]). Below [`crate::model`] and [`crate::compress`]; depends on
//! nothing else in the crate.

pub mod bf16_gemm;
pub mod kernels;
