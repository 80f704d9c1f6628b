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

pub use crate::script::assist::is_incomplete;
use crate::script::assist::{help_text, vars_text, Names, COMMANDS};
use crate::script::session::Session;
use crate::script::ScriptOptions;

#[derive(Helper, Highlighter, Hinter)]
struct ReplHelper {
    names: Arc<Mutex<Names>>,
}

impl ReplHelper {
    fn refresh(&self, session: &Session) {
        *self.names.lock().unwrap() = Names::of(session);
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, cands) = self.names.lock().unwrap().complete(line, pos);
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
                "help" | "h" => print!("{}", help_text(&session, arg, "REPL")),
                "load" if arg.is_empty() => println!("usage: :load FILE"),
                "load" => match interruptible(|| session.load_file(Path::new(arg))) {
                    Ok(v) => print_value(&session, &v),
                    Err(e) => eprint!("{e}"),
                },
                "vars" => print!("{}", vars_text(&session)),
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
