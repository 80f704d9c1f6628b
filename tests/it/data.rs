//! Datasets: spec parsing, resolution (data dir, hub cache), the reference joins and
//! the reference-compatible window sampler.
//!
//! Expected token counts and windows marked "Python" were computed with the Python
//! `tokenizers` 0.23.3 package (`add_special_tokens=True`, i.e. the tokenizer's
//! defaults, as the reference calls it) and CPython 3.11's `random`, following the
//! reference `datautils.py` step by step.

use crate::common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sparselab::data::datasets::{
    calibration_windows_with, eval_tokens_with, load_corpus, resolve, window_starts, Corpus,
    DataPaths, NamedDataset,
};
use sparselab::data::{DatasetSpec, Split, TextTokenizer};

/// OPT's BOS `</s>`, which the opt-tiny post-processor prepends by default.
const BOS: u32 = 2;

fn opt_tiny(fx: &Path) -> TextTokenizer {
    TextTokenizer::from_dir(&fx.join("models/opt-tiny")).expect("opt-tiny tokenizer")
}

/// Only the data directory: never the machine's own hub cache, never the network.
fn data_dir_only(fx: &Path) -> DataPaths {
    DataPaths {
        data_dir: Some(fx.join("data")),
        offline: true,
        ..DataPaths::default()
    }
}

/// Only the given hub cache, offline.
fn hub_only(cache: PathBuf) -> DataPaths {
    DataPaths {
        hf_cache: Some(cache),
        offline: true,
        ..DataPaths::default()
    }
}

fn named(name: NamedDataset, split: Split) -> DatasetSpec {
    DatasetSpec::Named { name, split }
}

fn stream(c: Corpus) -> String {
    match c {
        Corpus::Stream(s) => s,
        Corpus::Documents(_) => panic!("expected one stream"),
    }
}

/// WikiText-2 rows as the hub dataset defines them, written independently of the
/// library: each line with its "\n", "" for whitespace-only lines.
fn raw_rows(raw: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.find('\n') {
        let line = &rest[..=end];
        rows.push(if line.trim().is_empty() {
            String::new()
        } else {
            line.to_string()
        });
        rest = &rest[end + 1..];
    }
    assert!(rest.is_empty(), "the raw file ends with a newline");
    rows
}

fn write_parquet(path: &Path, column: &str, values: &[&str]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = parse_message_type(&format!(
        "message schema {{ required binary {column} (UTF8); }}"
    ))
    .unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer =
        SerializedFileWriter::new(File::create(path).unwrap(), Arc::new(schema), props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut col = group.next_column().unwrap().expect("one column");
    let data: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&data, None, None)
        .unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

fn write_gz(path: &Path, text: &str) {
    let mut gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), Default::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

fn json_lines(docs: &[&str]) -> String {
    docs.iter()
        .map(|d| format!("{}\n", serde_json::json!({ "text": d, "url": "u" })))
        .collect()
}

// ---------------------------------------------------------------------------
// Spec parsing (no fixtures needed).

#[test]
fn parse_names_splits_and_paths() {
    let p = |s| DatasetSpec::parse(s, Split::Test).unwrap();
    assert_eq!(p("wikitext2"), named(NamedDataset::Wikitext2, Split::Test));
    assert_eq!(p("ptb:valid"), named(NamedDataset::Ptb, Split::Valid));
    assert_eq!(p("ptb:validation"), named(NamedDataset::Ptb, Split::Valid));
    assert_eq!(
        p("WikiText2:TRAIN"),
        named(NamedDataset::Wikitext2, Split::Train)
    );
    assert_eq!(p("c4:train"), named(NamedDataset::C4, Split::Train));
    // C4 has no test split: the default goes to validation, where the reference evaluates.
    assert_eq!(p("c4"), named(NamedDataset::C4, Split::Valid));
    assert_eq!(
        DatasetSpec::parse("c4", Split::Train).unwrap(),
        named(NamedDataset::C4, Split::Train)
    );
    assert_eq!(p("my.txt"), DatasetSpec::File("my.txt".into()));
    assert_eq!(
        p("dir/wikitext2"),
        DatasetSpec::File("dir/wikitext2".into())
    );
    for s in ["wikitext2:test", "ptb:valid", "c4:train", "some/file.jsonl"] {
        assert_eq!(p(s).to_string(), s);
    }
}

#[test]
fn parse_rejects_unknown_names_and_splits() {
    let err = DatasetSpec::parse("wikitext3", Split::Test)
        .unwrap_err()
        .to_string();
    for want in [
        "wikitext3",
        "wikitext2",
        "ptb",
        "c4",
        "train",
        "valid",
        "test",
    ] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
    let err = DatasetSpec::parse("c4:test", Split::Test)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train, valid"), "{err}");
    assert!(DatasetSpec::parse("ptb:dev", Split::Test).is_err());
    assert!(DatasetSpec::parse("", Split::Test).is_err());
}

#[test]
fn window_starts_need_more_tokens_than_seqlen() {
    assert!(window_starts(512, 1, 512, 0).is_err());
    assert_eq!(window_starts(513, 3, 512, 0).unwrap(), vec![0, 0, 0]);
}

// ---------------------------------------------------------------------------
// Resolution without fixtures.

#[test]
fn not_found_lists_every_place_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("hub"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let paths = DataPaths {
        data_dir: Some(data.clone()),
        hf_cache: Some(cache.clone()),
        offline: true,
        endpoint: None,
    };
    let err = resolve(NamedDataset::Wikitext2, Split::Test, &paths)
        .unwrap_err()
        .to_string();
    let wants = [
        data.join("wikitext2/wiki.test.raw").display().to_string(),
        cache.display().to_string(),
        "datasets--Salesforce--wikitext".into(),
        "wikitext-2-raw-v1/test-00000-of-00001.parquet".into(),
        "offline".into(),
    ];
    for want in &wants {
        assert!(err.contains(want.as_str()), "`{want}` missing from: {err}");
    }

    let err = resolve(NamedDataset::Ptb, Split::Train, &hub_only(cache.clone()))
        .unwrap_err()
        .to_string();
    for want in [
        "SPARSELAB_DATA is not set",
        "datasets--ptb-text-only--ptb_text_only",
        "refs/convert/parquet",
        "penn_treebank/train/0000.parquet",
    ] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }

    let err = resolve(NamedDataset::C4, Split::Valid, &paths)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c4-validation.00000-of-00008.json.gz"),
        "{err}"
    );
    assert!(err.contains("c4/*valid*.json[l][.gz]"), "{err}");
}

