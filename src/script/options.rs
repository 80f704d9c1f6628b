//! Option maps of the primitives: every key is checked, typed and documented.
//!
//! An operation whose options are declared ([`crate::options::declare_options!`]:
//! `prune_layer`'s [`Settings`], the evaluation functions' [`EvalOptions`], and
//! the mixed-precision functions' [`ImportanceSettings`], [`GroupOptions`],
//! [`AllocateOptions`], [`ChannelErrorSettings`], [`AllocateModelOptions`] and
//! [`OwlOptions`]) reads its map with [`Opts::parse`]; the others list their keys in
//! [`OPTION_KEYS`] and read them one by one through [`Opts`]. Either way
//! [`OPTION_KEYS`] feeds the REPL's completion and `sparselab check`'s static
//! check of map literals. An unknown key is an error that names it, suggests
//! the nearest valid key and lists all of them; a value of the wrong type names
//! the expected type. A key whose value is `()` counts as absent (so recipes
//! can pass `#{seqlen: seqlen}` with `seqlen = ()` for "default").

use rhai::{Dynamic, EvalAltResult, Map, FLOAT};

use super::vector::{err, Vector};
use crate::calibrate::CalibrateSettings;
use crate::compress::allocation::{GroupMethod, DEFAULT_TIERS};
use crate::compress::channel_error::{ChannelErrorOptions, ErrorWeight};
use crate::compress::importance::{ImportanceOptions, MiOptions};
use crate::compress::rules::Settings;
use crate::compress::{QuantizerConfig, SparsityPattern};
use crate::eval::tasks::TaskList;
use crate::eval::{PplOptions, TaskOptions};
use crate::model::{LoadSettings, SaveSettings};
use crate::options::{help_text, markdown_table, script_markdown_table, Declared};
pub use crate::options::{type_label, unknown_key_message};

type R<T> = Result<T, Box<EvalAltResult>>;

/// The option keys of each primitive that takes an options map, in
/// documentation order. Register a new primitive's keys here.
pub const OPTION_KEYS: &[(&str, &[&str])] = &[
    ("load_model", <LoadSettings as Declared>::KEYS),
    ("score_importance", <ImportanceSettings as Declared>::KEYS),
    ("group_channels", <GroupOptions as Declared>::KEYS),
    ("allocate_bits", <AllocateOptions as Declared>::KEYS),
    ("channel_errors", <ChannelErrorSettings as Declared>::KEYS),
    ("allocate_model", <AllocateModelOptions as Declared>::KEYS),
    ("owl_sparsities", <OwlOptions as Declared>::KEYS),
    ("summary", &["target_avg", "strict", "bits_requested"]),
    (
        "plot_histogram",
        &["title", "bins", "log_y", "x_label", "path", "format"],
    ),
    ("plot_bits", &["title", "path", "format"]),
    ("plot_layers", &["title", "path", "format"]),
    ("plot_compare", &["title", "path", "format"]),
    ("compare_table", &["metric", "lower_is_better"]),
    (
        "plot_xy",
        &["title", "x_label", "y_label", "label", "path", "format"],
    ),
    ("calibrate", <CalibrateSettings as Declared>::KEYS),
    ("prune_layer", <Settings as Declared>::KEYS),
    ("eval_ppl", <EvalOptions as Declared>::KEYS),
    ("eval_ppl_stats", <EvalOptions as Declared>::KEYS),
    ("kl_base", <EvalOptions as Declared>::KEYS),
    ("eval_kl", <EvalOptions as Declared>::KEYS),
    ("eval_tasks", <TaskSettings as Declared>::KEYS),
    ("save", <SaveSettings as Declared>::KEYS),
];

crate::declare_options! {
    /// The options of a perplexity or KL evaluation: `sparselab eval`'s
    /// `--seqlen`, `--nsamples`, `--batch`, `--quiet` and the options map of
    /// `eval_ppl`, `eval_ppl_stats`, `kl_base` and `eval_kl`.
    pub struct EvalOptions {
        /// Window length (default: the model's max_position_embeddings, at most
        /// 2048; with a stored KL base, the base's).
        seqlen: usize,
        /// Evaluate only the first N windows (default: all; with a stored KL
        /// base, all it holds).
        nsamples: usize,
        /// Windows run together through each layer.
        batch: usize = PplOptions::default().batch,
        /// No progress output (in a script, the default is the engine's
        /// `--quiet`).
        @short 'q' quiet: bool = false,
    }
}

