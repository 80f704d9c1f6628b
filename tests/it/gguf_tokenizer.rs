//! Tokenizers built from GGUF metadata (`sparselab::data::gguf_tokenizer`) against
//! their references: the SentencePiece library's ids for the `llama-sp` fixture
//! rebuilt as GGUF arrays, and transformers' GGUF tokenizer for the real
//! SmolLM2-135M GGUF.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::Value as Json;
use sparselab::data::gguf_tokenizer::{config_from_gguf, from_gguf};
use sparselab::data::sentencepiece::SentencePiece;
use sparselab::data::TextTokenizer;

/// Characters (code points) of wiki.test.raw compared; `llama-sp`'s
/// `expected_ids.json` covers the same prefix.
const PREFIX_CHARS: usize = 100_000;

/// Short strings on which the two tokenizers could part: digits (SmolLM splits each
/// one off), numbers that are not ASCII digits, contractions, runs of whitespace,
/// chat-template control tokens, non-Latin text.
const STRINGS: &[&str] = &[
    "in 2010 , 3.5 million",
    "Hello'Ve world 123\n\n  foo 2010",
    "x² + ½ = ①; Ⅻ 12345678901",
    "I'm sure they'll say it's 'fine' -- don't\t\tworry",
    "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
    "Ünïcödé 中文 テキスト 😀 \u{a0}nbsp",
    "   leading and trailing   ",
];

fn wiki_prefix(fx: &Path) -> String {
    let text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw")).unwrap();
    text.chars().take(PREFIX_CHARS).collect()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an id")).unwrap())
        .collect()
}

/// `None` when equal; otherwise the first differing position and the ids around it.
fn difference(got: &[u32], want: &[u32]) -> Option<String> {
    let i = got
        .iter()
        .zip(want)
        .position(|(x, y)| x != y)
        .or((got.len() != want.len()).then(|| got.len().min(want.len())))?;
    let lo = i.saturating_sub(5);
    Some(format!(
        "ids differ at {i} (got {} ids, want {}): got {:?}, want {:?}",
        got.len(),
        want.len(),
        &got[lo..(i + 5).min(got.len())],
        &want[lo..(i + 5).min(want.len())]
    ))
}

fn ids_list(v: &Json) -> Vec<Vec<u32>> {
    v.as_array().expect("an array").iter().map(ids).collect()
}

fn read_metadata(path: &Path) -> HashMap<String, Value> {
    let mut f = std::fs::File::open(path).unwrap();
    Content::read(&mut f).unwrap().metadata
}

/// The `llama-sp` fixture's `tokenizer.model` as llama.cpp's converter stores a
/// SentencePiece model in GGUF metadata.
fn llama_sp_as_gguf(sp: &SentencePiece) -> HashMap<String, Value> {
    let n = sp.vocab_size() as u32;
    let s = |x: &str| Value::String(x.to_owned());
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), s("llama"));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array((0..n).map(|i| s(sp.id_to_piece(i).unwrap())).collect()),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(
            (0..n)
                .map(|i| Value::F32(sp.piece_score(i).unwrap()))
                .collect(),
        ),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            (0..n)
                .map(|i| Value::I32(sp.piece_type(i).unwrap()))
                .collect(),
        ),
    );
    m.insert(
        "tokenizer.ggml.unknown_token_id".into(),
        Value::U32(sp.unk_id()),
    );
    m.insert(
        "tokenizer.ggml.bos_token_id".into(),
        Value::U32(sp.bos_id().unwrap()),
    );
    m.insert(
        "tokenizer.ggml.eos_token_id".into(),
        Value::U32(sp.eos_id().unwrap()),
    );
    m.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true));
    m
}