#[test]
fn hub_cache_laid_out_by_hand_resolves() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");

    // allenai/c4 on main, the validation shard the reference evaluates on.
    let c4 = hub.join("datasets--allenai--c4");
    std::fs::create_dir_all(c4.join("refs")).unwrap();
    std::fs::write(c4.join("refs/main"), "0123abcd").unwrap();
    let shard = c4.join("snapshots/0123abcd/en/c4-validation.00000-of-00008.json.gz");
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    let docs = ["First document.", "Second one,\nwith a newline.", "Third."];
    write_gz(&shard, &json_lines(&docs));

    // ptb_text_only's parquet export on the `refs/convert/parquet` branch, whose
    // column is `sentence`.
    let ptb = hub.join("datasets--ptb-text-only--ptb_text_only");
    std::fs::create_dir_all(ptb.join("refs/refs/convert")).unwrap();
    std::fs::write(ptb.join("refs/refs/convert/parquet"), "feedbeef").unwrap();
    let ptb_file = ptb.join("snapshots/feedbeef/penn_treebank/test/0000.parquet");
    std::fs::create_dir_all(ptb_file.parent().unwrap()).unwrap();
    let sentences = ["no it was n't black monday", "but while the new york"];
    write_parquet(&ptb_file, "sentence", &sentences);

    let paths = hub_only(hub);
    assert_eq!(
        resolve(NamedDataset::C4, Split::Valid, &paths).unwrap(),
        vec![shard]
    );
    assert_eq!(
        load_corpus(&named(NamedDataset::C4, Split::Valid), &paths).unwrap(),
        Corpus::Documents(docs.iter().map(|d| d.to_string()).collect())
    );
    assert_eq!(
        resolve(NamedDataset::Ptb, Split::Test, &paths).unwrap(),
        vec![ptb_file]
    );
    assert_eq!(
        stream(load_corpus(&named(NamedDataset::Ptb, Split::Test), &paths).unwrap()),
        sentences.join(" ")
    );
    // The training shard is not there, and offline nothing is downloaded.
    assert!(resolve(NamedDataset::C4, Split::Train, &paths).is_err());
}

#[test]
fn local_files_load_as_one_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let docs = ["Alpha beta.", "Gamma\ndelta."];
    let joined = docs.join(" ");

    let jsonl = dir.join("docs.jsonl");
    std::fs::write(&jsonl, json_lines(&docs) + "\n").unwrap();
    let gz = dir.join("docs.json.gz");
    write_gz(&gz, &json_lines(&docs));
    let parquet = dir.join("docs.parquet");
    write_parquet(&parquet, "text", &docs);
    let txt = dir.join("text.txt");
    let text = " = Title = \n\n Some text .\n";
    std::fs::write(&txt, text).unwrap();

    let load = |p: &Path| {
        stream(load_corpus(&DatasetSpec::File(p.into()), &DataPaths::default()).unwrap())
    };
    assert_eq!(load(&jsonl), joined);
    assert_eq!(load(&gz), joined);
    assert_eq!(load(&parquet), joined);
    assert_eq!(load(&txt), text);

    let err = load_corpus(&DatasetSpec::File(dir.join("x.csv")), &DataPaths::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.csv"), "{err}");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let err = load_corpus(&DatasetSpec::File(bad), &DataPaths::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.jsonl:2"), "{err}");
}

