//! SentencePiece `tokenizer.model` (helper-owned; stub with the agreed interface).
use std::path::Path;

/// A SentencePiece model read from its protobuf file.
pub struct SentencePiece {
    vocab_size: usize,
}

impl SentencePiece {
    /// Reads a `tokenizer.model` file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        anyhow::bail!("SentencePiece not implemented yet: {}", path.display())
    }
    /// Ids as SentencePiece's `encode(text)` gives them (no BOS/EOS).
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        Vec::new()
    }
    /// Number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}