#[test]
fn llama_sentencepiece_from_gguf_arrays_matches_sentencepiece() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    let dir = fx.join("tokenizers/llama-sp");
    let original = SentencePiece::from_file(&dir.join("tokenizer.model")).unwrap();
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_ids.json")).unwrap())
            .unwrap();
    let metadata = llama_sp_as_gguf(&original);
    let tok = from_gguf(&metadata).unwrap();
    assert!(matches!(tok, TextTokenizer::SentencePiece(_)));
    let got = tok.encode(&wiki_prefix(&fx)).unwrap();
    if let Some(d) = difference(&got, &ids(&expected["ids_sentencepiece"])) {
        panic!("{d}");
    }
    // The short samples (runs of spaces, tabs, non-ASCII) with SentencePiece's ids.
    let samples = expected["samples"].as_object().unwrap();
    for (name, text) in samples {
        let want = ids(&expected["samples_expected"][name]["sentencepiece"]);
        assert_eq!(
            tok.encode(text.as_str().unwrap()).unwrap(),
            want,
            "sample {name}"
        );
    }

    // Saved as a Hugging Face directory, it reads back as the same tokenizer.
    let config = config_from_gguf(&metadata).unwrap();
    assert_eq!(config.bos_token.as_deref(), Some("<s>"));
    assert!(config.add_bos_token);
    let out = tempfile::tempdir().unwrap();
    let names = tok.save_hf(out.path(), &config).unwrap();
    assert_eq!(names, ["tokenizer.model", "tokenizer_config.json"]);
    let back = TextTokenizer::from_dir(out.path()).unwrap();
    let text = "Hello  world\n\t 2010 ünï";
    assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(gguf) = common::smollm2() else {
        return;
    };
    let Some(fx) = common::fixtures() else {
        return;
    };
    let Some(py) = common::python(&["transformers", "gguf"]) else {
        return;
    };
    let metadata = read_metadata(&gguf);
    let tok = from_gguf(&metadata).unwrap();
    assert!(matches!(tok, TextTokenizer::Hf(_)));
    assert_eq!(tok.vocab_size(), 49152);
    let config = config_from_gguf(&metadata).unwrap();
    assert_eq!(config.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(config.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(!config.add_bos_token);
    assert!(config.chat_template.is_some());

    let saved = tempfile::tempdir().unwrap();
    tok.save_hf(saved.path(), &config).unwrap();

    let text = wiki_prefix(&fx);
    let got = tok.encode(&text).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/gguf_tokens.py"
    );
    let out = Command::new(&py)
        .arg(script)
        .arg(&gguf)
        .arg(fx.join("data/wikitext2/wiki.test.raw"))
        .arg(PREFIX_CHARS.to_string())
        .arg("--saved")
        .arg(saved.path())
        .arg("--digits-split")
        .arg("--strings")
        .args(STRINGS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Json = serde_json::from_slice(&out.stdout).unwrap();

    // The model's own tokenizer (SmolLM2's tokenizer.json) splits off every
    // numeric character before the GPT-2 regex, as llama.cpp's "smollm" pre-type
    // does; ours must equal it everywhere.
    if let Some(d) = difference(&got, &ids(&reference["digits_text"])) {
        panic!("WikiText prefix against SmolLM2's own pre-tokenizer: {d}");
    }
    for (s, want) in STRINGS.iter().zip(ids_list(&reference["digits_strings"])) {
        assert_eq!(tok.encode(s).unwrap(), want, "{s:?}");
    }
    // transformers' GGUF loader builds a plain GPT2Tokenizer without that split. No
    // SmolLM2 token joins an ASCII digit to anything, so the two agree wherever the
    // numbers are ASCII digits (the whole prefix; in all of wiki.test.raw they part
    // once, on "4 ½"). Where they do not, transformers deviates from the model.
    if let Some(d) = difference(&got, &ids(&reference["text"])) {
        panic!("WikiText prefix against transformers: {d}");
    }
    for (s, theirs) in STRINGS.iter().zip(ids_list(&reference["strings"])) {
        let ours = tok.encode(s).unwrap();
        if s.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
            if ours != theirs {
                eprintln!(
                    "transformers deviates from SmolLM2's tokenizer on {s:?}: {theirs:?}, \
                     the model's is {ours:?}"
                );
            }
        } else {
            assert_eq!(ours, theirs, "{s:?}");
        }
    }
    // transformers loads the saved directory as the same tokenizer.
    if let Some(d) = difference(&got, &ids(&reference["saved_text"])) {
        panic!("saved tokenizer: {d}");
    }
    let c = &reference["saved_config"];
    assert_eq!(c["bos_token"], "<|im_start|>");
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert_eq!(c["unk_token"], "<|endoftext|>");
    assert_eq!(c["pad_token"], "<|im_end|>");
    // No BOS: SmolLM2's GGUF says add_bos_token = false.
    assert_eq!(ids(&c["hi_with_special_tokens"]), tok.encode("Hi").unwrap());
}

