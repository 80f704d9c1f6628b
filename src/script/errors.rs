//! Script errors as a person reads them: the message, `file:line:column`, the
//! source line with a caret, the chain of calls that led there, and for a
//! misspelt function, variable or property the nearest names.

use std::collections::BTreeSet;

use rhai::{Engine, EvalAltResult, ParseError, Position, AST};

use super::resolver::Resolver;
use super::suggest::nearest;

/// Functions the Rhai runtime provides without registering them.
pub(crate) const BUILTIN_CALLS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "is_def_var",
    "is_def_fn",
    "Fn",
    "call",
    "curry",
    "eval",
    "is_shared",
];
/// A signature in the words scripts use: handle types by their script names,
/// `int`/`float`/`string`/`any` for Rust's, no `&mut`, no `Result` wrapper.
pub fn pretty_signature(sig: &str) -> String {
    let sig = sig.replace("&mut ", "").replace("&str", "string");
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let w = match word.as_str() {
            "LayerHandle" => "Layer",
            "ModelHandle" => "Model",
            "CalibHandle" => "Calibration",
            "LayerIter" => "Layers",
            "INT" | "i64" => "int",
            "FLOAT" | "f64" => "float",
            "ImmutableString" | "String" => "string",
            "Dynamic" => "any",
            "Array" => "array",
            "Map" => "map",
            other => other,
        };
        out.push_str(w);
        word.clear();
    };
    for c in sig.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    // `-> R<T>` / `-> RhaiResultOf<T>` → `-> T`.
    for wrapper in ["-> R<", "-> RhaiResultOf<", "-> Result<"] {
        if let Some(i) = out.find(wrapper) {
            if out.ends_with('>') {
                let inner = out[i + wrapper.len()..out.len() - 1].to_string();
                let inner = inner.split(',').next().unwrap_or(&inner).trim().to_string();
                out = format!("{}-> {inner}", &out[..i]);
            }
        }
    }
    out
}

/// Names a script could have meant: functions, variables, properties.
#[derive(Default, Clone)]
pub struct Known {
    /// Function names (native, standard library, script-defined).
    pub functions: BTreeSet<String>,
    /// Variable names (in scope or declared in the script).
    pub variables: BTreeSet<String>,
    /// Property names of the registered types.
    pub properties: BTreeSet<String>,
    /// Full signatures, for "no form takes these types" messages.
    pub signatures: Vec<String>,
}

impl Known {
    /// Everything the engine has registered plus the script's own functions.
    pub fn from_engine(engine: &Engine, ast: Option<&AST>) -> Self {
        let mut k = Known::default();
        for sig in engine.gen_fn_signatures(true) {
            let name = sig.split('(').next().unwrap_or("").trim();
            if let Some(p) = name.strip_prefix("get$") {
                k.properties.insert(p.to_string());
                continue;
            }
            if name.starts_with("set$") || name.starts_with("index$") || name.starts_with("anon$") {
                continue;
            }
            if name
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
            {
                k.functions.insert(name.to_string());
                k.signatures.push(pretty_signature(&sig));
            }
        }
        for kw in BUILTIN_CALLS {
            k.functions.insert(kw.to_string());
        }
        if let Some(ast) = ast {
            k.add_ast(ast);
        }
        k
    }

    /// Adds a script's functions (with their signatures).
    pub fn add_ast(&mut self, ast: &AST) {
        for f in ast.iter_functions() {
            self.functions.insert(f.name.to_string());
            self.signatures
                .push(format!("{}({})", f.name, f.params.join(", ")));
        }
    }
}

/// The text of each source an error may point into.
pub struct Sources<'a> {
    /// The name the main script's positions refer to (a path or `<repl>`).
    pub main_name: &'a str,
    /// Its text.
    pub main_text: &'a str,
    /// Earlier inputs of an interactive session (name → text), where functions
    /// defined before may fail now.
    pub earlier: Option<&'a [(String, String)]>,
}

impl Sources<'_> {
    /// In a session, the input that defined script function `name` last (a
    /// function runs with the source of the input that calls it, so Rhai's own
    /// source name would point at the wrong text).
    fn defining_input(&self, name: &str) -> Option<String> {
        let earlier = self.earlier?;
        let pattern = format!("fn {name}(");
        if self.main_text.contains(&pattern) {
            return Some(self.main_name.to_string());
        }
        earlier
            .iter()
            .rev()
            .find(|(_, t)| t.contains(&pattern))
            .map(|(n, _)| n.clone())
    }

    fn text(&self, name: &str) -> Option<String> {
        if name.is_empty() || name == self.main_name {
            Some(self.main_text.to_string())
        } else if let Some((_, t)) = self
            .earlier
            .and_then(|e| e.iter().rev().find(|(n, _)| n == name))
        {
            Some(t.clone())
        } else {
            Resolver::source_text(name)
        }
    }
}

