//! Which combinations of compression settings are accepted: one table of
//! rules ([`RULES`]) that `sparselab prune` and the `prune_layer` primitive
//! both apply, to one description of what they were given ([`Settings`]).
//!
//! A setting that would have no effect in the combination given is refused,
//! not dropped: a run that asked for `--sym` without `--bits` once pruned
//! without a word about the quantizer it never ran. Each refusal names the
//! option in the front end's spelling ([`Front`]: `--groupsize` on the command
//! line, `` `groupsize` `` in a script) and says what to do.
//!
//! `act_order` is accepted without `bits`: it orders the OBS sweep by the
//! Hessian diagonal, which changes which weights a pruning-only sweep removes
//! (the unstructured mask is chosen per block of swept columns), so it has an
//! effect there too.

use anyhow::Result;
use rhai::Dynamic;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{BitWidths, Method, QuantOptions, QuantizerConfig, SparseGptOptions, SparsityPattern};
pub use crate::options::Front;
use crate::options::{uint_or_uints, Declared, OptionValue, ValueError};

/// The compression methods, by the names both front ends take.
pub const METHODS: [&str; 4] = ["sparsegpt", "gptq", "magnitude", "wanda"];

/// The settings only the OBS sweep (methods sparsegpt and gptq) reads.
const SPARSEGPT_ONLY: [&str; 7] = [
    "bits",
    "sym",
    "groupsize",
    "static_groups",
    "blocksize",
    "percdamp",
    "act_order",
];

/// The quantizer's settings, meaningless without `bits`.
const QUANTIZER: [&str; 3] = ["sym", "groupsize", "static_groups"];

crate::declare_options! {
    /// The options of one compression (`sparselab prune`'s compression flags,
    /// `prune_layer`'s options map), declared once: each `None` when it was not
    /// given (a default is not a choice, so it never conflicts with anything).
    /// [`Settings::to_method`] checks them against [`RULES`].
    pub struct Settings {
        /// `sparsegpt` (pruning, and with `bits` also quantization; with `bits`
        /// and no pruning it is GPTQ), `gptq` (quantization only: `bits`, no
        /// pruning), `magnitude` or `wanda`.
        method: String = "sparsegpt".to_string(),
        /// Fraction of weights to prune, in [0, 1); 0 prunes nothing.
        sparsity: f64,
        /// n of an n:m structured pattern such as 2:4 (with `prunem`).
        prunen: usize,
        /// m of an n:m structured pattern (with `prunen`).
        prunem: usize,
        /// Quantize to this many bits (1..=16); sparsegpt or gptq only. A
        /// script may give a Vector of per-channel widths instead.
        bits: BitWidths,
        /// Symmetric quantization grid (with `bits`).
        sym: bool = QuantizerConfig::default().sym,
        /// Quantization group size in columns (with `bits`).
        groupsize: usize,
        /// Every group's grid computed up front on the original column order
        /// (with `bits` and `groupsize`).
        static_groups: bool = false,
        /// OBS block size in columns.
        blocksize: usize = SparseGptOptions::default().blocksize,
        /// Hessian dampening as a fraction of its mean diagonal.
        percdamp: f64 = SparseGptOptions::default().percdamp,
        /// Sweep columns by descending Hessian diagonal (GPTQ act-order; it also
        /// orders a pruning-only sweep). Not with an n:m pattern.
        act_order: bool = false,
    }
}

impl OptionValue for BitWidths {
    const LABEL: &'static str = "an integer or a Vector of per-channel integers";
    const VALUE_NAME: &'static str = "N";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        Ok(match uint_or_uints(v)? {
            Ok(b) => BitWidths::Uniform(b),
            Err(per_column) => BitWidths::PerColumn(per_column),
        })
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(BitWidths::Uniform)
            .map_err(|_| format!("`{s}` is not a non-negative integer"))
    }
    fn show(&self) -> String {
        match self {
            BitWidths::Uniform(b) => b.to_string(),
            BitWidths::PerColumn(v) => format!("{v:?}"),
        }
    }
}

/// One width as a number, per-channel widths as a list.
impl Serialize for BitWidths {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            BitWidths::Uniform(b) => s.serialize_u32(*b),
            BitWidths::PerColumn(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BitWidths {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(u32),
            Many(Vec<u32>),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::One(b) => BitWidths::Uniform(b),
            Repr::Many(v) => BitWidths::PerColumn(v),
        })
    }
}

/// A combination refused by a rule of [`RULES`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The rule's name.
    pub rule: &'static str,
    /// What is wrong and what to do, in the front end's spelling.
    pub message: String,
}

