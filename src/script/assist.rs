//! What an interactive front end offers besides running code: completion,
//! help, the variable listing and "is this input finished?". The REPL
//! (`sparselab repl`) and the Jupyter kernel (`sparselab kernel`) both call
//! these, so a name completes and `:help` reads the same in a terminal and in
//! a notebook.

use super::session::Session;

/// The front-end commands (`:help` and friends) both front ends accept.
pub const COMMANDS: &[&str] = &[":help", ":load", ":vars", ":reset", ":quit"];

/// Rhai keywords offered by completion at the start of a word.
pub const KEYWORDS: &[&str] = &[
    "let", "const", "fn", "for", "in", "if", "else", "while", "loop", "break", "continue",
    "return", "import", "as", "param", "true", "false", "throw", "try", "catch", "switch",
];

/// What completion offers: a snapshot of a session's names, taken after each
/// input (the REPL completes on another thread than the one that evaluates).
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// Every function name, `alias::name` for module functions.
    pub functions: Vec<String>,
    /// Variables in scope.
    pub variables: Vec<String>,
    /// Property names of the registered types (offered after a `.`).
    pub properties: Vec<String>,
    /// Option keys per primitive (offered inside `#{…}` passed to it).
    pub option_keys: Vec<(String, Vec<String>)>,
    /// Every option key (inside a map whose function is unknown).
    pub all_keys: Vec<String>,
}

impl Names {
    /// The names `session` knows now.
    pub fn of(session: &Session) -> Names {
        Names {
            functions: session.function_names(),
            variables: session.variable_names(),
            properties: session.property_names(),
            option_keys: super::options::OPTION_KEYS
                .iter()
                .map(|(f, k)| (f.to_string(), k.iter().map(|s| s.to_string()).collect()))
                .collect(),
            all_keys: session
                .option_keys(None)
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }

    /// Completions of the word that ends at byte offset `pos` of `text` (a
    /// REPL line or a whole notebook cell): the byte offset where the word
    /// starts and the candidates, sorted. Inside `#{…}` passed to a primitive
    /// the candidates are its option keys; after a `.`, properties and
    /// methods; `:` at the start of a line, the commands; after `:help`,
    /// function names.
    pub fn complete(&self, text: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &text[..pos];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == ':')
            .last()
            .map(|(i, _)| i)
            .unwrap_or(pos);
        let word = &before[start..];
        // Commands and `:help NAME` are judged on the cursor's line alone.
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line = &before[line_start..];
        let mut cands: Vec<String> = Vec::new();
        if start == line_start && word.starts_with(':') {
            cands.extend(COMMANDS.iter().map(|s| s.to_string()));
        } else if before[..start].ends_with('.') {
            cands.extend(self.properties.iter().cloned());
            cands.extend(self.functions.iter().filter(|f| !f.contains("::")).cloned());
        } else if let Some(func) = enclosing_map_function(&before[..start]) {
            let prev = before[..start].trim_end().chars().last();
            if matches!(prev, Some('{') | Some(',')) {
                match func.and_then(|f| self.option_keys.iter().find(|(g, _)| *g == f).cloned()) {
                    Some((_, keys)) => cands.extend(keys),
                    None => cands.extend(self.all_keys.iter().cloned()),
                }
            } else {
                cands.extend(self.variables.iter().cloned());
                cands.extend(self.functions.iter().cloned());
            }
        } else if line.trim_start().starts_with(":help") {
            cands.extend(self.functions.iter().cloned());
        } else {
            cands.extend(self.functions.iter().cloned());
            cands.extend(self.variables.iter().cloned());
            cands.extend(KEYWORDS.iter().map(|s| s.to_string()));
        }
        cands.retain(|c| c.starts_with(word));
        cands.sort();
        cands.dedup();
        (start, cands)
    }
}

/// Where inside an option map the cursor is: `Some(Some(f))` inside `#{…}`
/// passed to `f(…)`, `Some(None)` inside a map outside a call, `None` outside
/// any map.
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

/// The identifier (with `::` paths) around byte offset `pos` of `text`, for
/// "what is this?" (the kernel's inspect request): its byte range.
pub fn word_at(text: &str, pos: usize) -> Option<(usize, usize)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let pos = pos.min(text.len());
    let start = text[..pos]
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_word(*c))
        .last()
        .map(|(i, _)| i)
        .unwrap_or(pos);
    let end = text[pos..]
        .char_indices()
        .find(|(_, c)| !is_word(*c))
        .map(|(i, _)| pos + i)
        .unwrap_or(text.len());
    let word = text[start..end].trim_matches(':');
    (!word.is_empty()).then(|| {
        let s = start + text[start..end].find(word).unwrap_or(0);
        (s, s + word.len())
    })
}

