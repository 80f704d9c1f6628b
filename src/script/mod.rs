//! The Rhai scripting environment: one engine for `sparselab run`, `check`, the
//! REPL and notebooks.
//!
//! [`new_engine`] registers the native [`Vector`](vector::Vector), the `Model`,
//! `Calibration` and `Layer` handles, the primitives ([`primitives`]), the
//! `param` statement and the module resolver of the script library
//! (`import "sparselab/pipeline" as p;`). [`run_file`] and [`check_file`] are
//! what the command line calls; errors come back formatted with
//! `file:line:column`, the source line and a caret ([`errors`]).
//!
//! ## Parameters (`--set`)
//!
//! `sparselab run script.rhai --set nsamples=16 --set model=../m` makes each
//! name a variable in the script's scope. Values are read as an integer if they
//! parse as one, else a float, else `true`/`false` as a boolean, else a string.
//! A script declares its knobs and their defaults with
//!
//! ```rhai
//! param nsamples = 128;   // 128 unless --set nsamples=…
//! ```
//!
//! where a `--set` value is converted to the default's type (an integer default
//! accepts only an integer, a float default any number, a string default takes
//! the text as is). A `--set` name that the script neither declares with
//! `param` nor reads is an error, so a typo never goes unnoticed.

pub mod assist;
pub mod check;
pub mod errors;
pub mod evaluation;
pub mod handles;
pub mod mixed;
pub mod options;
pub mod primitives;
pub mod resolver;
pub mod session;
pub mod suggest;
pub mod vector;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};

use errors::{format_eval_error, format_parse_error, Known, Sources};
use handles::{CalibHandle, LayerHandle, LayerIter, ModelHandle};
use resolver::Resolver;
use vector::Vector;

pub use handles::ModelHandle as Model;
pub use vector::Vector as NativeVector;

/// Set (by a front end's Ctrl-C handler, or a notebook kernel's interrupt) to
/// stop the running script: long primitives poll it and fail with
/// "interrupted (Ctrl-C)", and the engine stops at its next step, clearing it.
/// The same flag as [`crate::runtime::interrupt::INTERRUPT`], which the core polls.
pub use crate::runtime::interrupt::INTERRUPT;

/// How to build an engine.
#[derive(Debug, Clone, Default)]
pub struct ScriptOptions {
    /// Extra module directories (searched after the importing script's own
    /// directory, before `SPARSELAB_SCRIPT_PATH`).
    pub search_path: Vec<PathBuf>,
    /// No progress output from the primitives.
    pub quiet: bool,
    /// `--set name=value` pairs, raw.
    pub params: Vec<(String, String)>,
}

/// Registers the type names scripts and error messages see, and the iterators.
pub fn register_types(engine: &mut Engine) {
    engine
        .register_type_with_name::<Vector>("Vector")
        .register_type_with_name::<ModelHandle>("Model")
        .register_type_with_name::<CalibHandle>("Calibration")
        .register_type_with_name::<LayerHandle>("Layer")
        .register_type_with_name::<LayerIter>("Layers")
        .register_type_with_name::<crate::report::summary::Summary>("Summary")
        .register_type_with_name::<crate::compress::ErrorCurves>("ErrorCurves")
        .register_type_with_name::<crate::plot::Plot>("Plot")
        .register_type_with_name::<crate::plot::CompareTable>("CompareTable")
        .register_iterator::<Vector>()
        .register_iterator_result::<LayerIter, LayerHandle>();
}

