//! Zero-shot tasks scored by log-likelihood, as lm-eval-harness scores them,
//! from local files in its JSONL layouts.
//!
//! A document is a context and one or more continuations; each request's
//! log-likelihood is Σ log p(continuation tokens | context) with the pair
//! tokenized as lm-eval's `_encode_pair` does (the context's trailing spaces
//! move to the continuation; the continuation's tokens are those of context +
//! continuation after the context's own; no BOS), and the input truncated on
//! the left to the model's `max_position_embeddings`.
//!
//! * Multiple choice (PIQA, ARC, HellaSwag, WinoGrande): `acc` is 1 when the
//!   gold choice has the highest log-likelihood, `acc_norm` when it has the
//!   highest log-likelihood per character of the choice (not for WinoGrande,
//!   whose choices are contexts).
//! * Last word (LAMBADA): `acc` is 1 when every token of the last word is the
//!   model's greedy choice; `ppl` is exp(−mean log-likelihood of the word).
//!
//! Layouts (one JSON object a line, as the lm-eval-harness datasets hold them):
//!
//! | task | fields | context | continuations |
//! |---|---|---|---|
//! | `lambada` | `text` | text up to its last space | `" " + last word` |
//! | `piqa` | `goal`, `sol1`, `sol2`, `label` | `"Question: {goal}\nAnswer:"` | `" " + sol1`, `" " + sol2` |
//! | `arc_easy`, `arc_challenge` | `question`, `choices.text`, `choices.label`, `answerKey` | `"Question: {question}\nAnswer:"` | `" " + text` each |
//! | `hellaswag` | `activity_label`, `ctx_a`, `ctx_b`, `endings`, `label` | `"{activity_label}: {ctx_a} {Ctx_b}"`, cleaned | `" " + ending`, cleaned |
//! | `winogrande` | `sentence`, `option1`, `option2`, `answer` | the sentence up to `_` with the option | `" " + the rest after `_`` |
//!
//! HellaSwag's cleaning is lm-eval's `preprocess`: strip, `" [title]"` → `". "`,
//! `[…]` removed, double spaces made single; `ctx_b` is capitalized as Python's
//! `str.capitalize` does. `wikitext2_lastword` is a LAMBADA-style task built
//! here from WikiText-2 test paragraphs ([`wikitext_last_word_docs`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::stats::Moments;
use super::{argmax, forward_batches, host_f32, log_sum_exp, Batch};
use crate::data::tokenizer::TextTokenizer;
use crate::model::Model;

/// The task layouts this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// LAMBADA: last word of `text`.
    Lambada,
    /// PIQA: two solutions to a goal.
    Piqa,
    /// ARC (easy or challenge): a question with labelled choices.
    Arc,
    /// HellaSwag: four endings of an activity description.
    HellaSwag,
    /// WinoGrande: two fillers of a blank, scored on the rest of the sentence.
    WinoGrande,
    /// The LAMBADA-style task from WikiText-2 test paragraphs.
    WikiLastWord,
}

/// The task names [`TaskSpec::parse`] accepts, with their layouts.
pub const TASK_NAMES: &[(&str, TaskKind)] = &[
    ("lambada", TaskKind::Lambada),
    ("lambada_openai", TaskKind::Lambada),
    ("lambada_standard", TaskKind::Lambada),
    ("piqa", TaskKind::Piqa),
    ("arc_easy", TaskKind::Arc),
    ("arc_challenge", TaskKind::Arc),
    ("hellaswag", TaskKind::HellaSwag),
    ("winogrande", TaskKind::WinoGrande),
    ("wikitext2_lastword", TaskKind::WikiLastWord),
];

/// A task to run: its name, layout and file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The name it was given by.
    pub name: String,
    /// Its layout.
    pub kind: TaskKind,
    /// The JSONL file (for `wikitext2_lastword`: the raw WikiText-2 test text;
    /// `None` finds the named dataset `wikitext2:test`).
    pub file: Option<PathBuf>,
}

