//! Option maps of the primitives: every key is checked, typed and documented.
//!
//! A primitive declares its keys once in [`OPTION_KEYS`] (which also feeds the
//! REPL's completion and `sparselab check`'s static check of map literals) and
//! reads them through [`Opts`]. An unknown key is an error that names it,
//! suggests the nearest valid key and lists all of them; a value of the wrong
//! type names the expected type. A key whose value is `()` counts as absent
//! (so recipes can pass `#{seqlen: seqlen}` with `seqlen = ()` for "default").

use rhai::{Dynamic, EvalAltResult, Map, FLOAT};

use super::suggest::nearest;
use super::vector::{err, Vector};

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
    (
        "prune_layer",
        &[
            "method",
            "sparsity",
            "prunen",
            "prunem",
            "bits",
            "sym",
            "groupsize",
            "static_groups",
            "blocksize",
            "percdamp",
            "act_order",
        ],
    ),
    ("eval_ppl", &["seqlen", "nsamples", "batch", "quiet"]),
    ("eval_ppl_stats", &["seqlen", "nsamples", "batch", "quiet"]),
    ("kl_base", &["seqlen", "nsamples", "batch", "quiet"]),
    ("eval_kl", &["seqlen", "nsamples", "batch", "quiet"]),
    ("eval_tasks", &["tasks", "limit", "batch", "quiet"]),
    ("save", &["overwrite", "format"]),
];

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

/// The error for the first key of `keys` that `valid` lacks, if any:
/// `prune_layer: unknown option `spasity` (did you mean `sparsity`?); valid options: …`.
pub fn unknown_key_message<'a>(
    function: &str,
    valid: &[&str],
    keys: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    for key in keys {
        if !valid.contains(&key) {
            let near = nearest(key, valid.iter().copied(), 1);
            let hint = near
                .first()
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Some(format!(
                "{function}: unknown option `{key}`{hint}; valid options: {}",
                valid.join(", ")
            ));
        }
    }
    None
}

/// The name of a value's type as scripts write it.
pub fn type_label(v: &Dynamic) -> String {
    if v.is_int() {
        "integer".into()
    } else if v.is_float() {
        "float".into()
    } else if v.is_string() {
        "string".into()
    } else if v.is_bool() {
        "boolean".into()
    } else if v.is_array() {
        "array".into()
    } else if v.is_map() {
        "map".into()
    } else {
        v.type_name().rsplit("::").next().unwrap_or("value").into()
    }
}