impl EvalOptions {
    /// The evaluation's settings; `quiet` when the options leave it open.
    pub fn ppl_options(&self, quiet: bool) -> PplOptions {
        PplOptions {
            seqlen: self.seqlen,
            batch: self.batch(),
            max_windows: self.nsamples,
            quiet: self.quiet.unwrap_or(quiet),
        }
    }
}

crate::declare_options! {
    /// The options map of `eval_tasks(model, #{…})`. `sparselab eval` takes
    /// the tasks as `--task NAME=FILE` (repeatable) and the limit as
    /// `--task-limit N`; `--batch` and `--quiet` are the evaluation's.
    pub struct TaskSettings {
        /// The tasks (required): a map from task name to its JSONL file in
        /// lm-eval-harness layout (`#{piqa: "piqa.jsonl"}`; `()` for
        /// `wikitext2_lastword`, which needs no file), or an array of
        /// `"name=file"`. Names: lambada, piqa, arc_easy, arc_challenge,
        /// hellaswag, winogrande, wikitext2_lastword.
        tasks: TaskList,
        /// Score only the first N documents of each task (default: all).
        limit: usize,
        /// Requests run together through each layer.
        batch: usize = TaskOptions::default().batch,
        /// No progress output (in a script, the default is the engine's
        /// `--quiet`).
        @short 'q' quiet: bool = false,
    }
}

crate::declare_options! {
    /// The options map of `score_importance(layer, linear, metric, #{…})`.
    pub struct ImportanceSettings {
        /// Hessian damping of the `obs` metric, as a fraction of the mean
        /// diagonal.
        percdamp: f64 = ImportanceOptions::default().percdamp,
        /// Histogram bins of the `mi` metric's estimator.
        bins: usize = ImportanceOptions::default().mi.bins,
    }
}

impl ImportanceSettings {
    /// The scoring settings: the library's defaults with these options over them.
    pub fn importance_options(&self) -> ImportanceOptions {
        let d = ImportanceOptions::default();
        ImportanceOptions {
            percdamp: self.percdamp(),
            mi: MiOptions {
                bins: self.bins(),
                ..d.mi
            },
            ..d
        }
    }
}

/// A grouping method's script name (the declarations' defaults name the
/// library's default this way).
fn group_method_name(m: GroupMethod) -> String {
    match m {
        GroupMethod::Quantile => "quantile",
        GroupMethod::KMeans => "kmeans",
    }
    .to_string()
}

crate::declare_options! {
    /// The options map of `group_channels(scores, n_groups, #{…})`.
    pub struct GroupOptions {
        /// `"quantile"` (equal counts) or `"kmeans"` (optimal 1-D k-means by
        /// exact dynamic programming).
        method: String = group_method_name(GroupMethod::default()),
    }
}

crate::declare_options! {
    /// The options map of `allocate_bits`, for importance scores and for error
    /// curves (from `channel_errors`) alike; which options a method reads, and
    /// which do not apply to curves, the function checks.
    pub struct AllocateOptions {
        /// The widths to allocate, ascending (an integer: one tier). Scores
        /// only: error curves carry their tiers.
        tiers: Vec<u32> = DEFAULT_TIERS.to_vec(),
        /// For scores: `"quantile"` (`proportions` per tier), `"budget"`
        /// (average `target_avg`, monotone in importance, minimising
        /// Σ s_j·4^(−b_j)), `"threshold"` (`thresholds`) or `"groups"`
        /// (`n_groups` groups by `grouping`, one tier per group, meeting
        /// `target_avg`). Default: `"budget"` when `target_avg` is given, else
        /// `"quantile"`. Not for error curves.
        method: String,
        /// The average width in bits (methods budget and groups; required for
        /// error curves).
        target_avg: f64,
        /// The fraction of channels per tier, least important first (method
        /// quantile; default equal).
        proportions: Vec<f64>,
        /// Score cut points, one fewer than tiers, ascending (method
        /// threshold, required there).
        thresholds: Vec<f64>,
        /// Groups of channels (method groups; default: one per tier).
        n_groups: usize,
        /// How method groups cuts the scores: `"quantile"` or `"kmeans"`.
        grouping: String = group_method_name(GroupMethod::default()),
        /// Error curves only: one factor per channel (any importance metric's
        /// scores) multiplying its errors.
        weights: Vec<f64>,
    }
}