impl TaskSpec {
    /// `NAME=FILE` (`wikitext2_lastword` also alone). NAME is one of
    /// [`TASK_NAMES`].
    pub fn parse(s: &str) -> Result<Self> {
        let (name, file) = match s.split_once('=') {
            Some((n, f)) => (n.trim(), Some(PathBuf::from(f.trim()))),
            None => (s.trim(), None),
        };
        Self::new(name, file)
    }

    /// A task by name and file.
    pub fn new(name: &str, file: Option<PathBuf>) -> Result<Self> {
        let names: Vec<&str> = TASK_NAMES.iter().map(|(n, _)| *n).collect();
        let Some(&(_, kind)) = TASK_NAMES.iter().find(|(n, _)| *n == name) else {
            bail!(
                "unknown task `{name}`: the tasks are {} (give them as NAME=FILE.jsonl)",
                names.join(", ")
            );
        };
        if file.is_none() && kind != TaskKind::WikiLastWord {
            bail!(
                "task `{name}` needs its file: give it as {name}=FILE.jsonl (the lm-eval-harness \
                 JSONL layout; nothing is downloaded)"
            );
        }
        Ok(Self {
            name: name.to_string(),
            kind,
            file,
        })
    }
}

impl TaskSpec {
    /// `NAME=FILE`, or `NAME` alone where the task needs no file.
    pub fn text(&self) -> String {
        match &self.file {
            Some(f) => format!("{}={}", self.name, f.display()),
            None => self.name.clone(),
        }
    }
}

/// The tasks of an evaluation as options give them: in a script a map from
/// task name to its file (`()` where none is needed) or an array of
/// `"name=file"`; on the command line `--task NAME=FILE`, repeated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskList(pub Vec<TaskSpec>);

// As an array of `NAME=FILE`, as the command line writes each.
impl Serialize for TaskList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(TaskSpec::text))
    }
}

impl<'de> serde::Deserialize<'de> for TaskList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| TaskSpec::parse(t))
            .collect::<Result<Vec<_>>>()
            .map(TaskList)
            .map_err(serde::de::Error::custom)
    }
}

impl crate::options::OptionValue for TaskList {
    const LABEL: &'static str =
        "a map from task name to its JSONL file, or an array of \"name=file\"";
    const VALUE_NAME: &'static str = "NAME=FILE";
    fn from_dynamic(v: &rhai::Dynamic) -> std::result::Result<Self, crate::options::ValueError> {
        use crate::options::ValueError;
        let invalid = |e: anyhow::Error| ValueError::Invalid(format!("has {e}"));
        let mut out = Vec::new();
        if let Some(map) = v.read_lock::<rhai::Map>() {
            for (name, file) in map.iter() {
                let file = if file.is_unit() {
                    None
                } else if file.is_string() {
                    Some(PathBuf::from(file.to_string()))
                } else {
                    return Err(ValueError::Invalid(format!(
                        "has the file of task `{name}` as `{file}`, not a string"
                    )));
                };
                out.push(TaskSpec::new(name, file).map_err(invalid)?);
            }
        } else if let Some(list) = v.read_lock::<rhai::Array>() {
            for t in list.iter() {
                out.push(TaskSpec::parse(&t.to_string()).map_err(invalid)?);
            }
        } else {
            return Err(ValueError::WrongType);
        }
        Ok(Self(out))
    }
    fn parse_text(s: &str) -> std::result::Result<Self, String> {
        TaskSpec::parse(s)
            .map(|t| Self(vec![t]))
            .map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        format!(
            "{:?}",
            self.0.iter().map(TaskSpec::text).collect::<Vec<_>>()
        )
    }
}

/// Options of a task run.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Score only the first `limit` documents of each task.
    pub limit: Option<usize>,
    /// Requests run together through each layer.
    pub batch: usize,
    /// No progress output.
    pub quiet: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            limit: None,
            batch: 8,
            quiet: false,
        }
    }
}