/// The engine every front end uses, and its module resolver.
pub fn new_engine(opts: &ScriptOptions) -> (Engine, Resolver) {
    let mut engine = Engine::new();
    register_types(&mut engine);
    engine.register_global_module(rhai::exported_module!(vector::vector_api).into());
    engine.register_global_module(rhai::exported_module!(primitives::primitives).into());
    engine.register_global_module(rhai::exported_module!(mixed::mixed).into());
    engine.register_global_module(rhai::exported_module!(evaluation::evaluation).into());

    let mut search = opts.search_path.clone();
    search.extend(resolver::env_search_path());
    let resolver = Resolver::new(search);
    engine.set_module_resolver(resolver.clone());

    let mut params = Map::new();
    for (k, v) in &opts.params {
        params.insert(k.as_str().into(), v.clone().into());
    }
    let mut tag = Map::new();
    tag.insert("quiet".into(), opts.quiet.into());
    tag.insert("params".into(), params.into());
    engine.set_default_tag(tag);

    engine
        .register_custom_syntax(["param", "$ident$", "=", "$expr$"], true, param_statement)
        .expect("the param syntax is valid");
    // Deep recursion in user functions is an error, not a stack overflow.
    engine.set_max_call_levels(256);
    // A front end (the REPL) sets INTERRUPT on Ctrl-C: the script stops at its
    // next step and the error says why.
    engine.on_progress(|_| {
        INTERRUPT
            .swap(false, Ordering::Relaxed)
            .then(|| Dynamic::from("interrupted (Ctrl-C)".to_string()))
    });
    (engine, resolver)
}

/// `param NAME = DEFAULT;`: NAME is the `--set` value converted to the default's
/// type, or the default.
fn param_statement(
    ctx: &mut rhai::EvalContext,
    inputs: &[rhai::Expression],
) -> Result<Dynamic, Box<EvalAltResult>> {
    let name = inputs[0]
        .get_string_value()
        .expect("$ident$ is a name")
        .to_string();
    let default = ctx.eval_expression_tree(&inputs[1])?;
    let raw = ctx
        .tag()
        .read_lock::<Map>()
        .and_then(|t| t.get("params").cloned())
        .and_then(|p| {
            p.read_lock::<Map>()
                .and_then(|p| p.get(name.as_str()).cloned())
        });
    let value = match raw {
        None => default,
        Some(raw) => {
            let raw = raw.to_string();
            coerce_param(&name, &raw, &default).map_err(|m| {
                Box::new(EvalAltResult::ErrorRuntime(m.into(), inputs[0].position()))
            })?
        }
    };
    ctx.scope_mut().push(name, value);
    Ok(Dynamic::UNIT)
}

/// A `--set` value as the documented rule reads it: integer, float, boolean, string.
pub fn parse_value(raw: &str) -> Dynamic {
    if let Ok(i) = raw.parse::<i64>() {
        return Dynamic::from_int(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        if raw.chars().any(|c| c.is_ascii_digit()) {
            return Dynamic::from_float(f);
        }
    }
    match raw {
        "true" => true.into(),
        "false" => false.into(),
        _ => raw.to_string().into(),
    }
}

/// A `--set` value converted to the type of a `param`'s default.
fn coerce_param(name: &str, raw: &str, default: &Dynamic) -> Result<Dynamic, String> {
    let bad = |what: &str| {
        format!("--set {name}={raw}: parameter `{name}` expects {what} (its default is {default})")
    };
    if default.is_int() {
        raw.parse::<i64>()
            .map(Dynamic::from_int)
            .map_err(|_| bad("an integer"))
    } else if default.is_float() {
        raw.parse::<f64>()
            .map(Dynamic::from_float)
            .map_err(|_| bad("a number"))
    } else if default.is_bool() {
        match raw {
            "true" => Ok(true.into()),
            "false" => Ok(false.into()),
            _ => Err(bad("true or false")),
        }
    } else if default.is_string() {
        Ok(raw.to_string().into())
    } else {
        Ok(parse_value(raw))
    }
}

/// Splits `name=value`; the name must be an identifier.
pub fn parse_set(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("--set {arg}: expected name=value"))?;
    let name = name.trim();
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "--set {arg}: `{name}` is not a valid variable name"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// A scope holding the `--set` values as variables.
pub fn scope_with_params(params: &[(String, String)]) -> Scope<'static> {
    let mut scope = Scope::new();
    for (k, v) in params {
        scope.push_dynamic(k.clone(), parse_value(v));
    }
    scope
}

/// Names the error formatter may suggest: the engine's, the script's, the scope's.
pub fn known_names(engine: &Engine, ast: &AST, scope: &Scope) -> Known {
    let mut known = Known::from_engine(engine, Some(ast));
    known
        .variables
        .extend(scope.iter_raw().map(|(n, ..)| n.to_string()));
    let names = check::names(ast);
    known.variables.extend(names.declared);
    known.variables.extend(names.params);
    known
}

