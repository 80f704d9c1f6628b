//! `sparselab check`: what can be known about a script without running it.
//!
//! After parsing, the AST is walked for: calls of functions that exist nowhere
//! (registered, standard, defined in the script, or in an imported module),
//! imports that do not resolve, option-map literals with keys a primitive does
//! not take, string literals outside a closed set of values ([`CLOSED_VALUES`]:
//! a metric `"obz"`, a method `"budgte"`, with the nearest valid value
//! suggested), and `--set` names the script never declares with `param` nor
//! reads. Dataset names are not a closed set (a local file is a dataset too),
//! nor are device names (`cuda:N`).

use std::collections::{BTreeSet, HashMap};

use rhai::{ASTNode, Engine, Expr, Position, Stmt, AST};

use super::errors::{function_not_found, Known};
use super::options::{keys_of, unknown_key_message};
use super::resolver::Resolver;

/// One problem found by [`check_ast`].
#[derive(Debug, Clone)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// The source it is in (`""` = the main script).
    pub source: String,
    /// Where.
    pub pos: Position,
}

/// Where a primitive takes a string from a closed set.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    /// The value of this key of its options map.
    Key(&'static str),
    /// Its positional argument of this index, as a function call counts them
    /// (in a method call `x.f(a)`, `x` is argument 0).
    Arg(usize),
}

/// A closed set of string values one primitive accepts in one place.
pub struct ClosedSet {
    /// The primitive.
    pub function: &'static str,
    /// Where the value goes.
    pub slot: Slot,
    /// What the value is, for the message ("importance metric").
    pub what: &'static str,
    /// The values accepted, as the primitive spells them.
    pub values: fn() -> Vec<&'static str>,
    /// Whether the primitive ignores case (and surrounding blanks).
    pub any_case: bool,
}

const PLOT_FORMAT: fn() -> Vec<&'static str> = || vec!["png", "svg"];
const GROUPINGS: fn() -> Vec<&'static str> = || vec!["quantile", "kmeans"];

/// The closed sets `sparselab check` knows. Register a new primitive's here
/// (a test runs each through its primitive, so a value accepted at run time
/// but missing here, or the reverse, fails it).
pub const CLOSED_VALUES: &[ClosedSet] = &[
    ClosedSet {
        function: "channel_errors",
        slot: Slot::Key("weight"),
        what: "error weight",
        values: || crate::compress::ErrorWeight::NAMES.to_vec(),
        any_case: false,
    },
    ClosedSet {
        function: "prune_layer",
        slot: Slot::Key("method"),
        what: "method",
        values: || crate::compress::rules::METHODS.to_vec(),
        any_case: false,
    },
    ClosedSet {
        function: "score_importance",
        slot: Slot::Arg(2),
        what: "importance metric",
        values: || {
            crate::compress::Metric::ALL
                .iter()
                .map(|m| m.name())
                .collect()
        },
        any_case: false,
    },
    ClosedSet {
        function: "group_channels",
        slot: Slot::Key("method"),
        what: "grouping method",
        values: GROUPINGS,
        any_case: false,
    },
    ClosedSet {
        function: "allocate_bits",
        slot: Slot::Key("method"),
        what: "allocation method",
        values: || vec!["quantile", "budget", "threshold", "groups"],
        any_case: false,
    },
    ClosedSet {
        function: "allocate_bits",
        slot: Slot::Key("grouping"),
        what: "grouping",
        values: GROUPINGS,
        any_case: false,
    },
    ClosedSet {
        function: "calibrate",
        slot: Slot::Key("gemm"),
        what: "GEMM precision",
        values: || {
            use crate::compute::kernels::CpuGemm;
            [CpuGemm::F32, CpuGemm::Bf16].map(CpuGemm::name).to_vec()
        },
        any_case: false,
    },
    ClosedSet {
        function: "load_model",
        slot: Slot::Key("dtype"),
        what: "dtype",
        values: || {
            vec![
                "f32", "f16", "bf16", "float32", "float", "float16", "half", "bfloat16",
            ]
        },
        any_case: true,
    },
    ClosedSet {
        function: "save",
        slot: Slot::Key("format"),
        what: "save format",
        values: || {
            use crate::model::SaveFormat;
            [SaveFormat::Dense, SaveFormat::Packed]
                .map(SaveFormat::name)
                .to_vec()
        },
        any_case: false,
    },
    ClosedSet {
        function: "normalize",
        slot: Slot::Arg(1),
        what: "normalisation",
        values: || vec!["mean", "sum", "max", "l2", "minmax", "zscore"],
        any_case: false,
    },
    ClosedSet {
        function: "plot_layers",
        slot: Slot::Arg(1),
        what: "layer field",
        values: || crate::plot::LAYER_FIELDS.to_vec(),
        any_case: false,
    },
    ClosedSet {
        function: "plot_histogram",
        slot: Slot::Key("format"),
        what: "plot format",
        values: PLOT_FORMAT,
        any_case: true,
    },
    ClosedSet {
        function: "plot_bits",
        slot: Slot::Key("format"),
        what: "plot format",
        values: PLOT_FORMAT,
        any_case: true,
    },
    ClosedSet {
        function: "plot_layers",
        slot: Slot::Key("format"),
        what: "plot format",
        values: PLOT_FORMAT,
        any_case: true,
    },
    ClosedSet {
        function: "plot_compare",
        slot: Slot::Key("format"),
        what: "plot format",
        values: PLOT_FORMAT,
        any_case: true,
    },
    ClosedSet {
        function: "plot_xy",
        slot: Slot::Key("format"),
        what: "plot format",
        values: PLOT_FORMAT,
        any_case: true,
    },
];