/// One task's scores.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// The task's name.
    pub task: String,
    /// Documents scored.
    pub docs: usize,
    /// Accuracy (fraction).
    pub acc: f64,
    /// Its standard error (sample standard deviation / √n, as lm-eval).
    pub acc_se: f64,
    /// Length-normalized accuracy (multiple choice but WinoGrande).
    pub acc_norm: Option<f64>,
    /// Its standard error.
    pub acc_norm_se: Option<f64>,
    /// Perplexity of the last words (last-word tasks).
    pub ppl: Option<f64>,
    /// Per document, per continuation: the log-likelihood.
    pub loglikelihoods: Vec<Vec<f64>>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// A document: requests (context, continuation), the gold request, and the
/// characters of each choice (for `acc_norm`).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// (context, continuation) per choice.
    pub requests: Vec<(String, String)>,
    /// Index of the right choice.
    pub gold: usize,
    /// Characters (Unicode scalar values) of each choice, `None` when
    /// `acc_norm` does not apply.
    pub choice_chars: Option<Vec<usize>>,
}

/// A JSON field or an error naming the file, line, field and layout.
fn field<'a>(v: &'a Value, key: &str, at: &str, layout: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| {
        anyhow::anyhow!(
            "{at}: no field `{key}` (the {layout} layout has {})",
            layout_fields(layout)
        )
    })
}

fn layout_fields(layout: &str) -> &'static str {
    match layout {
        "lambada" => "`text`",
        "piqa" => "`goal`, `sol1`, `sol2`, `label`",
        "arc" => "`question`, `choices: {text, label}`, `answerKey`",
        "hellaswag" => "`activity_label`, `ctx_a`, `ctx_b`, `endings`, `label`",
        _ => "`sentence`, `option1`, `option2`, `answer`",
    }
}

fn string(v: &Value, key: &str, at: &str, layout: &str) -> Result<String> {
    match field(v, key, at, layout)? {
        Value::String(s) => Ok(s.clone()),
        other => bail!("{at}: field `{key}` should be a string, it is {other}"),
    }
}

/// An integer label given as a number or a numeric string.
fn index(v: &Value, key: &str, at: &str, layout: &str) -> Result<usize> {
    let f = field(v, key, at, layout)?;
    f.as_u64()
        .map(|i| i as usize)
        .or_else(|| f.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("{at}: field `{key}` should be an integer label, it is {f}"))
}

fn chars(s: &[String]) -> Option<Vec<usize>> {
    Some(s.iter().map(|c| c.chars().count()).collect())
}

/// lm-eval's HellaSwag `preprocess`.
fn hellaswag_clean(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper case, the rest lower.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(|x| x.to_lowercase()))
            .collect(),
        None => String::new(),
    }
}

/// A LAMBADA document from a passage: context up to its last space, the last
/// word as the continuation.
fn last_word_doc(text: &str) -> Option<Doc> {
    let (ctx, word) = text.rsplit_once(' ')?;
    Some(Doc {
        requests: vec![(ctx.to_string(), format!(" {word}"))],
        gold: 0,
        choice_chars: None,
    })
}