/// An error weight's script name (the declarations' defaults name the
/// library's default this way).
fn error_weight_name(w: ErrorWeight) -> String {
    match w {
        ErrorWeight::Obs => "obs",
        ErrorWeight::Diag => "diag",
    }
    .to_string()
}

crate::declare_options! {
    /// The options map of `channel_errors(layer, linear, #{…})`: the
    /// compression the curves predict, given as to `prune_layer`.
    pub struct ChannelErrorSettings {
        /// The widths to measure, strictly ascending, each in 1..=16 (an
        /// integer: one tier).
        tiers: Vec<u32> = ChannelErrorOptions::default().tiers,
        /// The unstructured sparsity `prune_layer` will apply (not with
        /// `prunen`/`prunem`; default dense).
        sparsity: f64,
        /// n of the n:m pattern `prune_layer` will apply (with `prunem`).
        prunen: usize,
        /// m of the n:m pattern (with `prunen`).
        prunem: usize,
        /// Symmetric quantization grid.
        sym: bool = ChannelErrorOptions::default().quantizer.sym,
        /// Quantization group size in columns (default: one group per row).
        groupsize: usize,
        /// The sweep's block width in columns, over which unstructured masks
        /// are chosen.
        blocksize: usize = ChannelErrorOptions::default().blocksize,
        /// Hessian damping, as a fraction of its mean diagonal.
        percdamp: f64 = ChannelErrorOptions::default().percdamp,
        /// `"obs"` (the loss SparseGPT's sweep books, `(w − q)²/U_jj²`) or
        /// `"diag"` (`H_jj·(w − q)²`, no compensation).
        weight: String = error_weight_name(ChannelErrorOptions::default().weight),
        /// Divide by the linear's output energy `tr(W H Wᵀ)`: relative output
        /// errors, comparable across layers.
        relative: bool = ChannelErrorOptions::default().relative,
    }
}

impl ChannelErrorSettings {
    /// The measurement's settings; an error (naming `function`) when the
    /// sparsity options contradict each other or `weight` is unknown.
    pub fn channel_error_options(&self, function: &str) -> Result<ChannelErrorOptions, String> {
        let pattern = match (self.sparsity, self.prunen, self.prunem) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(format!(
                    "{function}: give either `sparsity` or `prunen`/`prunem`, not both"
                ))
            }
            (None, Some(n), Some(m)) => SparsityPattern::NM { n, m },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(format!(
                    "{function}: an n:m pattern needs both `prunen` and `prunem`"
                ))
            }
            (Some(s), None, None) => SparsityPattern::Unstructured { sparsity: s },
            (None, None, None) => SparsityPattern::Dense,
        };
        let d = ChannelErrorOptions::default();
        Ok(ChannelErrorOptions {
            tiers: self.tiers(),
            pattern,
            groupsize: self.groupsize,
            blocksize: self.blocksize(),
            percdamp: self.percdamp(),
            weight: ErrorWeight::parse(&self.weight()).map_err(|e| format!("{function}: {e}"))?,
            relative: self.relative(),
            quantizer: QuantizerConfig {
                sym: self.sym(),
                ..d.quantizer
            },
        })
    }
}

crate::declare_options! {
    /// The options map of `allocate_model(curves, #{…})`.
    pub struct AllocateModelOptions {
        /// The average width in bits over all the linears' weights (required).
        target_avg: f64,
    }
}

crate::declare_options! {
    /// The options map of `owl_sparsities(ratios, #{…})`.
    pub struct OwlOptions {
        /// The mean sparsity over the layers (required).
        sparsity: f64,
        /// Half the span of the sparsities around the mean (OWL's λ; the
        /// default is the paper's).
        lambda: f64 = 0.08,
    }
}

