//! Dataset names, splits and where their text is found, and the token streams and
//! calibration windows cut from them exactly as the reference SparseGPT scripts do.
//!
//! A dataset is either *named* (`wikitext2`, `ptb`, `c4`, each with a split) or a
//! local *file*. The two differ on purpose:
//!
//! - A named dataset reproduces the reference's `datautils.py`: the Hugging Face rows
//!   are joined the way the reference joins them, the text is tokenized with the
//!   tokenizer's defaults — so the stream starts with one BOS — and C4 is handled
//!   as documents. Its files are found in `$SPARSELAB_DATA`, then in the Hugging
//!   Face cache, then downloaded (see [`resolve`]).
//! - A local file is the text as is, tokenized without special tokens. `.jsonl`,
//!   `.json.gz` and `.parquet` files hold documents (field or column `text`), and a
//!   file is always used as *one stream*: its documents joined by `" "`. Document-wise
//!   C4 sampling belongs to the named `c4` dataset; point it at local shards by
//!   placing them in `$SPARSELAB_DATA/c4/`.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use hf_hub::RepoType;

use crate::hub::{self, HubOptions, RepoSpec};

use super::pyrandom::PyRandom;
use super::tokenizer::TextTokenizer;

/// The reference evaluates C4 on the first 1100 validation documents …
const C4_EVAL_DOCUMENTS: usize = 1100;
/// … truncated to 256 windows of `seqlen` tokens.
const C4_EVAL_WINDOWS: usize = 256;

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split (calibration data).
    Train,
    /// The validation split (`validation` on the hub).
    Valid,
    /// The test split.
    Test,
}

impl Split {
    /// Every split, in the order error messages list them.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The short name used in dataset specs (`train`, `valid`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    /// The name the Hugging Face datasets give the split.
    fn hub_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "validation",
            Split::Test => "test",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "train" => Some(Split::Train),
            "valid" | "validation" => Some(Split::Valid),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A benchmark dataset the reference scripts know by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NamedDataset {
    /// WikiText-2 (raw, v1).
    Wikitext2,
    /// Penn Treebank, Mikolov's text-only version.
    Ptb,
    /// C4 (English), one shard per split as the reference uses.
    C4,
}

impl NamedDataset {
    /// Every named dataset.
    pub const ALL: [NamedDataset; 3] =
        [NamedDataset::Wikitext2, NamedDataset::Ptb, NamedDataset::C4];

    /// The name used in dataset specs.
    pub fn name(self) -> &'static str {
        match self {
            NamedDataset::Wikitext2 => "wikitext2",
            NamedDataset::Ptb => "ptb",
            NamedDataset::C4 => "c4",
        }
    }

    /// The splits this dataset has. C4 has no public test split: the reference
    /// evaluates C4 on its validation shard.
    pub fn splits(self) -> &'static [Split] {
        match self {
            NamedDataset::C4 => &[Split::Train, Split::Valid],
            _ => &Split::ALL,
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for NamedDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What text to read: a named benchmark split or a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetSpec {
    /// A named dataset, read and joined as the reference does.
    Named {
        /// Which dataset.
        name: NamedDataset,
        /// Which split.
        split: Split,
    },
    /// A local file, used as is (no BOS).
    File(PathBuf),
}

impl DatasetSpec {
    /// Parses `name[:split]` (`wikitext2`, `wikitext2:test`, `ptb:valid`, `c4`,
    /// `c4:train`) or a file path.
    ///
    /// A string containing `/` or `.`, or naming an existing file, is a path. Without
    /// a split, `default_split` is used — except that C4, having no test split, then
    /// takes its validation split, which is what the reference evaluates on; an
    /// explicit `c4:test` is an error.
    pub fn parse(s: &str, default_split: Split) -> Result<Self> {
        let s = s.trim();
        if s.contains('/') || s.contains('.') || Path::new(s).is_file() {
            return Ok(DatasetSpec::File(PathBuf::from(s)));
        }
        let lower = s.to_ascii_lowercase();
        let (name, split) = match lower.split_once(':') {
            Some((name, split)) => (name, Some(split)),
            None => (lower.as_str(), None),
        };
        let Some(dataset) = NamedDataset::from_name(name) else {
            bail!("unknown dataset `{s}`: {}", valid_specs());
        };
        let split = match split {
            None if dataset.splits().contains(&default_split) => default_split,
            None => Split::Valid,
            Some(split) => match Split::from_name(split) {
                Some(sp) if dataset.splits().contains(&sp) => sp,
                _ => return Err(no_such_split(dataset, split)),
            },
        };
        Ok(DatasetSpec::Named {
            name: dataset,
            split,
        })
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Named { name, split } => write!(f, "{name}:{split}"),
            DatasetSpec::File(path) => write!(f, "{}", path.display()),
        }
    }
}

fn split_list(dataset: NamedDataset) -> String {
    let names: Vec<&str> = dataset.splits().iter().map(|s| s.name()).collect();
    names.join(", ")
}

fn no_such_split(dataset: NamedDataset, split: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "dataset `{dataset}` has no split `{split}`: valid splits are {}",
        split_list(dataset)
    )
}

