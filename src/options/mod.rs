//! Declared options: each operation's settings written once, as one struct
//! ([`declare_options!`]), from which every front end derives what it shows and
//! accepts.
//!
//! A declaration gives each option its key, type, default and doc comment. From
//! it come: the struct itself (serde, every field an `Option`, `None` when not
//! given: a default is not a choice, so the combination rules never see one);
//! the command line's flags (`clap::Args`, for `#[command(flatten)]`, help from
//! the doc comment); a script options map's parsing ([`from_map`]: an unknown key
//! is refused with the nearest valid key, a value of the wrong type names the
//! type expected); the keys `sparselab check` and the REPL's completion know
//! ([`Declared::KEYS`]); `:help`'s option list ([`help_text`]); and the option
//! tables of `docs/options.md` ([`markdown_table`], checked by a test).
//!
//! This module sits below every other (it names no type of the crate): the
//! value types of higher layers implement [`OptionValue`] where they are
//! declared (per-channel bit widths in `compress::rules`).

pub mod suggest;

#[cfg(feature = "cli")]
use clap::builder::ValueParser;
#[cfg(feature = "cli")]
use clap::{Arg, ArgAction, ArgMatches, Command};
use rhai::{Dynamic, Map};

/// Whose spelling a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The command line: `--static-groups`.
    Cli,
    /// A script's options map: `` `static_groups` ``.
    Script,
}

impl Front {
    /// The option `key` (a script key such as `static_groups`) as this front
    /// end spells it.
    pub fn name(self, key: &str) -> String {
        match self {
            Front::Cli => cli_flag(key),
            Front::Script => format!("`{key}`"),
        }
    }
}

/// The command-line flag of the option `key`: `static_groups` → `--static-groups`.
pub fn cli_flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Why a script value does not fit an option.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueError {
    /// A value of another type: the message names the type expected
    /// ([`OptionValue::LABEL`]) and the one given.
    WrongType,
    /// The right type, but a value outside the option's domain, with the
    /// message's tail (`must be a non-negative integer, got -1`).
    Invalid(String),
}

/// A type an option can have: how scripts give it, how the command line
/// spells it, how documentation names it.
pub trait OptionValue: Sized + Clone + Send + Sync + 'static {
    /// The type as messages name it, with its article ("a number").
    const LABEL: &'static str;
    /// The placeholder in `--help` (`--sparsity X`).
    const VALUE_NAME: &'static str;
    /// A command-line flag that takes no value (booleans: given means true).
    const FLAG: bool = false;
    /// The value of a script's map entry (never `()`: that means absent).
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError>;
    /// The value as the command line (and the rules' examples) write it.
    fn parse_text(s: &str) -> Result<Self, String>;
    /// The value as documentation writes a default.
    fn show(&self) -> String;
    /// The command-line argument for an option of this type.
    #[cfg(feature = "cli")]
    fn cli_arg(arg: Arg) -> Arg {
        if Self::FLAG {
            arg.action(ArgAction::SetTrue)
        } else {
            arg.action(ArgAction::Set)
                .value_name(Self::VALUE_NAME)
                .value_parser(ValueParser::new(|s: &str| Self::parse_text(s)))
        }
    }
    /// The value the command line gave `id`, if any.
    #[cfg(feature = "cli")]
    fn from_matches(m: &ArgMatches, id: &str) -> Option<Self> {
        m.get_one::<Self>(id).cloned()
    }
}

