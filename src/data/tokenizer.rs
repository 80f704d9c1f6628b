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

/// A tokenizer loaded from a model directory (or built from a GGUF file's metadata,
/// see [`super::gguf_tokenizer::from_gguf`]).
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

/// What transformers reads from `tokenizer_config.json` beside the tokenizer itself:
/// the special tokens by name, whether encoding adds BOS/EOS, and the chat template.
///
/// A checkpoint directory has these in its own `tokenizer_config.json`, which is
/// copied when the model is saved; a GGUF file has them as metadata
/// ([`super::gguf_tokenizer::config_from_gguf`]), and [`TextTokenizer::hf_files`]
/// writes them out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// Beginning-of-sequence token string.
    pub bos_token: Option<String>,
    /// End-of-sequence token string.
    pub eos_token: Option<String>,
    /// Unknown-token string.
    pub unk_token: Option<String>,
    /// Padding token string.
    pub pad_token: Option<String>,
    /// Whether `tokenizer(text)` (with special tokens) starts with BOS.
    pub add_bos_token: bool,
    /// Whether `tokenizer(text)` (with special tokens) ends with EOS.
    pub add_eos_token: bool,
    /// The Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// The `tokenizer_config.json` object for a tokenizer of `tokenizer_class`.
    ///
    /// `add_bos_token`/`add_eos_token` are always written: transformers' fast
    /// tokenizers rebuild their post-processor from them only when they are present,
    /// and otherwise keep whatever `tokenizer.json` says.
    fn to_json(&self, tokenizer_class: &str) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("tokenizer_class".into(), tokenizer_class.into());
        for (key, value) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(v) = value {
                obj.insert(key.into(), v.as_str().into());
            }
        }
        obj.insert("add_bos_token".into(), self.add_bos_token.into());
        obj.insert("add_eos_token".into(), self.add_eos_token.into());
        // Decoding should give back the text as written, as llama.cpp does.
        obj.insert("clean_up_tokenization_spaces".into(), false.into());
        if let Some(t) = &self.chat_template {
            obj.insert("chat_template".into(), t.as_str().into());
        }
        serde_json::Value::Object(obj)
    }
}

/// Files to write, as `(file name, contents)`.
pub type NamedFiles = Vec<(String, Vec<u8>)>;

impl TextTokenizer {
    /// The files of a Hugging Face model directory that make transformers load this
    /// tokenizer, as `(file name, contents)`, for the caller to write where it
    /// writes the rest of the checkpoint (`Model::save` stages every file so that a
    /// failed save leaves nothing behind; writing them here would bypass that).
    ///
    /// - `Hf`: `tokenizer.json` (the tokenizer as `tokenizers` serializes it) and
    ///   `tokenizer_config.json` with `"tokenizer_class": "PreTrainedTokenizerFast"`;
    /// - `SentencePiece`: `tokenizer.model` ([`SentencePiece::to_bytes`]) and
    ///   `tokenizer_config.json` with `"tokenizer_class": "LlamaTokenizer"` (which
    ///   transformers converts from `tokenizer.model` only with the `sentencepiece`
    ///   package installed, as for any checkpoint that ships no `tokenizer.json`).
    ///
    /// Both configs carry `config`'s special tokens, BOS/EOS flags and chat template.
    /// Use it where the source has no tokenizer files to copy (a GGUF file);
    /// a directory's own files are better copied as they are.
    pub fn hf_files(&self, config: &TokenizerConfig) -> Result<NamedFiles> {
        let (main, class) = match self {
            Self::Hf(t) => {
                let json = t
                    .to_string(true)
                    .map_err(|e| anyhow!("cannot serialize the tokenizer: {e}"))?;
                (
                    ("tokenizer.json".to_string(), json.into_bytes()),
                    "PreTrainedTokenizerFast",
                )
            }
            Self::SentencePiece(sp) => (
                ("tokenizer.model".to_string(), sp.to_bytes().to_vec()),
                "LlamaTokenizer",
            ),
        };
        let mut cfg = serde_json::to_vec_pretty(&config.to_json(class))?;
        cfg.push(b'\n');
        Ok(vec![main, ("tokenizer_config.json".to_string(), cfg)])
    }

    /// Writes [`TextTokenizer::hf_files`] into the existing directory `dir`
    /// (replacing files of the same names) and returns their names.
    pub fn save_hf(&self, dir: &Path, config: &TokenizerConfig) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for (name, bytes) in self.hf_files(config)? {
            let path = dir.join(&name);
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            names.push(name);
        }
        Ok(names)
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
