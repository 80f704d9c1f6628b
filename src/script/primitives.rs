//! The primitives scripts call, one Rust function each, with the `///` comments
//! that `:help` shows.
//!
//! Adding a primitive: write it in [`primitives`] (a `#[rhai_fn(return_raw)]`
//! function returning `R<T>`; overloads share a `name = "…"`), declare its
//! options (a struct declared with [`crate::options::declare_options!`], read
//! with [`super::options::Opts::parse`] and listed in
//! [`super::options::DECLARED`]; or keys in [`super::options::OPTION_KEYS`] read
//! one by one through [`super::options::Opts`]), and register any new handle type's name in
//! [`super::register_types`], and add its name to [`PRIMITIVES`] (the list
//! `:help` opens with). Nothing else needs to change: the REPL's help and
//! completion and `sparselab check` read the engine's metadata.

use candle_core::{DType, Tensor};
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map, FLOAT, INT};

use super::handles::{script_err, CalibHandle, LayerHandle, LayerIter, ModelHandle};
use super::options::{EvalOptions, Opts};
use super::vector::{err, format_num, Vector};
use crate::calibrate::compression_report;
use crate::calibrate::{CalibrateSettings, Calibration};
use crate::compress::rules::{Front, Settings};
use crate::compress::Method;
use crate::eval::{eval_dataset, PplOptions};
use crate::model::{LoadSettings, Model, SaveOptions, SaveSettings};
use crate::report::summary::TARGET_TOLERANCE;
use crate::report::LinearReport;
use crate::report::RunInfo;
use crate::runtime::device::{device_name, dtype_name};

type R<T> = Result<T, Box<EvalAltResult>>;

/// The top-level primitives, in the order `:help` lists them.
pub const PRIMITIVES: &[&str] = &[
    "load_model",
    "calibrate",
    "score_importance",
    "group_channels",
    "allocate_bits",
    "prune_layer",
    "eval_ppl",
    "save",
    "summary",
    "target_tolerance",
    "target_missed",
    "plot_histogram",
    "write_text",
    "plot_bits",
    "plot_layers",
    "plot_compare",
    "plot_xy",
    "compare_table",
];

/// Whether the engine runs quietly (no progress output): its tag's `quiet`.
pub(crate) fn engine_quiet(ctx: &NativeCallContext) -> bool {
    ctx.tag()
        .and_then(|t| t.read_lock::<Map>().and_then(|m| m.get("quiet").cloned()))
        .and_then(|q| q.as_bool().ok())
        .unwrap_or(false)
}

/// What a script run is, for its reports: the script that is running, its
/// text and `--set` values, and the command line.
fn script_run(ctx: &NativeCallContext) -> RunInfo {
    let path = ctx.call_source().map(str::to_string);
    let set: serde_json::Map<String, serde_json::Value> = ctx
        .tag()
        .and_then(|t| t.read_lock::<Map>().and_then(|m| m.get("params").cloned()))
        .and_then(|p| p.read_lock::<Map>().map(|p| p.clone()))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    RunInfo {
        script: path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()),
        script_path: path,
        set: Some(serde_json::Value::Object(set)),
        command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
        ..RunInfo::default()
    }
}

/// The evaluation settings of an options map ([`EvalOptions`], declared once
/// for `sparselab eval` and every evaluation function).
pub(crate) fn ppl_options(ctx: &NativeCallContext, o: &Opts) -> R<PplOptions> {
    Ok(o.parse::<EvalOptions>()?.ppl_options(engine_quiet(ctx)))
}

/// A value that may be absent: `()` for `None`.
fn opt_f64(v: Option<f64>) -> Dynamic {
    v.map(Dynamic::from_float).unwrap_or(Dynamic::UNIT)
}