impl OptionValue for f64 {
    const LABEL: &'static str = "a number";
    const VALUE_NAME: &'static str = "X";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        match (v.as_float(), v.as_int()) {
            (Ok(f), _) => Ok(f),
            (_, Ok(i)) => Ok(i as f64),
            _ => Err(ValueError::WrongType),
        }
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for usize {
    const LABEL: &'static str = "an integer";
    const VALUE_NAME: &'static str = "N";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        match rhai::serde::from_dynamic::<i64>(v) {
            Ok(i) if i >= 0 => Ok(i as usize),
            Ok(i) => Err(ValueError::Invalid(format!(
                "must be a non-negative integer, got {i}"
            ))),
            Err(_) => Err(ValueError::WrongType),
        }
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a non-negative integer"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for u64 {
    const LABEL: &'static str = "an integer";
    const VALUE_NAME: &'static str = "N";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        usize::from_dynamic(v).map(|u| u as u64)
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a non-negative integer"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for bool {
    const LABEL: &'static str = "a boolean (true or false)";
    const VALUE_NAME: &'static str = "BOOL";
    const FLAG: bool = true;
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        rhai::serde::from_dynamic(v).map_err(|_| ValueError::WrongType)
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not true or false"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
    /// A flag: `--sym` means true; `--sequential=false` turns off an option
    /// whose default is true (the `=` is required, so a flag never swallows
    /// the next argument).
    #[cfg(feature = "cli")]
    fn cli_arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_name(Self::VALUE_NAME)
            .value_parser(ValueParser::new(|s: &str| Self::parse_text(s)))
    }
}

impl OptionValue for String {
    const LABEL: &'static str = "a string";
    const VALUE_NAME: &'static str = "NAME";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        rhai::serde::from_dynamic(v).map_err(|_| ValueError::WrongType)
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

impl OptionValue for std::path::PathBuf {
    const LABEL: &'static str = "a path";
    const VALUE_NAME: &'static str = "PATH";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        String::from_dynamic(v).map(Self::from)
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        Ok(Self::from(s))
    }
    fn show(&self) -> String {
        format!("{:?}", self.display().to_string())
    }
}

/// One non-negative integer (`Ok`) or an array of them (`Err`; integral floats
/// accepted), as script option values that take a width or one per channel.
pub fn uint_or_uints(v: &Dynamic) -> Result<Result<u32, Vec<u32>>, ValueError> {
    let one = |i: i64| u32::try_from(i).ok();
    if let Ok(i) = v.as_int() {
        return one(i)
            .map(Ok)
            .ok_or_else(|| ValueError::Invalid(format!("must be non-negative, got {i}")));
    }
    let Some(items) = v.read_lock::<rhai::Array>() else {
        return Err(ValueError::WrongType);
    };
    items
        .iter()
        .enumerate()
        .map(|(j, x)| {
            let u = match (x.as_int(), x.as_float()) {
                (Ok(i), _) => one(i),
                (_, Ok(f)) if f.fract() == 0.0 && f >= 0.0 => one(f as i64),
                _ => None,
            };
            u.ok_or_else(|| {
                ValueError::Invalid(format!("element {j} is {x}, not a non-negative integer"))
            })
        })
        .collect::<Result<Vec<u32>, _>>()
        .map(Err)
}

/// A list of widths or other small counts: one integer, or an array (a
/// script's Vector arrives as its array, see `script::options::Opts::parse`)
/// of non-negative integers.
impl OptionValue for Vec<u32> {
    const LABEL: &'static str = "an integer or an array of integers";
    const VALUE_NAME: &'static str = "N,…";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        Ok(match uint_or_uints(v)? {
            Ok(u) => vec![u],
            Err(many) => many,
        })
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse()
                    .map_err(|_| format!("`{p}` is not a non-negative integer"))
            })
            .collect()
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

