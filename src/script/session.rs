//! An interactive session: state that persists from one input to the next (the
//! REPL now, the notebook kernel later).
//!
//! Variables live in a [`Scope`]; functions in an [`AST`] that each input is
//! merged into (statements are dropped after they run); modules imported at
//! the top level are registered as static modules under their alias, so
//! `import "sparselab/report" as report;` on one line serves the next ones.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rhai::{Dynamic, Engine, Position, Scope, Stmt, AST};

use super::resolver::{Resolver, STDLIB, STDLIB_PREFIX};
use super::{eval_merged, new_engine, options::OPTION_KEYS, scope_with_params, ScriptOptions};

/// What a run did that its end must account for: bit widths computed, linears
/// quantized, targets missed. Each `sparselab run` and each [`Session`] has
/// its own; the primitives reach the one of the script running on their
/// thread through the `note_*` functions below.
///
/// Why: a script that computed widths and never passed them to `prune_layer`
/// once printed "0 quantized" and exited 0. With the ledger, that run ends in
/// an error in every front end ([`calibration_end_check`], [`run_end_check`]).
#[derive(Debug, Default)]
pub struct RunLedger {
    /// The function that first computed bit widths (`allocate_bits`, …).
    widths_by: Option<String>,
    /// Widths were computed since the last linear was quantized.
    widths_pending: bool,
    /// Linears quantized so far.
    quantized: usize,
    /// The last missed-target line (`MISSED TARGET: …`), repeated as the
    /// last line of `sparselab run`.
    missed_target: Option<String>,
}

/// A ledger shared between its owner and the thread running its script.
pub type SharedLedger = Arc<Mutex<RunLedger>>;

thread_local! {
    /// The ledger of the script running on this thread, if any.
    static CURRENT: RefCell<Option<SharedLedger>> = const { RefCell::new(None) };
}

/// Runs `f` with `ledger` as this thread's current ledger (restoring the
/// previous one after, so nested runs keep theirs).
pub fn with_ledger<T>(ledger: &SharedLedger, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<SharedLedger>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| c.borrow_mut().replace(ledger.clone()));
    let _restore = Restore(previous);
    f()
}

/// Applies `f` to the current ledger; nothing when no script runs.
fn update<T>(f: impl FnOnce(&mut RunLedger) -> T) -> Option<T> {
    CURRENT.with(|c| {
        let c = c.borrow();
        let ledger = c.as_ref()?;
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut l))
    })
}

/// Records that `function` computed bit widths for some linear (call it from
/// every script function that returns widths meant for `prune_layer`'s
/// `bits`). A run that then quantizes nothing ends in an error naming
/// `function` and the missing `bits:`. Scoring importance or measuring error
/// curves is not computing widths: do not call it there.
pub(crate) fn note_widths_computed(function: &str) {
    update(|l| {
        l.widths_by.get_or_insert_with(|| function.to_string());
        l.widths_pending = true;
    });
}

/// Records that a linear was quantized.
pub(crate) fn note_quantized() {
    update(|l| {
        l.quantized += 1;
        l.widths_pending = false;
    });
}

/// Records a missed target (`line` starts with "MISSED TARGET"), to be
/// repeated as the last line of `sparselab run`.
pub(crate) fn note_missed_target(line: String) {
    update(|l| l.missed_target = Some(line));
}

/// The function that computed bit widths in the current run, when no linear
/// was quantized since: those widths are still waiting for `prune_layer`.
pub(crate) fn widths_pending_by() -> Option<String> {
    update(|l| l.widths_pending.then(|| l.widths_by.clone()).flatten()).flatten()
}

/// The message of a run that computed widths with `by` and quantized nothing.
fn nothing_quantized(by: &str, what: &str) -> String {
    format!(
        "bit widths were computed by {by} but prune_layer was never given `bits:` — nothing \
         was quantized ({what}); pass the widths on: \
         prune_layer(layer, linear, #{{sparsity: …, bits: widths}})"
    )
}

/// At the end of a calibration's layers: an error when widths were computed
/// since the last quantized linear and this calibration compressed
/// `compressed` linears without quantizing any. A calibration that compressed
/// nothing (a statistics pass) is not checked.
pub(crate) fn calibration_end_check(compressed: usize, quantized: usize) -> Result<(), String> {
    if compressed == 0 || quantized > 0 {
        return Ok(());
    }
    match widths_pending_by() {
        Some(by) => Err(nothing_quantized(
            &by,
            &format!("the calibration compressed {compressed} linears, all kept in float"),
        )),
        None => Ok(()),
    }
}

