//! The `sparselab` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use sparselab::device::{dtype_name, parse_device, parse_dtype};
use sparselab::eval::{eval_dataset, PplOptions};
use sparselab::model::{LoadOptions, Model};

#[derive(Parser)]
#[command(
    name = "sparselab",
    version,
    about = "LLM compression research: load, prune, quantize, evaluate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a model on a dataset, by the reference protocol.
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory or hub id `org/name[@revision]`.
    #[arg(long)]
    model: String,
    /// Dataset: `wikitext2`, `ptb`, `c4` with an optional `:split`, or a local
    /// .txt/.raw/.jsonl/.json.gz/.parquet file. Repeat for several.
    #[arg(long, required = true)]
    dataset: Vec<String>,
    /// Window length (default: max_position_embeddings, at most 2048).
    #[arg(long)]
    seqlen: Option<usize>,
    /// Evaluate only the first N windows.
    #[arg(long)]
    nsamples: Option<usize>,
    /// Windows run together through each layer.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16 (default: the checkpoint's).
    #[arg(long)]
    dtype: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Print one JSON object per dataset instead of text.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

fn eval(args: EvalArgs) -> Result<()> {
    let opts = LoadOptions {
        device: parse_device(&args.device)?,
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        revision: args.revision.clone(),
        ..LoadOptions::default()
    };
    let model = Model::load(&args.model, &opts)?;
    let ppl_opts = PplOptions {
        seqlen: args.seqlen,
        batch: args.batch,
        max_windows: args.nsamples,
        quiet: args.quiet || args.json,
    };
    for dataset in &args.dataset {
        let r = eval_dataset(&model, dataset, &ppl_opts)?;
        if args.json {
            let out = serde_json::json!({
                "model": args.model,
                "dataset": dataset,
                "seqlen": r.seqlen,
                "windows": r.windows,
                "ppl": r.ppl,
                "seconds": r.seconds,
                "dtype": dtype_name(model.dtype()),
            });
            println!("{out}");
        } else {
            println!(
                "{} on {dataset}: ppl {:.4} ({} windows of {} tokens, {}, {:.1}s)",
                args.model,
                r.ppl,
                r.windows,
                r.seqlen,
                dtype_name(model.dtype()),
                r.seconds
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => eval(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