/// One document of `kind` from a JSON line.
fn parse_doc(kind: TaskKind, v: &Value, at: &str) -> Result<Doc> {
    let mc = |ctx: String, choices: Vec<String>, gold: usize| -> Result<Doc> {
        ensure!(
            gold < choices.len(),
            "{at}: the answer is choice {gold}, there are {} choices",
            choices.len()
        );
        Ok(Doc {
            requests: choices
                .iter()
                .map(|c| (ctx.clone(), format!(" {c}")))
                .collect(),
            gold,
            choice_chars: chars(&choices),
        })
    };
    match kind {
        TaskKind::Lambada | TaskKind::WikiLastWord => {
            let text = string(v, "text", at, "lambada")?;
            last_word_doc(&text).ok_or_else(|| {
                anyhow::anyhow!("{at}: `text` has no space to split its last word at")
            })
        }
        TaskKind::Piqa => {
            let l = "piqa";
            let ctx = format!("Question: {}\nAnswer:", string(v, "goal", at, l)?);
            mc(
                ctx,
                vec![string(v, "sol1", at, l)?, string(v, "sol2", at, l)?],
                index(v, "label", at, l)?,
            )
        }
        TaskKind::Arc => {
            let l = "arc";
            let ctx = format!("Question: {}\nAnswer:", string(v, "question", at, l)?);
            let choices = field(v, "choices", at, l)?;
            let list = |k: &str| -> Result<Vec<String>> {
                field(choices, k, at, l)?
                    .as_array()
                    .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
                    .ok_or_else(|| {
                        anyhow::anyhow!("{at}: `choices.{k}` should be an array of strings")
                    })
            };
            let (texts, labels) = (list("text")?, list("label")?);
            let key = string(v, "answerKey", at, l)?;
            let gold = labels.iter().position(|x| *x == key).ok_or_else(|| {
                anyhow::anyhow!("{at}: answerKey {key:?} is not one of the labels {labels:?}")
            })?;
            mc(ctx, texts, gold)
        }
        TaskKind::HellaSwag => {
            let l = "hellaswag";
            let ctx = format!(
                "{} {}",
                string(v, "ctx_a", at, l)?,
                capitalize(&string(v, "ctx_b", at, l)?)
            );
            let query = hellaswag_clean(&format!("{}: {ctx}", string(v, "activity_label", at, l)?));
            let endings = field(v, "endings", at, l)?
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(hellaswag_clean)).collect())
                .ok_or_else(|| anyhow::anyhow!("{at}: `endings` should be an array of strings"))?;
            mc(query, endings, index(v, "label", at, l)?)
        }
        TaskKind::WinoGrande => {
            let l = "winogrande";
            let sentence = string(v, "sentence", at, l)?;
            let blank = sentence
                .find('_')
                .ok_or_else(|| anyhow::anyhow!("{at}: `sentence` has no `_` blank"))?;
            let rest = format!(" {}", sentence[blank + 1..].trim());
            let options = [string(v, "option1", at, l)?, string(v, "option2", at, l)?];
            let answer = index(v, "answer", at, l)?;
            ensure!(
                answer == 1 || answer == 2,
                "{at}: `answer` should be \"1\" or \"2\", it is {answer}"
            );
            Ok(Doc {
                requests: options
                    .iter()
                    .map(|o| (format!("{}{o}", &sentence[..blank]), rest.clone()))
                    .collect(),
                gold: answer - 1,
                choice_chars: None,
            })
        }
    }
}

/// The documents of a task file (at most `limit`).
pub fn load_docs(spec: &TaskSpec, limit: Option<usize>) -> Result<Vec<Doc>> {
    let limit = limit.unwrap_or(usize::MAX);
    if spec.kind == TaskKind::WikiLastWord {
        let text = match &spec.file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read task {} file {}", spec.name, f.display()))?,
            None => {
                use crate::data::datasets::{load_corpus, Corpus, DataPaths, DatasetSpec, Split};
                let spec = DatasetSpec::parse("wikitext2", Split::Test)?;
                match load_corpus(&spec, &DataPaths::from_env())? {
                    Corpus::Stream(s) => s,
                    Corpus::Documents(d) => d.join("\n"),
                }
            }
        };
        let mut docs = wikitext_last_word_docs(&text);
        docs.truncate(limit);
        ensure!(
            !docs.is_empty(),
            "task {}: the text has no paragraph to build a last-word question from",
            spec.name
        );
        return Ok(docs);
    }
    let file = spec.file.as_deref().expect("TaskSpec::new requires a file");
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read task {} file {}", spec.name, file.display()))?;
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if docs.len() >= limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", file.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| {
            format!("{at}: not a JSON object (task files are JSONL: one object a line)")
        })?;
        docs.push(parse_doc(spec.kind, &v, &at)?);
    }
    ensure!(
        !docs.is_empty(),
        "task {} file {} holds no documents",
        spec.name,
        file.display()
    );
    Ok(docs)
}

/// LAMBADA-style documents from WikiText-2 raw text: for every paragraph line
/// (not a `= heading =`), the words up to the last sentence end (`.`) within
/// its first 80 words and after its 15th, without the full stop; the last of
/// them, when it is a word of letters only (two or more), is the target.
pub fn wikitext_last_word_docs(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('=') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let end = (15..words.len().min(80)).rev().find(|&i| words[i] == ".");
        let Some(end) = end else { continue };
        let last = words[end - 1];
        if last.chars().count() < 2 || !last.chars().all(char::is_alphabetic) {
            continue;
        }
        if let Some(doc) = last_word_doc(&words[..end].join(" ")) {
            docs.push(doc);
        }
    }
    docs
}

