//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
//!
//! A GGUF checkpoint carries no `tokenizer.json`; llama.cpp's converter stores the
//! vocabulary, the merges or scores, the token types and the special ids as metadata,
//! and names the pre-tokenizer (`tokenizer.ggml.pre`) instead of storing it. The
//! tokenizer built here is the one the model was trained with: the Hugging Face
//! `tokenizer.json` the GGUF was converted from, whose pre-tokenizer is rebuilt from
//! that name (llama.cpp hard-codes the same regexes per name).
//!
//! Only the pre-tokenizers of the model families this project uses are known. Any
//! other name is an error rather than GPT-2's split (which candle and llama.cpp fall
//! back to): a wrong split still gives plausible-looking ids, and perplexities that
//! are silently off.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::sentencepiece::{SentencePiece, VocabSpec};
use super::tokenizer::{TextTokenizer, TokenizerConfig};

/// GGUF metadata as `candle_core::quantized::gguf_file::Content::read` gives it.
pub type Metadata = HashMap<String, Value>;

/// The `tokenizer.ggml.model` values [`from_gguf`] builds: byte-level BPE and
/// SentencePiece BPE.
pub const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama"];

/// The `tokenizer.ggml.pre` values [`from_gguf`] knows for a `gpt2` model.
pub const SUPPORTED_PRE: &[&str] = &[
    "gpt-2",
    "gpt2",
    "smollm",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "smaug-bpe",
];

/// Llama-3's `Split` regex (its `tokenizer.json`, and llama.cpp's LLAMA3 and SMAUG
/// pre-types).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`, numbered as
/// sentencepiece's `ModelProto.SentencePiece.Type`).
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
/// llama.cpp's name (`LLM_KV_TOKENIZER_UNK_ID`); candle reads `unk_token_id`, which
/// no converter writes.
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_REMOVE_EXTRA_WS: &str = "tokenizer.ggml.remove_extra_whitespaces";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
///
/// - `tokenizer.ggml.model = "gpt2"`: byte-level BPE ([`TextTokenizer::Hf`]) from
///   `tokens` (id = index) and `merges`, with the pre-tokenizer `tokenizer.ggml.pre`
///   names (one of [`SUPPORTED_PRE`]; absent means GPT-2's), the ByteLevel decoder,
///   and the tokens typed CONTROL (special) or USER_DEFINED (not special) as added
///   tokens, matched whole in text as Hugging Face tokenizers match them. When
///   `add_bos_token`/`add_eos_token` are set, a template post-processor adds them
///   (for transformers; [`TextTokenizer::encode`] never adds special tokens).
/// - `tokenizer.ggml.model = "llama"`: SentencePiece BPE
///   ([`TextTokenizer::SentencePiece`]) from `tokens`, `scores` and `token_type`,
///   with `add_space_prefix` (default true) as the dummy prefix and byte fallback
///   when there are byte tokens, as llama.cpp's SPM tokenizer reads them.
///
/// Anything else (another model, an unknown pre-tokenizer, a missing or mistyped
/// key, an id outside the vocabulary) is an error that names the key.
pub fn from_gguf(metadata: &Metadata) -> Result<TextTokenizer> {
    match model_name(metadata)? {
        "gpt2" => Ok(TextTokenizer::Hf(Box::new(byte_level_bpe(metadata)?))),
        "llama" => Ok(TextTokenizer::SentencePiece(sentencepiece(metadata)?)),
        other => bail!(
            "GGUF `{KEY_MODEL}` is {other:?}, which is not supported (supported: {})",
            SUPPORTED_MODELS.join(", ")
        ),
    }
}

