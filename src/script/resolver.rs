//! `import "sparselab/<name>" as x;` and the user's own module directories.
//!
//! The script standard library (`stdlib/*.rhai`) is embedded in the binary, so
//! an installed `sparselab` needs no files beside it. Any other import path is a
//! file: `import "mylib" as m;` looks for `mylib.rhai` beside the importing
//! script, then in each directory of the search path (`--path DIR`, then
//! `SPARSELAB_SCRIPT_PATH`, `:`-separated). A module is compiled and run once
//! per engine and shared by every script that imports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::module_resolvers::ModuleResolver;
use rhai::{Engine, EvalAltResult, Module, Position, Scope, Shared};

/// The embedded standard library: `(name, source)`; imported as `sparselab/<name>`.
pub const STDLIB: &[(&str, &str)] = &[
    ("pipeline", include_str!("../../stdlib/pipeline.rhai")),
    ("report", include_str!("../../stdlib/report.rhai")),
    ("policy", include_str!("../../stdlib/policy.rhai")),
];

/// The prefix of standard-library import paths.
pub const STDLIB_PREFIX: &str = "sparselab/";

/// The search path from `SPARSELAB_SCRIPT_PATH` (`:`-separated directories).
pub fn env_search_path() -> Vec<PathBuf> {
    std::env::var_os("SPARSELAB_SCRIPT_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves the stdlib and file modules; shared so errors can show module source lines.
#[derive(Clone, Default)]
pub struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    search_path: Vec<PathBuf>,
    cache: Mutex<HashMap<String, Shared<Module>>>,
}

impl Resolver {
    /// A resolver searching `search_path` (after the importing script's directory).
    pub fn new(search_path: Vec<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                search_path,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The directories searched for file modules.
    pub fn search_path(&self) -> &[PathBuf] {
        &self.inner.search_path
    }

    /// The embedded source of `sparselab/<name>`.
    pub fn stdlib_source(path: &str) -> Option<&'static str> {
        let name = path.strip_prefix(STDLIB_PREFIX)?;
        STDLIB.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// The text of a source name as errors report it: an embedded stdlib module
    /// or a file.
    pub fn source_text(name: &str) -> Option<String> {
        if let Some(s) = Self::stdlib_source(name) {
            return Some(s.to_string());
        }
        std::fs::read_to_string(name).ok()
    }

    /// Where `path` imported from a script named `from` would be read, or the
    /// places looked at.
    pub fn locate(&self, path: &str, from: Option<&str>) -> Result<PathBuf, Vec<PathBuf>> {
        let file = if path.ends_with(".rhai") {
            PathBuf::from(path)
        } else {
            PathBuf::from(format!("{path}.rhai"))
        };
        let mut tried = Vec::new();
        if file.is_absolute() {
            tried.push(file.clone());
        } else {
            let here = from
                .filter(|f| Self::stdlib_source(f).is_none())
                .and_then(|f| Path::new(f).parent())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            tried.push(here.join(&file));
            tried.extend(self.inner.search_path.iter().map(|d| d.join(&file)));
        }
        match tried.iter().find(|p| p.is_file()) {
            Some(p) => Ok(p.clone()),
            None => Err(tried),
        }
    }

    /// Compiles (without running) the module `path` imports: its source name and AST.
    pub fn compile(
        &self,
        engine: &Engine,
        path: &str,
        from: Option<&str>,
        pos: Position,
    ) -> Result<rhai::AST, Box<EvalAltResult>> {
        let (name, text) = self.read(path, from, pos)?;
        let mut ast = engine
            .compile(&text)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e.into(), pos)))?;
        ast.set_source(name);
        Ok(ast)
    }

    fn read(
        &self,
        path: &str,
        from: Option<&str>,
        pos: Position,
    ) -> Result<(String, String), Box<EvalAltResult>> {
        if let Some(text) = Self::stdlib_source(path) {
            return Ok((path.to_string(), text.to_string()));
        }
        if path.starts_with(STDLIB_PREFIX) {
            let known: Vec<String> = STDLIB
                .iter()
                .map(|(n, _)| format!("{STDLIB_PREFIX}{n}"))
                .collect();
            if self.locate(path, from).is_err() {
                return Err(Box::new(EvalAltResult::ErrorRuntime(
                    format!(
                        "no module `{path}` in the script library; it has: {}",
                        known.join(", ")
                    )
                    .into(),
                    pos,
                )));
            }
        }
        match self.locate(path, from) {
            Ok(file) => {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    Box::new(EvalAltResult::ErrorRuntime(
                        format!("cannot read module {}: {e}", file.display()).into(),
                        pos,
                    ))
                })?;
                Ok((file.to_string_lossy().into_owned(), text))
            }
            Err(tried) => Err(Box::new(EvalAltResult::ErrorRuntime(
                format!(
                    "module `{path}` not found; looked at {} (add directories with --path or SPARSELAB_SCRIPT_PATH)",
                    tried
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into(),
                pos,
            ))),
        }
    }
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let key = match Self::stdlib_source(path) {
            Some(_) => path.to_string(),
            None => match self.locate(path, source) {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(_) => path.to_string(),
            },
        };
        if let Some(m) = self.inner.cache.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let ast = self.compile(engine, path, source, pos)?;
        let name = ast.source().unwrap_or(path).to_string();
        let mut module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e, pos)))?;
        module.set_id(name);
        let module: Shared<Module> = module.into();
        self.inner.cache.lock().unwrap().insert(key, module.clone());
        Ok(module)
    }

    fn resolve_ast(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Option<Result<rhai::AST, Box<EvalAltResult>>> {
        Some(self.compile(engine, path, source, pos))
    }
}