/// How a front end spells an option key (`static_groups` → `--static-groups`).
type Spell<'a> = &'a dyn Fn(&str) -> String;

/// One rule: a check over [`Settings`], with an example it refuses and a
/// nearby one every rule accepts (the tests run both through each front end).
pub struct Rule {
    /// Short name.
    pub name: &'static str,
    /// The message when the settings break the rule, `None` when they keep it;
    /// its argument spells option names for the front end.
    check: fn(&Settings, Spell) -> Option<String>,
    /// A combination this rule refuses (and no earlier rule does), as
    /// `(key, value)` pairs.
    pub refused: &'static [(&'static str, &'static str)],
    /// A nearby combination that every rule accepts.
    pub accepted: &'static [(&'static str, &'static str)],
}

impl Rule {
    /// The refusal of `s` by this rule for front end `front`, if it breaks it.
    pub fn check(&self, s: &Settings, front: Front) -> Option<Refusal> {
        (self.check)(s, &|k| front.name(k)).map(|message| Refusal {
            rule: self.name,
            message,
        })
    }
}

impl Settings {
    /// The method name, `sparsegpt` when none was given.
    pub fn method_name(&self) -> &str {
        self.method.as_deref().unwrap_or("sparsegpt")
    }

    /// Whether the settings ask for pruning: `sparsity` > 0 or an n:m pattern.
    fn prunes(&self) -> bool {
        self.sparsity.is_some_and(|s| s != 0.0) || self.prunen.is_some() || self.prunem.is_some()
    }

    /// Settings from `(key, value)` pairs as the rules' examples (and the
    /// command line) write them: numbers, `true`/`false`, a method name.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Settings> {
        crate::options::from_pairs(pairs).map_err(anyhow::Error::msg)
    }

    /// The first rule of [`RULES`] these settings break, spelt for `front`.
    pub fn refusal(&self, front: Front) -> Option<Refusal> {
        RULES.iter().find_map(|r| r.check(self, front))
    }

    /// Checks the settings as [`Settings::to_method`] does, for a front end
    /// that only validates (`sparselab check`, a dry run).
    pub fn validate(&self, front: Front) -> Result<()> {
        self.to_method(front).map(|_| ())
    }

    /// The method these settings describe, after every rule of [`RULES`] and
    /// the checks of each value that do not depend on the weight's shape
    /// (ranges of `sparsity`, `bits`, n:m, `groupsize`, `blocksize`,
    /// `percdamp`; per-channel bits are checked against each linear).
    pub fn to_method(&self, front: Front) -> Result<Method> {
        if let Some(r) = self.refusal(front) {
            return Err(r.into());
        }
        let pattern = match (self.prunen, self.prunem, self.sparsity) {
            (Some(n), Some(m), _) => SparsityPattern::NM { n, m },
            (_, _, Some(s)) => SparsityPattern::Unstructured { sparsity: s },
            _ => SparsityPattern::Dense,
        };
        // m columns: n and m alone (column counts are per linear).
        pattern.validate(pattern.nm().map_or(1, |(_, m)| m))?;
        match self.method_name() {
            "magnitude" => return Ok(Method::Magnitude(pattern)),
            "wanda" => return Ok(Method::Wanda(pattern)),
            _ => {}
        }
        let quant = self.bits.clone().map(|bits| QuantOptions {
            bits,
            quantizer: QuantizerConfig {
                sym: self.sym(),
                ..QuantizerConfig::default()
            },
            groupsize: self.groupsize,
            static_groups: self.static_groups(),
        });
        let opts = SparseGptOptions {
            pattern,
            quant,
            blocksize: self.blocksize(),
            percdamp: self.percdamp(),
            act_order: self.act_order(),
        };
        // Checked against a width every value passes (m columns for n:m); the
        // count of per-channel bits only a linear can check, so here only their
        // values are, and the probe stands in a uniform width for them.
        let mut probe = opts.clone();
        if let Some(q) = probe.quant.as_mut() {
            if let BitWidths::PerColumn(v) = &q.bits {
                q.bits.validate(v.len())?;
                q.bits = BitWidths::Uniform(v.first().copied().unwrap_or(4));
            }
        }
        probe.validate(pattern.nm().map_or(1, |(_, m)| m))?;
        Ok(Method::SparseGpt(opts))
    }
}

