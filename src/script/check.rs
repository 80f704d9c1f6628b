//! `sparselab check`: what can be known about a script without running it.
//!
//! After parsing, the AST is walked for: calls of functions that exist nowhere
//! (registered, standard, defined in the script, or in an imported module),
//! imports that do not resolve, option-map literals with keys a primitive does
//! not take, and `--set` names the script never declares with `param` nor reads.

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
