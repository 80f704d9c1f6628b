//! Option maps of the primitives: every key is checked, typed and documented.
//!
//! An operation whose options are declared ([`crate::options::declare_options!`]:
//! `prune_layer`'s [`Settings`], the evaluation functions' [`EvalOptions`])
//! reads its map with [`Opts::parse`]; the others list their keys in
//! [`OPTION_KEYS`] and read them one by one through [`Opts`]. Either way
//! [`OPTION_KEYS`] feeds the REPL's completion and `sparselab check`'s static
//! check of map literals. An unknown key is an error that names it, suggests
//! the nearest valid key and lists all of them; a value of the wrong type names
//! the expected type. A key whose value is `()` counts as absent (so recipes
//! can pass `#{seqlen: seqlen}` with `seqlen = ()` for "default").

use rhai::{Dynamic, EvalAltResult, Map, FLOAT};

use super::vector::{err, Vector};
use crate::compress::rules::Settings;
use crate::eval::PplOptions;
use crate::options::{help_text, markdown_table, Declared};
pub use crate::options::{type_label, unknown_key_message};

type R<T> = Result<T, Box<EvalAltResult>>;

/// The option keys of each primitive that takes an options map, in
/// documentation order. Register a new primitive's keys here.
pub const OPTION_KEYS: &[(&str, &[&str])] = &[
    ("load_model", &["device", "dtype", "revision"]),
    ("score_importance", &["percdamp", "bins"]),
    ("group_channels", &["method"]),
    (
        "allocate_bits",
        &[
            "tiers",
            "method",
            "target_avg",
            "proportions",
            "thresholds",
            "n_groups",
            "grouping",
            "weights",
        ],
    ),
    (
        "channel_errors",
        &[
            "tiers",
            "sparsity",
            "prunen",
            "prunem",
            "sym",
            "groupsize",
            "blocksize",
            "percdamp",
            "weight",
            "relative",
        ],
    ),
    ("allocate_model", &["target_avg"]),
    ("owl_sparsities", &["sparsity", "lambda"]),
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
    (
        "calibrate",
        &[
            "nsamples",
            "seqlen",
            "seed",
            "true_sequential",
            "batch",
            "quiet",
            "reservoir",
            "checkpoint",
            "fingerprint",
            "cache",
            "sequential",
            "memory_limit",
            "gemm",
        ],
    ),
    ("prune_layer", <Settings as Declared>::KEYS),
    ("eval_ppl", <EvalOptions as Declared>::KEYS),
    ("eval_ppl_stats", <EvalOptions as Declared>::KEYS),
    ("kl_base", <EvalOptions as Declared>::KEYS),
    ("eval_kl", <EvalOptions as Declared>::KEYS),
    ("eval_tasks", &["tasks", "limit", "batch", "quiet"]),
    ("save", &["overwrite", "format"]),
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

/// A generated text: an option list or table.
pub type Text = fn() -> String;

/// The primitives whose options are declared, with their option table for
/// `:help` and for the documentation (`docs/options.md`, checked by a test).
pub const DECLARED: &[(&str, Text, Text)] = &[
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

    /// A Vector or array of numbers.
    pub fn floats(&self, key: &str) -> R<Option<Vec<f64>>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => {
                if let Some(vec) = v.read_lock::<Vector>() {
                    return Ok(Some(vec.as_slice().iter().map(|&x| x as f64).collect()));
                }
                if v.is_array() {
                    let arr = v.clone().into_array().unwrap_or_default();
                    let vec = super::vector::from_array(&arr)?;
                    return Ok(Some(vec.as_slice().iter().map(|&x| x as f64).collect()));
                }
                self.wrong_type(key, "a Vector or an array of numbers", v)
            }
        }
    }

    /// An integer, or a Vector / array of integers (one per channel).
    pub fn int_or_ints(&self, key: &str) -> R<Option<IntOrInts>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => {
                if let Ok(i) = v.as_int() {
                    if i < 0 {
                        return err(format!(
                            "{}: option `{key}` must be non-negative, got {i}",
                            self.function
                        ));
                    }
                    return Ok(Some(IntOrInts::One(i as u32)));
                }
                let what = format!("{}: option `{key}`", self.function);
                if let Some(vec) = v.read_lock::<Vector>() {
                    return Ok(Some(IntOrInts::Many(vec.to_u32s(&what)?)));
                }
                if v.is_array() {
                    let arr = v.clone().into_array().unwrap_or_default();
                    let vec = super::vector::from_array(&arr)?;
                    return Ok(Some(IntOrInts::Many(vec.to_u32s(&what)?)));
                }
                self.wrong_type(key, "an integer or a Vector of per-channel integers", v)
            }
        }
    }
}

/// One integer, or one per channel.
#[derive(Debug, Clone)]
pub enum IntOrInts {
    /// The same for every channel.
    One(u32),
    /// One per channel.
    Many(Vec<u32>),
}

/// The option tables of `docs/options.md`, by the name of their marker
/// (`<!-- options: NAME -->` … `<!-- /options -->`).
pub const DOC_TABLES: &[(&str, Text)] = &[
    ("compress", markdown_table::<Settings>),
    ("eval", markdown_table::<EvalOptions>),
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

    #[test]
    fn declared_primitives_list_their_declared_keys() {
        for (function, help, _) in DECLARED {
            let keys = keys_of(function).unwrap();
            let text = help();
            for k in keys {
                assert!(text.contains(&format!("  {k} (")), "{function}: {k}");
            }
        }
        assert!(options_help("load_model")
            .unwrap()
            .starts_with("options: device"));
    }
}