/// `  --> file:line:col`, the line and a caret under the column.
fn snippet(sources: &Sources, source: &str, pos: Position) -> String {
    let name = if source.is_empty() {
        sources.main_name
    } else {
        source
    };
    let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) else {
        return format!(" --> {name}\n");
    };
    let num = line.to_string();
    let pad = " ".repeat(num.len());
    let mut out = format!("{pad}--> {name}:{line}:{col}\n");
    if let Some(text) = sources.text(source) {
        if let Some(src_line) = text.lines().nth(line - 1) {
            // Keep tabs so the caret lines up under them.
            let lead: String = src_line
                .chars()
                .take(col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out += &format!("{pad} |\n{num} | {src_line}\n{pad} | {lead}^\n");
        }
    }
    out
}

/// A parse error of `source` (named `name`).
pub fn format_parse_error(err: &ParseError, name: &str, source: &str) -> String {
    let sources = Sources {
        main_name: name,
        main_text: source,
        earlier: None,
    };
    let msg = err.err_type().to_string();
    format!("error: {msg}\n{}", snippet(&sources, "", err.position()))
}

/// The root message of an error, without its position.
fn message(err: &EvalAltResult, known: &Known) -> String {
    match err {
        EvalAltResult::ErrorRuntime(d, _) | EvalAltResult::ErrorTerminated(d, _)
            if d.is_string() =>
        {
            d.to_string()
        }
        EvalAltResult::ErrorFunctionNotFound(sig, _) => function_not_found(sig, known),
        EvalAltResult::ErrorVariableNotFound(name, _) => {
            let near = nearest(name, known.variables.iter().map(String::as_str), 3);
            format!("unknown variable `{name}`{}", did_you_mean(&near))
        }
        EvalAltResult::ErrorDotExpr(msg, _) | EvalAltResult::ErrorPropertyNotFound(msg, _) => {
            let prop = msg
                .split(['\'', '`'])
                .nth(1)
                .unwrap_or(msg.as_str())
                .to_string();
            let near = nearest(&prop, known.properties.iter().map(String::as_str), 3);
            format!("{}{}", without_position(err), did_you_mean(&near))
        }
        _ => without_position(err),
    }
}

/// An error's Display without the ` (line L, position C)` Rhai appends.
pub fn without_position(err: &EvalAltResult) -> String {
    let s = err.to_string();
    let pos = err.position();
    if pos.is_none() {
        return s;
    }
    let suffix = format!(" ({pos})");
    s.strip_suffix(&suffix).map(str::to_string).unwrap_or(s)
}

fn did_you_mean(near: &[String]) -> String {
    match near {
        [] => String::new(),
        [one] => format!("; did you mean `{one}`?"),
        many => format!(
            "; did you mean one of {}?",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `unknown function `prune_layr`; did you mean `prune_layer`?`, or, when the
/// name exists with other argument types, the forms it has.
pub fn function_not_found(sig: &str, known: &Known) -> String {
    let name = sig.split(['(', ' ']).next().unwrap_or(sig).trim();
    let short = name.rsplit("::").next().unwrap_or(name);
    let args = sig
        .find('(')
        .map(|i| sig[i..].trim().to_string())
        .unwrap_or_default();
    let forms: Vec<&String> = known
        .signatures
        .iter()
        .filter(|s| s.split('(').next().is_some_and(|n| n.trim() == short))
        .collect();
    if !forms.is_empty() {
        let mut forms: Vec<String> = forms.iter().map(|s| s.to_string()).collect();
        forms.sort();
        forms.dedup();
        return format!(
            "no form of `{short}` takes {}; it is defined as:\n    {}",
            readable_types(&args),
            forms.join("\n    ")
        );
    }
    let near = nearest(short, known.functions.iter().map(String::as_str), 3);
    format!("unknown function `{name}`{}", did_you_mean(&near))
}

/// Rust type names in a signature made readable (`i64` → `integer`).
fn readable_types(args: &str) -> String {
    args.replace("&str | ImmutableString | String", "string")
        .replace("ImmutableString", "string")
        .replace("i64", "integer")
        .replace("f64", "float")
        .replace("rhai::Map", "map")
        .replace("rhai::Array", "array")
}

/// A run-time error with where it happened and how it got there.
pub fn format_eval_error(err: &EvalAltResult, sources: &Sources, known: &Known) -> String {
    let mut frames: Vec<(String, String, Position)> = Vec::new();
    let mut source = String::new();
    let mut e = err;
    loop {
        match e {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                frames.push((format!("in call to `{name}`"), source.clone(), *pos));
                if !src.is_empty() {
                    source = src.clone();
                }
                if let Some(def) = sources.defining_input(name) {
                    source = def;
                }
                e = inner;
            }
            EvalAltResult::ErrorInModule(path, inner, pos) => {
                frames.push((format!("in module `{path}`"), source.clone(), *pos));
                source = path.clone();
                e = inner;
            }
            _ => break,
        }
    }
    let mut out = format!("error: {}\n", message(e, known));
    out += &snippet(sources, &source, e.position());
    for (what, src, pos) in frames.iter().rev() {
        if pos.is_none() {
            continue;
        }
        let name = if src.is_empty() {
            sources.main_name
        } else {
            src
        };
        out += &format!(
            " = {what}, called at {name}:{}:{}\n",
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0)
        );
    }
    out
}