/// The `tokenizer_config.json` settings a GGUF file states: the special tokens
/// (`bos`/`eos`/`unknown`/`padding_token_id`, as strings), `add_bos_token` /
/// `add_eos_token`, and `tokenizer.chat_template`; for saving the model as a Hugging
/// Face directory with [`TextTokenizer::hf_files`].
///
/// Absent BOS/EOS flags take llama.cpp's defaults: BOS for SentencePiece models and
/// for Llama-3's pre-tokenizer, nothing else.
pub fn config_from_gguf(metadata: &Metadata) -> Result<TokenizerConfig> {
    let model = model_name(metadata)?;
    let tokens = strings(metadata, KEY_TOKENS)?;
    let token = |key: &str| -> Result<Option<String>> {
        Ok(token_id(metadata, key, tokens.len())?.map(|id| tokens[id as usize].to_owned()))
    };
    let pre = string(metadata, KEY_PRE)?;
    let default_bos = model == "llama" || matches!(pre, Some("llama-bpe" | "llama3" | "llama-v3"));
    Ok(TokenizerConfig {
        bos_token: token(KEY_BOS)?,
        eos_token: token(KEY_EOS)?,
        unk_token: token(KEY_UNK)?,
        pad_token: token(KEY_PAD)?,
        add_bos_token: boolean(metadata, KEY_ADD_BOS)?.unwrap_or(default_bos),
        add_eos_token: boolean(metadata, KEY_ADD_EOS)?.unwrap_or(false),
        chat_template: string(metadata, KEY_CHAT_TEMPLATE)?.map(str::to_owned),
    })
}

fn model_name(metadata: &Metadata) -> Result<&str> {
    string(metadata, KEY_MODEL)?.with_context(|| {
        format!("the GGUF metadata describe no tokenizer: `{KEY_MODEL}` is missing")
    })
}

/// The pre-tokenizer of the Hugging Face tokenizer that llama.cpp names `pre`, and
/// whether its BPE model has `ignore_merges` (Llama-3's has; llama.cpp sets it for
/// the same names).
fn pre_tokenizer(pre: Option<&str>) -> Result<(PreTokenizerWrapper, bool)> {
    let gpt2 = || ByteLevel::new(false, true, true);
    if pre.is_none() {
        // llama.cpp and transformers fall back the same way, but a Llama-3 file
        // converted before the key existed then splits text differently from its
        // own tokenizer: say so rather than tokenize differently in silence.
        eprintln!(
            "warning: the GGUF metadata name no pre-tokenizer (`{KEY_PRE}`): splitting text as GPT-2 does, as llama.cpp does; files converted before llama.cpp wrote that key may expect another split"
        );
    }
    Ok(match pre.unwrap_or("gpt2") {
        "gpt-2" | "gpt2" => (gpt2().into(), false),
        // SmolLM's tokenizer.json; llama.cpp splits on `\p{N}` first, the same thing.
        "smollm" => (
            Sequence::new(vec![Digits::new(true).into(), gpt2().into()]).into(),
            false,
        ),
        name @ ("llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe") => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("cannot build Llama-3's split regex: {e}"))?;
            let byte_level = ByteLevel::new(false, true, false);
            (
                Sequence::new(vec![split.into(), byte_level.into()]).into(),
                name != "smaug-bpe",
            )
        }
        other => bail!(
            "GGUF `{KEY_PRE}` is {other:?}, a pre-tokenizer that is not supported \
             (supported: {}); guessing one would give wrong ids",
            SUPPORTED_PRE.join(", ")
        ),
    })
}

