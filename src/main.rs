//! The `sparselab` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use sparselab::calibrate::{
    compress_uniform, compression_report, run_report, write_report, CalibrateSettings, LayerFilter,
};
use sparselab::compress::method::method_settings;
use sparselab::compress::rules::{Front, Settings};
use sparselab::compress::Method;
use sparselab::eval::{eval_dataset, PplOptions};
use sparselab::model::save::check_target;
use sparselab::model::{LoadOptions, LoadSettings, Model, SaveOptions, SaveSettings};
use sparselab::options::{cli_flag, Declared};
use sparselab::report::RunInfo;
use sparselab::runtime::device::dtype_name;
use sparselab::script::options::EvalOptions;
use sparselab::script::{check_file, parse_set, run_file, ScriptOptions};

#[derive(Parser)]
#[command(
    name = "sparselab",
    version,
    about = "LLM compression research: load, prune, quantize, evaluate"
)]
struct Cli {
    /// Without a command, the REPL starts.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity ± its standard error of a model on datasets (by the reference
    /// protocol), KL divergence and top-1 agreement against a base, zero-shot tasks.
    Eval(EvalArgs),
    /// Compress a model layer by layer (SparseGPT, GPTQ, magnitude, Wanda) with
    /// one setting for every linear, then evaluate it.
    Prune(Box<PruneArgs>),
    /// Run a Rhai script (a recipe such as scripts/quickstart.rhai).
    Run(RunArgs),
    /// Parse and check a Rhai script without running it.
    Check(RunArgs),
    /// The interactive Rhai REPL (also what a bare `sparselab` starts).
    Repl(SessionArgs),
    /// The Jupyter kernel for Rhai: `kernel install` writes its kernelspec,
    /// `kernel --connection-file F` is what Jupyter starts.
    Kernel(KernelArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct KernelArgs {
    #[command(subcommand)]
    action: Option<KernelAction>,
    /// The connection file Jupyter writes (ports, key); required to serve.
    #[arg(long, value_name = "FILE")]
    connection_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Subcommand)]
enum KernelAction {
    /// Write the kernelspec "sparselab (Rhai)" (name sparselab-rhai) for this
    /// executable; Jupyter then lists the kernel.
    Install(InstallArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// Into the user's Jupyter data directory (the default).
    #[arg(long, conflicts_with = "prefix")]
    user: bool,
    /// Into PREFIX/share/jupyter/kernels (a virtual environment, or a
    /// directory JUPYTER_PATH names).
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// The script file.
    script: std::path::PathBuf,
    #[command(flatten)]
    session: SessionArgs,
}

impl SessionArgs {
    /// The script engine's options from these flags.
    fn options(&self) -> Result<ScriptOptions> {
        let params = self
            .set
            .iter()
            .map(|s| parse_set(s))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(ScriptOptions {
            search_path: self.path.clone(),
            quiet: self.quiet,
            params,
        })
    }
}

/// What every script front end takes: `run`, `check`, the REPL and the kernel.
#[derive(Args, Default)]
struct SessionArgs {
    /// `name=value`: a variable visible to the script (and the value of its
    /// `param name = default;`). Values are read as an integer, else a float,
    /// else true/false, else a string. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// A directory searched for `import "name"` modules (repeatable; searched
    /// before SPARSELAB_SCRIPT_PATH).
    #[arg(long = "path", value_name = "DIR")]
    path: Vec<std::path::PathBuf>,
    /// No progress output from the primitives.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct PruneArgs {
    /// Model directory, GGUF file (`x.gguf`) or hub id `org/name[@revision]`.
    #[arg(long)]
    model: String,
    /// The compression settings (declared with the combination rules that
    /// `prune_layer` applies too).
    #[command(flatten)]
    compress: Settings,
    /// Calibration dataset (split defaults to train).
    #[arg(long, default_value = "wikitext2")]
    calib: String,
    /// The calibration settings (declared once with `calibrate`'s options map).
    #[command(flatten)]
    calibration: CalibrateSettings,
    /// First layer to compress.
    #[arg(long)]
    minlayer: Option<usize>,
    /// Layers from this index on are left as they are.
    #[arg(long)]
    maxlayer: Option<usize>,
    /// Compress only linears whose name contains this.
    #[arg(long)]
    prune_only: Option<String>,
    /// Evaluate perplexity on these datasets afterwards (repeatable).
    #[arg(long)]
    eval: Vec<String>,
    /// Evaluate only the first N windows of each --eval dataset (all by default).
    #[arg(long, value_name = "N")]
    eval_nsamples: Option<usize>,
    /// KL divergence and top-1 agreement against a stored base (a file
    /// `sparselab eval --save-kl-base` wrote) on the windows it holds of the
    /// --eval dataset it was computed on (perplexity still covers the --eval
    /// windows). Repeatable, one per dataset.
    #[arg(long, value_name = "FILE")]
    kl_base: Vec<std::path::PathBuf>,
    /// Write the run's report here: compression.json's content plus the
    /// evaluations (what a script's `write_report` writes).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Save the compressed model here (config, tokenizer, weights and
    /// compression.json), before any evaluation.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    /// How --save writes (declared once with `save`'s options map).
    #[command(flatten)]
    saving: SaveSettings,
    /// Keep compressed layers in a temporary directory created here instead of
    /// memory (for models larger than the host's memory); removed at exit.
    #[arg(long)]
    spill_dir: Option<std::path::PathBuf>,
    /// Device, dtype and hub revision (declared once with `load_model`'s
    /// options map).
    #[command(flatten)]
    load: LoadSettings,
}

impl PruneArgs {
    /// The method, after the combination rules `prune_layer` applies too
    /// (sparselab::compress::rules) and the rules of the flags only this
    /// command has. Everything here fails before a long calibration.
    fn method(&self) -> Result<Method> {
        let method = self.compress.to_method(Front::Cli)?;
        if self.calibration.true_sequential() && matches!(method, Method::Magnitude(_)) {
            anyhow::bail!(
                "--true-sequential has no effect with --method magnitude, which reads no \
                 Hessian or activation: drop it, or use --method sparsegpt or wanda"
            );
        }
        if self.calibration.reservoir.is_some() {
            anyhow::bail!(
                "--reservoir keeps input rows for the activation-based importance metrics, \
                 which `sparselab prune` does not use (one setting for every linear): drop it"
            );
        }
        if self.calibration.fingerprint.is_some() {
            anyhow::bail!(
                "--fingerprint names a script's policy; `sparselab prune` stores its own \
                 settings with --checkpoint: drop it"
            );
        }
        if self.save.is_none() {
            for key in ["overwrite", "format"] {
                if self.saving.given(key) {
                    anyhow::bail!(
                        "{} says how --save writes, and no --save was given: add --save DIR \
                         or drop {}",
                        cli_flag(key),
                        cli_flag(key)
                    );
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.minlayer, self.maxlayer) {
            if lo >= hi {
                anyhow::bail!(
                    "--minlayer {lo} and --maxlayer {hi} select no layer: --maxlayer is the \
                     first layer left as it is, so give --maxlayer greater than --minlayer"
                );
            }
        }
        match self.eval_nsamples {
            Some(_) if self.eval.is_empty() => {
                anyhow::bail!(
                    "--eval-nsamples limits --eval, and no --eval was given: add --eval DATASET \
                     or drop --eval-nsamples"
                )
            }
            Some(0) => anyhow::bail!("--eval-nsamples must be at least 1"),
            _ => {}
        }
        Ok(method)
    }

    /// The --kl-base files by the --eval dataset each belongs to, with their
    /// window length; a file of no --eval dataset, or two of one, is refused.
    fn kl_bases(&self) -> Result<Vec<(String, std::path::PathBuf, usize)>> {
        use sparselab::eval::kl::BaseFile;
        let mut out: Vec<(String, std::path::PathBuf, usize)> = Vec::new();
        for path in &self.kl_base {
            let header = BaseFile::open(path)?.header;
            let dataset = header.dataset;
            if !self.eval.contains(&dataset) {
                anyhow::bail!(
                    "--kl-base {} holds the base of `{dataset}`, which is not an --eval dataset \
                     (given: {}): add --eval {dataset}",
                    path.display(),
                    if self.eval.is_empty() {
                        "none".to_string()
                    } else {
                        self.eval.join(", ")
                    }
                );
            }
            if let Some((_, other, _)) = out.iter().find(|(d, ..)| *d == dataset) {
                anyhow::bail!(
                    "--kl-base {} and {} both hold the base of `{dataset}`: give one",
                    other.display(),
                    path.display()
                );
            }
            out.push((dataset, path.clone(), header.seqlen));
        }
        Ok(out)
    }
}

/// One layer's per-linear lines.
fn print_layer(reports: &[sparselab::report::LinearReport]) {
    for r in reports {
        println!(
            "layer {:>3} {:<18} sparsity {:.4}{} bits {} loss {} rel.err {:.3e} ({:.2}s)",
            r.layer,
            r.linear,
            r.sparsity,
            r.nm_valid
                .map(|v| if v { " n:m ok" } else { " n:m BROKEN" })
                .unwrap_or(""),
            r.avg_bits
                .map(|b| format!("{b:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.loss
                .map(|l| format!("{l:.3}"))
                .unwrap_or_else(|| "-".into()),
            r.rel_error,
            r.seconds
        );
    }
}

fn prune(args: PruneArgs) -> Result<()> {
    use sparselab::eval::{dataset_tokens, kl_divergence};
    let method = args.method()?;
    let kl_bases = args.kl_bases()?;
    if let Some(dir) = &args.save {
        // Before a long calibration, not after it.
        check_target(dir, args.saving.overwrite())?;
    }
    let mut model = Model::load(&args.model, &args.load.load_options()?)?;
    if let Some(dir) = &args.spill_dir {
        model.weights_mut().spill_to_disk(Some(dir))?;
    }
    let start = std::time::Instant::now();
    // What a resumed checkpoint must have been written with.
    let fingerprint = serde_json::json!({
        "command": "prune",
        "method": args.compress.method_name(),
        "settings": method_settings(&method),
        "minlayer": args.minlayer,
        "maxlayer": args.maxlayer,
        "prune_only": args.prune_only,
    })
    .to_string();
    let mut calib_opts =
        args.calibration
            .calib_options(&args.calib, false, fingerprint, Front::Cli)?;
    // A uniform policy scores no channels: input samples would only take memory.
    calib_opts.reservoir = 0;
    let seqlen = calib_opts
        .seqlen
        .unwrap_or_else(|| sparselab::eval::default_seqlen(&model));
    for (dataset, path, base_seqlen) in &kl_bases {
        if *base_seqlen != seqlen {
            anyhow::bail!(
                "--kl-base {} of `{dataset}` holds windows of {base_seqlen} tokens, and this run's \
                 are {seqlen}: give --seqlen {base_seqlen}, or store a base of {seqlen}",
                path.display()
            );
        }
    }
    let quiet = calib_opts.quiet;
    let filter = LayerFilter {
        min_layer: args.minlayer,
        max_layer: args.maxlayer,
        only: args.prune_only.clone(),
    };
    let calib = compress_uniform(&mut model, calib_opts, method, filter, |reports| {
        if !quiet {
            print_layer(reports)
        }
    })?;
    let compress_seconds = start.elapsed().as_secs_f64();
    let mut run = RunInfo {
        command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
        wall_seconds: Some(compress_seconds),
        ..RunInfo::default()
    };
    if let Some(dir) = &args.save {
        let save_opts = SaveOptions {
            overwrite: args.saving.overwrite(),
            format: args.saving.format(),
            report: Some(compression_report(&model, &calib, &run)),
            ..SaveOptions::default()
        };
        let s = model.save(dir, &save_opts)?;
        println!(
            "saved to {}: {} tensors, {:.1} MB of weights in {}",
            s.dir.display(),
            s.tensors,
            s.tensor_bytes as f64 / 1e6,
            s.files.join(", ")
        );
        for (name, why) in &s.stored_dense {
            eprintln!("warning: {name}: {why}");
        }
    }
    let ppl_opts = PplOptions {
        seqlen: Some(calib.seqlen()),
        max_windows: args.eval_nsamples,
        quiet,
        ..PplOptions::default()
    };
    let method_name = &calib.reports[0].method;
    let mut evals = serde_json::Map::new();
    for dataset in &args.eval {
        // Perplexity on the --eval windows; with a base, KL on the windows the
        // base holds (one pass when they are the same windows).
        let base = kl_bases.iter().find(|(d, ..)| d == dataset);
        let kl = match base {
            Some((_, path, _)) => {
                let tokens = dataset_tokens(&model, dataset, calib.seqlen())?;
                let kl_opts = PplOptions {
                    max_windows: None,
                    ..ppl_opts.clone()
                };
                Some((path, kl_divergence(&model, path, &tokens, &kl_opts)?))
            }
            None => None,
        };
        let mut entry = match &kl {
            Some((_, k)) if args.eval_nsamples == Some(k.windows) => serde_json::json!({
                "ppl": k.ppl, "ppl_se": k.ppl_se, "windows": k.windows, "seqlen": k.seqlen,
                "tokens": k.tokens, "seconds": k.seconds,
            }),
            _ => serde_json::to_value(eval_dataset(&model, dataset, &ppl_opts)?)?,
        };
        println!(
            "{} ({method_name}) on {dataset}: ppl {} ({} windows)",
            args.model,
            sparselab::eval::format_pm(
                entry["ppl"].as_f64().unwrap_or(f64::NAN),
                entry["ppl_se"].as_f64().unwrap_or(f64::NAN)
            ),
            entry["windows"]
        );
        if let Some((path, k)) = &kl {
            println!(
                "  against {} ({} windows): {}",
                path.display(),
                k.windows,
                k.text()
            );
            entry["kl"] = serde_json::to_value(k)?;
            entry["kl_base"] = path.display().to_string().into();
        }
        evals.insert(dataset.clone(), entry);
    }
    let n = calib.reports.len() as f64;
    let mean = |f: &dyn Fn(&sparselab::report::LinearReport) -> f64| {
        calib.reports.iter().map(f).sum::<f64>() / n
    };
    println!(
        "compressed {} linears in {compress_seconds:.1}s: mean sparsity {:.4}, mean rel.err {:.3e}",
        calib.reports.len(),
        mean(&|r| r.sparsity),
        mean(&|r| r.rel_error)
    );
    if let Some(path) = &args.report {
        run.wall_seconds = Some(start.elapsed().as_secs_f64());
        let mut extra = serde_json::Map::new();
        extra.insert("eval".into(), evals.into());
        write_report(path, &run_report(&model, &calib, &run, extra))?;
    }
    Ok(())
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory, GGUF file (`x.gguf`) or hub id `org/name[@revision]`.
    #[arg(long)]
    model: String,
    /// Dataset: `wikitext2`, `ptb`, `c4` with an optional `:split`, or a local
    /// .txt/.raw/.jsonl/.json.gz/.parquet file. Repeat for several.
    #[arg(long)]
    dataset: Vec<String>,
    /// Window length, windows, batch and quiet: the options every evaluation
    /// function of a script takes too.
    #[command(flatten)]
    opts: EvalOptions,
    /// KL divergence and top-1 agreement against a base: a file --save-kl-base
    /// wrote, or a base model (directory, GGUF file or hub id) whose
    /// log-probabilities are computed first.
    #[arg(long, value_name = "FILE|MODEL")]
    kl_base: Option<String>,
    /// Store the base log-probabilities here (of the --kl-base model, else of
    /// --model itself) for later `--kl-base FILE` runs; one --dataset only.
    #[arg(long, value_name = "FILE")]
    save_kl_base: Option<std::path::PathBuf>,
    /// Zero-shot task NAME=FILE in lm-eval-harness JSONL layout (lambada, piqa,
    /// arc_easy, arc_challenge, hellaswag, winogrande; wikitext2_lastword needs
    /// no file). Repeatable.
    #[arg(long, value_name = "NAME=FILE")]
    task: Vec<String>,
    /// Score only the first N documents of each --task.
    #[arg(long)]
    task_limit: Option<usize>,
    /// Device, dtype and hub revision (declared once with `load_model`'s
    /// options map).
    #[command(flatten)]
    load: LoadSettings,
    /// Print one JSON object per dataset and task instead of text.
    #[arg(long)]
    json: bool,
}

/// Whether `spec` names a stored KL base file (by its first bytes).
fn is_base_file(spec: &str) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(spec)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == sparselab::eval::kl::MAGIC)
}

fn eval(args: EvalArgs) -> Result<()> {
    use sparselab::eval::{
        dataset_tokens, default_seqlen, ensure_base, eval_tasks, kl::BaseFile, kl_divergence,
        perplexity, TaskOptions, TaskSpec,
    };
    if args.dataset.is_empty() && args.task.is_empty() {
        anyhow::bail!(
            "nothing to evaluate: give --dataset D (perplexity, KL) and/or --task NAME=FILE"
        );
    }
    if args.save_kl_base.is_some() && args.dataset.len() != 1 {
        anyhow::bail!(
            "--save-kl-base stores the base of one dataset, {} were given: run once per dataset",
            args.dataset.len()
        );
    }
    let tasks = args
        .task
        .iter()
        .map(|t| TaskSpec::parse(t))
        .collect::<Result<Vec<_>>>()?;
    let opts = args.load.load_options()?;
    let model = Model::load(&args.model, &opts)?;
    let quiet = args.opts.quiet() || args.json;
    // The base: a stored file, or a model whose base file is written first.
    let base_file = args.kl_base.as_deref().filter(|b| is_base_file(b));
    let base_model = match args.kl_base.as_deref() {
        Some(spec) if base_file.is_none() => Some(Model::load(
            spec,
            &LoadOptions {
                revision: None,
                ..opts.clone()
            },
        )?),
        _ => None,
    };
    let base_seqlen = base_file
        .map(|f| BaseFile::open(std::path::Path::new(f)).map(|b| b.header.seqlen))
        .transpose()?;
    let seqlen = args
        .opts
        .seqlen
        .or(base_seqlen)
        .unwrap_or_else(|| default_seqlen(&model));
    let ppl_opts = PplOptions {
        seqlen: Some(seqlen),
        quiet,
        ..args.opts.ppl_options(quiet)
    };
    let scratch = tempfile::tempdir()?;
    for dataset in &args.dataset {
        let tokens = dataset_tokens(&model, dataset, seqlen)?;
        // The base file of this dataset, written first when it comes from a model.
        let written = match (&base_model, &args.save_kl_base) {
            (Some(b), path) => {
                let path = path
                    .clone()
                    .unwrap_or_else(|| scratch.path().join("base.klb"));
                let spec = args.kl_base.as_deref().unwrap_or_default();
                Some(ensure_base(b, &tokens, &ppl_opts, &path, spec, dataset)?.0)
            }
            (None, Some(path)) if base_file.is_none() => {
                Some(ensure_base(&model, &tokens, &ppl_opts, path, &args.model, dataset)?.0)
            }
            _ => None,
        };
        let kl_path = base_file.map(std::path::PathBuf::from).or_else(|| {
            base_model
                .as_ref()
                .and(written.as_ref())
                .map(|w| w.path.clone())
        });
        let mut out = serde_json::json!({
            "model": args.model,
            "dataset": dataset,
            "seqlen": seqlen,
            "dtype": dtype_name(model.dtype()),
        });
        let text = match &kl_path {
            Some(path) => {
                let r = kl_divergence(&model, path, &tokens, &ppl_opts)?;
                out["windows"] = r.windows.into();
                out["tokens"] = r.tokens.into();
                out["ppl"] = r.ppl.into();
                out["ppl_se"] = r.ppl_se.into();
                out["seconds"] = r.seconds.into();
                out["kl_base"] = args.kl_base.clone().into();
                out["kl"] = serde_json::to_value(&r)?;
                format!(
                    "{} on {dataset}: ppl {} ({} windows of {seqlen} tokens, {}, {:.1}s)\n  \
                     against {}: {}, base ppl {}",
                    args.model,
                    sparselab::eval::format_pm(r.ppl, r.ppl_se),
                    r.windows,
                    dtype_name(model.dtype()),
                    r.seconds,
                    args.kl_base.as_deref().unwrap_or_default(),
                    r.text(),
                    sparselab::eval::format_pm(r.base_ppl, r.base_ppl_se)
                )
            }
            None => {
                // --save-kl-base of the model itself computed its perplexity already.
                let (ppl, ppl_se, windows, tokens_n, seconds) = match &written {
                    Some(w) => (
                        w.ppl,
                        w.ppl_se,
                        w.windows,
                        w.windows * (seqlen - 1),
                        w.seconds,
                    ),
                    None => {
                        let r = perplexity(&model, &tokens, &ppl_opts)?;
                        (r.ppl, r.ppl_se, r.windows, r.tokens, r.seconds)
                    }
                };
                out["windows"] = windows.into();
                out["tokens"] = tokens_n.into();
                out["ppl"] = ppl.into();
                out["ppl_se"] = ppl_se.into();
                out["seconds"] = seconds.into();
                format!(
                    "{} on {dataset}: ppl {} ({windows} windows of {seqlen} tokens, {}, {seconds:.1}s)",
                    args.model,
                    sparselab::eval::format_pm(ppl, ppl_se),
                    dtype_name(model.dtype()),
                )
            }
        };
        if let (Some(w), Some(path)) = (&written, &args.save_kl_base) {
            out["saved_kl_base"] = path.display().to_string().into();
            if !args.json {
                eprintln!(
                    "KL base stored in {} ({:.1} MB)",
                    w.path.display(),
                    w.bytes as f64 / 1e6
                );
            }
        }
        if args.json {
            println!("{out}");
        } else {
            println!("{text}");
        }
    }
    if !tasks.is_empty() {
        let topts = TaskOptions {
            limit: args.task_limit,
            batch: args.opts.batch(),
            quiet,
        };
        for r in eval_tasks(&model, &tasks, &topts)? {
            if args.json {
                let mut v = serde_json::to_value(&r)?;
                v["model"] = args.model.clone().into();
                if let Some(o) = v.as_object_mut() {
                    o.remove("loglikelihoods");
                }
                println!("{v}");
            } else {
                println!("{} {}", args.model, r.text());
            }
        }
    }
    Ok(())
}

/// Script failures arrive formatted (location, source line, caret); print them as they are.
#[derive(Debug)]
struct Formatted(String);

impl std::fmt::Display for Formatted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Formatted {}

fn run_script(args: RunArgs) -> Result<()> {
    let opts = args.session.options()?;
    run_file(&args.script, &opts).map_err(|e| Formatted(e).into())
}

fn check_script(args: RunArgs) -> Result<()> {
    let opts = args.session.options()?;
    check_file(&args.script, &opts).map_err(Formatted)?;
    println!("{}: ok", args.script.display());
    Ok(())
}

fn repl(args: SessionArgs) -> Result<()> {
    sparselab::repl::run(args.options()?)
}

fn kernel(args: KernelArgs) -> Result<()> {
    use sparselab::jupyter::spec::{install, InstallTarget};
    if let Some(KernelAction::Install(i)) = args.action {
        let target = match i.prefix {
            Some(p) => InstallTarget::Prefix(p),
            None => InstallTarget::User,
        };
        let dir = install(&target)?;
        println!(
            "installed kernelspec `{}` (\"{}\") in {}",
            sparselab::jupyter::spec::KERNEL_NAME,
            sparselab::jupyter::spec::DISPLAY_NAME,
            dir.display()
        );
        return Ok(());
    }
    let Some(file) = args.connection_file else {
        anyhow::bail!(
            "sparselab kernel needs --connection-file FILE (Jupyter passes it); \
             `sparselab kernel install` registers the kernel with Jupyter"
        );
    };
    sparselab::jupyter::run(&file, args.session.options()?)
}

fn main() -> ExitCode {
    sparselab::runtime::alloc::return_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Prune(args)) => prune(*args),
        Some(Command::Run(args)) => run_script(args),
        Some(Command::Check(args)) => check_script(args),
        Some(Command::Repl(args)) => repl(args),
        Some(Command::Kernel(args)) => kernel(args),
        None => repl(SessionArgs::default()),
    };
    match result {
        Err(e) if e.downcast_ref::<Formatted>().is_some() => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