/// A generated text: an option list or table.
pub type Text = fn() -> String;

/// The primitives whose options are declared, with their option table for
/// `:help` and for the documentation (`docs/options.md`, checked by a test).
pub const DECLARED: &[(&str, Text, Text)] = &[
    (
        "load_model",
        help_text::<LoadSettings>,
        markdown_table::<LoadSettings>,
    ),
    (
        "calibrate",
        help_text::<CalibrateSettings>,
        markdown_table::<CalibrateSettings>,
    ),
    (
        "save",
        help_text::<SaveSettings>,
        markdown_table::<SaveSettings>,
    ),
    (
        "prune_layer",
        help_text::<Settings>,
        markdown_table::<Settings>,
    ),
    (
        "eval_ppl",
        help_text::<EvalOptions>,
        markdown_table::<EvalOptions>,
    ),
    (
        "eval_ppl_stats",
        help_text::<EvalOptions>,
        markdown_table::<EvalOptions>,
    ),
    (
        "kl_base",
        help_text::<EvalOptions>,
        markdown_table::<EvalOptions>,
    ),
    (
        "eval_kl",
        help_text::<EvalOptions>,
        markdown_table::<EvalOptions>,
    ),
    (
        "eval_tasks",
        help_text::<TaskSettings>,
        script_markdown_table::<TaskSettings>,
    ),
    (
        "score_importance",
        help_text::<ImportanceSettings>,
        script_markdown_table::<ImportanceSettings>,
    ),
    (
        "group_channels",
        help_text::<GroupOptions>,
        script_markdown_table::<GroupOptions>,
    ),
    (
        "allocate_bits",
        help_text::<AllocateOptions>,
        script_markdown_table::<AllocateOptions>,
    ),
    (
        "channel_errors",
        help_text::<ChannelErrorSettings>,
        script_markdown_table::<ChannelErrorSettings>,
    ),
    (
        "allocate_model",
        help_text::<AllocateModelOptions>,
        script_markdown_table::<AllocateModelOptions>,
    ),
    (
        "owl_sparsities",
        help_text::<OwlOptions>,
        script_markdown_table::<OwlOptions>,
    ),
];

/// What `:help function` says about its options: the declared list (type,
/// default, meaning), else the keys; `None` when it takes no options map.
pub fn options_help(function: &str) -> Option<String> {
    if let Some((_, help, _)) = DECLARED.iter().find(|(f, ..)| *f == function) {
        return Some(help());
    }
    keys_of(function).map(|keys| format!("options: {}\n", keys.join(", ")))
}

/// The valid keys of `function`'s options map.
pub fn keys_of(function: &str) -> Option<&'static [&'static str]> {
    OPTION_KEYS
        .iter()
        .find(|(f, _)| *f == function)
        .map(|(_, k)| *k)
}

/// A checked view of one options map.
pub struct Opts {
    function: &'static str,
    map: Map,
}

impl Opts {
    /// Checks that every key of `map` is one of `function`'s keys.
    pub fn new(function: &'static str, map: Map) -> R<Self> {
        let valid = keys_of(function).unwrap_or(&[]);
        if let Some(msg) = unknown_key_message(function, valid, map.keys().map(|k| k.as_str())) {
            return err(msg);
        }
        Ok(Self { function, map })
    }

    fn value(&self, key: &str) -> Option<&Dynamic> {
        debug_assert!(
            keys_of(self.function).is_some_and(|k| k.contains(&key)),
            "{key} is not declared for {}",
            self.function
        );
        self.map.get(key).filter(|v| !v.is_unit())
    }

    fn wrong_type<T>(&self, key: &str, expected: &str, got: &Dynamic) -> R<T> {
        err(format!(
            "{}: option `{key}` must be {expected}, got {} `{got}`",
            self.function,
            type_label(got)
        ))
    }