/// Whether `text` leaves a bracket, string or block comment open (the input
/// continues on the next line).
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

/// The text of `:help` with no argument: commands, primitives, handles and the
/// script library. `front_end` names the caller in the first line.
pub fn general_help(session: &Session, front_end: &str) -> String {
    let index = session.help_index();
    let primitives = super::primitives::PRIMITIVES;
    let mut out = format!(
        "sparselab {front_end}: Rhai with the sparselab primitives. Input spanning several lines\n\
         continues while a bracket is open. Tab completes names.\n\n\
         commands: :help [name], :load FILE, :vars, :reset, :quit\n\nprimitives:\n",
    );
    for p in primitives.iter().chain(super::evaluation::EVALUATION) {
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

/// `:help Vector`.
pub const VECTOR_HELP: &str = "Vector: a native vector of f32 values tagged f32, int or mask.
  make:     from_array(arr), vector(arr), zeros(n), ones(n), full(n, x), arange(n)
  read:     v.len, v.dtype, v[i], v[a..b], v.slice(a, b), v[mask], v[indices], v.to_array()
  reduce:   sum, mean, std, min, max, argmin, argmax, quantile(q), count, any, all, dot(w)
  reshape:  argsort([desc]), sorted, reversed, cumsum, concat(w), filter(mask), gather(idx)
  map:      normalize([method]), clamp(lo, hi), abs, sqrt, ln, exp, round, to_int, to_float
  arith:    + - * / ** with numbers or Vectors of the same length
  compare:  < <= > >= == != into masks; masks combine with & | !; select(mask, a, b)
  count:    histogram(bins[, lo, hi]) -> #{counts, edges}, value_counts() -> #{values, counts}
";

/// The documentation of `name` (a function, or `Vector`), or `None`.
pub fn help_for(session: &Session, name: &str) -> Option<String> {
    if name == "Vector" {
        return Some(VECTOR_HELP.to_string());
    }
    session.help(name)
}

/// The text `:help ARG` shows: the general help without an argument, the
/// documentation of a name, or the nearest names when nothing has that name.
pub fn help_text(session: &Session, arg: &str, front_end: &str) -> String {
    let arg = arg.trim();
    if arg.is_empty() {
        return general_help(session, front_end);
    }
    if let Some(text) = help_for(session, arg) {
        return text;
    }
    let names = session.function_names();
    let near = super::suggest::nearest(arg, names.iter().map(String::as_str), 3);
    if near.is_empty() {
        format!("no function `{arg}`\n")
    } else {
        format!("no function `{arg}`; did you mean {}?\n", near.join(", "))
    }
}

/// `:vars`: one line per variable, `name: Type = value` (long values cut).
pub fn vars_text(session: &Session) -> String {
    let mut out = String::new();
    for (name, constant, value) in session.scope.iter_raw() {
        let mut text = session.display(value);
        if text.len() > 70 {
            text = format!("{}…", text.chars().take(69).collect::<String>());
        }
        out += &format!(
            "{}{name}: {} = {text}\n",
            if constant { "const " } else { "" },
            session.engine.map_type_name(value.type_name())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::ScriptOptions;

    #[test]
    fn completes_option_keys_commands_and_names_in_a_cell() {
        let mut s = Session::new(ScriptOptions::default());
        assert!(s.eval("<t>", "let threshold_low = 3;").unwrap().is_unit());
        let n = Names::of(&s);
        // Option keys of the primitive the map is passed to, on a later line.
        let cell = "let x = 1;\nplot_histogram(v, #{ti";
        let (start, c) = n.complete(cell, cell.len());
        assert_eq!(&cell[start..], "ti");
        assert_eq!(c, vec!["title"]);
        // A command only at the start of a line.
        let cell = "let y = 2;\n:he";
        let (_, c) = n.complete(cell, cell.len());
        assert_eq!(c, vec![":help"]);
        // Variables and functions elsewhere.
        let (_, c) = n.complete("thresh", 6);
        assert_eq!(c, vec!["threshold_low"]);
        let (_, c) = n.complete("plot_hi", 7);
        assert_eq!(c, vec!["plot_histogram"]);
    }

    #[test]
    fn word_at_finds_the_identifier_around_the_cursor() {
        let text = "let p = plot_histogram(v);";
        let (a, b) = word_at(text, 12).unwrap();
        assert_eq!(&text[a..b], "plot_histogram");
        let text = "report::table(x)";
        let (a, b) = word_at(text, 3).unwrap();
        assert_eq!(&text[a..b], "report::table");
        assert!(word_at("   ", 1).is_none());
    }
}