fn valid_specs() -> String {
    let names: Vec<String> = NamedDataset::ALL
        .iter()
        .map(|d| format!("{d} (splits: {})", split_list(*d)))
        .collect();
    format!(
        "valid names are {}, written `name` or `name:split`; anything else must be a path \
         to a .txt, .raw, .jsonl, .json, .json.gz or .parquet file",
        names.join(", ")
    )
}

/// Where named datasets are looked for. [`DataPaths::from_env`] reads the
/// environment; tests and embedders can fill the fields directly instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPaths {
    /// A directory laid out as `wikitext2/wiki.{train,valid,test}.raw`,
    /// `ptb/ptb.{train,valid,test}.txt` and `c4/*.json[l][.gz]` (`$SPARSELAB_DATA`).
    pub data_dir: Option<PathBuf>,
    /// The Hugging Face hub cache (the folder holding `datasets--owner--name`).
    pub hf_cache: Option<PathBuf>,
    /// Never download; only local files and the cache are used (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// The hub endpoint for downloads (`HF_ENDPOINT`); `None` is huggingface.co.
    pub endpoint: Option<String>,
}

impl DataPaths {
    /// From the environment: `SPARSELAB_DATA`, and the hub cache, offline mode and
    /// endpoint as [`HubOptions::from_env`] reads them.
    pub fn from_env() -> Self {
        let hub = HubOptions::from_env();
        DataPaths {
            data_dir: std::env::var_os("SPARSELAB_DATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            hf_cache: Some(hub.cache_dir),
            offline: hub.offline,
            endpoint: hub.endpoint,
        }
    }

    fn hub(&self, cache_dir: &Path) -> HubOptions {
        HubOptions {
            cache_dir: cache_dir.to_path_buf(),
            offline: self.offline,
            endpoint: self.endpoint.clone(),
        }
    }
}

/// A dataset's text before tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corpus {
    /// One text, tokenized in a single call.
    Stream(String),
    /// Separate documents (C4): calibration samples documents one at a time.
    Documents(Vec<String>),
}

/// Reads a dataset's text: a local file as one stream, a named dataset's rows
/// joined as the reference joins them (WikiText-2 test/valid rows with `"\n\n"`,
/// train rows with `" "`; PTB sentences with `" "`), C4 as documents.
pub fn load_corpus(spec: &DatasetSpec, paths: &DataPaths) -> Result<Corpus> {
    let (name, split) = match spec {
        DatasetSpec::File(path) => return read_local_file(path).map(Corpus::Stream),
        DatasetSpec::Named { name, split } => (*name, *split),
    };
    let files = resolve(name, split, paths)?;
    let mut rows = Vec::new();
    for file in &files {
        rows.extend(match name {
            NamedDataset::Wikitext2 => wikitext_rows(file)?,
            NamedDataset::Ptb => ptb_rows(file)?,
            NamedDataset::C4 => json_texts(file)?,
        });
    }
    Ok(match (name, split) {
        (NamedDataset::C4, _) => Corpus::Documents(rows),
        (NamedDataset::Wikitext2, Split::Test | Split::Valid) => Corpus::Stream(rows.join("\n\n")),
        _ => Corpus::Stream(rows.join(" ")),
    })
}