/// At the end of a run with `ledger`: an error when widths were computed and
/// no linear was quantized; else the missed-target line to end the output
/// with, if a target was missed.
pub fn run_end_check(ledger: &SharedLedger) -> Result<Option<String>, String> {
    let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    match (&l.widths_by, l.quantized) {
        (Some(by), 0) => Err(nothing_quantized(by, "the script ended")),
        _ => Ok(l.missed_target.clone()),
    }
}

/// One entry of the help index.
#[derive(Debug, Clone, Default)]
pub struct HelpEntry {
    /// Signatures (`name(a: T, b: U) -> R`), one per overload.
    pub signatures: Vec<String>,
    /// Doc comment text (leaders stripped), one block per overload that has one.
    pub docs: Vec<String>,
}

/// A persistent script session.
pub struct Session {
    /// The engine (rebuilt by [`Session::reset`]).
    pub engine: Engine,
    /// Its module resolver.
    pub resolver: Resolver,
    /// Variables.
    pub scope: Scope<'static>,
    /// Functions defined so far.
    pub ast: AST,
    opts: ScriptOptions,
    /// `alias → import path` of the modules imported so far.
    pub modules: BTreeMap<String, String>,
    /// The text of every input so far, by name, in order (for error snippets).
    inputs: Vec<(String, String)>,
    /// What the session's run did so far (widths computed, linears quantized).
    ledger: SharedLedger,
}

impl Session {
    /// A fresh session with `opts` (its `--set` values become variables).
    pub fn new(opts: ScriptOptions) -> Self {
        let (engine, resolver) = new_engine(&opts);
        Self {
            engine,
            resolver,
            scope: scope_with_params(&opts.params),
            ast: AST::empty(),
            opts,
            modules: BTreeMap::new(),
            inputs: Vec::new(),
            ledger: SharedLedger::default(),
        }
    }

    /// A value as the REPL shows it: through the script's own `to_debug`, so
    /// native types print as they do in scripts (`Vector<f32>[n] […]`).
    pub fn display(&self, v: &Dynamic) -> String {
        display_text(&self.engine, v)
    }

    /// Forgets every variable, function and import.
    pub fn reset(&mut self) {
        *self = Self::new(self.opts.clone());
    }

