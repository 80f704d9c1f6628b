//! The model's tokenizer, whatever form the checkpoint ships it in.
//!
//! Text for calibration and evaluation is always encoded *without* special tokens;
//! the reference protocol's leading BOS is added explicitly by the dataset code, so
//! the same rule holds for `tokenizer.json`, GPT-2 `vocab.json`/`merges.txt` and
//! SentencePiece `tokenizer.model`, whose post-processors differ.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::{AddedToken, Tokenizer};

use super::sentencepiece::SentencePiece;

/// A tokenizer loaded from a model directory.
pub enum TextTokenizer {
    /// A Hugging Face tokenizer (`tokenizer.json`, or built from `vocab.json` + `merges.txt`).
    Hf(Box<Tokenizer>),
    /// A SentencePiece model (`tokenizer.model`), encoded with SentencePiece's own algorithm.
    SentencePiece(SentencePiece),
}

impl TextTokenizer {
    /// Finds and loads the tokenizer in `dir`: `tokenizer.json` first, then
    /// `tokenizer.model` (SentencePiece), then `vocab.json` + `merges.txt` (GPT-2 BPE).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let sp = dir.join("tokenizer.model");
        if sp.is_file() {
            return Ok(Self::SentencePiece(SentencePiece::from_file(&sp)?));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_gpt2_files(&vocab, &merges, &special_tokens(dir));
        }
        bail!(
            "no tokenizer in {}: looked for tokenizer.json, tokenizer.model, and vocab.json + merges.txt",
            dir.display()
        )
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let tok = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot read tokenizer {}: {e}", path.display()))?;
        Ok(Self::Hf(Box::new(tok)))
    }

    /// Builds the GPT-2 byte-level BPE that OPT checkpoints describe with
    /// `vocab.json` + `merges.txt`: ByteLevel pre-tokenizer without a prefix space,
    /// ByteLevel decoder, and the special tokens of `tokenizer_config.json` matched
    /// in text as the slow `GPT2Tokenizer` does.
    pub fn from_gpt2_files(vocab: &Path, merges: &Path, specials: &[String]) -> Result<Self> {
        use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let (v, m) = (path_str(vocab)?, path_str(merges)?);
        let bpe = BPE::from_file(v, m).build().map_err(|e| {
            anyhow!(
                "cannot read {} / {}: {e}",
                vocab.display(),
                merges.display()
            )
        })?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(s.clone(), true))
            .collect();
        tok.add_special_tokens(added)
            .map_err(|e| anyhow!("cannot add special tokens: {e}"))?;
        Ok(Self::Hf(Box::new(tok)))
    }

    /// Encodes `text` without special tokens (no BOS, no EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?
                .get_ids()
                .to_vec()),
            Self::SentencePiece(sp) => Ok(sp.encode(text)),
        }
    }

    /// The largest token id the tokenizer can produce, added tokens included.
    pub fn max_token_id(&self) -> Option<u32> {
        match self {
            Self::Hf(t) => t.get_vocab(true).values().copied().max(),
            Self::SentencePiece(sp) => sp.vocab_size().checked_sub(1).map(|m| m as u32),
        }
    }

    /// The tokenizer's vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Hf(t) => t.get_vocab_size(true),
            Self::SentencePiece(sp) => sp.vocab_size(),
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// Special-token strings named in `tokenizer_config.json` / `special_tokens_map.json`.
fn special_tokens(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path: PathBuf = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            // Either a plain string or an AddedToken-like object with `content`.
            let s = match v.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => {
                    o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
                }
                _ => None,
            };
            if let Some(s) = s {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}
