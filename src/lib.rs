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
//! - process services: [`alloc`], [`memory`], [`interrupt`], [`progress`],
//!   [`device`];
//! - models and data: [`model`] (configs, OPT/Llama layers, checkpoints, GGUF,
//!   saving, the CPU kernels), [`data`] (datasets, tokenizers), [`hub`];
//! - compression: [`compress`] (Hessians, the OBS sweep, quantizer, importance,
//!   allocation, combination rules, summary), driven layer by layer by
//!   [`calibrate`] with [`checkpoint`], [`calib_cache`] and [`report`];
//!   [`eval`] measures the result; [`plot`] charts it;
//! - front ends: [`script`] (the Rhai engine and primitives), [`repl`] and
//!   [`kernel`] (Jupyter); the binary's commands are in `src/main.rs`.

pub mod alloc;
pub mod calib_cache;
pub mod calibrate;
pub mod checkpoint;
pub mod compress;
pub mod data;
pub mod device;
pub mod eval;
pub mod hub;
pub mod interrupt;
pub mod kernel;
pub mod memory;
pub mod model;
pub mod plot;
pub mod progress;
pub mod repl;
pub mod report;
pub mod script;