    /// The declared options `T` of this map (see [`crate::options::from_map`]);
    /// a Vector is read as the array of its numbers.
    pub fn parse<T: Declared>(&self) -> R<T> {
        let map: Map = self
            .map
            .iter()
            .map(|(k, v)| {
                let v = match v.read_lock::<Vector>() {
                    Some(vec) => Dynamic::from_array(
                        vec.as_slice()
                            .iter()
                            .map(|&x| Dynamic::from_float(x as FLOAT))
                            .collect(),
                    ),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        crate::options::from_map(self.function, &map).or_else(err)
    }

    /// Drops `key` (a caller that has used it already).
    pub fn forget(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Whether `key` was given (and is not `()`).
    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// A number (an integer is accepted).
    pub fn f64(&self, key: &str) -> R<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match (v.as_float(), v.as_int()) {
                (Ok(f), _) => Ok(Some(f as FLOAT)),
                (_, Ok(i)) => Ok(Some(i as f64)),
                _ => self.wrong_type(key, "a number", v),
            },
        }
    }

    /// A non-negative integer.
    pub fn usize(&self, key: &str) -> R<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Ok(i) if i >= 0 => Ok(Some(i as usize)),
                Ok(i) => err(format!(
                    "{}: option `{key}` must be a non-negative integer, got {i}",
                    self.function
                )),
                Err(_) => self.wrong_type(key, "an integer", v),
            },
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> R<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match v.as_bool() {
                Ok(b) => Ok(Some(b)),
                Err(_) => self.wrong_type(key, "a boolean (true or false)", v),
            },
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> R<Option<String>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.clone().into_string().unwrap_or_default())),
            Some(v) => self.wrong_type(key, "a string", v),
        }
    }

    /// A size in bytes: an integer, or a string such as `"512M"` or `"8G"`
    /// ([`crate::runtime::memory::parse_size`]).
    pub fn size(&self, key: &str) -> R<Option<u64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match (v.as_int(), v.is_string()) {
                (Ok(i), _) if i >= 0 => Ok(Some(i as u64)),
                (_, true) => {
                    let text = v.clone().into_string().unwrap_or_default();
                    crate::runtime::memory::parse_size(&text)
                        .map(Some)
                        .or_else(|e| err(format!("{}: option `{key}`: {e}", self.function)))
                }
                _ => self.wrong_type(key, "a byte count or a size such as \"8G\"", v),
            },
        }
    }
}

/// The option tables of `docs/options.md`, by the name of their marker
/// (`<!-- options: NAME -->` … `<!-- /options -->`).
pub const DOC_TABLES: &[(&str, Text)] = &[
    ("load", markdown_table::<LoadSettings>),
    ("calibrate", markdown_table::<CalibrateSettings>),
    ("compress", markdown_table::<Settings>),
    ("save", markdown_table::<SaveSettings>),
    ("eval", markdown_table::<EvalOptions>),
    ("eval_tasks", script_markdown_table::<TaskSettings>),
    (
        "score_importance",
        script_markdown_table::<ImportanceSettings>,
    ),
    ("group_channels", script_markdown_table::<GroupOptions>),
    ("allocate_bits", script_markdown_table::<AllocateOptions>),
    (
        "channel_errors",
        script_markdown_table::<ChannelErrorSettings>,
    ),
    (
        "allocate_model",
        script_markdown_table::<AllocateModelOptions>,
    ),
    ("owl_sparsities", script_markdown_table::<OwlOptions>),
];