/// lm-eval's `_encode_pair`: the context's trailing whitespace moves to the
/// continuation; the continuation's tokens are those of the whole after the
/// context's own.
pub fn encode_pair(
    tok: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let ctx = context.trim_end();
    ensure!(
        !ctx.is_empty(),
        "a request has an empty context; lm-eval would start it with the end-of-text token, \
         which this scorer does not: give every document a context"
    );
    let cont = format!("{}{continuation}", &context[ctx.len()..]);
    let whole = tok.encode(&format!("{ctx}{cont}"))?;
    let ctx_enc = tok.encode(ctx)?;
    ensure!(
        whole.len() > ctx_enc.len() && whole[..ctx_enc.len()] == ctx_enc[..],
        "the tokens of context {ctx:?} are not a prefix of those of context + continuation \
         {cont:?}; the continuation would be scored on a different split"
    );
    let cont_enc = whole[ctx_enc.len()..].to_vec();
    Ok((ctx_enc, cont_enc))
}

/// Log-likelihood and greediness of every (context, continuation) request.
pub fn score_requests(
    model: &Model,
    requests: &[(String, String)],
    opts: &TaskOptions,
    label: &str,
) -> Result<Vec<(f64, bool)>> {
    let tok = model.tokenizer()?;
    let max_len = model.config.max_position_embeddings();
    // (input ids, continuation tokens) per request.
    let mut inputs = Vec::with_capacity(requests.len());
    for (ctx, cont) in requests {
        let (c, k) = encode_pair(tok, ctx, cont)?;
        let mut all = [c, k.clone()].concat();
        let keep = all.len().min(max_len + 1);
        all.drain(..all.len() - keep);
        all.pop();
        inputs.push((all, k));
    }
    // Longest first, as lm-eval orders them; padded on the right (causal
    // attention: padding after a sequence does not change its logits).
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].0.len()));
    let groups: Vec<&[usize]> = order.chunks(opts.batch.max(1)).collect();
    let padded: Vec<Vec<u32>> = groups
        .iter()
        .map(|g| {
            let t = inputs[g[0]].0.len();
            g.iter()
                .flat_map(|&i| {
                    let ids = &inputs[i].0;
                    ids.iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, t - ids.len()))
                })
                .collect()
        })
        .collect();
    let batches: Vec<Batch> = padded
        .iter()
        .zip(&groups)
        .map(|(ids, g)| Batch { ids, n: g.len() })
        .collect();
    let mut out = vec![(0f64, true); requests.len()];
    forward_batches(model, &batches, label, opts.quiet, |b, h| {
        for (row, &i) in groups[b].iter().enumerate() {
            let (ids, cont) = &inputs[i];
            let k = cont.len().min(ids.len());
            let logits = host_f32(
                &model
                    .head(&h.narrow(0, row, 1)?.narrow(1, ids.len() - k, k)?)?
                    .squeeze(0)?,
            )?;
            let vocab = logits.dims2()?.1;
            let (ll, greedy) = crate::compute::kernels::with_cpu_f32(&logits, |l| {
                l.chunks(vocab).zip(&cont[cont.len() - k..]).fold(
                    (0f64, true),
                    |(ll, g), (r, &t)| {
                        (
                            ll + r[t as usize] as f64 - log_sum_exp(r),
                            g && argmax(r) == t as usize,
                        )
                    },
                )
            })?;
            out[i] = (ll, greedy);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Scores one task's documents.
pub fn score_task(
    model: &Model,
    name: &str,
    docs: &[Doc],
    opts: &TaskOptions,
) -> Result<TaskResult> {
    let start = Instant::now();
    let requests: Vec<(String, String)> = docs.iter().flat_map(|d| d.requests.clone()).collect();
    let scores = score_requests(model, &requests, opts, name)?;
    let (mut acc, mut acc_norm, mut ll_sum) = (Moments::default(), Moments::default(), 0f64);
    let mut lls = Vec::with_capacity(docs.len());
    let mut at = 0;
    let last_word = docs.iter().all(|d| d.requests.len() == 1);
    for d in docs {
        let s = &scores[at..at + d.requests.len()];
        at += d.requests.len();
        let ll: Vec<f64> = s.iter().map(|x| x.0).collect();
        if last_word {
            acc.add(if s[0].1 { 1.0 } else { 0.0 });
            ll_sum += ll[0];
        } else {
            let best = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
            acc.add(if best(&ll) == d.gold { 1.0 } else { 0.0 });
            if let Some(c) = &d.choice_chars {
                let norm: Vec<f64> = ll.iter().zip(c).map(|(l, &n)| l / n as f64).collect();
                acc_norm.add(if best(&norm) == d.gold { 1.0 } else { 0.0 });
            }
        }
        lls.push(ll);
    }
    let norm = acc_norm.n > 0;
    Ok(TaskResult {
        task: name.to_string(),
        docs: docs.len(),
        acc: acc.mean(),
        acc_se: acc.se(),
        acc_norm: norm.then(|| acc_norm.mean()),
        acc_norm_se: norm.then(|| acc_norm.se()),
        ppl: last_word.then(|| (-ll_sum / docs.len() as f64).exp()),
        loglikelihoods: lls,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Loads and scores each task in turn.
pub fn eval_tasks(
    model: &Model,
    tasks: &[TaskSpec],
    opts: &TaskOptions,
) -> Result<Vec<TaskResult>> {
    tasks
        .iter()
        .map(|t| {
            let docs = load_docs(t, opts.limit)?;
            score_task(model, &t.name, &docs, opts)
        })
        .collect()
}

impl TaskResult {
    /// One line: `acc X ± E` (and `acc_norm`, `ppl` where they apply), in percent.
    pub fn text(&self) -> String {
        use super::format_pm;
        let mut s = format!(
            "{}: acc {} %",
            self.task,
            format_pm(100.0 * self.acc, 100.0 * self.acc_se)
        );
        if let (Some(n), Some(e)) = (self.acc_norm, self.acc_norm_se) {
            s += &format!(", acc_norm {} %", format_pm(100.0 * n, 100.0 * e));
        }
        if let Some(p) = self.ppl {
            s += &format!(", ppl {p:.3}");
        }
        s += &format!(" ({} documents)", self.docs);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_build_lm_eval_requests() {
        let v: Value = serde_json::from_str(
            r#"{"activity_label":"Baking","ctx_a":"A man [step] mixes flour.","ctx_b":"THEN he","endings":["bakes [title] it.","eats  it."],"label":"1"}"#,
        )
        .unwrap();
        let d = parse_doc(TaskKind::HellaSwag, &v, "x").unwrap();
        assert_eq!(d.requests[0].0, "Baking: A man mixes flour. Then he");
        assert_eq!(d.requests[0].1, " bakes. it.");
        assert_eq!(d.requests[1].1, " eats it.");
        assert_eq!(d.gold, 1);
        let v: Value = serde_json::from_str(
            r#"{"sentence":"Sam gave Tom a gift because _ was kind.","option1":"Sam","option2":"Tom","answer":"1"}"#,
        )
        .unwrap();
        let d = parse_doc(TaskKind::WinoGrande, &v, "x").unwrap();
        assert_eq!(
            d.requests[1],
            (
                "Sam gave Tom a gift because Tom".into(),
                " was kind.".into()
            )
        );
        assert_eq!(d.gold, 0);
        let v: Value = serde_json::from_str(r#"{"text":"the cat sat on the mat"}"#).unwrap();
        let d = parse_doc(TaskKind::Lambada, &v, "x").unwrap();
        assert_eq!(d.requests[0], ("the cat sat on the".into(), " mat".into()));
        let err = parse_doc(TaskKind::Piqa, &v, "f.jsonl:3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.jsonl:3") && err.contains("`goal`"), "{err}");
    }
}
