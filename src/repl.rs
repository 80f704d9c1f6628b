//! `sparselab repl`: the interactive front end over a [`Session`].
//!
//! rustyline with a persistent history (`SPARSELAB_HISTORY`, else
//! `$XDG_STATE_HOME/sparselab/history`, else `~/.local/state/sparselab/history`),
//! multi-line input while brackets or a string are open, and tab completion of
//! functions, variables, properties (after a `.`), option keys (inside `#{…}`)
//! and REPL commands. Commands: `:help [name]`, `:load FILE`, `:vars`,
//! `:reset`, `:quit`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper, Highlighter, Hinter};

use crate::script::session::Session;
use crate::script::ScriptOptions;

/// What completion offers; refreshed after every input.
#[derive(Default, Clone)]
struct Names {
    functions: Vec<String>,
    variables: Vec<String>,
    properties: Vec<String>,
    option_keys: Vec<(String, Vec<String>)>,
    all_keys: Vec<String>,
}

const COMMANDS: &[&str] = &[":help", ":load", ":vars", ":reset", ":quit"];
const KEYWORDS: &[&str] = &[
    "let", "const", "fn", "for", "in", "if", "else", "while", "loop", "break", "continue",
    "return", "import", "as", "param", "true", "false", "throw", "try", "catch", "switch",
];

#[derive(Helper, Highlighter, Hinter)]
struct ReplHelper {
    names: Arc<Mutex<Names>>,
}

impl ReplHelper {
    fn refresh(&self, session: &Session) {
        let mut n = self.names.lock().unwrap();
        n.functions = session.function_names();
        n.variables = session.variable_names();
        n.properties = session.property_names();
        n.option_keys = crate::script::options::OPTION_KEYS
            .iter()
            .map(|(f, k)| (f.to_string(), k.iter().map(|s| s.to_string()).collect()))
            .collect();
        n.all_keys = session
            .option_keys(None)
            .into_iter()
            .map(str::to_string)
            .collect();
    }
}

/// Where inside an option map the cursor is: the function the map is passed to.
fn enclosing_map_function(before: &str) -> Option<Option<String>> {
    let bytes: Vec<char> = before.chars().collect();
    let mut depth = 0i32;
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        match bytes[i] {
            '}' | ')' | ']' => depth += 1,
            '(' | '[' => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
            }
            '{' => {
                if depth > 0 {
                    depth -= 1;
                    continue;
                }
                if i == 0 || bytes[i - 1] != '#' {
                    return None;
                }
                // The call this map is an argument of.
                let mut j = i - 1;
                let mut d = 0i32;
                while j > 0 {
                    j -= 1;
                    match bytes[j] {
                        ')' | ']' | '}' => d += 1,
                        '[' | '{' if d > 0 => d -= 1,
                        '(' if d > 0 => d -= 1,
                        '(' => {
                            let name: String = bytes[..j]
                                .iter()
                                .rev()
                                .take_while(|c| c.is_alphanumeric() || **c == '_')
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .collect();
                            return Some(Some(name));
                        }
                        _ => {}
                    }
                }
                return Some(None);
            }
            _ => {}
        }
    }
    None
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == ':')
            .last()
            .map(|(i, _)| i)
            .unwrap_or(pos);
        let word = &before[start..];
        let n = self.names.lock().unwrap();
        let mut cands: Vec<String> = Vec::new();
        if start == 0 && word.starts_with(':') {
            cands.extend(COMMANDS.iter().map(|s| s.to_string()));
        } else if before[..start].ends_with('.') {
            cands.extend(n.properties.iter().cloned());
            cands.extend(n.functions.iter().filter(|f| !f.contains("::")).cloned());
        } else if let Some(func) = enclosing_map_function(&before[..start]) {
            let prev = before[..start].trim_end().chars().last();
            if matches!(prev, Some('{') | Some(',')) {
                match func.and_then(|f| n.option_keys.iter().find(|(g, _)| *g == f).cloned()) {
                    Some((_, keys)) => cands.extend(keys),
                    None => cands.extend(n.all_keys.iter().cloned()),
                }
            } else {
                cands.extend(n.variables.iter().cloned());
                cands.extend(n.functions.iter().cloned());
            }
        } else if line.trim_start().starts_with(":help") {
            cands.extend(n.functions.iter().cloned());
        } else {
            cands.extend(n.functions.iter().cloned());
            cands.extend(n.variables.iter().cloned());
            cands.extend(KEYWORDS.iter().map(|s| s.to_string()));
        }
        cands.retain(|c| c.starts_with(word));
        cands.sort();
        cands.dedup();
        Ok((
            start,
            cands
                .into_iter()
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: c,
                })
                .collect(),
        ))
    }
}