/// Tokens for perplexity with the paths from the environment; see [`eval_tokens_with`].
pub fn eval_tokens(
    spec: &DatasetSpec,
    tok: &TextTokenizer,
    bos: Option<u32>,
    seqlen: usize,
) -> Result<Vec<u32>> {
    eval_tokens_with(spec, &DataPaths::from_env(), tok, bos, seqlen)
}

/// Tokens for perplexity: the whole text tokenized in one call. Named datasets get
/// one leading `bos` (the reference calls the tokenizer with its defaults); a local
/// file gets none. C4 is its first 1100 documents joined by `" "` (fewer if the
/// shard has fewer, as Python's slice would), truncated to `256 * seqlen` tokens.
///
/// Fails if the text holds fewer than `seqlen` tokens (not one evaluation window).
pub fn eval_tokens_with(
    spec: &DatasetSpec,
    paths: &DataPaths,
    tok: &TextTokenizer,
    bos: Option<u32>,
    seqlen: usize,
) -> Result<Vec<u32>> {
    ensure!(seqlen > 0, "seqlen must be positive");
    let bos = named_bos(spec, bos);
    let tokens = match load_corpus(spec, paths)? {
        Corpus::Stream(text) => tokenize(tok, &text, bos)?,
        Corpus::Documents(docs) => {
            let n = docs.len().min(C4_EVAL_DOCUMENTS);
            let mut tokens = tokenize(tok, &docs[..n].join(" "), bos)?;
            tokens.truncate(C4_EVAL_WINDOWS * seqlen);
            tokens
        }
    };
    ensure!(
        tokens.len() >= seqlen,
        "dataset {spec} has {} tokens, fewer than one evaluation window of seqlen {seqlen}",
        tokens.len()
    );
    Ok(tokens)
}

/// Calibration windows with the paths from the environment; see
/// [`calibration_windows_with`].
pub fn calibration_windows(
    spec: &DatasetSpec,
    tok: &TextTokenizer,
    bos: Option<u32>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    calibration_windows_with(
        spec,
        &DataPaths::from_env(),
        tok,
        bos,
        nsamples,
        seqlen,
        seed,
    )
}

/// `nsamples` calibration windows of `seqlen` tokens, exactly as the reference
/// sampler draws them.
///
/// A stream (WikiText-2, PTB, any local file) is tokenized whole — with one leading
/// `bos` for a named dataset — and the windows start at [`window_starts`]. C4 follows
/// the reference `get_c4`: `random.seed(seed)`, then per sample
/// `random.randint(0, ndocs - 1)` until a document whose tokenized length (with BOS)
/// exceeds `seqlen`, then `random.randint(0, len - seqlen - 1)` for the window in it.
pub fn calibration_windows_with(
    spec: &DatasetSpec,
    paths: &DataPaths,
    tok: &TextTokenizer,
    bos: Option<u32>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    ensure!(seqlen > 0, "seqlen must be positive");
    let bos = named_bos(spec, bos);
    match load_corpus(spec, paths)? {
        Corpus::Stream(text) => {
            let tokens = tokenize(tok, &text, bos)?;
            let n = tokens.len();
            let starts = window_starts(n, nsamples, seqlen, seed).with_context(|| {
                format!(
                    "dataset {spec} has {n} tokens: too short for {nsamples} windows of {seqlen}"
                )
            })?;
            Ok(starts
                .into_iter()
                .map(|s| tokens[s..s + seqlen].to_vec())
                .collect())
        }
        Corpus::Documents(docs) => document_windows(spec, &docs, tok, bos, nsamples, seqlen, seed),
    }
}

/// The reference sampler's window starts in a stream of `ntokens` tokens:
/// `random.seed(seed)`, then `random.randint(0, ntokens - seqlen - 1)` per sample.
///
/// Fails unless `ntokens > seqlen` (Python's `randint` would raise on the empty range).
pub fn window_starts(
    ntokens: usize,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    ensure!(
        ntokens > seqlen,
        "{ntokens} tokens are too few for windows of {seqlen} tokens (at least {} needed)",
        seqlen + 1
    );
    let last = i64::try_from(ntokens - seqlen - 1).context("token count out of range")?;
    let mut rng = PyRandom::seed(seed);
    Ok((0..nsamples)
        .map(|_| rng.randint(0, last) as usize)
        .collect())
}

