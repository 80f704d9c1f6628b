//! sparselab: LLM compression research in Rust.
//!
//! A model is a sequence of stages — embed, decoder layers 0…L−1, head — that can
//! be run one at a time over a batch of hidden states ([`model::Model`]). Datasets
//! are tokenized and windowed exactly as the reference SparseGPT scripts do
//! ([`data`]), and perplexity follows the reference protocol ([`eval`]).
//!
//! Layers, from the bottom up (the manual's source layout, `docs/manual.md`,
//! names the files):
//!
//! - process services: [`runtime`] (allocator settings, devices, memory
//!   limits, the interrupt flag, progress);
//! - compute kernels: [`compute`] (f32 and bf16 GEMMs, softmax, NLL);
//! - models and data: [`model`] (configs, OPT/Llama layers, checkpoints, GGUF,
//!   saving), [`data`] (datasets, tokenizers), [`hub`];
//! - compression: [`compress`] (Hessians, the OBS sweep, quantizer, importance,
//!   allocation, combination rules, summary), driven layer by layer by
//!   [`calibrate`] with [`checkpoint`], [`calib_cache`] and [`report`];
//!   [`eval`] measures the result; [`plot`] charts it;
//! - front ends: [`script`] (the Rhai engine and primitives), [`repl`] and
//!   [`jupyter`] (the Jupyter kernel); the binary's commands are in `src/main.rs`.

pub mod calib_cache;
pub mod calibrate;
pub mod checkpoint;
pub mod compress;
pub mod compute;
pub mod data;
pub mod eval;
pub mod hub;
pub mod jupyter;
pub mod model;
pub mod plot;
pub mod repl;
pub mod report;
pub mod runtime;
pub mod script;