/// The rules, in the order they are checked: the first one broken is the
/// error. Both front ends apply exactly these.
pub const RULES: &[Rule] = &[
    Rule {
        name: "known method",
        check: |s, n| {
            let m = s.method.as_deref()?;
            (!METHODS.contains(&m)).then(|| {
                let near = crate::options::suggest::nearest(m, METHODS, 1);
                let hint = near
                    .first()
                    .map(|x| format!(" (did you mean `{x}`?)"))
                    .unwrap_or_default();
                format!(
                    "unknown method `{m}` given to {}{hint}; valid methods: {}",
                    n("method"),
                    METHODS.join(", ")
                )
            })
        },
        refused: &[("method", "sparsgpt"), ("sparsity", "0.5")],
        accepted: &[("method", "sparsegpt"), ("sparsity", "0.5")],
    },
    Rule {
        name: "sparsity or n:m",
        check: |s, n| {
            (s.sparsity.is_some_and(|x| x != 0.0) && (s.prunen.is_some() || s.prunem.is_some()))
                .then(|| {
                    format!(
                        "give either {} (unstructured) or {}/{} (n:m), not both: drop one",
                        n("sparsity"),
                        n("prunen"),
                        n("prunem")
                    )
                })
        },
        refused: &[("sparsity", "0.5"), ("prunen", "2"), ("prunem", "4")],
        accepted: &[("prunen", "2"), ("prunem", "4")],
    },
    Rule {
        name: "n:m needs n and m",
        check: |s, n| {
            let missing = match (s.prunen, s.prunem) {
                (Some(_), None) => "prunem",
                (None, Some(_)) => "prunen",
                _ => return None,
            };
            Some(format!(
                "an n:m pattern needs both {} and {}: add {} (e.g. 2 and 4 for 2:4)",
                n("prunen"),
                n("prunem"),
                n(missing)
            ))
        },
        refused: &[("prunen", "2")],
        accepted: &[("prunen", "2"), ("prunem", "4")],
    },
    Rule {
        name: "OBS settings need sparsegpt or gptq",
        check: |s, n| {
            let m = s.method_name();
            if !matches!(m, "magnitude" | "wanda") {
                return None;
            }
            let k = SPARSEGPT_ONLY.iter().find(|k| s.given(k))?;
            Some(format!(
                "{} applies to method sparsegpt or gptq, not {m}: drop it, or use {} sparsegpt",
                n(k),
                n("method")
            ))
        },
        refused: &[
            ("method", "magnitude"),
            ("sparsity", "0.5"),
            ("percdamp", "0.1"),
        ],
        accepted: &[("method", "magnitude"), ("sparsity", "0.5")],
    },
    Rule {
        name: "magnitude and wanda prune",
        check: |s, n| {
            let m = s.method_name();
            (matches!(m, "magnitude" | "wanda") && !s.prunes()).then(|| {
                format!(
                    "{} {m} prunes: give {} > 0 or {}/{}",
                    n("method"),
                    n("sparsity"),
                    n("prunen"),
                    n("prunem")
                )
            })
        },
        refused: &[("method", "wanda")],
        accepted: &[("method", "wanda"), ("sparsity", "0.5")],
    },
    Rule {
        name: "gptq only quantizes",
        check: |s, n| {
            (s.method_name() == "gptq" && s.prunes()).then(|| {
                format!(
                    "{} gptq only quantizes: drop {}/{}/{}, or use {} sparsegpt to prune and \
                     quantize together",
                    n("method"),
                    n("sparsity"),
                    n("prunen"),
                    n("prunem"),
                    n("method")
                )
            })
        },
        refused: &[("method", "gptq"), ("sparsity", "0.5"), ("bits", "4")],
        accepted: &[("method", "sparsegpt"), ("sparsity", "0.5"), ("bits", "4")],
    },
    Rule {
        name: "gptq needs bits",
        check: |s, n| {
            (s.method_name() == "gptq" && s.bits.is_none()).then(|| {
                format!(
                    "{} gptq quantizes and needs {}: add {} (e.g. 4)",
                    n("method"),
                    n("bits"),
                    n("bits")
                )
            })
        },
        refused: &[("method", "gptq")],
        accepted: &[("method", "gptq"), ("bits", "4")],
    },
    Rule {
        name: "quantizer settings need bits",
        check: |s, n| {
            if s.bits.is_some() {
                return None;
            }
            let k = QUANTIZER.iter().find(|k| s.given(k))?;
            Some(format!(
                "{} needs {} (it configures the quantizer, and nothing is quantized without \
                 {}): add {} or drop {}",
                n(k),
                n("bits"),
                n("bits"),
                n("bits"),
                n(k)
            ))
        },
        refused: &[("sparsity", "0.5"), ("sym", "true")],
        accepted: &[("sparsity", "0.5"), ("sym", "true"), ("bits", "4")],
    },
    Rule {
        name: "static groups need a group size",
        check: |s, n| {
            (s.static_groups.is_some() && s.groupsize.is_none()).then(|| {
                format!(
                    "{} needs {} (it fixes each group's grid up front): add {} or drop {}",
                    n("static_groups"),
                    n("groupsize"),
                    n("groupsize"),
                    n("static_groups")
                )
            })
        },
        refused: &[("bits", "4"), ("static_groups", "true")],
        accepted: &[
            ("bits", "4"),
            ("static_groups", "true"),
            ("groupsize", "32"),
        ],
    },
    Rule {
        name: "act_order is not for n:m",
        check: |s, n| {
            (s.act_order == Some(true) && s.prunen.is_some() && s.prunem.is_some()).then(|| {
                format!(
                    "{} cannot be combined with an n:m pattern ({}/{}): the groups of m would \
                     not be contiguous columns; drop {}",
                    n("act_order"),
                    n("prunen"),
                    n("prunem"),
                    n("act_order")
                )
            })
        },
        refused: &[("prunen", "2"), ("prunem", "4"), ("act_order", "true")],
        accepted: &[("sparsity", "0.5"), ("act_order", "true")],
    },
    Rule {
        name: "n:m groups within blocks",
        check: |s, n| {
            let (Some(_), Some(m)) = (s.prunen, s.prunem) else {
                return None;
            };
            let b = s.blocksize();
            (m > 0 && b % m != 0).then(|| {
                format!(
                    "{} {b} is not a multiple of {} {m}: n:m groups are counted from each \
                     block's start; give a {} that m divides",
                    n("blocksize"),
                    n("prunem"),
                    n("blocksize")
                )
            })
        },
        refused: &[("prunen", "2"), ("prunem", "4"), ("blocksize", "30")],
        accepted: &[("prunen", "2"), ("prunem", "4"), ("blocksize", "32")],
    },
    Rule {
        name: "something to do",
        check: |s, n| {
            (s.method_name() == "sparsegpt" && !s.prunes() && s.bits.is_none()).then(|| {
                format!(
                    "nothing to do: give {}, {}/{} or {}",
                    n("sparsity"),
                    n("prunen"),
                    n("prunem"),
                    n("bits")
                )
            })
        },
        refused: &[("blocksize", "64")],
        accepted: &[("blocksize", "64"), ("bits", "4")],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_example_is_refused_by_its_own_rule_and_the_neighbour_accepted() -> Result<()> {
        for rule in RULES {
            let s = Settings::from_pairs(rule.refused)?;
            let r = s.refusal(Front::Script).expect(rule.name);
            assert_eq!(r.rule, rule.name, "{}", r.message);
            let ok = Settings::from_pairs(rule.accepted)?;
            assert!(ok.to_method(Front::Cli).is_ok(), "{}: {:?}", rule.name, ok);
        }
        Ok(())
    }

    #[test]
    fn messages_use_each_front_ends_spelling() {
        let s = Settings {
            static_groups: Some(true),
            bits: Some(BitWidths::Uniform(4)),
            ..Settings::default()
        };
        let cli = s.refusal(Front::Cli).unwrap().message;
        let script = s.refusal(Front::Script).unwrap().message;
        assert!(
            cli.starts_with("--static-groups needs --groupsize"),
            "{cli}"
        );
        assert!(
            script.starts_with("`static_groups` needs `groupsize`"),
            "{script}"
        );
    }

    #[test]
    fn act_order_changes_a_pruning_only_sweep() -> Result<()> {
        // Why act_order needs no bits: the pruning mask depends on it.
        use candle_core::{Device, Tensor};
        let (rows, cols) = (8, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu)?;
        let x: Vec<f32> = (0..cols * 96)
            .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 20.0 * (1.0 + (i % cols) as f32 / 8.0))
            .collect();
        let x = Tensor::from_vec(x, (96, cols), &Device::Cpu)?;
        let h = (x.t()?.matmul(&x)? * (2.0 / 96.0))?;
        let mask = |act_order: bool| -> Result<Vec<u8>> {
            let o = SparseGptOptions {
                pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
                blocksize: 16,
                act_order,
                ..SparseGptOptions::default()
            };
            Ok(super::super::fasterprune(&w, &h, &o)?
                .stats
                .mask
                .flatten_all()?
                .to_vec1::<u8>()?)
        };
        assert_ne!(mask(false)?, mask(true)?);
        Ok(())
    }
}