/// A list of numbers: an array of numbers (integers accepted; a script's
/// Vector arrives as its array).
impl OptionValue for Vec<f64> {
    const LABEL: &'static str = "a Vector or an array of numbers";
    const VALUE_NAME: &'static str = "X,…";
    fn from_dynamic(v: &Dynamic) -> Result<Self, ValueError> {
        let Some(items) = v.read_lock::<rhai::Array>() else {
            return Err(ValueError::WrongType);
        };
        items
            .iter()
            .enumerate()
            .map(|(j, x)| {
                f64::from_dynamic(x)
                    .map_err(|_| ValueError::Invalid(format!("element {j} is {x}, not a number")))
            })
            .collect()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.split(',').map(f64::parse_text).collect()
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

/// One declared option: what every front end derives from.
#[derive(Debug, Clone)]
pub struct Field {
    /// The key, as scripts write it (`static_groups`).
    pub key: &'static str,
    /// The doc comment, one source line per line.
    pub doc: &'static str,
    /// Its type, with an article ([`OptionValue::LABEL`]).
    pub label: &'static str,
    /// The default as documentation writes it; `None` where there is none or
    /// it depends on the model (the doc comment says which).
    pub default: Option<String>,
    /// The command line's one-letter alias, if any.
    pub short: Option<char>,
    /// A flag without a value on the command line ([`OptionValue::FLAG`]).
    pub flag: bool,
    /// Configures the command-line argument for the option's type.
    #[cfg(feature = "cli")]
    pub arg: fn(Arg) -> Arg,
}

impl Field {
    /// The doc comment as one paragraph.
    pub fn text(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The type without its article, for tables ("number").
    pub fn type_name(&self) -> &'static str {
        let l = self.label;
        let l = l.strip_prefix("an ").or(l.strip_prefix("a ")).unwrap_or(l);
        l.split(" (").next().unwrap_or(l)
    }

    /// The doc comment as one paragraph, with the options of `keys` it names
    /// (`` `bits` ``) spelt for `front` (`--bits`).
    pub fn text_for(&self, front: Front, keys: &[&str]) -> String {
        let mut text = self.text();
        if front == Front::Cli {
            for k in keys {
                text = text.replace(&format!("`{k}`"), &cli_flag(k));
            }
        }
        text
    }

    /// The command-line argument; `keys` are its operation's options, named
    /// in its help as flags.
    #[cfg(feature = "cli")]
    pub fn cli(&self, keys: &[&str]) -> Arg {
        // clap keeps names by reference; the handful a process builds live as
        // long as it does.
        let long: &'static str = Box::leak(cli_flag(self.key)[2..].to_string().into_boxed_str());
        let text = self.text_for(Front::Cli, keys);
        // A flag's default false is that it was not given; a default true says
        // that `--flag=false` is what changes it.
        let default = self
            .default
            .as_ref()
            .filter(|d| !self.flag || d.as_str() != "false");
        let short_help = text
            .split_once(". ")
            .map(|(first, _)| format!("{first}."))
            .unwrap_or_else(|| text.clone());
        let mut arg = (self.arg)(Arg::new(self.key).long(long))
            .help(match default {
                Some(d) => format!("{short_help} [default: {d}]"),
                None => short_help,
            })
            .long_help(match default {
                Some(d) => format!("{text} [default: {d}]"),
                None => text,
            });
        if let Some(c) = self.short {
            arg = arg.short(c);
        }
        arg
    }
}

/// An operation's declared options ([`declare_options!`] implements it).
pub trait Declared: Default + Sized {
    /// The keys, in declaration order.
    const KEYS: &'static [&'static str];
    /// The options, in declaration order.
    fn fields() -> Vec<Field>;
    /// Whether the option `key` was given.
    fn given(&self, key: &str) -> bool;
    /// Sets `key` from a script value; `None` when `key` is not an option.
    fn set_dynamic(&mut self, key: &str, v: &Dynamic) -> Option<Result<(), ValueError>>;
    /// Sets `key` from command-line text; `None` when `key` is not an option.
    fn set_text(&mut self, key: &str, text: &str) -> Option<Result<(), String>>;
}

/// The error for the first key of `keys` that `valid` lacks, if any:
/// ``prune_layer: unknown option `spasity` (did you mean `sparsity`?); valid options: …``.
pub fn unknown_key_message<'a>(
    function: &str,
    valid: &[&str],
    keys: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    for key in keys {
        if !valid.contains(&key) {
            let near = suggest::nearest(key, valid.iter().copied(), 1);
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

/// `function`'s options of type `T` from a script's map: every key checked
/// (an unknown one is refused with the nearest valid key), every value typed;
/// a key whose value is `()` counts as absent (so a recipe can pass
/// `#{seqlen: seqlen}` with `seqlen = ()` for "default").
pub fn from_map<T: Declared>(function: &str, map: &Map) -> Result<T, String> {
    if let Some(msg) = unknown_key_message(function, T::KEYS, map.keys().map(|k| k.as_str())) {
        return Err(msg);
    }
    let mut out = T::default();
    // In declaration order, so that of two bad values the first documented is named.
    for key in T::KEYS {
        let Some(v) = map.get(*key).filter(|v| !v.is_unit()) else {
            continue;
        };
        match out.set_dynamic(key, v) {
            Some(Ok(())) | None => {}
            Some(Err(ValueError::Invalid(why))) => {
                return Err(format!("{function}: option `{key}` {why}"))
            }
            Some(Err(ValueError::WrongType)) => {
                let label = T::fields()
                    .into_iter()
                    .find(|f| f.key == *key)
                    .map_or("another type", |f| f.label);
                return Err(format!(
                    "{function}: option `{key}` must be {label}, got {} `{v}`",
                    type_label(v)
                ));
            }
        }
    }
    Ok(out)
}

/// Options of type `T` from `(key, text)` pairs written as on the command line
/// (`("bits", "4")`, `("sym", "true")`).
pub fn from_pairs<T: Declared>(pairs: &[(&str, &str)]) -> Result<T, String> {
    let mut out = T::default();
    for &(k, v) in pairs {
        match out.set_text(k, v) {
            Some(r) => r.map_err(|e| format!("{k}: {e}"))?,
            None => return Err(format!("unknown option `{k}`")),
        }
    }
    Ok(out)
}

/// `cmd` with `T`'s options as flags (what `clap::Args::augment_args` returns).
#[cfg(feature = "cli")]
pub fn augment<T: Declared>(mut cmd: Command) -> Command {
    for f in T::fields() {
        cmd = cmd.arg(f.cli(T::KEYS));
    }
    cmd
}

/// `T`'s options as a markdown table: key, flag, type, default, meaning.
pub fn markdown_table<T: Declared>() -> String {
    table::<T>(true)
}

/// `T`'s options as a markdown table without the flag column: key, type,
/// default, meaning (an operation that only scripts reach).
pub fn script_markdown_table<T: Declared>() -> String {
    table::<T>(false)
}

fn table<T: Declared>(flags: bool) -> String {
    let mut out = if flags {
        String::from("| key | flag | type | default | meaning |\n|---|---|---|---|---|\n")
    } else {
        String::from("| key | type | default | meaning |\n|---|---|---|---|\n")
    };
    for f in T::fields() {
        let default = f
            .default
            .as_ref()
            .map(|d| format!("`{d}`"))
            .unwrap_or_else(|| "—".into());
        let flag = if flags {
            let short = f.short.map(|c| format!(", `-{c}`")).unwrap_or_default();
            format!(" `{}`{short} |", cli_flag(f.key))
        } else {
            String::new()
        };
        out += &format!(
            "| `{}` |{flag} {} | {default} | {} |\n",
            f.key,
            f.type_name(),
            f.text().replace('|', "\\|")
        );
    }
    out
}

/// `T`'s options as `:help` lists them: one line each, with type and default.
pub fn help_text<T: Declared>() -> String {
    let mut out = String::from("options:\n");
    for f in T::fields() {
        let default = f
            .default
            .as_ref()
            .map(|d| format!(", default {d}"))
            .unwrap_or_default();
        out += &format!("  {} ({}{default}): {}\n", f.key, f.type_name(), f.text());
    }
    out
}

/// Implements serde and [`OptionValue`] for a type that every front end spells
/// by name (a closed set such as a GEMM precision or a save format): JSON and
/// scripts hold the name, the CLI takes it as the flag's value. The type
/// provides `fn name(self) -> &'static str` and `fn parse(&str) -> Result<Self,
/// E>` with `E: Display`, whose message reads after "is" ("unknown format
/// `x`; …").
///
/// ```ignore
/// named_option_value!(CpuGemm, "a GEMM precision (\"f32\" or \"bf16\")", "f32|bf16");
/// ```
#[macro_export]
macro_rules! named_option_value {
    ($t:ty, $label:expr, $value_name:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl $crate::options::OptionValue for $t {
            const LABEL: &'static str = $label;
            const VALUE_NAME: &'static str = $value_name;
            fn from_dynamic(
                v: &rhai::Dynamic,
            ) -> ::std::result::Result<Self, $crate::options::ValueError> {
                let s = <String as $crate::options::OptionValue>::from_dynamic(v)?;
                <$t>::parse(&s).map_err(|e| $crate::options::ValueError::Invalid(format!("is {e}")))
            }
            fn parse_text(s: &str) -> ::std::result::Result<Self, String> {
                <$t>::parse(s).map_err(|e| e.to_string())
            }
            fn show(&self) -> String {
                format!("{:?}", self.name())
            }
        }
    };
}

/// Declares an operation's options: a struct whose fields are all `Option`s
/// (`None`: not given), with serde, [`Declared`], `clap::Args` (for
/// `#[command(flatten)]`; with feature `cli`) and, for each option with a default, an accessor of
/// the same name that returns the value or the default.
///
/// ```ignore
/// declare_options! {
///     /// Settings of an evaluation.
///     pub struct EvalOptions {
///         /// Window length.
///         seqlen: usize,
///         /// Windows per batch.
///         batch: usize = 8,
///         /// No progress output.
///         @short 'q' quiet: bool = false,
///     }
/// }
/// ```
#[macro_export]
macro_rules! declare_options {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(@short $short:literal)?
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            $($(
                #[doc = concat!("`", stringify!($field), "`, or its default when it was not given.")]
                pub fn $field(&self) -> $ty {
                    self.$field.clone().unwrap_or_else(|| $default)
                }
            )?)*
        }

        impl $crate::options::Declared for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn fields() -> Vec<$crate::options::Field> {
                vec![$(
                    $crate::options::Field {
                        key: stringify!($field),
                        doc: concat!($($doc, "\n"),*),
                        label: <$ty as $crate::options::OptionValue>::LABEL,
                        default: $crate::declare_options!(@default $ty $(, $default)?),
                        short: $crate::declare_options!(@short $($short)?),
                        flag: <$ty as $crate::options::OptionValue>::FLAG,
                        #[cfg(feature = "cli")]
                        arg: <$ty as $crate::options::OptionValue>::cli_arg,
                    },
                )*]
            }

            fn given(&self, key: &str) -> bool {
                match key {
                    $(stringify!($field) => self.$field.is_some(),)*
                    _ => false,
                }
            }

            fn set_dynamic(
                &mut self,
                key: &str,
                v: &::rhai::Dynamic,
            ) -> Option<Result<(), $crate::options::ValueError>> {
                match key {
                    $(stringify!($field) => Some(
                        <$ty as $crate::options::OptionValue>::from_dynamic(v)
                            .map(|x| self.$field = Some(x)),
                    ),)*
                    _ => None,
                }
            }

            fn set_text(&mut self, key: &str, text: &str) -> Option<Result<(), String>> {
                match key {
                    $(stringify!($field) => Some(
                        <$ty as $crate::options::OptionValue>::parse_text(text)
                            .map(|x| self.$field = Some(x)),
                    ),)*
                    _ => None,
                }
            }
        }

        #[cfg(feature = "cli")]
        impl ::clap::FromArgMatches for $name {
            fn from_arg_matches(m: &::clap::ArgMatches) -> Result<Self, ::clap::Error> {
                let mut s = Self::default();
                ::clap::FromArgMatches::update_from_arg_matches(&mut s, m)?;
                Ok(s)
            }
            fn update_from_arg_matches(&mut self, m: &::clap::ArgMatches) -> Result<(), ::clap::Error> {
                $(
                    if let Some(v) = <$ty as $crate::options::OptionValue>::from_matches(m, stringify!($field)) {
                        self.$field = Some(v);
                    }
                )*
                Ok(())
            }
        }

        #[cfg(feature = "cli")]
        impl ::clap::Args for $name {
            fn augment_args(cmd: ::clap::Command) -> ::clap::Command {
                $crate::options::augment::<Self>(cmd)
            }
            fn augment_args_for_update(cmd: ::clap::Command) -> ::clap::Command {
                $crate::options::augment::<Self>(cmd)
            }
        }
    };
    (@default $ty:ty) => { None };
    (@default $ty:ty, $default:expr) => {
        Some(<$ty as $crate::options::OptionValue>::show(&{
            let d: $ty = $default;
            d
        }))
    };
    (@short) => { None };
    (@short $c:literal) => { Some($c) };
}