fn byte_level_bpe(metadata: &Metadata) -> Result<Tokenizer> {
    // The cheap check first, so that an unsupported file fails before the vocabulary
    // is copied.
    let pre = string(metadata, KEY_PRE)?;
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre)?;
    let tokens = strings(metadata, KEY_TOKENS)?;
    let n = tokens.len();
    let mut vocab = Vocab::with_capacity(n);
    for (id, &t) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(t.to_owned(), id as u32) {
            bail!("GGUF `{KEY_TOKENS}` has {t:?} twice (ids {first} and {id})");
        }
    }
    // A byte with no token of its own (SmolLM2 has none for 0x04, 0xF1, …) is
    // dropped by BPE, as by the model's own tokenizer.json and by llama.cpp; no
    // `unk_token` is set, since neither has one.
    let merges = strings(metadata, KEY_MERGES)?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .with_context(|| format!("GGUF `{KEY_MERGES}`[{i}] = {m:?} is not \"a b\""))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the BPE model from the GGUF metadata: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    let types = token_types(metadata, n)?;
    // Whole-string matches before pre-tokenization, as in the models' tokenizer.json;
    // `normalized(false)` because these tokens are written raw, not byte-level.
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types.iter().flatten())
            .filter(|&(_, &t)| t == ty)
            .map(|(&s, _)| AddedToken::from(s, special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(added(TYPE_CONTROL, true))
        .map_err(|e| anyhow::anyhow!("cannot add the GGUF's control tokens: {e}"))?;
    // USER_DEFINED tokens are text (llama.cpp decodes them as such; transformers adds
    // them as non-special), but are matched whole all the same.
    tok.add_tokens(added(TYPE_USER_DEFINED, false))
        .map_err(|e| anyhow::anyhow!("cannot add the GGUF's user-defined tokens: {e}"))?;

    let config = config_from_gguf(metadata)?;
    if config.add_bos_token || config.add_eos_token {
        tok.with_post_processor(Some(bos_eos_template(metadata, &tokens, &config)?));
    }
    Ok(tok)
}

/// The post-processor that adds BOS/EOS as the GGUF's flags say (what Llama-3's
/// `tokenizer.json` has), so that transformers adds them too when loading a saved
/// `tokenizer.json`.
fn bos_eos_template(
    metadata: &Metadata,
    tokens: &[&str],
    config: &TokenizerConfig,
) -> Result<TemplateProcessing> {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    let mut special = |key: &str| -> Result<String> {
        let id = token_id(metadata, key, tokens.len())?.with_context(|| {
            format!("the GGUF asks to add that token to every sequence, but `{key}` is missing")
        })?;
        let s = tokens[id as usize].to_owned();
        specials.push((s.clone(), id));
        Ok(s)
    };
    let bos = config.add_bos_token.then(|| special(KEY_BOS)).transpose()?;
    let eos = config.add_eos_token.then(|| special(KEY_EOS)).transpose()?;
    for (seq, out) in [("A", &mut single), ("B", &mut pair)] {
        let type_id = if seq == "A" { 0 } else { 1 };
        out.extend(bos.iter().map(|b| format!("{b}:{type_id}")));
        out.push(format!("${seq}:{type_id}"));
        out.extend(eos.iter().map(|e| format!("{e}:{type_id}")));
    }
    // The pair template is the single one followed by the second sequence's.
    let pair: Vec<String> = single.iter().cloned().chain(pair).collect();
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| anyhow::anyhow!("cannot build the BOS/EOS template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the BOS/EOS template: {e}"))
}

fn sentencepiece(metadata: &Metadata) -> Result<SentencePiece> {
    let tokens = strings(metadata, KEY_TOKENS)?;
    let n = tokens.len();
    let scores = floats(metadata, KEY_SCORES)?.with_context(|| {
        format!("GGUF `{KEY_SCORES}` is missing (a SentencePiece model needs them)")
    })?;
    if scores.len() != n {
        bail!(
            "GGUF `{KEY_SCORES}` has {} entries for {n} tokens",
            scores.len()
        );
    }
    // Without types there is no unknown piece and no byte fallback: not a usable
    // SentencePiece model, whatever defaults one picked.
    let types = token_types(metadata, n)?.with_context(|| {
        format!("GGUF `{KEY_TYPES}` is missing (a SentencePiece model needs the token types)")
    })?;
    let unk = token_id(metadata, KEY_UNK, n)?;
    if let Some(id) = unk {
        if types[id as usize] != TYPE_UNKNOWN {
            bail!(
                "GGUF `{KEY_UNK}` = {id} ({:?}) is not the token typed UNKNOWN",
                tokens[id as usize]
            );
        }
    }
    let spec = VocabSpec {
        pieces: tokens
            .iter()
            .zip(&scores)
            .zip(&types)
            .map(|((&t, &s), &ty)| (t.to_owned(), s, ty))
            .collect(),
        bos_id: token_id(metadata, KEY_BOS, n)?,
        eos_id: token_id(metadata, KEY_EOS, n)?,
        pad_id: token_id(metadata, KEY_PAD, n)?,
        add_dummy_prefix: boolean(metadata, KEY_ADD_SPACE_PREFIX)?.unwrap_or(true),
        // llama.cpp's default, and Llama's own tokenizer.model setting.
        remove_extra_whitespaces: boolean(metadata, KEY_REMOVE_EXTRA_WS)?.unwrap_or(false),
    };
    SentencePiece::from_vocab(spec).context("the GGUF's SentencePiece vocabulary is invalid")
}