/// Reads and compiles a script file; the AST's source is its path.
pub fn compile_file(engine: &Engine, path: &Path, scope: &Scope) -> Result<(AST, String), String> {
    let name = path.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("error: cannot read script {name}: {e}"))?;
    let mut ast = engine
        .compile_with_scope(scope, &text)
        .map_err(|e| format_parse_error(&e, &name, &text))?;
    ast.set_source(name);
    Ok((ast, text))
}

/// Runs a script file with `opts`; `Err` holds the formatted error.
///
/// The end of the run is checked too: a run that computed bit widths and
/// quantized nothing is an error, and a run that missed a bit target prints
/// its "MISSED TARGET" line again as the last line of its output
/// ([`session::run_end_check`]).
pub fn run_file(path: &Path, opts: &ScriptOptions) -> Result<(), String> {
    let ledger = session::SharedLedger::default();
    session::with_ledger(&ledger, || run_file_inner(path, opts))?;
    match session::run_end_check(&ledger) {
        Err(msg) => Err(format!("error: {msg}\n")),
        Ok(Some(missed)) => {
            println!("{missed}");
            Ok(())
        }
        Ok(None) => Ok(()),
    }
}

fn run_file_inner(path: &Path, opts: &ScriptOptions) -> Result<(), String> {
    let (engine, _) = new_engine(opts);
    let mut scope = scope_with_params(&opts.params);
    let (ast, text) = compile_file(&engine, path, &scope)?;
    let names = check::names(&ast);
    if let Some(msg) = check::check_overrides(&names, opts.params.iter().map(|(k, _)| k.as_str())) {
        return Err(format!("error: {msg}\n"));
    }
    let name = path.to_string_lossy().into_owned();
    engine.run_ast_with_scope(&mut scope, &ast).map_err(|e| {
        let sources = Sources {
            main_name: &name,
            main_text: &text,
            earlier: None,
        };
        format_eval_error(&e, &sources, &known_names(&engine, &ast, &scope))
    })
}

/// Parses and statically checks a script file; `Err` holds every problem, formatted.
pub fn check_file(path: &Path, opts: &ScriptOptions) -> Result<(), String> {
    let (engine, resolver) = new_engine(opts);
    let scope = scope_with_params(&opts.params);
    let (ast, text) = compile_file(&engine, path, &scope)?;
    let name = path.to_string_lossy().into_owned();
    let known = known_names(&engine, &ast, &scope);
    let problems = check::check_ast(&engine, &resolver, &ast, &name, &known);
    let mut out = String::new();
    let sources = Sources {
        main_name: &name,
        main_text: &text,
        earlier: None,
    };
    for p in &problems {
        let err = EvalAltResult::ErrorRuntime(p.message.clone().into(), p.pos);
        out += &format_eval_error(&err, &sources, &known);
    }
    if let Some(msg) = check::check_overrides(
        &check::names(&ast),
        opts.params.iter().map(|(k, _)| k.as_str()),
    ) {
        out += &format!("error: {msg}\n");
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// Evaluates `text` (named `name`) in `scope`, merging its functions into `ast`
/// so that they persist (the REPL and notebook pattern). Returns the value of
/// the last expression. `earlier` holds the text of earlier inputs, for errors
/// inside functions they defined.
pub fn eval_merged(
    engine: &Engine,
    scope: &mut Scope,
    ast: &mut AST,
    name: &str,
    text: &str,
    earlier: Option<&[(String, String)]>,
) -> Result<Dynamic, String> {
    let mut new = engine
        .compile_with_scope(scope, text)
        .map_err(|e| format_parse_error(&e, name, text))?;
    new.set_source(name);
    *ast += new;
    let result = engine.eval_ast_with_scope::<Dynamic>(scope, ast);
    let known = known_names(engine, ast, scope);
    ast.clear_statements();
    result.map_err(|e| {
        let sources = Sources {
            main_name: name,
            main_text: text,
            earlier,
        };
        format_eval_error(&e, &sources, &known)
    })
}

/// The position-less runtime error of a message (for callers building errors).
pub fn runtime_error(msg: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        msg.into().into(),
        Position::NONE,
    ))
}