/// The problem with `value` in `set`, if it is not one of its values:
/// `score_importance: unknown importance metric `obz` (did you mean `obs`?); valid: …`.
pub fn closed_value_message(set: &ClosedSet, value: &str) -> Option<String> {
    let values = (set.values)();
    let probe = if set.any_case {
        value.trim().to_ascii_lowercase()
    } else {
        value.to_string()
    };
    if values.contains(&probe.as_str()) {
        return None;
    }
    let hint = super::suggest::nearest(value, values.iter().copied(), 1)
        .first()
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    Some(format!(
        "{}: unknown {} `{value}`{hint}; valid: {}",
        set.function,
        set.what,
        values.join(", ")
    ))
}

/// A string literal (or a constant the optimizer folded into one) and where it is.
fn string_literal(e: &Expr) -> Option<(String, Position)> {
    match e {
        Expr::StringConstant(s, pos) => Some((s.to_string(), *pos)),
        Expr::DynamicConstant(d, pos) if d.is_string() => Some((d.to_string(), *pos)),
        _ => None,
    }
}

/// The problems with closed-set values in one call of `name` (`args` as the
/// call holds them; `is_method`: `x.name(args)`, whose `x` is not in `args`).
fn closed_value_problems(name: &str, args: &[Expr], is_method: bool) -> Vec<(String, Position)> {
    let mut out = Vec::new();
    for set in CLOSED_VALUES.iter().filter(|s| s.function == name) {
        match set.slot {
            Slot::Arg(i) => {
                let i = if is_method { i.checked_sub(1) } else { Some(i) };
                if let Some((v, pos)) = i.and_then(|i| args.get(i)).and_then(string_literal) {
                    if let Some(m) = closed_value_message(set, &v) {
                        out.push((m, pos));
                    }
                }
            }
            Slot::Key(key) => {
                for arg in args {
                    let found = match arg {
                        Expr::Map(m, _) => {
                            m.0.iter()
                                .find(|(k, _)| k.name == key)
                                .and_then(|(_, v)| string_literal(v))
                        }
                        Expr::DynamicConstant(d, pos) => d
                            .read_lock::<rhai::Map>()
                            .and_then(|m| m.get(key).cloned())
                            .filter(|v| v.is_string())
                            .map(|v| (v.to_string(), *pos)),
                        _ => None,
                    };
                    if let Some((v, pos)) = found {
                        if let Some(m) = closed_value_message(set, &v) {
                            out.push((m, pos));
                        }
                    }
                }
            }
        }
    }
    out
}

/// What a script declares and reads.
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// `param NAME = …;` declarations, in order.
    pub params: Vec<String>,
    /// Every variable name the script reads.
    pub variables: BTreeSet<String>,
    /// Variables declared with `let`/`const`/`for`.
    pub declared: BTreeSet<String>,
}

/// The parameters, variables read and variables declared of a script.
pub fn names(ast: &AST) -> Names {
    let mut n = Names::default();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::Custom(c, _)))
                if c.tokens.first().is_some_and(|t| t == "param") =>
            {
                if let Some(name) = c.inputs.first().and_then(var_name) {
                    n.params.push(name);
                }
            }
            Some(ASTNode::Expr(Expr::Variable(v, ..))) if v.2.is_empty() => {
                n.variables.insert(v.1.to_string());
            }
            Some(ASTNode::Stmt(Stmt::Var(v, ..))) => {
                n.declared.insert(v.0.name.to_string());
            }
            Some(ASTNode::Stmt(Stmt::For(f, ..))) => {
                n.declared.insert(f.0.name.to_string());
                if let Some(i) = &f.1 {
                    n.declared.insert(i.name.to_string());
                }
            }
            _ => {}
        }
        true
    });
    n
}