/// `doc` with every marked table replaced by its generated text.
pub fn regenerate_doc_tables(doc: &str) -> Result<String, String> {
    let mut out = doc.to_string();
    for (name, table) in DOC_TABLES {
        let open = format!("<!-- options: {name} -->\n");
        let close = "<!-- /options -->";
        let start = out
            .find(&open)
            .ok_or_else(|| format!("no `{}` marker", open.trim()))?
            + open.len();
        let end = start
            + out[start..]
                .find(close)
                .ok_or_else(|| format!("`{}` is not closed", open.trim()))?;
        out.replace_range(start..end, &table());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documentation's option tables are the declarations' (rerun with
    /// SPARSELAB_BLESS=1 to rewrite them after changing a declaration).
    #[test]
    fn docs_option_tables_match_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/options.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let fresh = regenerate_doc_tables(&doc).unwrap();
        if std::env::var_os("SPARSELAB_BLESS").is_some() {
            std::fs::write(path, &fresh).unwrap();
            return;
        }
        assert!(
            doc == fresh,
            "docs/options.md's option tables differ from the declarations: \
             run `SPARSELAB_BLESS=1 cargo test --lib docs_option_tables` and commit"
        );
    }

    fn map(pairs: &[(&str, Dynamic)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    #[test]
    fn mixed_precision_maps_read_through_their_declarations() {
        let floats = |xs: &[f64]| Dynamic::from_array(xs.iter().map(|&x| x.into()).collect());
        let o: AllocateOptions = crate::options::from_map(
            "allocate_bits",
            &map(&[
                ("tiers", floats(&[2.0, 4.0])),
                ("proportions", floats(&[0.5, 0.5])),
                ("n_groups", Dynamic::UNIT),
            ]),
        )
        .unwrap();
        assert_eq!(o.tiers(), vec![2, 4]);
        assert_eq!(o.proportions, Some(vec![0.5, 0.5]));
        assert!(!o.given("n_groups"));
        assert_eq!(AllocateOptions::default().tiers(), DEFAULT_TIERS.to_vec());
        let one: AllocateOptions =
            crate::options::from_map("allocate_bits", &map(&[("tiers", 3_i64.into())])).unwrap();
        assert_eq!(one.tiers(), vec![3]);
        for (pairs, want) in [
            (
                vec![("tiers", floats(&[2.5]))],
                "allocate_bits: option `tiers` element 0 is 2.5, not a non-negative integer",
            ),
            (
                vec![("weights", Dynamic::from("x"))],
                "allocate_bits: option `weights` must be a Vector or an array of numbers, got string `x`",
            ),
            (
                vec![("taget_avg", 4_i64.into())],
                "allocate_bits: unknown option `taget_avg` (did you mean `target_avg`?)",
            ),
        ] {
            let e = crate::options::from_map::<AllocateOptions>("allocate_bits", &map(&pairs))
                .unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }

        let d = ImportanceSettings::default().importance_options();
        assert_eq!(d, ImportanceOptions::default());
        let i: ImportanceSettings =
            crate::options::from_map("score_importance", &map(&[("bins", 8_i64.into())])).unwrap();
        assert_eq!(i.importance_options().mi.bins, 8);

        let c = ChannelErrorSettings::default()
            .channel_error_options("channel_errors")
            .unwrap();
        assert_eq!(c, ChannelErrorOptions::default());
        let c: ChannelErrorSettings = crate::options::from_map(
            "channel_errors",
            &map(&[("prunen", 2_i64.into()), ("prunem", 4_i64.into())]),
        )
        .unwrap();
        assert_eq!(
            c.channel_error_options("f").unwrap().pattern,
            SparsityPattern::NM { n: 2, m: 4 }
        );
        for (pairs, want) in [
            (
                vec![("sparsity", 0.5.into()), ("prunen", 2_i64.into())],
                "f: give either `sparsity` or `prunen`/`prunem`, not both",
            ),
            (
                vec![("prunem", 4_i64.into())],
                "f: an n:m pattern needs both `prunen` and `prunem`",
            ),
            (
                vec![("weight", "obz".into())],
                "f: unknown error weight `obz`; valid: obs, diag",
            ),
        ] {
            let c: ChannelErrorSettings = crate::options::from_map("f", &map(&pairs)).unwrap();
            assert_eq!(c.channel_error_options("f").unwrap_err(), want);
        }

        assert_eq!(OwlOptions::default().lambda(), 0.08);
        assert_eq!(GroupOptions::default().method(), "quantile");
    }

    #[test]
    fn declared_primitives_list_their_declared_keys() {
        for (function, help, _) in DECLARED {
            let keys = keys_of(function).unwrap();
            let text = help();
            for k in keys {
                assert!(text.contains(&format!("  {k} (")), "{function}: {k}");
            }
        }
        // A primitive whose keys are only listed.
        assert!(options_help("summary")
            .unwrap()
            .starts_with("options: target_avg"));
    }
}
