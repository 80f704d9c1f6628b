//! sparselab: LLM compression research in Rust.
//!
//! A model is a sequence of stages — embed, decoder layers 0…L−1, head — that can
//! be run one at a time over a batch of hidden states ([`model::Model`]). Datasets
//! are tokenized and windowed exactly as the reference SparseGPT scripts do
//! ([`data`]), and perplexity follows the reference protocol ([`eval`]).
//!
//! Layers, from the bottom up; a module uses only modules on its own line or
//! above it (the manual's source layout, `docs/manual.md`, names the files):
//!
//! - declared options: [`options`] (each operation's options declared once,
//!   the "did you mean" suggestions every front end and the combination rules
//!   use);
//! - process services: [`runtime`] (allocator settings, devices, memory
//!   limits, the interrupt flag, progress); compute kernels: [`compute`] (f32
//!   and bf16 GEMMs, softmax, NLL); report records: [`report`] (per-linear
//!   reports, the run summary); [`hub`];
//! - data: [`data`] (datasets, tokenizers);
//! - compression: [`compress`] (Hessians, the OBS sweep, quantizer, the method
//!   dispatch, importance, allocation, combination rules);
//! - models: [`model`] (configs, OPT/Llama layers, checkpoints, GGUF, saving);
//!   [`eval`] measures them;
//! - calibration: [`calibrate`] (the layer loop, the commit, the statistics
//!   hook, the statistics cache, checkpoints, `compression.json`);
//! - charts: [`plot`] (charts, and the notebook display of charts, summaries
//!   and tables);
//! - front ends: [`script`] (the Rhai engine and primitives); behind cargo
//!   features, `repl` (the line-editing REPL; feature `repl`) and `jupyter`
//!   (the Jupyter kernel; feature `jupyter`); the binary's commands are in
//!   `src/main.rs` (feature `cli`, which turns on both).
//!
//! The features are on by default, so `cargo build` and `cargo test` build the
//! binary and test the front ends. A library user turns them off to compile
//! no rustyline, tokio or ZeroMQ: an evcxr notebook's first cell is
//! `:dep sparselab = { path = "..", default-features = false }`.

pub mod calibrate;
pub mod compress;
pub mod compute;
pub mod data;
pub mod eval;
pub mod hub;
#[cfg(feature = "jupyter")]
pub mod jupyter;
pub mod model;
pub mod options;
pub mod plot;
#[cfg(feature = "repl")]
pub mod repl;
pub mod report;
pub mod runtime;
pub mod script;
