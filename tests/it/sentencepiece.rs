//! The pure-Rust SentencePiece encoder against ids from the SentencePiece library
//! (fixtures in `tokenizers/llama-sp`, see its README).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use sparselab::data::sentencepiece::SentencePiece;

/// Characters (code points) of wiki.test.raw that `ids_sentencepiece` covers.
const PREFIX_CHARS: usize = 100_000;

fn load(dir: &Path) -> (SentencePiece, Value) {
    let sp_dir = dir.join("tokenizers/llama-sp");
    let sp = SentencePiece::from_file(&sp_dir.join("tokenizer.model")).unwrap();
    let json = std::fs::read_to_string(sp_dir.join("expected_ids.json")).unwrap();
    (sp, serde_json::from_str(&json).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an id")).unwrap())
        .collect()
}

fn wiki_test(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/wikitext2/wiki.test.raw")).unwrap()
}

/// First index where two id sequences differ, for a readable failure.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn model_metadata() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let (sp, _) = load(&dir);
    assert_eq!(sp.vocab_size(), 4096);
    assert_eq!(sp.unk_id(), 0);
    assert_eq!(sp.bos_id(), Some(1));
    assert_eq!(sp.eos_id(), Some(2));
    assert_eq!(sp.pad_id(), None);
    assert_eq!(sp.id_to_piece(13), Some("<0x0A>"));
}

#[test]
fn wikitext_prefix_matches_sentencepiece() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let (sp, expected) = load(&dir);
    let want = ids(&expected["ids_sentencepiece"]);
    let text: String = wiki_test(&dir).chars().take(PREFIX_CHARS).collect();
    let start = Instant::now();
    let got = sp.encode(&text);
    eprintln!(
        "encoded {PREFIX_CHARS} chars ({} bytes) into {} ids in {:?}",
        text.len(),
        got.len(),
        start.elapsed()
    );
    if let Some(i) = first_difference(&got, &want) {
        let lo = i.saturating_sub(5);
        panic!(
            "ids differ at {i} (got {} ids, want {}): got {:?}, want {:?}",
            got.len(),
            want.len(),
            &got[lo..(i + 5).min(got.len())],
            &want[lo..(i + 5).min(want.len())]
        );
    }
}

#[test]
fn samples_match_sentencepiece() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let (sp, expected) = load(&dir);
    let samples = expected["samples"].as_object().expect("samples");
    assert!(!samples.is_empty());
    for (name, text) in samples {
        let text = text.as_str().expect("a sample string");
        let want = ids(&expected["samples_expected"][name]["sentencepiece"]);
        assert_eq!(sp.encode(text), want, "sample {name}: {text:?}");
        assert_eq!(sp.decode(&want).unwrap(), text, "decoding sample {name}");
    }
}

#[test]
fn whole_test_file_round_trips() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let (sp, _) = load(&dir);
    let text = wiki_test(&dir);
    let start = Instant::now();
    let got = sp.encode(&text);
    eprintln!(
        "encoded wiki.test.raw ({} bytes) into {} ids in {:?}",
        text.len(),
        got.len(),
        start.elapsed()
    );
    // Byte fallback and identity normalization make encoding lossless.
    assert!(
        sp.decode(&got).unwrap() == text,
        "decode(encode(text)) != text"
    );
}

fn error_of(path: &Path) -> String {
    match SentencePiece::from_file(path) {
        Ok(_) => panic!("{} loaded as a SentencePiece model", path.display()),
        // Plain Display: the message alone must name the file and say what is wrong.
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_give_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let named = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let missing = tmp.path().join("missing.model");
    let e = error_of(&missing);
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let json = named(
        "tokenizer.json",
        br#"{"version": "1.0", "model": {"type": "BPE"}}"#,
    );
    let e = error_of(&json);
    assert!(e.contains(&json.display().to_string()), "{e}");
    assert!(e.contains("not a SentencePiece model"), "{e}");

    // An empty file is a valid, empty protobuf.
    let empty = named("empty.model", b"");
    let e = error_of(&empty);
    assert!(
        e.contains(&empty.display().to_string()) && e.contains("no pieces"),
        "{e}"
    );

    // ModelProto { pieces: [{ piece: "<unk>", type: UNKNOWN }], trainer_spec: { model_type: UNIGRAM } }
    let unigram = named(
        "unigram.model",
        &[
            0x0A, 0x09, 0x0A, 0x05, b'<', b'u', b'n', b'k', b'>', 0x18, 0x02, //
            0x12, 0x02, 0x18, 0x01,
        ],
    );
    let e = error_of(&unigram);
    assert!(
        e.contains(&unigram.display().to_string()) && e.contains("unigram"),
        "{e}"
    );
}