// ---------------------------------------------------------------------------
// Against the fixtures.

#[test]
fn window_starts_match_reference_seed0() {
    let Some(fx) = common::fixtures() else { return };
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.join("models/calibration_windows_seed0.json")).unwrap(),
    )
    .unwrap();
    let field = |k: &str| reference[k].as_u64().unwrap() as usize;
    let (ntokens, seqlen, nsamples) = (field("ntokens"), field("seqlen"), field("nsamples"));
    let seed = reference["seed"].as_u64().unwrap();
    let starts: Vec<usize> = reference["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(reference["add_special_tokens"], false);

    let tok =
        TextTokenizer::from_tokenizer_json(&fx.join(reference["tokenizer"].as_str().unwrap()))
            .unwrap();
    let spec = DatasetSpec::File(fx.join(reference["text_file"].as_str().unwrap()));
    let paths = DataPaths::default();
    // A local file is tokenized as is: the BOS is not added even when offered.
    let tokens = eval_tokens_with(&spec, &paths, &tok, Some(BOS), seqlen).unwrap();
    assert_eq!(tokens.len(), ntokens);

    assert_eq!(
        window_starts(ntokens, nsamples, seqlen, seed).unwrap(),
        starts
    );
    let windows =
        calibration_windows_with(&spec, &paths, &tok, Some(BOS), nsamples, seqlen, seed).unwrap();
    assert_eq!(windows.len(), nsamples);
    for (w, &s) in windows.iter().zip(&starts) {
        assert_eq!(w[..], tokens[s..s + seqlen]);
    }
}

#[test]
fn wikitext2_test_from_hub_parquet_equals_raw_file() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    let spec = named(NamedDataset::Wikitext2, Split::Test);
    let hub = hub_only(fx.join("hf-cache/hub"));
    let raw = data_dir_only(&fx);

    let from_hub = resolve(NamedDataset::Wikitext2, Split::Test, &hub).unwrap();
    assert!(from_hub[0].ends_with("wikitext-2-raw-v1/test-00000-of-00001.parquet"));
    assert!(from_hub[0].starts_with(fx.join("hf-cache/hub")));

    let raw_text = std::fs::read_to_string(fx.join("data/wikitext2/wiki.test.raw")).unwrap();
    let rows = raw_rows(&raw_text);
    assert_eq!(rows.len(), 4358);
    let reference_text = rows.join("\n\n");
    assert_eq!(stream(load_corpus(&spec, &hub).unwrap()), reference_text);
    assert_eq!(stream(load_corpus(&spec, &raw).unwrap()), reference_text);

    let a = eval_tokens_with(&spec, &hub, &tok, Some(BOS), 512).unwrap();
    let b = eval_tokens_with(&spec, &raw, &tok, Some(BOS), 512).unwrap();
    assert!(a == b, "token streams differ");
    // Python: 385543 tokens, starting [2, 202, 202, 326, 3733]; exactly one BOS.
    assert_eq!(a.len(), 385543);
    assert_eq!(a[..5], [BOS, 202, 202, 326, 3733]);
}

#[test]
fn wikitext2_valid_from_hub_parquet_equals_raw_file() {
    let Some(fx) = common::fixtures() else { return };
    let spec = named(NamedDataset::Wikitext2, Split::Valid);
    let hub = load_corpus(&spec, &hub_only(fx.join("hf-cache/hub"))).unwrap();
    let raw = load_corpus(&spec, &data_dir_only(&fx)).unwrap();
    assert!(hub == raw, "validation texts differ");
}

#[test]
fn named_calibration_windows_match_python_reference() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    let paths = data_dir_only(&fx);
    let spec = named(NamedDataset::Wikitext2, Split::Test);
    let windows = calibration_windows_with(&spec, &paths, &tok, Some(BOS), 4, 512, 0).unwrap();
    // Python: random.seed(0); randint(0, 385543 - 512 - 1) four times over the
    // "\n\n"-joined rows tokenized with the BOS: (start, first ids, sum of the window).
    let want: [(usize, [u32; 4], u64); 4] = [
        (201979, [628, 419, 92, 2646], 494687),
        (220500, [920, 288, 596, 1393], 408479),
        (21225, [2748, 2983, 584, 3379], 456501),
        (135746, [1205, 921, 329, 1565], 530653),
    ];
    for (w, (start, head, sum)) in windows.iter().zip(want) {
        assert_eq!(w.len(), 512);
        assert_eq!(w[..4], head, "window at {start}");
        assert_eq!(w.iter().map(|&t| u64::from(t)).sum::<u64>(), sum);
    }
}