#[cfg(test)]
mod tests {
    use super::*;

    declare_options! {
        /// A test declaration.
        pub struct Demo {
            /// A fraction. Second sentence.
            frac: f64 = 0.5,
            /// A count.
            count: usize,
            /// A switch.
            @short 'q' quiet: bool = false,
            /// A name.
            name: String = "x".to_string(),
        }
    }

    fn map(pairs: &[(&str, Dynamic)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    #[test]
    fn a_script_map_is_checked_key_by_key() {
        let d: Demo = from_map("f", &map(&[("frac", Dynamic::from_int(1))])).unwrap();
        assert_eq!(d.frac, Some(1.0));
        assert_eq!(d.frac(), 1.0);
        assert!(!d.quiet());
        assert_eq!(d.name(), "x");
        let e = from_map::<Demo>("f", &map(&[("fraq", Dynamic::UNIT)])).unwrap_err();
        assert_eq!(
            e,
            "f: unknown option `fraq` (did you mean `frac`?); valid options: frac, count, quiet, name"
        );
        let e = from_map::<Demo>("f", &map(&[("count", "3".into())])).unwrap_err();
        assert_eq!(e, "f: option `count` must be an integer, got string `3`");
        let e = from_map::<Demo>("f", &map(&[("count", Dynamic::from_int(-2))])).unwrap_err();
        assert_eq!(
            e,
            "f: option `count` must be a non-negative integer, got -2"
        );
        let d: Demo = from_map("f", &map(&[("count", Dynamic::UNIT)])).unwrap();
        assert!(!d.given("count"));
    }

    #[test]
    fn lists_take_one_value_or_an_array() {
        let ints = |xs: &[i64]| Dynamic::from_array(xs.iter().map(|&x| x.into()).collect());
        assert_eq!(Vec::<u32>::from_dynamic(&3_i64.into()), Ok(vec![3]));
        assert_eq!(Vec::<u32>::from_dynamic(&ints(&[2, 4])), Ok(vec![2, 4]));
        assert_eq!(
            Vec::<u32>::from_dynamic(&ints(&[2, -4])),
            Err(ValueError::Invalid(
                "element 1 is -4, not a non-negative integer".into()
            ))
        );
        assert_eq!(
            Vec::<u32>::from_dynamic(&Dynamic::from(0.5)),
            Err(ValueError::WrongType)
        );
        assert_eq!(Vec::<f64>::from_dynamic(&ints(&[1, 2])), Ok(vec![1.0, 2.0]));
        assert_eq!(
            Vec::<f64>::from_dynamic(&2_i64.into()),
            Err(ValueError::WrongType)
        );
        assert_eq!(Vec::<u32>::parse_text("2, 4").unwrap(), vec![2, 4]);
        assert_eq!(Vec::<f64>::parse_text("0.5,1").unwrap(), vec![0.5, 1.0]);
        assert_eq!(vec![2_u32, 4].show(), "[2, 4]");
        let t = script_markdown_table::<Demo>();
        assert!(t.contains("| `frac` | number | `0.5` | A fraction."), "{t}");
    }

    #[cfg(feature = "cli")]
    #[test]
    fn the_command_line_takes_the_same_options() {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            demo: Demo,
        }
        let c = Cli::try_parse_from(["x", "--frac", "0.25", "-q"]).unwrap();
        assert_eq!(c.demo.frac, Some(0.25));
        assert_eq!(c.demo.quiet, Some(true));
        assert_eq!(c.demo.count, None);
        assert!(Cli::try_parse_from(["x", "--count", "-1"]).is_err());
        let m = Command::new("x");
        let m = augment::<Demo>(m).get_matches_from(["x"]);
        assert_eq!(Demo::from_arg_matches(&m).unwrap(), Demo::default());
    }

    #[test]
    fn documentation_comes_from_the_declaration() {
        let t = markdown_table::<Demo>();
        assert!(
            t.contains("| `frac` | `--frac` | number | `0.5` | A fraction. Second sentence. |"),
            "{t}"
        );
        assert!(
            t.contains("| `quiet` | `--quiet`, `-q` | boolean | `false` |"),
            "{t}"
        );
        assert!(
            t.contains("| `name` | `--name` | string | `\"x\"` |"),
            "{t}"
        );
        assert!(help_text::<Demo>().contains("count (integer): A count."));
        let pairs: Demo = from_pairs(&[("frac", "0.1"), ("quiet", "true")]).unwrap();
        assert_eq!(pairs.quiet, Some(true));
    }
}