/// Whether `text` leaves a bracket, string or block comment open.
pub fn is_incomplete(text: &str) -> bool {
    let mut depth = 0i32;
    let mut chars = text.chars().peekable();
    let mut in_str: Option<char> = None;
    while let Some(c) = chars.next() {
        match in_str {
            Some(q) => {
                if c == '\\' && q != '`' {
                    chars.next();
                } else if c == q {
                    in_str = None;
                }
            }
            None => match c {
                '"' | '`' | '\'' => in_str = Some(c),
                '/' if chars.peek() == Some(&'/') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut closed = false;
                    let mut prev = ' ';
                    for c in chars.by_ref() {
                        if prev == '*' && c == '/' {
                            closed = true;
                            break;
                        }
                        prev = c;
                    }
                    if !closed {
                        return true;
                    }
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth > 0 || matches!(in_str, Some('`'))
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if is_incomplete(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

/// The history file: `SPARSELAB_HISTORY`, else under the XDG state directory.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPARSELAB_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(state.join("sparselab").join("history"))
}

fn print_value(session: &Session, v: &rhai::Dynamic) {
    if !v.is_unit() {
        println!("{}", session.display(v));
    }
}

fn general_help(session: &Session) -> String {
    let index = session.help_index();
    let primitives = crate::script::primitives::PRIMITIVES;
    let mut out = String::from(
        "sparselab REPL: Rhai with the sparselab primitives. Input spanning several lines\n\
         continues while a bracket is open. Tab completes names.\n\n\
         commands: :help [name], :load FILE, :vars, :reset, :quit\n\nprimitives:\n",
    );
    for p in primitives {
        if let Some(e) = index.get(*p) {
            for s in &e.signatures {
                out += &format!("  {s}\n");
            }
        }
    }
    out += "\nhandles: Model (arch, num_layers, hidden_size, linears, device, dtype),\n\
            Calibration (layers(), next_layer(), commit(), reports(), seqlen, nsamples),\n\
            Layer (index, linears, weight_stats(l), hessian_stats(l), hessian_diag(l),\n\
            act_norms(l), column_norms(l), weight(l), shape(l), reports()),\n\
            Vector (native f32/int/mask vectors: :help Vector).\n\nscript library:\n";
    let mut modules: Vec<&str> = index
        .keys()
        .filter_map(|k| k.split_once("::").map(|(m, _)| m))
        .collect();
    modules.dedup();
    for m in modules {
        let fns: Vec<&str> = index
            .keys()
            .filter_map(|k| k.strip_prefix(m).and_then(|r| r.strip_prefix("::")))
            .collect();
        out += &format!("  {m}: {}\n", fns.join(", "));
    }
    out += "\n:help NAME shows a function's signatures and documentation.\n";
    out
}

const VECTOR_HELP: &str = "Vector: a native vector of f32 values tagged f32, int or mask.
  make:     from_array(arr), vector(arr), zeros(n), ones(n), full(n, x), arange(n)
  read:     v.len, v.dtype, v[i], v[a..b], v.slice(a, b), v[mask], v[indices], v.to_array()
  reduce:   sum, mean, std, min, max, argmin, argmax, quantile(q), count, any, all, dot(w)
  reshape:  argsort([desc]), sorted, reversed, cumsum, concat(w), filter(mask), gather(idx)
  map:      normalize([method]), clamp(lo, hi), abs, sqrt, ln, exp, round, to_int, to_float
  arith:    + - * / ** with numbers or Vectors of the same length
  compare:  < <= > >= == != into masks; masks combine with & | !; select(mask, a, b)
  count:    histogram(bins[, lo, hi]) -> #{counts, edges}, value_counts() -> #{values, counts}";

/// Whether a Ctrl-C arrived while a script ran and has not been seen yet.
static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    use std::sync::atomic::Ordering;
    // A second Ctrl-C before the script noticed the first (a primitive that
    // does not poll the flag, e.g. loading a model): leave, as a plain program
    // would.
    if PENDING.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(130) };
    }
    crate::script::INTERRUPT.store(true, Ordering::SeqCst);
    let msg = b"\ninterrupt: stopping (Ctrl-C again to quit)\n";
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Ctrl-C while a script runs stops it and returns to the prompt. (At the
/// prompt, rustyline reads Ctrl-C as a key: it clears the line.)
fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// Runs `f` with Ctrl-C armed, and disarms it after.
fn interruptible<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering;
    PENDING.store(false, Ordering::SeqCst);
    crate::script::INTERRUPT.store(false, Ordering::SeqCst);
    let out = f();
    PENDING.store(false, Ordering::SeqCst);
    crate::script::INTERRUPT.store(false, Ordering::SeqCst);
    out
}

/// Runs the REPL until `:quit` or end of input. Returns an error only when the
/// terminal cannot be used.
pub fn run(opts: ScriptOptions) -> anyhow::Result<()> {
    let mut session = Session::new(opts);
    install_interrupt_handler();
    let helper = ReplHelper {
        names: Arc::new(Mutex::new(Names::default())),
    };
    helper.refresh(&session);
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .max_history_size(5000)?
        .build();
    let mut rl: Editor<ReplHelper, rustyline::history::DefaultHistory> =
        Editor::with_config(config)?;
    rl.set_helper(Some(helper));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!(
        "sparselab {} — Rhai REPL. :help for help, :quit to leave.",
        env!("CARGO_PKG_VERSION")
    );
    let mut count = 0usize;
    loop {
        let line = match rl.readline("sparselab> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line.as_str());
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = rl.save_history(h);
        }
        if let Some(cmd) = input.strip_prefix(':') {
            let (cmd, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            let arg = arg.trim();
            match cmd {
                "quit" | "q" | "exit" => break,
                "help" | "h" if arg.is_empty() => print!("{}", general_help(&session)),
                "help" | "h" if arg == "Vector" => println!("{VECTOR_HELP}"),
                "help" | "h" => match session.help(arg) {
                    Some(text) => print!("{text}"),
                    None => {
                        let names = session.function_names();
                        let near = crate::script::suggest::nearest(
                            arg,
                            names.iter().map(String::as_str),
                            3,
                        );
                        if near.is_empty() {
                            println!("no function `{arg}`");
                        } else {
                            println!("no function `{arg}`; did you mean {}?", near.join(", "));
                        }
                    }
                },
                "load" if arg.is_empty() => println!("usage: :load FILE"),
                "load" => match interruptible(|| session.load_file(Path::new(arg))) {
                    Ok(v) => print_value(&session, &v),
                    Err(e) => eprint!("{e}"),
                },
                "vars" => {
                    for (name, constant, value) in session.scope.iter_raw() {
                        let mut text = session.display(value);
                        if text.len() > 70 {
                            text = format!("{}…", text.chars().take(69).collect::<String>());
                        }
                        println!(
                            "{}{name}: {} = {text}",
                            if constant { "const " } else { "" },
                            session.engine.map_type_name(value.type_name())
                        );
                    }
                }
                "reset" => {
                    session.reset();
                    println!("session reset: no variables, functions or imports");
                }
                other => println!(
                    "unknown command :{other}; commands: {}",
                    COMMANDS.join(", ")
                ),
            }
        } else {
            count += 1;
            match interruptible(|| session.eval(&format!("<repl:{count}>"), &line)) {
                Ok(v) => print_value(&session, &v),
                Err(e) => eprint!("{e}"),
            }
        }
        if let Some(h) = rl.helper() {
            h.refresh(&session);
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}