fn var_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Variable(v, ..) => Some(v.1.to_string()),
        Expr::StringConstant(s, _) => Some(s.to_string()),
        _ => None,
    }
}

/// Statically checks `ast` (named `source`): returns every problem found.
pub fn check_ast(
    engine: &Engine,
    resolver: &Resolver,
    ast: &AST,
    source: &str,
    known: &Known,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Imported modules: alias → function names.
    let mut modules: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut imports: Vec<(String, String, Position)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Stmt(Stmt::Import(x, pos))) = path.last() {
            if let (Expr::StringConstant(p, _), alias) = (&x.0, &x.1) {
                imports.push((p.to_string(), alias.name.to_string(), *pos));
            }
        }
        true
    });
    for (path, alias, pos) in imports {
        match resolver.compile(engine, &path, Some(source), pos) {
            Ok(m) => {
                let fns = m
                    .iter_functions()
                    .filter(|f| f.access != rhai::FnAccess::Private && !f.name.contains('$'))
                    .map(|f| f.name.to_string())
                    .collect();
                if !alias.is_empty() {
                    modules.insert(alias, fns);
                }
            }
            Err(e) => problems.push(Problem {
                message: match *e {
                    rhai::EvalAltResult::ErrorRuntime(m, _) => m.to_string(),
                    other => super::errors::without_position(&other),
                },
                source: String::new(),
                pos,
            }),
        }
    }

    ast.walk(&mut |path: &[ASTNode]| {
        let (call, pos, is_method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(f, pos))) => (f, *pos, false),
            Some(ASTNode::Stmt(Stmt::FnCall(f, pos))) => (f, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(f, pos))) => (f, *pos, true),
            _ => return true,
        };
        let name = call.name.as_str();
        if call.is_operator_call()
            || !name
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        {
            return true;
        }
        if !call.namespace.is_empty() {
            let ns = call.namespace.to_string();
            match modules.get(&ns) {
                Some(fns) if fns.contains(name) => {}
                Some(fns) => {
                    let near = super::suggest::nearest(name, fns.iter().map(String::as_str), 3);
                    let hint = if near.is_empty() {
                        format!(
                            "; it has: {}",
                            fns.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    } else {
                        format!("; did you mean `{ns}::{}`?", near[0])
                    };
                    problems.push(Problem {
                        message: format!("module `{ns}` has no function `{name}`{hint}"),
                        source: String::new(),
                        pos,
                    });
                }
                None => {}
            }
            return true;
        }
        // `known` holds the runtime's built-in calls too; `this` is a keyword.
        if !known.functions.contains(name) && name != "this" {
            problems.push(Problem {
                message: function_not_found(name, known),
                source: String::new(),
                pos,
            });
            return true;
        }
        for (message, pos) in closed_value_problems(name, &call.args, is_method) {
            problems.push(Problem {
                message,
                source: String::new(),
                pos,
            });
        }
        // Option-map literals of the primitives.
        if !is_method {
            if let Some(valid) = keys_of(name) {
                for arg in call.args.iter() {
                    let keys: Vec<String> = match arg {
                        Expr::Map(m, _) => m.0.iter().map(|(k, _)| k.name.to_string()).collect(),
                        // The optimizer folds constant maps.
                        Expr::DynamicConstant(d, _) => match d.read_lock::<rhai::Map>() {
                            Some(m) => m.keys().map(|k| k.to_string()).collect(),
                            None => continue,
                        },
                        _ => continue,
                    };
                    if let Some(msg) =
                        unknown_key_message(name, valid, keys.iter().map(String::as_str))
                    {
                        problems.push(Problem {
                            message: msg,
                            source: String::new(),
                            pos: arg.position(),
                        });
                    }
                }
            }
        }
        true
    });
    problems
}

/// The problem with `--set` names a script neither declares with `param` nor reads.
pub fn check_overrides<'a>(
    names: &Names,
    set: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let unused: Vec<&str> = set
        .into_iter()
        .filter(|s| !names.params.iter().any(|p| p == s) && !names.variables.contains(*s))
        .collect();
    if unused.is_empty() {
        return None;
    }
    let params = if names.params.is_empty() {
        "it declares no parameters".to_string()
    } else {
        format!("its parameters: {}", names.params.join(", "))
    };
    let near: Vec<String> = unused
        .iter()
        .filter_map(|u| {
            super::suggest::nearest(u, names.params.iter().map(String::as_str), 1)
                .first()
                .map(|n| format!("`{u}` → `{n}`?"))
        })
        .collect();
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {})", near.join(", "))
    };
    Some(format!(
        "--set {}: the script never uses {}{hint}; {params}",
        unused.join(", "),
        if unused.len() == 1 {
            "this name"
        } else {
            "these names"
        }
    ))
}