#[test]
fn ptb_test_joins_stripped_sentences_with_bos() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    let spec = named(NamedDataset::Ptb, Split::Test);
    let tokens = eval_tokens_with(&spec, &data_dir_only(&fx), &tok, Some(BOS), 512).unwrap();
    // Python: " ".join(line.strip() for line in ptb.test.txt) → 112671 tokens.
    assert_eq!(tokens.len(), 112671);
    assert_eq!(tokens[..5], [BOS, 81, 82, 360, 332]);
}

#[test]
fn c4_train_documents_sampled_as_get_c4() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    // $SPARSELAB_DATA/c4/ holds the first 1000 documents of the training shard.
    let spec = named(NamedDataset::C4, Split::Train);
    let windows =
        calibration_windows_with(&spec, &data_dir_only(&fx), &tok, Some(BOS), 6, 512, 0).unwrap();
    // Python (get_c4 over those 1000 documents): (document, start, first ids, sum).
    let want: [(usize, usize, [u32; 4], u64); 6] = [
        (394, 97, [351, 383, 879, 260], 399761),
        (911, 430, [281, 577, 2624, 29], 427983),
        (41, 8, [87, 263, 1132, 307], 352822),
        (523, 31, [3808, 295, 335, 328], 361268),
        (414, 310, [2835, 636, 692, 88], 496529),
        (929, 447, [1673, 262, 3403, 4], 495319),
    ];
    assert_eq!(windows.len(), want.len());
    for (w, (doc, start, head, sum)) in windows.iter().zip(want) {
        assert_eq!(w.len(), 512);
        assert_eq!(w[..4], head, "document {doc}, start {start}");
        assert_eq!(w.iter().map(|&t| u64::from(t)).sum::<u64>(), sum);
    }
}

#[cfg(unix)]
#[test]
fn c4_eval_joins_documents_and_truncates() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    let tmp = tempfile::tempdir().unwrap();
    // A data dir whose validation shard is the fixture's sample (a link, not a copy).
    let c4 = tmp.path().join("c4");
    std::fs::create_dir_all(&c4).unwrap();
    let sample = fx.join("data/c4/c4-train.00000-of-01024.first1000.jsonl");
    let link = c4.join("c4-validation.sample.jsonl");
    if std::os::unix::fs::symlink(&sample, &link).is_err() {
        eprintln!("skipped: cannot create a symlink in {}", c4.display());
        return;
    }
    let paths = DataPaths {
        data_dir: Some(tmp.path().into()),
        offline: true,
        ..DataPaths::default()
    };
    let spec = named(NamedDataset::C4, Split::Valid);
    let tokens = eval_tokens_with(&spec, &paths, &tok, Some(BOS), 64).unwrap();
    // Python: " ".join(all 1000 documents) with the BOS, cut to 256 * 64 tokens.
    assert_eq!(tokens.len(), 256 * 64);
    assert_eq!(tokens[0], BOS);
    assert_eq!(tokens.iter().map(|&t| u64::from(t)).sum::<u64>(), 13110879);
}

#[test]
fn too_short_datasets_are_errors_naming_what_was_asked() {
    let Some(fx) = common::fixtures() else { return };
    let tok = opt_tiny(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let txt = tmp.path().join("tiny.txt");
    std::fs::write(&txt, "Just a few words here.").unwrap();
    let n = tok.encode("Just a few words here.").unwrap().len();
    let spec = DatasetSpec::File(txt);
    let paths = DataPaths::default();

    let err = format!(
        "{:#}",
        eval_tokens_with(&spec, &paths, &tok, None, 512).unwrap_err()
    );
    for want in ["tiny.txt", &format!("{n} tokens"), "512"] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
    let err = format!(
        "{:#}",
        calibration_windows_with(&spec, &paths, &tok, None, 128, 512, 0).unwrap_err()
    );
    for want in ["tiny.txt", &format!("{n} tokens"), "128 windows", "512"] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }

    // C4 documents, none longer than seqlen: an error, not the reference's endless loop.
    let c4 = tmp.path().join("c4");
    std::fs::create_dir_all(&c4).unwrap();
    std::fs::write(
        c4.join("c4-train.tiny.jsonl"),
        json_lines(&["short", "also short"]),
    )
    .unwrap();
    let paths = DataPaths {
        data_dir: Some(tmp.path().into()),
        offline: true,
        ..DataPaths::default()
    };
    let err = calibration_windows_with(
        &named(NamedDataset::C4, Split::Train),
        &paths,
        &tok,
        Some(BOS),
        4,
        512,
        0,
    )
    .unwrap_err()
    .to_string();
    for want in ["c4:train", "2 documents", "512"] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
}
