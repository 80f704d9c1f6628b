//! Text for calibration and evaluation: dataset resolution, tokenization and the
//! reference-compatible window sampler.

pub mod datasets;
pub mod gguf_tokenizer;
pub mod pyrandom;
pub mod sentencepiece;
pub mod tokenizer;

pub use datasets::{DatasetSpec, Split};
pub use tokenizer::{TextTokenizer, TokenizerConfig};