/// The reference `get_c4` document sampler.
fn document_windows(
    spec: &DatasetSpec,
    docs: &[String],
    tok: &TextTokenizer,
    bos: Option<u32>,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    ensure!(!docs.is_empty(), "dataset {spec} has no documents");
    let last_doc = i64::try_from(docs.len() - 1).context("document count out of range")?;
    let mut rng = PyRandom::seed(seed);
    // The reference loops forever when no document is long enough; remembering the
    // short ones lets us stop with an error once every document has been seen short,
    // without tokenizing the whole shard up front. Skipping a known-short document
    // still consumes its `randint`, so the draws stay those of the reference.
    let mut short = HashSet::new();
    let mut windows = Vec::with_capacity(nsamples);
    for _ in 0..nsamples {
        let ids = loop {
            let i = rng.randint(0, last_doc) as usize;
            if short.contains(&i) {
                continue;
            }
            let ids = tokenize(tok, &docs[i], bos)?;
            if ids.len() > seqlen {
                break ids;
            }
            short.insert(i);
            ensure!(
                short.len() < docs.len(),
                "dataset {spec}: none of its {} documents is longer than seqlen {seqlen} \
                 tokens, so no calibration window fits",
                docs.len()
            );
        };
        let start = rng.randint(0, (ids.len() - seqlen - 1) as i64) as usize;
        windows.push(ids[start..start + seqlen].to_vec());
    }
    Ok(windows)
}

/// Local files are tokenized as is: the BOS applies to named datasets only.
fn named_bos(spec: &DatasetSpec, bos: Option<u32>) -> Option<u32> {
    match spec {
        DatasetSpec::Named { .. } => bos,
        DatasetSpec::File(_) => None,
    }
}

