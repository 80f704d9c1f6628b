//! The integration tests, one binary: each module was once its own file
//! under `tests/` (and its own link of the crate). Run one module with
//! `cargo test --release --test it <module>::`.

mod common;

mod allocation;
mod calib_cache;
mod calibrate;
mod compress;
mod cuda;
mod data;
mod eval;
mod gguf;
mod gguf_tokenizer;
mod interrupt;
mod kernel;
mod loading;
mod mixed_precision;
mod models;
mod notebooks;
mod obs_reference;
mod plot;
mod recipes;
mod rules;
mod save;
mod script;
mod script_mixed;
mod script_plots;
mod sentencepiece;