/// A linear's report as a script map.
pub fn report_map(r: &LinearReport) -> Map {
    let mut m = Map::new();
    m.insert("layer".into(), Dynamic::from_int(r.layer as INT));
    m.insert("linear".into(), r.linear.clone().into());
    m.insert("method".into(), r.method.clone().into());
    m.insert("rows".into(), Dynamic::from_int(r.rows as INT));
    m.insert("columns".into(), Dynamic::from_int(r.columns as INT));
    m.insert("sparsity".into(), Dynamic::from_float(r.sparsity));
    m.insert("avg_bits".into(), opt_f64(r.avg_bits));
    m.insert("loss".into(), opt_f64(r.loss));
    m.insert("rel_error".into(), Dynamic::from_float(r.rel_error));
    m.insert("seconds".into(), Dynamic::from_float(r.seconds));
    m.insert(
        "dead_columns".into(),
        Dynamic::from_int(r.dead_columns as INT),
    );
    m.insert(
        "nm_valid".into(),
        r.nm_valid.map(Dynamic::from_bool).unwrap_or(Dynamic::UNIT),
    );
    m.insert("percdamp".into(), opt_f64(r.percdamp));
    let hist: Array = r
        .bits_histogram
        .iter()
        .map(|&(b, n)| {
            let pair: Array = vec![Dynamic::from_int(b as INT), Dynamic::from_int(n as INT)];
            Dynamic::from_array(pair)
        })
        .collect();
    m.insert("bits_histogram".into(), Dynamic::from_array(hist));
    if let Some(note) = &r.importance {
        let mut n = Map::new();
        n.insert("metric".into(), note.metric.clone().into());
        n.insert("min".into(), Dynamic::from_float(note.min));
        n.insert("max".into(), Dynamic::from_float(note.max));
        m.insert("importance".into(), Dynamic::from_map(n));
    }
    m
}

/// The compression method a `prune_layer` options map asks for: its
/// [`Settings`] (declared once, for `sparselab prune` too) through the
/// combination rules ([`crate::compress::rules`]).
pub fn method_from_options(opts: &Opts) -> R<Method> {
    opts.parse::<Settings>()?
        .to_method(Front::Script)
        .or_else(|e| err(format!("prune_layer: {e:#}")))
}

/// A tensor as a flat f32 Vector.
fn tensor_vector(t: &Tensor) -> anyhow::Result<Vector> {
    Ok(Vector::from_f32(
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    ))
}

/// The diagonal of a square matrix.
fn diagonal(h: &Tensor) -> anyhow::Result<Tensor> {
    let n = h.dim(0)?;
    let idx: Vec<u32> = (0..n as u32).map(|i| i * (n as u32 + 1)).collect();
    let idx = Tensor::from_vec(idx, n, h.device())?;
    Ok(h.flatten_all()?.index_select(&idx, 0)?)
}

/// The primitives and the handle types' methods.
#[export_module]
pub mod primitives {
    use super::*;

    // ---- models -----------------------------------------------------------