fn tokenize(tok: &TextTokenizer, text: &str, bos: Option<u32>) -> Result<Vec<u32>> {
    let ids = tok.encode(text)?;
    let Some(bos) = bos else {
        return Ok(ids);
    };
    let mut out = Vec::with_capacity(ids.len() + 1);
    out.push(bos);
    out.extend(ids);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Resolution: $SPARSELAB_DATA, then the hub cache, then a download.

/// A file of a hub dataset repository at a revision.
struct HubFile {
    repo: &'static str,
    revision: &'static str,
    path: String,
}

/// The hub files that hold a split, in the order they are tried.
fn hub_files(name: NamedDataset, split: Split) -> Vec<HubFile> {
    let hub = split.hub_name();
    match name {
        NamedDataset::Wikitext2 => vec![HubFile {
            repo: "Salesforce/wikitext",
            revision: "main",
            path: format!("wikitext-2-raw-v1/{hub}-00000-of-00001.parquet"),
        }],
        // `ptb_text_only` is a script dataset; its parquet export lives on the
        // hub's `refs/convert/parquet` branch. A parquet conversion on `main` would
        // follow the usual `<config>/<split>-00000-of-00001.parquet` naming.
        NamedDataset::Ptb => vec![
            HubFile {
                repo: "ptb-text-only/ptb_text_only",
                revision: "refs/convert/parquet",
                path: format!("penn_treebank/{hub}/0000.parquet"),
            },
            HubFile {
                repo: "ptb-text-only/ptb_text_only",
                revision: "main",
                path: format!("penn_treebank/{hub}-00000-of-00001.parquet"),
            },
        ],
        NamedDataset::C4 => vec![HubFile {
            repo: "allenai/c4",
            revision: "main",
            path: match split {
                Split::Train => "en/c4-train.00000-of-01024.json.gz".to_owned(),
                _ => "en/c4-validation.00000-of-00008.json.gz".to_owned(),
            },
        }],
    }
}

/// The files that hold a named dataset's split, found in this order:
/// 1. `paths.data_dir` (`wikitext2/wiki.<split>.raw`, `ptb/ptb.<split>.txt`, or
///    every `c4/*.json[l][.gz]` whose name contains the split — `train`, or
///    `valid`/`validation` — in name order);
/// 2. the hub cache (`Salesforce/wikitext`, `ptb-text-only/ptb_text_only`,
///    `allenai/c4`, the shards the reference uses);
/// 3. a download into that cache, unless `paths.offline`.
///
/// When nothing is found the error lists every place looked at.
pub fn resolve(name: NamedDataset, split: Split, paths: &DataPaths) -> Result<Vec<PathBuf>> {
    if !name.splits().contains(&split) {
        return Err(no_such_split(name, split.name()));
    }
    let mut looked = Vec::new();
    match &paths.data_dir {
        Some(dir) => {
            let found = local_files(name, split, dir);
            if !found.is_empty() {
                return Ok(found);
            }
            looked.push(format!(
                "SPARSELAB_DATA: {} (missing)",
                local_path(name, split, dir).display()
            ));
        }
        None => looked.push("SPARSELAB_DATA is not set".to_owned()),
    }
    let candidates = hub_files(name, split);
    let Some(cache_dir) = &paths.hf_cache else {
        looked
            .push("no Hugging Face cache directory (HF_HOME, HF_HUB_CACHE and HOME unset)".into());
        bail!(not_found(name, split, &looked));
    };
    for f in &candidates {
        let repo = hub_repo(f);
        if let Some(path) = hub::cached_file(cache_dir, RepoType::Dataset, &repo, &f.path) {
            return Ok(vec![path]);
        }
        looked.push(format!(
            "Hugging Face cache: {}/datasets--{} at revision {}: {} (not cached)",
            cache_dir.display(),
            f.repo.replace('/', "--"),
            f.revision,
            f.path
        ));
    }
    if paths.offline {
        looked.push("download skipped: offline (HF_HUB_OFFLINE)".into());
        bail!(not_found(name, split, &looked));
    }
    let opts = paths.hub(cache_dir);
    for f in &candidates {
        match hub::download_file(&opts, RepoType::Dataset, &hub_repo(f), &f.path) {
            Ok(path) => return Ok(vec![path]),
            Err(e) => looked.push(format!("download: {e:#}")),
        }
    }
    bail!(not_found(name, split, &looked))
}

fn hub_repo(f: &HubFile) -> RepoSpec {
    RepoSpec {
        id: f.repo.to_string(),
        revision: f.revision.to_string(),
    }
}

fn not_found(name: NamedDataset, split: Split, looked: &[String]) -> String {
    format!(
        "dataset {name}:{split} not found; looked in:\n  - {}",
        looked.join("\n  - ")
    )
}

/// Where a split lives in a `$SPARSELAB_DATA` directory; for C4 a pattern.
fn local_path(name: NamedDataset, split: Split, dir: &Path) -> PathBuf {
    match name {
        NamedDataset::Wikitext2 => dir.join(format!("wikitext2/wiki.{split}.raw")),
        NamedDataset::Ptb => dir.join(format!("ptb/ptb.{split}.txt")),
        NamedDataset::C4 => dir.join(format!("c4/*{split}*.json[l][.gz]")),
    }
}

/// The files of a split in a `$SPARSELAB_DATA` directory (empty if none).
fn local_files(name: NamedDataset, split: Split, dir: &Path) -> Vec<PathBuf> {
    if name == NamedDataset::C4 {
        return local_c4_files(split, &dir.join("c4"));
    }
    let path = local_path(name, split, dir);
    if path.is_file() {
        vec![path]
    } else {
        Vec::new()
    }
}

fn local_c4_files(split: Split, dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // "valid" also matches the hub's "validation".
    let keyword = split.name();
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = file_name_lower(p);
            p.is_file()
                && name.contains(keyword)
                && matches!(format_of(&name), Some(Format::JsonLines))
        })
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// File formats.

/// How a file's text is stored, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Plain UTF-8 text (`.txt`, `.raw`, optionally `.gz`).
    Text,
    /// JSON lines with a `text` field (`.jsonl`, `.json`, optionally `.gz`), as the
    /// C4 shards are stored.
    JsonLines,
    /// A parquet table with a string column.
    Parquet,
}