fn string<'a>(metadata: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("GGUF `{key}` should be a string, not {:?}", v.value_type()),
    }
}

fn boolean(metadata: &Metadata, key: &str) -> Result<Option<bool>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("GGUF `{key}` should be a bool, not {:?}", v.value_type()),
    }
}

fn array<'a>(metadata: &'a Metadata, key: &str) -> Result<Option<&'a [Value]>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => bail!("GGUF `{key}` should be an array, not {:?}", v.value_type()),
    }
}

/// A required array of strings (the tokens, the merges).
fn strings<'a>(metadata: &'a Metadata, key: &str) -> Result<Vec<&'a str>> {
    array(metadata, key)?
        .with_context(|| format!("GGUF `{key}` is missing"))?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            v => bail!(
                "GGUF `{key}`[{i}] should be a string, not {:?}",
                v.value_type()
            ),
        })
        .collect()
}

fn floats(metadata: &Metadata, key: &str) -> Result<Option<Vec<f32>>> {
    let Some(a) = array(metadata, key)? else {
        return Ok(None);
    };
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::F32(x) => Ok(*x),
            // Scores are f32 in every converter; f64 would only lose digits we never had.
            Value::F64(x) => Ok(*x as f32),
            v => bail!(
                "GGUF `{key}`[{i}] should be a float, not {:?}",
                v.value_type()
            ),
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// Any integer-typed metadata value as i64 (converters differ in the widths they
/// write); `None` for other types.
pub(crate) fn integer(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// `tokenizer.ggml.token_type`, one per token, when present.
fn token_types(metadata: &Metadata, n: usize) -> Result<Option<Vec<i32>>> {
    let Some(a) = array(metadata, KEY_TYPES)? else {
        return Ok(None);
    };
    if a.len() != n {
        bail!("GGUF `{KEY_TYPES}` has {} entries for {n} tokens", a.len());
    }
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            integer(v)
                .and_then(|x| i32::try_from(x).ok())
                .with_context(|| format!("GGUF `{KEY_TYPES}`[{i}] = {v:?} is not a token type"))
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// A special token id, checked against the vocabulary size `n` (llama.cpp only warns
/// and keeps its default; a wrong special token is better found here).
fn token_id(metadata: &Metadata, key: &str, n: usize) -> Result<Option<u32>> {
    let Some(v) = metadata.get(key) else {
        return Ok(None);
    };
    let id = integer(v).with_context(|| format!("GGUF `{key}` = {v:?} is not an integer"))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n => Ok(Some(id)),
        _ => bail!("GGUF `{key}` = {id} is outside the vocabulary of {n} tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The character ByteLevel writes byte `b` as (GPT-2's `bytes_to_unicode`): printable
    /// Latin-1 bytes stand for themselves, the others are shifted past U+0100 in order.
    fn byte_symbol(b: u8) -> String {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(b) {
            return char::from(b).to_string();
        }
        let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + shift)
            .expect("below U+0200")
            .to_string()
    }

    const SAMPLE: &str = "Hello'Ve world 123\n\n  foo 2010";

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    fn strs(xs: &[String]) -> Value {
        Value::Array(xs.iter().map(|x| s(x)).collect())
    }

    /// A small byte-level vocabulary: the 256 byte symbols, a few merges, and three
    /// control tokens (`<|endoftext|>` at 0 as in SmolLM).
    fn gpt2_metadata(pre: Option<&str>) -> Metadata {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        tokens.extend((0..=255u8).map(byte_symbol));
        let merges: Vec<String> = [
            "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "H e", "l l", "He ll",
        ]
        .map(String::from)
        .to_vec();
        for m in &merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<tool>".into());
        let n = tokens.len();
        let mut types = vec![Value::I32(1); n];
        types[0] = Value::I32(TYPE_CONTROL);
        types[1] = Value::I32(TYPE_CONTROL);
        types[n - 1] = Value::I32(TYPE_USER_DEFINED);
        let mut m = Metadata::new();
        m.insert(KEY_MODEL.into(), s("gpt2"));
        if let Some(p) = pre {
            m.insert(KEY_PRE.into(), s(p));
        }
        m.insert(KEY_TOKENS.into(), strs(&tokens));
        m.insert(KEY_MERGES.into(), strs(&merges));
        m.insert(KEY_TYPES.into(), Value::Array(types));
        m.insert(KEY_BOS.into(), Value::U32(0));
        m.insert(KEY_EOS.into(), Value::U32(0));
        m.insert(KEY_UNK.into(), Value::U32(0));
        m
    }

    fn hf(t: TextTokenizer) -> Tokenizer {
        match t {
            TextTokenizer::Hf(t) => *t,
            TextTokenizer::SentencePiece(_) => panic!("expected a byte-level tokenizer"),
        }
    }

    fn splits(pre: Option<&str>, text: &str) -> Vec<String> {
        let tok = hf(from_gguf(&gpt2_metadata(pre)).unwrap());
        let mut p = PreTokenizedString::from(text);
        tok.get_pre_tokenizer()
            .unwrap()
            .pre_tokenize(&mut p)
            .unwrap();
        p.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_owned())
            .collect()
    }

    // The expected splits are those of the Python `tokenizers` pre-tokenizers that
    // the models' tokenizer.json files name.
    #[test]
    fn gpt2_splits() {
        let want = ["Hello", "'", "Ve", "Ġworld", "Ġ123", "ĊĊĠ", "Ġfoo", "Ġ2010"];
        assert_eq!(splits(None, SAMPLE), want);
        assert_eq!(splits(Some("gpt2"), SAMPLE), want);
        assert_eq!(splits(Some("gpt-2"), SAMPLE), want);
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            splits(Some("smollm"), SAMPLE),
            [
                "Hello", "'", "Ve", "Ġworld", "Ġ", "1", "2", "3", "ĊĊĠ", "Ġfoo", "Ġ", "2", "0",
                "1", "0"
            ]
        );
    }

    #[test]
    fn llama3_splits() {
        let want = [
            "Hello", "'Ve", "Ġworld", "Ġ", "123", "ĊĊ", "Ġ", "Ġfoo", "Ġ", "201", "0",
        ];
        for pre in ["llama-bpe", "llama3", "llama-v3", "smaug-bpe"] {
            assert_eq!(splits(Some(pre), SAMPLE), want, "{pre}");
        }
    }

    #[test]
    fn unknown_pre_is_an_error_naming_it() {
        let e = from_gguf(&gpt2_metadata(Some("qwen2")))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"qwen2\"") && e.contains("smollm, llama-bpe"),
            "{e}"
        );
    }

    #[test]
    fn unknown_model_is_an_error_naming_it() {
        for model in ["bert", "t5", "rwkv"] {
            let mut m = gpt2_metadata(None);
            m.insert(KEY_MODEL.into(), s(model));
            let e = from_gguf(&m).err().unwrap().to_string();
            assert!(
                e.contains(&format!("{model:?}")) && e.contains("gpt2, llama"),
                "{e}"
            );
        }
        let mut m = gpt2_metadata(None);
        m.remove(KEY_MODEL);
        let e = from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_MODEL), "{e}");
    }

    #[test]
    fn merges_and_added_tokens() {
        let tok = from_gguf(&gpt2_metadata(None)).unwrap();
        let plain = hf(from_gguf(&gpt2_metadata(None)).unwrap());
        let id = |t: &str| plain.token_to_id(t).unwrap();
        let ids = tok
            .encode("Hello<|endoftext|> world<tool><|im_start|>")
            .unwrap();
        assert_eq!(ids, [id("Hell"), id("o"), 0, id("Ġworld"), id("<tool>"), 1]);
        let t = hf(tok);
        let added = t.get_added_tokens_decoder();
        assert!(added[&0].special && added[&1].special);
        assert!(!added[&(t.get_vocab_size(false) as u32 - 1)].special);
        assert_eq!(t.decode(&ids, true).unwrap(), "Hello world<tool>");
    }

    /// As in the model's own tokenizer.json and in llama.cpp (SmolLM2 has no token
    /// for byte 0x04, among others).
    #[test]
    fn bytes_without_a_token_are_dropped() {
        let mut m = gpt2_metadata(None);
        let Some(Value::Array(tokens)) = m.get_mut(KEY_TOKENS) else {
            unreachable!()
        };
        tokens[2 + 4] = s("<no byte 4>");
        let tok = from_gguf(&m).unwrap();
        assert_eq!(tok.encode("a\u{4}b").unwrap(), [2 + 0x61, 2 + 0x62]);
    }

    #[test]
    fn config_and_bos_template() {
        let mut m = gpt2_metadata(Some("llama3"));
        m.insert(KEY_BOS.into(), Value::U32(1));
        m.insert(KEY_PAD.into(), Value::I32(0));
        m.insert(KEY_CHAT_TEMPLATE.into(), s("{{ x }}"));
        let c = config_from_gguf(&m).unwrap();
        assert_eq!(
            c,
            TokenizerConfig {
                bos_token: Some("<|im_start|>".into()),
                eos_token: Some("<|endoftext|>".into()),
                unk_token: Some("<|endoftext|>".into()),
                pad_token: Some("<|endoftext|>".into()),
                // llama.cpp's default for Llama-3's pre-tokenizer.
                add_bos_token: true,
                add_eos_token: false,
                chat_template: Some("{{ x }}".into()),
            }
        );
        let t = hf(from_gguf(&m).unwrap());
        let with = t.encode("Hello", true).unwrap();
        assert_eq!(with.get_ids()[0], 1);
        let files = TextTokenizer::Hf(Box::new(t)).hf_files(&c).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["tokenizer.json", "tokenizer_config.json"]);
        let cfg: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(cfg["bos_token"], "<|im_start|>");
        assert_eq!(cfg["add_bos_token"], true);
        // The saved tokenizer.json reads back as the same tokenizer.
        let back = Tokenizer::from_bytes(&files[0].1).unwrap();
        assert_eq!(back.encode(SAMPLE, false).unwrap().get_ids(), {
            let t = hf(from_gguf(&m).unwrap());
            t.encode(SAMPLE, false).unwrap().get_ids().to_vec()
        });

        m.insert(KEY_ADD_BOS.into(), Value::Bool(false));
        assert!(!config_from_gguf(&m).unwrap().add_bos_token);
        m.insert(KEY_BOS.into(), Value::U32(100_000));
        let e = config_from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_BOS) && e.contains("outside"), "{e}");
    }

    #[test]
    fn mistyped_keys_are_named() {
        let mut m = gpt2_metadata(None);
        m.insert(KEY_PRE.into(), Value::U32(3));
        let e = from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_PRE) && e.contains("string"), "{e}");
        let mut m = gpt2_metadata(None);
        m.insert(KEY_MERGES.into(), strs(&["Ġw".into()]));
        let e = from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_MERGES), "{e}");
    }

    #[test]
    fn byte_symbols_are_gpt2s() {
        assert_eq!(byte_symbol(b' '), "Ġ");
        assert_eq!(byte_symbol(b'\n'), "Ċ");
        assert_eq!(byte_symbol(b'a'), "a");
        assert_eq!(byte_symbol(0xAD), "Ń");
        assert_eq!(byte_symbol(0x7F), "ġ");
        assert_eq!(byte_symbol(0xFF), "ÿ");
        let all: std::collections::HashSet<String> = (0..=255u8).map(byte_symbol).collect();
        assert_eq!(all.len(), 256);
    }

    /// A SentencePiece vocabulary with byte fallback: `<unk>`, `<s>`, `</s>`, the
    /// byte pieces, then a few merges.
    fn llama_metadata() -> Metadata {
        let mut pieces: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, TYPE_UNKNOWN),
            ("<s>".into(), 0.0, TYPE_CONTROL),
            ("</s>".into(), 0.0, TYPE_CONTROL),
        ];
        pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
        for (i, p) in ["▁", "h", "i", "▁h", "▁hi", "1", "2"].iter().enumerate() {
            pieces.push((p.to_string(), -(i as f32), 1));
        }
        let mut m = Metadata::new();
        m.insert(KEY_MODEL.into(), s("llama"));
        m.insert(
            KEY_TOKENS.into(),
            Value::Array(pieces.iter().map(|p| s(&p.0)).collect()),
        );
        m.insert(
            KEY_SCORES.into(),
            Value::Array(pieces.iter().map(|p| Value::F32(p.1)).collect()),
        );
        m.insert(
            KEY_TYPES.into(),
            Value::Array(pieces.iter().map(|p| Value::I32(p.2)).collect()),
        );
        m.insert(KEY_BOS.into(), Value::U32(1));
        m.insert(KEY_EOS.into(), Value::U32(2));
        m.insert(KEY_UNK.into(), Value::U32(0));
        m
    }

    #[test]
    fn llama_is_sentencepiece() {
        let m = llama_metadata();
        let TextTokenizer::SentencePiece(sp) = from_gguf(&m).unwrap() else {
            panic!("expected SentencePiece");
        };
        assert_eq!(
            (sp.bos_id(), sp.eos_id(), sp.unk_id()),
            (Some(1), Some(2), 0)
        );
        let pieces = |sp: &SentencePiece, t: &str| -> Vec<String> {
            sp.encode(t)
                .iter()
                .map(|&i| sp.id_to_piece(i).unwrap().to_owned())
                .collect()
        };
        // Dummy prefix, merges by score, byte fallback for `é`, spaces kept.
        assert_eq!(
            pieces(&sp, "hi  12é"),
            ["▁hi", "▁", "▁", "1", "2", "<0xC3>", "<0xA9>"]
        );
        // The serialized proto loads as the same model.
        let back = SentencePiece::from_bytes(sp.to_bytes()).unwrap();
        assert_eq!(back.encode("hi  12é"), sp.encode("hi  12é"));

        let mut m2 = m.clone();
        m2.insert(KEY_ADD_SPACE_PREFIX.into(), Value::Bool(false));
        let TextTokenizer::SentencePiece(sp2) = from_gguf(&m2).unwrap() else {
            panic!("expected SentencePiece");
        };
        assert_eq!(pieces(&sp2, "hi"), ["h", "i"]);

        let c = config_from_gguf(&m).unwrap();
        assert!(c.add_bos_token && !c.add_eos_token);
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        let files = TextTokenizer::SentencePiece(sp).hf_files(&c).unwrap();
        assert_eq!(files[0].0, "tokenizer.model");
        let cfg: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(cfg["tokenizer_class"], "LlamaTokenizer");
        assert_eq!(cfg["unk_token"], "<unk>");
    }

    #[test]
    fn llama_errors_name_the_key() {
        let mut m = llama_metadata();
        m.remove(KEY_SCORES);
        let e = from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_SCORES), "{e}");
        let mut m = llama_metadata();
        m.insert(KEY_UNK.into(), Value::U32(1));
        let e = from_gguf(&m).err().unwrap().to_string();
        assert!(e.contains(KEY_UNK), "{e}");
    }
}