    /// Runs one input (named `name` in errors) and returns its value, or the
    /// formatted error. Functions it defines persist; so do its top-level imports.
    pub fn eval(&mut self, name: &str, text: &str) -> Result<Dynamic, String> {
        // Imports at the top level of this input, registered once it ran.
        let imports: Vec<(String, String)> = match self.engine.compile_with_scope(&self.scope, text)
        {
            Ok(ast) => ast
                .statements()
                .iter()
                .filter_map(|s| match s {
                    Stmt::Import(x, _) => match (&x.0, &x.1) {
                        (rhai::Expr::StringConstant(p, _), alias) if !alias.name.is_empty() => {
                            Some((alias.name.to_string(), p.to_string()))
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let value = with_ledger(&self.ledger, || {
            eval_merged(
                &self.engine,
                &mut self.scope,
                &mut self.ast,
                name,
                text,
                Some(&self.inputs),
            )
        });
        self.inputs.push((name.to_string(), text.to_string()));
        if value.is_err() {
            // An interruption that ended this input is used up: a flag still
            // set (a primitive saw it and the error went straight out) must not
            // stop the next input at its first step.
            super::INTERRUPT.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let value = value?;
        for (alias, path) in imports {
            let module = rhai::module_resolvers::ModuleResolver::resolve(
                &self.resolver,
                &self.engine,
                Some(name),
                &path,
                Position::NONE,
            )
            .map_err(|e| format!("error: {e}"))?;
            self.engine.register_static_module(alias.as_str(), module);
            self.modules.insert(alias, path);
        }
        Ok(value)
    }

    /// Runs a script file in the session (its functions and variables stay).
    pub fn load_file(&mut self, path: &Path) -> Result<Dynamic, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
        self.eval(&path.to_string_lossy(), &text)
    }

    /// Every function name the session knows (native, standard, the session's own,
    /// and `alias::name` of imported modules), sorted.
    pub fn function_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.help_index().into_keys().collect();
        names.retain(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        });
        names
    }

    /// Property names of the registered types.
    pub fn property_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .gen_fn_signatures(false)
            .iter()
            .filter_map(|s| s.strip_prefix("get$"))
            .filter_map(|s| s.split('(').next())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Variable names in scope.
    pub fn variable_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scope.iter_raw().map(|(n, ..)| n.to_string()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Option keys: of `function` when known, else of every primitive.
    pub fn option_keys(&self, function: Option<&str>) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = match function.and_then(super::options::keys_of) {
            Some(k) => k.to_vec(),
            None => OPTION_KEYS
                .iter()
                .flat_map(|(_, k)| k.iter().copied())
                .collect(),
        };
        keys.sort();
        keys.dedup();
        keys
    }

    /// The help index: function name → signatures and doc comments, from the
    /// engine's metadata, the session's functions and the script library.
    pub fn help_index(&self) -> BTreeMap<String, HelpEntry> {
        let mut index: BTreeMap<String, HelpEntry> = BTreeMap::new();
        if let Ok(json) = self
            .engine
            .gen_fn_metadata_with_ast_to_json(&self.ast, false)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
                collect_json_functions(&v, "", &mut index);
            }
        }
        // The script library, whether imported or not, as `name::fn`.
        for (name, _) in STDLIB {
            let path = format!("{STDLIB_PREFIX}{name}");
            if let Ok(ast) = self
                .resolver
                .compile(&self.engine, &path, None, Position::NONE)
            {
                let alias = self
                    .modules
                    .iter()
                    .find(|(_, p)| **p == path)
                    .map(|(a, _)| a.clone())
                    .unwrap_or_else(|| name.to_string());
                add_ast_functions(&ast, &format!("{alias}::"), &mut index);
            }
        }
        for (alias, path) in &self.modules {
            if path.starts_with(STDLIB_PREFIX) {
                continue;
            }
            if let Ok(ast) = self
                .resolver
                .compile(&self.engine, path, None, Position::NONE)
            {
                add_ast_functions(&ast, &format!("{alias}::"), &mut index);
            }
        }
        index
    }

    /// `:help name` text, or `None` when nothing has that name.
    pub fn help(&self, name: &str) -> Option<String> {
        let index = self.help_index();
        let entry = index.get(name)?;
        let mut out = String::new();
        for s in &entry.signatures {
            out += s;
            out += "\n";
        }
        for d in &entry.docs {
            out += "\n";
            out += d;
            out += "\n";
        }
        if let Some(options) = super::options::options_help(name) {
            out += "\n";
            out += &options;
        }
        Some(out)
    }
}

/// A value as `engine`'s scripts show it, through their own `to_debug` (the
/// REPL's output and the kernel's `text/plain`).
pub fn display_text(engine: &Engine, v: &Dynamic) -> String {
    let mut scope = Scope::new();
    scope.push_dynamic("__value", v.clone());
    engine
        .eval_with_scope::<String>(&mut scope, "to_debug(__value)")
        .unwrap_or_else(|_| v.to_string())
}

/// Doc comment lines with their `///` or `/** */` leaders removed.
pub fn strip_doc(comments: &[impl AsRef<str>]) -> String {
    let mut lines = Vec::new();
    for c in comments {
        for line in c.as_ref().lines() {
            let l = line.trim_start();
            let l = l
                .strip_prefix("///")
                .or_else(|| l.strip_prefix("/**"))
                .unwrap_or(l);
            let l = l.strip_suffix("*/").unwrap_or(l);
            let l = l.strip_prefix(' ').unwrap_or(l);
            lines.push(l.trim_end().to_string());
        }
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

fn collect_json_functions(
    v: &serde_json::Value,
    prefix: &str,
    index: &mut BTreeMap<String, HelpEntry>,
) {
    if let Some(fns) = v.get("functions").and_then(|f| f.as_array()) {
        for f in fns {
            let Some(name) = f.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            if name.contains('$') {
                continue;
            }
            let entry = index.entry(format!("{prefix}{name}")).or_default();
            if let Some(sig) = f.get("signature").and_then(|s| s.as_str()) {
                let sig = format!("{prefix}{}", super::errors::pretty_signature(sig));
                if !entry.signatures.contains(&sig) {
                    entry.signatures.push(sig);
                }
            }
            if let Some(doc) = f.get("docComments").and_then(|d| d.as_array()) {
                let lines: Vec<&str> = doc.iter().filter_map(|d| d.as_str()).collect();
                let text = strip_doc(&lines);
                if !text.is_empty() && !entry.docs.contains(&text) {
                    entry.docs.push(text);
                }
            }
        }
    }
    if let Some(mods) = v.get("modules").and_then(|m| m.as_object()) {
        for (name, m) in mods {
            collect_json_functions(m, &format!("{prefix}{name}::"), index);
        }
    }
}

fn add_ast_functions(ast: &AST, prefix: &str, index: &mut BTreeMap<String, HelpEntry>) {
    for f in ast.iter_functions() {
        if f.access == rhai::FnAccess::Private {
            continue;
        }
        let entry = index.entry(format!("{prefix}{}", f.name)).or_default();
        let sig = format!("{prefix}{}({})", f.name, f.params.join(", "));
        if !entry.signatures.contains(&sig) {
            entry.signatures.push(sig);
        }
        let text = strip_doc(&f.comments);
        if !text.is_empty() && !entry.docs.contains(&text) {
            entry.docs.push(text);
        }
    }
}