fn file_name_lower(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn format_of(lower_name: &str) -> Option<Format> {
    if lower_name.ends_with(".parquet") {
        return Some(Format::Parquet);
    }
    let base = lower_name.strip_suffix(".gz").unwrap_or(lower_name);
    if base.ends_with(".txt") || base.ends_with(".raw") {
        Some(Format::Text)
    } else if base.ends_with(".jsonl") || base.ends_with(".json") {
        Some(Format::JsonLines)
    } else {
        None
    }
}

/// A local file as one stream: text as is, documents joined by `" "`.
fn read_local_file(path: &Path) -> Result<String> {
    ensure!(path.is_file(), "no such dataset file: {}", path.display());
    match format_of(&file_name_lower(path)) {
        Some(Format::Text) => read_text(path),
        Some(Format::JsonLines) => Ok(json_texts(path)?.join(" ")),
        Some(Format::Parquet) => Ok(parquet_strings(path, "text")?.join(" ")),
        None => bail!(
            "{}: unsupported dataset file; expected .txt, .raw, .jsonl, .json, .json.gz, \
             .jsonl.gz or .parquet",
            path.display()
        ),
    }
}

/// Opens a file, decompressing it on the fly when its name ends in `.gz`.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(if file_name_lower(path).ends_with(".gz") {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

fn read_text(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    open(path)?
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// The `text` field of every line of a JSON-lines file (blank lines skipped).
fn json_texts(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in BufReader::new(open(path)?).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: invalid JSON", at()))?;
        match value.get("text") {
            Some(serde_json::Value::String(text)) => out.push(text.clone()),
            _ => bail!("{}: no string field `text`", at()),
        }
    }
    Ok(out)
}

/// WikiText-2 rows. From the raw file they are defined as the hub dataset defines
/// them: one row per line with its trailing `"\n"` kept, and `""` for a line that is
/// only whitespace. A parquet file holds them in its `text` column.
fn wikitext_rows(path: &Path) -> Result<Vec<String>> {
    if format_of(&file_name_lower(path)) == Some(Format::Parquet) {
        return parquet_strings(path, "text");
    }
    let text = read_text(path)?;
    Ok(text
        .split_inclusive('\n')
        .map(|line| {
            if line.trim().is_empty() {
                String::new()
            } else {
                line.to_owned()
            }
        })
        .collect())
}

/// PTB sentences: the stripped lines of the text file, as the hub dataset's
/// builder yields them; a parquet export holds them in its `sentence` column.
fn ptb_rows(path: &Path) -> Result<Vec<String>> {
    if format_of(&file_name_lower(path)) == Some(Format::Parquet) {
        return parquet_strings(path, "sentence");
    }
    Ok(read_text(path)?
        .lines()
        .map(|line| line.trim().to_owned())
        .collect())
}

/// Every value of the top-level string column `column` of a parquet file.
fn parquet_strings(path: &Path, column: &str) -> Result<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::types::Type;

    let at = || path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot open {}", at()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{}: not a parquet file", at()))?;
    let metadata = reader.metadata().file_metadata();
    let schema = metadata.schema();
    let Some(field) = schema.get_fields().iter().find(|f| f.name() == column) else {
        let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        bail!(
            "{}: no column `{column}` (columns: {})",
            at(),
            names.join(", ")
        );
    };
    // Reading only this column skips decoding the others (C4-like tables carry
    // urls and timestamps too).
    let projection = Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .with_context(at)?;
    let mut out = Vec::with_capacity(usize::try_from(metadata.num_rows()).unwrap_or(0));
    let rows = reader
        .get_row_iter(Some(projection))
        .with_context(|| format!("{}: cannot read column `{column}`", at()))?;
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{}: cannot read row {i}", at()))?;
        match row.get_column_iter().next() {
            Some((_, Field::Str(s))) => out.push(s.clone()),
            other => bail!(
                "{}: row {i} of column `{column}` is not a string: {:?}",
                at(),
                other.map(|(_, f)| f)
            ),
        }
    }
    Ok(out)
}