    /// Loads a model: a local directory with config.json, a llama.cpp GGUF
    /// file (or a directory holding one; dequantized as layers are read), or a
    /// hub id `org/name[@revision]` (from the Hugging Face cache, else
    /// downloaded unless HF_HUB_OFFLINE=1). Returns a `Model`.
    ///
    /// ```rhai
    /// let m = load_model("facebook/opt-125m");
    /// let smol = load_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    /// print(m.num_layers);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn load_model(spec: &str) -> R<ModelHandle> {
        load_model_with(spec, Map::new())
    }
    /// Loads a model with options `#{device, dtype, revision}` (`:help
    /// load_model` lists them): `device` "cpu" (default), "cuda" or "cuda:N";
    /// `dtype` "f32", "f16" or "bf16" (default: the checkpoint's); `revision` a
    /// hub branch, tag or commit.
    #[rhai_fn(name = "load_model", return_raw)]
    pub fn load_model_with(spec: &str, options: Map) -> R<ModelHandle> {
        let opts = Opts::new("load_model", options)?
            .parse::<LoadSettings>()?
            .load_options()
            .or_else(|e| err(format!("load_model: {e}")))?;
        let model = Model::load(spec, &opts).map_err(script_err)?;
        Ok(ModelHandle::new(model, spec))
    }

    /// Architecture: "opt" or "llama".
    #[rhai_fn(get = "arch", pure, return_raw)]
    pub fn model_arch(m: &mut ModelHandle) -> R<String> {
        Ok(m.read()?.arch().as_str().to_string())
    }
    /// Number of decoder layers.
    #[rhai_fn(get = "num_layers", pure, return_raw)]
    pub fn model_num_layers(m: &mut ModelHandle) -> R<INT> {
        Ok(m.read()?.num_layers() as INT)
    }
    /// Residual width.
    #[rhai_fn(get = "hidden_size", pure, return_raw)]
    pub fn model_hidden_size(m: &mut ModelHandle) -> R<INT> {
        Ok(m.read()?.hidden_size() as INT)
    }
    /// Names of the linears within a decoder layer, in the reference's order.
    #[rhai_fn(get = "linears", pure, return_raw)]
    pub fn model_linears(m: &mut ModelHandle) -> R<Array> {
        Ok(m.read()?
            .linear_names()
            .iter()
            .map(|s| Dynamic::from(s.to_string()))
            .collect())
    }
    /// Compute device: "cpu" or "cuda:N".
    #[rhai_fn(get = "device", pure, return_raw)]
    pub fn model_device(m: &mut ModelHandle) -> R<String> {
        Ok(device_name(m.read()?.device()))
    }
    /// Compute dtype: "f32", "f16" or "bf16".
    #[rhai_fn(get = "dtype", pure, return_raw)]
    pub fn model_dtype(m: &mut ModelHandle) -> R<String> {
        Ok(dtype_name(m.read()?.dtype()).to_string())
    }
    /// The spec the model was loaded from.
    #[rhai_fn(get = "spec", pure)]
    pub fn model_spec(m: &mut ModelHandle) -> String {
        m.spec().to_string()
    }
    /// `Model(spec: arch, N layers, hidden H, dtype on device)`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn model_to_string(m: &mut ModelHandle) -> String {
        m.describe()
    }

    // ---- calibration ------------------------------------------------------

    /// Starts a sequential calibration of `model` on `dataset` (a name such as
    /// "wikitext2", "ptb", "c4" with an optional ":split", default train; or a
    /// local file). Returns a `Calibration`; loop over `calib.layers()`.
    ///
    /// ```rhai
    /// let calib = calibrate(model, "wikitext2");
    /// for layer in calib.layers() {
    ///     for linear in layer.linears { prune_layer(layer, linear, #{sparsity: 0.5}); }
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn calibrate(ctx: NativeCallContext, model: ModelHandle, dataset: &str) -> R<CalibHandle> {
        calibrate_with(ctx, model, dataset, Map::new())
    }
    /// Starts a calibration with an options map (`:help calibrate` lists the
    /// options; docs/options.md has the table): the windows (`nsamples`,
    /// `seqlen`, `seed`), `batch`, `true_sequential`, `reservoir`, a
    /// `checkpoint` to resume from, a statistics `cache` and `sequential`
    /// for sweeps, `memory_limit`, `gemm` and `quiet`. `calib.cache_counts`
    /// tells how many layers a cache computed and reused.
    ///
    /// ```rhai
    /// let calib = calibrate(m, "wikitext2", #{nsamples: 128, cache: "calib-cache", sequential: false});
    /// ```
    #[rhai_fn(name = "calibrate", return_raw)]
    pub fn calibrate_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        dataset: &str,
        options: Map,
    ) -> R<CalibHandle> {
        let settings = Opts::new("calibrate", options)?.parse::<CalibrateSettings>()?;
        let opts = settings
            .calib_options(
                dataset,
                engine_quiet(&ctx),
                ctx.call_source().unwrap_or_default().to_string(),
                Front::Script,
            )
            .or_else(|e| err(format!("calibrate: {e}")))?;
        let calib = {
            let m = model.settled()?;
            Calibration::new(&m, opts).map_err(script_err)?
        };
        CalibHandle::new(&model, calib, dataset)
    }

    /// The remaining decoder layers, in order, for a `for` loop. Each turn commits
    /// the previous layer (its compressed weights into the model, then the
    /// compressed layer re-run to make the next layer's inputs) before yielding.
    #[rhai_fn(pure)]
    pub fn layers(c: &mut CalibHandle) -> LayerIter {
        c.layers()
    }
    /// Commits the open layer and returns the next one, or `()` after the last.
    #[rhai_fn(pure, return_raw)]
    pub fn next_layer(c: &mut CalibHandle) -> R<Dynamic> {
        Ok(c.next_layer()?.map(Dynamic::from).unwrap_or(Dynamic::UNIT))
    }
    /// Commits the open layer (done by itself when the loop moves on or ends).
    #[rhai_fn(pure, return_raw)]
    pub fn commit(c: &mut CalibHandle) -> R<()> {
        c.commit()
    }
    /// One map per compressed linear, in order: `#{layer, linear, method, rows,
    /// columns, sparsity, avg_bits, loss, rel_error, seconds, dead_columns,
    /// nm_valid, percdamp, bits_histogram}` (`()` where not applicable).
    #[rhai_fn(name = "reports", pure, return_raw)]
    pub fn calib_reports(c: &mut CalibHandle) -> R<Array> {
        Ok(c.reports()?
            .iter()
            .map(|r| Dynamic::from_map(report_map(r)))
            .collect())
    }
    /// Window length.
    #[rhai_fn(get = "seqlen", pure, return_raw)]
    pub fn calib_seqlen(c: &mut CalibHandle) -> R<INT> {
        c.with(|c| c.seqlen() as INT)
    }
    /// Number of calibration windows.
    #[rhai_fn(get = "nsamples", pure, return_raw)]
    pub fn calib_nsamples(c: &mut CalibHandle) -> R<INT> {
        c.with(|c| c.windows() as INT)
    }
    /// The index of the next layer to be yielded.
    #[rhai_fn(get = "next_index", pure, return_raw)]
    pub fn calib_next_index(c: &mut CalibHandle) -> R<INT> {
        c.with(|c| c.next_index() as INT)
    }
    /// How the layers so far got their statistics: `#{computed, reused,
    /// forwards_skipped}` — computed by a pass over the windows, read from the
    /// `cache`, and commits that did not need to run the layer (its successor's
    /// statistics and inputs were cached, or it was the last layer).
    #[rhai_fn(get = "cache_counts", pure, return_raw)]
    pub fn calib_cache_counts(c: &mut CalibHandle) -> R<Map> {
        let k = c.with(|c| c.cache_counts())?;
        let mut m = Map::new();
        m.insert("computed".into(), Dynamic::from_int(k.computed as INT));
        m.insert("reused".into(), Dynamic::from_int(k.reused as INT));
        m.insert(
            "forwards_skipped".into(),
            Dynamic::from_int(k.forwards_skipped as INT),
        );
        Ok(m)
    }
    /// The calibration dataset.
    #[rhai_fn(get = "dataset", pure, return_raw)]
    pub fn calib_dataset(c: &mut CalibHandle) -> R<String> {
        c.dataset()
    }
    /// The model being calibrated.
    #[rhai_fn(get = "model", pure, return_raw)]
    pub fn calib_model(c: &mut CalibHandle) -> R<ModelHandle> {
        c.model()
    }
    /// `Calibration(dataset, N windows of T tokens, at layer i)`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn calib_to_string(c: &mut CalibHandle) -> String {
        let ds = c.dataset().unwrap_or_default();
        c.with(|k| {
            format!(
                "Calibration({ds}, {} windows of {} tokens, at layer {})",
                k.windows(),
                k.seqlen(),
                k.next_index()
            )
        })
        .unwrap_or_else(|_| "Calibration(unusable)".into())
    }

    // ---- layers -----------------------------------------------------------

    /// Decoder layer index.
    #[rhai_fn(get = "index", pure)]
    pub fn layer_index(l: &mut LayerHandle) -> INT {
        l.index as INT
    }
    /// Names of the layer's linears, in the reference's order.
    #[rhai_fn(get = "linears", pure)]
    pub fn layer_linears(l: &mut LayerHandle) -> Array {
        l.linears_array()
    }
    /// `[rows, columns]` of a linear's weight.
    #[rhai_fn(pure, return_raw)]
    pub fn shape(l: &mut LayerHandle, linear: &str) -> R<Array> {
        l.with(|w| {
            let (r, c) = w.weight(linear)?.dims2()?;
            Ok(vec![
                Dynamic::from_int(r as INT),
                Dynamic::from_int(c as INT),
            ])
        })
    }
    /// A linear's current weight, flattened row by row, as a Vector.
    #[rhai_fn(pure, return_raw)]
    pub fn weight(l: &mut LayerHandle, linear: &str) -> R<Vector> {
        l.with(|w| tensor_vector(&w.weight(linear)?))
    }
    /// Statistics of a linear's current weight: `#{rows, columns, mean, std, min,
    /// max, mean_abs, zeros}` (`zeros` = fraction of exact zeros).
    #[rhai_fn(pure, return_raw)]
    pub fn weight_stats(l: &mut LayerHandle, linear: &str) -> R<Map> {
        let (rows, cols, v) = l.with(|w| {
            let t = w.weight(linear)?;
            let (r, c) = t.dims2()?;
            Ok((r, c, tensor_vector(&t)?))
        })?;
        let d = v.as_slice();
        let mut m = Map::new();
        m.insert("rows".into(), Dynamic::from_int(rows as INT));
        m.insert("columns".into(), Dynamic::from_int(cols as INT));
        m.insert("mean".into(), Dynamic::from_float(v.mean()));
        m.insert("std".into(), Dynamic::from_float(v.std()));
        m.insert("min".into(), Dynamic::from_float(v.min() as FLOAT));
        m.insert("max".into(), Dynamic::from_float(v.max() as FLOAT));
        let mean_abs = d.iter().map(|x| x.abs() as f64).sum::<f64>() / d.len() as f64;
        m.insert("mean_abs".into(), Dynamic::from_float(mean_abs));
        let zeros = d.iter().filter(|&&x| x == 0.0).count() as f64 / d.len() as f64;
        m.insert("zeros".into(), Dynamic::from_float(zeros));
        Ok(m)
    }
    /// The L2 norm of each input column (channel) of a linear's weight.
    #[rhai_fn(pure, return_raw)]
    pub fn column_norms(l: &mut LayerHandle, linear: &str) -> R<Vector> {
        l.with(|w| {
            let t = w.weight(linear)?.to_dtype(DType::F32)?;
            tensor_vector(&t.sqr()?.sum(0)?.sqrt()?)
        })
    }
    /// The diagonal of a linear's input Hessian (2/n · Σ x_j²), one per channel.
    #[rhai_fn(pure, return_raw)]
    pub fn hessian_diag(l: &mut LayerHandle, linear: &str) -> R<Vector> {
        l.with(|w| tensor_vector(&diagonal(w.hessian(linear)?.hessian())?))
    }
    /// Wanda's activation scale of each input channel: the mean over calibration
    /// windows of ‖X_j‖².
    #[rhai_fn(pure, return_raw)]
    pub fn act_norms(l: &mut LayerHandle, linear: &str) -> R<Vector> {
        l.with(|w| tensor_vector(w.hessian(linear)?.scaler_row()))
    }
    /// Statistics of a linear's input Hessian: `#{columns, nsamples, trace,
    /// mean_diag, dead_columns}` (dead = never activated).
    #[rhai_fn(pure, return_raw)]
    pub fn hessian_stats(l: &mut LayerHandle, linear: &str) -> R<Map> {
        let (cols, n, diag) = l.with(|w| {
            let acc = w.hessian(linear)?;
            Ok((
                acc.columns(),
                acc.nsamples(),
                tensor_vector(&diagonal(acc.hessian())?)?,
            ))
        })?;
        let mut m = Map::new();
        m.insert("columns".into(), Dynamic::from_int(cols as INT));
        m.insert("nsamples".into(), Dynamic::from_int(n as INT));
        m.insert("trace".into(), Dynamic::from_float(diag.sum()));
        m.insert("mean_diag".into(), Dynamic::from_float(diag.mean()));
        let dead = diag.as_slice().iter().filter(|&&x| x == 0.0).count();
        m.insert("dead_columns".into(), Dynamic::from_int(dead as INT));
        Ok(m)
    }
    /// Reports of the linears compressed in this layer so far.
    #[rhai_fn(name = "reports", pure, return_raw)]
    pub fn layer_reports(l: &mut LayerHandle) -> R<Array> {
        l.with(|w| {
            Ok(w.reports
                .iter()
                .map(|r| Dynamic::from_map(report_map(r)))
                .collect())
        })
    }
    /// `Layer(i: linears)`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn layer_to_string(l: &mut LayerHandle) -> String {
        format!("Layer({}: {})", l.index, l.linears.join(", "))
    }

    /// Compresses one linear of an open layer and returns `#{sparsity, avg_bits,
    /// loss, rel_error, seconds, layer, linear, method, dead_columns, nm_valid}`
    /// (`avg_bits` and `loss` are `()` where not applicable).
    ///
    /// Options: the compression settings `sparselab prune` takes as flags (listed
    /// with their types and defaults below), checked by the same combination
    /// rules.
    ///
    /// ```rhai
    /// prune_layer(layer, "fc1", #{sparsity: 0.5, bits: 4});
    /// ```
    #[rhai_fn(return_raw)]
    pub fn prune_layer(layer: LayerHandle, linear: &str, options: Map) -> R<Map> {
        let o = Opts::new("prune_layer", options)?;
        let method = method_from_options(&o)?;
        let report = layer.with(|w| w.compress(linear, &method))?;
        if report.avg_bits.is_some() {
            crate::script::session::note_quantized();
        }
        Ok(report_map(&report))
    }

    // ---- targets ------------------------------------------------------------

    /// How far (in bits) an achieved average may be from its target before it
    /// counts as missed: the one tolerance that `summary`, `report::check_target`
    /// and the recipes use.
    pub fn target_tolerance() -> FLOAT {
        TARGET_TOLERANCE
    }
    /// Whether `avg_bits` misses `target` by more than `target_tolerance()`
    /// bits, or is `()` (nothing quantized). A miss is remembered: `sparselab
    /// run` then repeats "MISSED TARGET" as its last line.
    ///
    /// ```rhai
    /// if target_missed(s.avg_bits, 4.0) { print("MISSED TARGET"); }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn target_missed(avg_bits: Dynamic, target: Dynamic) -> R<bool> {
        let number = |v: &Dynamic, what: &str| -> R<f64> {
            match (v.as_float(), v.as_int()) {
                (Ok(f), _) => Ok(f),
                (_, Ok(i)) => Ok(i as f64),
                _ => err(format!(
                    "target_missed: `{what}` must be a number, got {}",
                    crate::script::options::type_label(v)
                )),
            }
        };
        let target = number(&target, "target")?;
        let line = if avg_bits.is_unit() {
            format!("MISSED TARGET: nothing was quantized against a target of {target:.2} bits")
        } else {
            let avg = number(&avg_bits, "avg_bits")?;
            if (avg - target).abs() <= TARGET_TOLERANCE {
                return Ok(false);
            }
            format!(
                "MISSED TARGET: average {avg:.3} bits against a target of {target:.2} \
                 (off by {:+.3}, tolerance {TARGET_TOLERANCE})",
                avg - target
            )
        };
        crate::script::session::note_missed_target(line);
        Ok(true)
    }

    // ---- evaluation -------------------------------------------------------

    /// Perplexity of `model` on `dataset` ("wikitext2", "ptb", "c4", with an
    /// optional ":split", default test; or a local file) by the reference protocol.
    /// Commits any layer a calibration of this model still has open.
    #[rhai_fn(return_raw)]
    pub fn eval_ppl(ctx: NativeCallContext, model: ModelHandle, dataset: &str) -> R<FLOAT> {
        eval_ppl_with(ctx, model, dataset, Map::new())
    }
    /// Perplexity with options `#{seqlen, nsamples, batch, quiet}` (listed with
    /// their defaults below; the same as `sparselab eval`'s flags).
    #[rhai_fn(name = "eval_ppl", return_raw)]
    pub fn eval_ppl_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        dataset: &str,
        options: Map,
    ) -> R<FLOAT> {
        let o = Opts::new("eval_ppl", options)?;
        let opts = super::ppl_options(&ctx, &o)?;
        let m = model.settled()?;
        Ok(eval_dataset(&m, dataset, &opts).map_err(script_err)?.ppl)
    }

    // ---- files ------------------------------------------------------------

    /// Writes `text` to the file `path`, creating its directory; atomic (a
    /// temporary file renamed into place), so a reader never sees half a file.
    ///
    /// ```rhai
    /// write_text("runs/a/summary.json", summary(calib).to_json());
    /// ```
    #[rhai_fn(return_raw)]
    pub fn write_text(path: &str, text: &str) -> R<()> {
        let p = std::path::Path::new(path);
        let write = || -> anyhow::Result<()> {
            use anyhow::Context;
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let tmp = p.with_file_name(format!(
                ".{}.partial-{}",
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                std::process::id()
            ));
            std::fs::write(&tmp, text)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))
        };
        write().map_err(script_err)
    }

    // ---- saving -------------------------------------------------------------

    /// Saves `model` into the new or empty directory `dir` as transformers and
    /// vLLM load it: `config.json`, the tokenizer files, the weights as
    /// safetensors under the source's names, shapes and dtypes with the pruned
    /// and quantized values in place, and `compression.json` from the model's
    /// latest calibration (with this script's text and `--set` values). Commits
    /// any layer still open. Returns `#{dir, files, tensors, bytes}`.
    ///
    /// ```rhai
    /// m.save("out/opt-125m-50");
    /// ```
    #[rhai_fn(name = "save", return_raw)]
    pub fn save_model(ctx: NativeCallContext, model: ModelHandle, dir: &str) -> R<Map> {
        save_model_with(ctx, model, dir, Map::new())
    }
    /// Saves with options `#{overwrite, format}`: `overwrite: true` replaces a
    /// non-empty `dir` once the new copy is complete (default false: an error);
    /// `format: "packed"` stores integer codes, scales, zeros and masks
    /// (docs/packed-format.md) instead of `"safetensors"` (the default). The
    /// write is atomic: a failure leaves nothing behind and `dir` as it was.
    #[rhai_fn(name = "save", return_raw)]
    pub fn save_model_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        dir: &str,
        options: Map,
    ) -> R<Map> {
        let settings = Opts::new("save", options)?.parse::<SaveSettings>()?;
        let run = script_run(&ctx);
        let summary = model
            .with_latest_calibration(|m, calib| {
                let opts = SaveOptions {
                    overwrite: settings.overwrite(),
                    format: settings.format(),
                    report: calib.map(|c| compression_report(m, c, &run)),
                    ..SaveOptions::default()
                };
                m.save(dir, &opts)
            })?
            .map_err(script_err)?;
        for (name, why) in &summary.stored_dense {
            eprintln!("warning: {name}: {why}");
        }
        let mut out = Map::new();
        out.insert("dir".into(), summary.dir.display().to_string().into());
        out.insert(
            "files".into(),
            Dynamic::from_array(summary.files.iter().map(|f| f.clone().into()).collect()),
        );
        out.insert("tensors".into(), (summary.tensors as INT).into());
        out.insert("bytes".into(), (summary.tensor_bytes as INT).into());
        Ok(out)
    }

    /// Writes the report of `model`'s latest calibration to `path` as JSON:
    /// what `save` writes as `compression.json` (settings, calibration, per
    /// linear reports, this script's text and `--set` values). `sparselab prune
    /// --report` writes the same document.
    ///
    /// ```rhai
    /// write_report(m, "runs/a/report.json");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn write_report(ctx: NativeCallContext, model: ModelHandle, path: &str) -> R<()> {
        write_report_with(ctx, model, path, Map::new())
    }
    /// As `write_report`, with `extra`'s entries added at the top level, such
    /// as evaluations: `#{"eval": #{wikitext2: eval_ppl_stats(m, "wikitext2")}}`
    /// (the key `sparselab prune` writes its evaluations under).
    #[rhai_fn(name = "write_report", return_raw)]
    pub fn write_report_with(
        ctx: NativeCallContext,
        model: ModelHandle,
        path: &str,
        extra: Map,
    ) -> R<()> {
        let run = script_run(&ctx);
        let extra: serde_json::Map<String, serde_json::Value> = extra
            .into_iter()
            .map(|(k, v)| {
                rhai::serde::from_dynamic::<serde_json::Value>(&v)
                    .map(|v| (k.to_string(), v))
                    .or_else(|e| err(format!("write_report: entry `{k}`: {e}")))
            })
            .collect::<R<_>>()?;
        let report = model.with_latest_calibration(|m, calib| {
            calib.map(|c| crate::calibrate::run_report(m, c, &run, extra))
        })?;
        let Some(report) = report else {
            return err(
                "write_report: this model has no calibration to report; run calibrate first",
            );
        };
        crate::calibrate::write_report(std::path::Path::new(path), &report).map_err(script_err)
    }

    // ---- formatting helpers -------------------------------------------------

    /// A number with `decimals` digits after the point; `()` gives "-".
    #[rhai_fn(name = "fmt", return_raw)]
    pub fn fmt_num(x: Dynamic, decimals: INT) -> R<String> {
        let d = decimals.clamp(0, 17) as usize;
        if x.is_unit() {
            return Ok("-".into());
        }
        match (x.as_float(), x.as_int()) {
            (Ok(f), _) => Ok(format!("{f:.d$}")),
            (_, Ok(i)) => Ok(format!("{:.d$}", i as f64)),
            _ => err(format!("fmt: expected a number, got {}", x.type_name())),
        }
    }
    /// A number in about five significant digits (`0.1234`, `12.5`, `1.2e-5`);
    /// `()` gives "-".
    #[rhai_fn(name = "fmt", return_raw)]
    pub fn fmt_auto(x: Dynamic) -> R<String> {
        if x.is_unit() {
            return Ok("-".into());
        }
        match (x.as_float(), x.as_int()) {
            (Ok(f), _) => Ok(format_num(f)),
            (_, Ok(i)) => Ok(i.to_string()),
            _ => Ok(x.to_string()),
        }
    }
}