/// llama.cpp's `tokenizer.ggml.*` metadata for the byte-level BPE vocabulary and
/// merges of `tokenizer` (a `tokenizer.json`), with pre-tokenizer name `pre`
/// and no BOS added.
fn byte_level_bpe_as_gguf(tokenizer: &Json, pre: &str) -> HashMap<String, Value> {
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (s, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = s.clone();
    }
    let merges: Vec<Value> = tokenizer["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Value::String(match m {
                Json::String(s) => s.clone(),
                pair => format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                ),
            })
        })
        .collect();
    let special: Vec<u64> = tokenizer["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let s = |x: &str| Value::String(x.to_owned());
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), s("gpt2"));
    m.insert("tokenizer.ggml.pre".into(), s(pre));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    m.insert("tokenizer.ggml.merges".into(), Value::Array(merges));
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            (0..tokens.len() as u64)
                .map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 }))
                .collect(),
        ),
    );
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    m
}

/// The pre-tokenizers llama.cpp names `gpt2`, `smollm` and `llama-bpe`, as
/// GPT-2's, SmolLM2's and Llama-3's `tokenizer.json` state them (copied from
/// those files, independently of the source); Llama-3's BPE also ignores
/// merges.
fn reference_pre_tokenizers() -> Vec<(&'static str, Json, bool)> {
    let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let smollm = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
    ]});
    let llama3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex":
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]});
    vec![
        ("gpt2", gpt2, false),
        ("smollm", smollm, false),
        ("llama-bpe", llama3, true),
    ]
}

/// A GGUF byte-level BPE tokenizer with each supported pre-tokenizer gives the
/// ids of the Hugging Face tokenizer (the `tokenizers` library reading a
/// `tokenizer.json`) with the same vocabulary, merges and that model family's
/// pre-tokenizer, on the WikiText prefix and the tricky strings; an unknown
/// pre-tokenizer is an error naming it. The vocabulary is llama-tiny's (GPT-2
/// style), so this runs without the real models.
#[test]
fn byte_level_pre_tokenizers_match_their_tokenizer_json() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    let path = fx.join("models/llama-tiny/tokenizer.json");
    let base: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let text = wiki_prefix(&fx);
    for (pre, pre_json, ignore_merges) in reference_pre_tokenizers() {
        let mut json = base.clone();
        json["pre_tokenizer"] = pre_json;
        json["model"]["ignore_merges"] = ignore_merges.into();
        json["post_processor"] = Json::Null;
        let reference: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        let encode = |s: &str| reference.encode(s, false).unwrap().get_ids().to_vec();
        let ours = from_gguf(&byte_level_bpe_as_gguf(&base, pre)).unwrap();
        if let Some(d) = difference(&ours.encode(&text).unwrap(), &encode(&text)) {
            panic!("pre-tokenizer {pre}, WikiText prefix: {d}");
        }
        for s in STRINGS {
            assert_eq!(ours.encode(s).unwrap(), encode(s), "{pre}: {s:?}");
        }
    }
    // The three really differ on these strings (else the test shows nothing).
    let ids: Vec<Vec<u32>> = ["gpt2", "smollm", "llama-bpe"]
        .iter()
        .map(|pre| {
            let tok = from_gguf(&byte_level_bpe_as_gguf(&base, pre)).unwrap();
            STRINGS
                .iter()
                .flat_map(|s| tok.encode(s).unwrap())
                .collect()
        })
        .collect();
    assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2]);

    let err = from_gguf(&byte_level_bpe_as_gguf(&base, "qwen2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"qwen2\"") && err.contains("smollm, llama-bpe"),
        "{err}"
    );
}
