//! Script functions for mixed precision: channel importance, grouping, bit
//! allocation, the run summary, and the histogram chart.

use rhai::plugin::*;
use rhai::EvalAltResult;

use crate::compress::allocation::GroupMethod;
use crate::script::vector::err;

type R<T> = Result<T, Box<EvalAltResult>>;

/// An anyhow error as a script error (the whole context chain).
fn script_err(e: anyhow::Error) -> Box<EvalAltResult> {
    format!("{e:#}").into()
}

/// A grouping method by name (`None`: quantile).
fn grouping(name: &Option<String>, function: &str) -> R<GroupMethod> {
    match name.as_deref() {
        None | Some("quantile") => Ok(GroupMethod::Quantile),
        Some("kmeans") => Ok(GroupMethod::KMeans),
        Some(other) => err(format!(
            "{function}: unknown grouping `{other}`; valid: quantile, kmeans"
        )),
    }
}

/// Writes a chart, creating the directory it goes into (recipes take an output
/// directory with `--set out=…` that need not exist yet).
/// `format` overrides the path's extension.
fn save_plot(
    plot: &crate::plot::Plot,
    path: &str,
    format: Option<crate::plot::PlotFormat>,
) -> R<()> {
    let parent = std::path::Path::new(path).parent();
    if let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| -> Box<EvalAltResult> {
            format!("cannot create {}: {e}", dir.display()).into()
        })?;
    }
    match format {
        Some(f) => plot.save_as(path, f).map_err(script_err),
        None => plot.save(path).map_err(script_err),
    }
}

/// A chart as the options ask: retitled by `title`, written to `path` (as
/// `format`, else by the path's extension). `format` without `path` is an
/// error rather than ignored.
fn finish_plot(
    o: &crate::script::options::Opts,
    plot: crate::plot::Plot,
    function: &str,
) -> R<crate::plot::Plot> {
    use crate::plot::PlotFormat;
    let plot = match o.string("title")? {
        Some(t) => plot.with_title(&t).map_err(script_err)?,
        None => plot,
    };
    let format = o
        .string("format")?
        .map(|f| PlotFormat::parse(&f))
        .transpose()
        .map_err(|e| -> Box<EvalAltResult> {
            format!("{function}: option `format`: {e}").into()
        })?;
    match (o.string("path")?, format) {
        (Some(path), format) => save_plot(&plot, &path, format)?,
        (None, Some(_)) => {
            return err(format!(
                "{function}: option `format` needs `path` (the chart is kept in memory either way)"
            ))
        }
        (None, None) => {}
    }
    Ok(plot)
}

/// Numbers of a script array (integers accepted), for chart coordinates.
fn numbers(values: &rhai::Array, what: &str) -> R<Vec<f64>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match (v.as_float(), v.as_int()) {
            (Ok(f), _) => Ok(f),
            (_, Ok(n)) => Ok(n as f64),
            _ => err(format!(
                "{what}[{i}] must be a number, got {} `{v}`",
                crate::script::options::type_label(v)
            )),
        })
        .collect()
}

/// `(x, y)` points of a series from two arrays of numbers of one length.
fn pairs(xs: &rhai::Array, ys: &rhai::Array, series: &str) -> R<Vec<(f64, f64)>> {
    let x = numbers(xs, &format!("plot_xy: `{series}` xs"))?;
    let y = numbers(ys, &format!("plot_xy: `{series}` ys"))?;
    if x.len() != y.len() {
        return err(format!(
            "plot_xy: `{series}` has {} x values and {} y values: they must pair up",
            x.len(),
            y.len()
        ));
    }
    Ok(x.into_iter().zip(y).collect())
}

/// An x-y chart of `series` with the options of `plot_xy`.
fn xy_plot(
    o: crate::script::options::Opts,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> R<crate::plot::Plot> {
    use crate::plot::XyOptions;
    let d = XyOptions::default();
    let x_label = o.string("x_label")?.unwrap_or(d.x_label);
    let y_label = o.string("y_label")?.unwrap_or(d.y_label);
    let opts = XyOptions {
        // The title is applied here, not by finish_plot, to render once; by
        // default it names the axes.
        title: o
            .string("title")?
            .unwrap_or_else(|| format!("{y_label} against {x_label}")),
        x_label,
        y_label,
    };
    let plot = crate::plot::xy_chart(&series, &opts).map_err(script_err)?;
    let mut rest = o;
    rest.forget("title");
    finish_plot(&rest, plot, "plot_xy")
}

/// Functions registered globally by [`super::new_engine`].
#[export_module]
pub mod mixed {
    use rhai::{Dynamic, EvalAltResult, Map, INT};

    use crate::compress::allocation::{
        allocate_bits as allocate, allocation_warning, group_channels as group, score_spread_note,
        AllocMethod, AllocOptions,
    };
    use crate::compress::channel_error::{
        allocate_min_error, channel_errors as compute_errors, ErrorCurves,
    };
    use rhai::FLOAT;

    /// Why a measured-error allocation may sit in one tier.
    const MIN_ERROR_NOTE: &str = "the measured error curves make the other tiers worth less \
        than their bits at this budget (the allocation is still the optimum of the curves)";
    use crate::compress::importance::importance_note;
    use crate::options::Declared;
    use crate::plot::{
        bits_chart, compare_chart, histogram, layers_chart, CompareTable, HistOptions, Plot,
        XyOptions,
    };
    use crate::report::summary::{RunIntent, Summary};
    use crate::script::handles::{CalibHandle, LayerHandle};
    use crate::script::options::{
        AllocateModelOptions, AllocateOptions, ChannelErrorSettings, GroupOptions,
        ImportanceSettings, Opts, OwlOptions,
    };
    use crate::script::vector::{err, Vector};
    use rhai::Array;

    use super::R;

    /// One importance score per input channel of `linear` in `layer`, by `metric`:
    /// "magnitude" (column L2 norm of W), "activation" (√H_jj), "wanda"
    /// (Σ_i |W_ij|·√H_jj), "obs" (SparseGPT's saliency Σ_i W_ij²/U_jj²), "outlier"
    /// (max|x| / mean|x| over the calibration sample), "mi" (mutual information
    /// between the channel and the size of the linear's output, histogram
    /// estimator), "combined" (the mean-1 normalised sum of magnitude, activation,
    /// obs, outlier and mi). The metric and score range go into the summary.
    #[rhai_fn(return_raw)]
    pub fn score_importance(layer: LayerHandle, linear: &str, metric: &str) -> R<Vector> {
        score_importance_with(layer, linear, metric, Map::new())
    }

    /// Importance scores with options `#{percdamp, bins}`: damping of the `obs`
    /// metric (default 0.01) and histogram bins of `mi` (default 16).
    #[rhai_fn(name = "score_importance", return_raw)]
    pub fn score_importance_with(
        layer: LayerHandle,
        linear: &str,
        metric: &str,
        options: Map,
    ) -> R<Vector> {
        let opts = Opts::new("score_importance", options)?
            .parse::<ImportanceSettings>()?
            .importance_options();
        let scores = layer.with(|w| {
            let scores = w.score(linear, metric, &opts)?;
            w.set_importance(linear, importance_note(metric, &scores)?)?;
            Ok(scores)
        })?;
        Ok(Vector::from_f32(scores))
    }

    /// OWL's outlier ratio of `layer`: the fraction of the weights of all its
    /// linears whose Wanda score `|W_ij|·‖x_j‖` exceeds `m` times the mean score
    /// over the layer (the paper's M, typically 3–10). Read it from a dense
    /// statistics pass and turn the ratios into sparsities with `owl_sparsities`.
    #[rhai_fn(return_raw)]
    pub fn outlier_ratio(layer: LayerHandle, m: FLOAT) -> R<FLOAT> {
        layer.with(|w| {
            let mut parts = Vec::new();
            for l in w.linears() {
                let weight = w.weight(l)?;
                let d = w.hessian(l)?.diagonal()?;
                parts.push((weight, d));
            }
            crate::compress::owl::outlier_ratio(&parts, m)
        })
    }

    /// Per-layer sparsities from OWL outlier ratios (one per layer, in layer
    /// order) with options `#{sparsity, lambda}`: ratios scaled linearly onto
    /// `[0, 2·lambda]`, centred, subtracted from `sparsity`, so the mean is
    /// exactly `sparsity` and layers with more outliers are pruned less
    /// (`lambda` default 0.08, the paper's).
    #[rhai_fn(return_raw)]
    pub fn owl_sparsities(ratios: Array, options: Map) -> R<Array> {
        let o = Opts::new("owl_sparsities", options)?.parse::<OwlOptions>()?;
        let target = o.sparsity.ok_or_else(|| -> Box<EvalAltResult> {
            "owl_sparsities: `sparsity` (the mean target) is required".into()
        })?;
        let lambda = o.lambda();
        let r: Vec<f64> = crate::script::vector::from_array(&ratios)?
            .as_slice()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let s = crate::compress::owl::owl_sparsities(&r, target, lambda)
            .map_err(|e| -> Box<EvalAltResult> { format!("owl_sparsities: {e:#}").into() })?;
        Ok(s.into_iter().map(Dynamic::from_float).collect())
    }

    /// Group ids (0 = least important) splitting `scores` into `n_groups` groups
    /// of equal counts.
    #[rhai_fn(return_raw)]
    pub fn group_channels(scores: Vector, n_groups: INT) -> R<Vector> {
        group_channels_with(scores, n_groups, Map::new())
    }

    /// Group ids with options `#{method}`: "quantile" (equal counts, default) or
    /// "kmeans" (optimal 1-D k-means by exact dynamic programming).
    #[rhai_fn(name = "group_channels", return_raw)]
    pub fn group_channels_with(scores: Vector, n_groups: INT, options: Map) -> R<Vector> {
        let o = Opts::new("group_channels", options)?.parse::<GroupOptions>()?;
        let method = super::grouping(&o.method, "group_channels")?;
        if n_groups < 1 {
            return err(format!(
                "group_channels: n_groups must be at least 1, got {n_groups}"
            ));
        }
        let ids = group(scores.as_slice(), n_groups as usize, method).map_err(super::script_err)?;
        Ok(Vector::from_ints(ids.into_iter().map(|g| g as i64)))
    }

    /// Bit widths, one per channel, from importance `scores` with options
    /// `#{tiers, method, target_avg, proportions, thresholds, n_groups, grouping}`:
    /// `tiers` default [2, 3, 4, 6, 8]; `method` "quantile" (proportions per tier,
    /// equal by default), "budget" (average = `target_avg`, monotone in
    /// importance, minimising Σ s_j·4^(−b_j)), "threshold" (`thresholds`, one
    /// fewer than tiers, ascending) or "groups" (`n_groups` groups by `grouping`,
    /// one tier per group, meeting `target_avg`). Default method: "budget" when
    /// `target_avg` is given, else "quantile".
    #[rhai_fn(return_raw)]
    pub fn allocate_bits(scores: Vector, options: Map) -> R<Vector> {
        let o = Opts::new("allocate_bits", options)?.parse::<AllocateOptions>()?;
        let tiers = o.tiers();
        let target = o.target_avg;
        let need_target = |m: &str| -> R<f64> {
            target.ok_or_else(|| format!("allocate_bits: method `{m}` needs `target_avg`").into())
        };
        let method_name = o.method.clone().unwrap_or_else(|| {
            if target.is_some() {
                "budget".into()
            } else {
                "quantile".into()
            }
        });
        let unused = |key: &str| -> R<()> {
            if o.given(key) {
                return err(format!(
                    "allocate_bits: option `{key}` does not apply to method `{method_name}`"
                ));
            }
            Ok(())
        };
        let method = match method_name.as_str() {
            "quantile" => {
                unused("target_avg")?;
                unused("thresholds")?;
                AllocMethod::Quantile { proportions: o.proportions.clone() }
            }
            "budget" => {
                unused("thresholds")?;
                unused("proportions")?;
                AllocMethod::Budget { target_avg: need_target("budget")? }
            }
            "threshold" => {
                unused("target_avg")?;
                unused("proportions")?;
                let thresholds = o.thresholds.clone().ok_or_else(|| -> Box<EvalAltResult> { "allocate_bits: method `threshold` needs `thresholds`".into() })?;
                AllocMethod::Threshold { thresholds }
            }
            "groups" => {
                unused("thresholds")?;
                unused("proportions")?;
                AllocMethod::Groups {
                    target_avg: need_target("groups")?,
                    n_groups: o.n_groups,
                    grouping: super::grouping(&o.grouping, "allocate_bits")?,
                }
            }
            other => return err(format!("allocate_bits: unknown method `{other}`; valid: quantile, budget, threshold, groups")),
        };
        if method_name != "groups" {
            unused("n_groups")?;
            unused("grouping")?;
        }
        if o.weights.is_some() {
            return err(
                "allocate_bits: option `weights` steers the error allocator: pass the curves of \
                 channel_errors, not scores, as the first argument"
                    .to_string(),
            );
        }
        let target = match &method {
            AllocMethod::Budget { target_avg } | AllocMethod::Groups { target_avg, .. } => {
                Some(*target_avg)
            }
            _ => None,
        };
        let opts = AllocOptions { tiers, method };
        let bits = allocate(scores.as_slice(), &opts).map_err(super::script_err)?;
        let why = score_spread_note(scores.as_slice(), &opts.method);
        if let Some(w) = allocation_warning(&bits, &opts.tiers, target, &why) {
            eprintln!("warning: allocate_bits ({method_name}): {w}");
        }
        crate::script::session::note_widths_computed("allocate_bits");
        Ok(Vector::from_ints(bits.into_iter().map(|b| b as i64)))
    }

    /// Per-channel error curves of `linear` in `layer`: for every input channel
    /// and every tier, the output error that width would cost it (squared
    /// output error over the calibration tokens, in the Hessian's units),
    /// measured on the layer's weights after the estimated sparsity mask with
    /// the grid `prune_layer` will use. Options `#{tiers, sparsity, prunen,
    /// prunem, sym, groupsize, blocksize, percdamp, weight}`: pass the same
    /// sparsity and quantizer settings as to `prune_layer`; `tiers` default
    /// [2, 3, 4, 6, 8]; `weight` "obs" (the loss SparseGPT's sweep books,
    /// `(w − q)²/U_jj²`, default) or "diag" (`H_jj · (w − q)²`, no compensation);
    /// `relative: true` divides by the linear's output energy `tr(W H Wᵀ)`
    /// (relative output error, comparable across layers). Feed the curves to `allocate_bits` (one linear) or `allocate_model`.
    #[rhai_fn(return_raw)]
    pub fn channel_errors(layer: LayerHandle, linear: &str, options: Map) -> R<ErrorCurves> {
        let opts = Opts::new("channel_errors", options)?
            .parse::<ChannelErrorSettings>()?
            .channel_error_options("channel_errors")
            .or_else(err)?;
        layer.with(|w| {
            let weight = w.weight(linear)?;
            let acc = w.hessian(linear)?;
            compute_errors(&weight, acc, &opts)
        })
    }

    /// Widths minimising the summed measured error of one linear's `curves`
    /// (from `channel_errors`) at an average of `target_avg` bits, with options
    /// `#{target_avg, weights}`: `weights`, one per channel (any importance
    /// metric's scores), multiply each channel's errors. Exact Lagrangian
    /// optimum over the convex hulls of the curves; the average meets the
    /// target to within one channel's tier step. The tiers are the curves'.
    #[rhai_fn(name = "allocate_bits", return_raw)]
    pub fn allocate_bits_curves(curves: ErrorCurves, options: Map) -> R<Vector> {
        let o = Opts::new("allocate_bits", options)?.parse::<AllocateOptions>()?;
        for key in [
            "tiers",
            "method",
            "proportions",
            "thresholds",
            "n_groups",
            "grouping",
        ] {
            if o.given(key) {
                return err(format!(
                    "allocate_bits: option `{key}` does not apply to error curves (they carry \
                     their tiers; the allocation minimises their sum at `target_avg`)"
                ));
            }
        }
        let target = o.target_avg.ok_or_else(|| -> Box<EvalAltResult> {
            "allocate_bits: error curves need `target_avg`".into()
        })?;
        let curves = match o.weights {
            Some(wts) => {
                let wts: Vec<f32> = wts.into_iter().map(|w| w as f32).collect();
                curves.weighted(&wts).map_err(|e| -> Box<EvalAltResult> {
                    format!("allocate_bits: option `weights`: {e:#}").into()
                })?
            }
            None => curves,
        };
        let a = allocate_min_error(&[&curves], target).map_err(super::script_err)?;
        let bits = a.bits.into_iter().next().unwrap_or_default();
        crate::script::session::note_widths_computed("allocate_bits");
        if let Some(w) = allocation_warning(&bits, &curves.tiers, Some(target), MIN_ERROR_NOTE) {
            eprintln!("warning: allocate_bits (error): {w}");
        }
        Ok(Vector::from_ints(bits.into_iter().map(|b| b as i64)))
    }

    /// One budget across many linears: `curves` maps names (any, e.g.
    /// "3.mlp.down_proj") to error curves (from `channel_errors`, optionally
    /// `weighted`); returns a map from the same names to per-channel widths
    /// minimising the total error with an average of `target_avg` bits over
    /// all their weights (each channel counts its linear's rows). Options
    /// `#{target_avg}`. For a per-layer budget, pass one layer's curves.
    #[rhai_fn(return_raw)]
    pub fn allocate_model(curves: Map, options: Map) -> R<Map> {
        let o = Opts::new("allocate_model", options)?.parse::<AllocateModelOptions>()?;
        let target = o.target_avg.ok_or_else(|| -> Box<EvalAltResult> {
            "allocate_model: `target_avg` is required".into()
        })?;
        let mut names = Vec::with_capacity(curves.len());
        let mut sets = Vec::with_capacity(curves.len());
        for (name, v) in &curves {
            match v.read_lock::<ErrorCurves>() {
                Some(c) => sets.push(c.clone()),
                None => {
                    return err(format!(
                    "allocate_model: `{name}` must be error curves (from channel_errors), got {}",
                    crate::script::options::type_label(v)
                ))
                }
            }
            names.push(name.clone());
        }
        let refs: Vec<&ErrorCurves> = sets.iter().collect();
        let a = allocate_min_error(&refs, target).map_err(super::script_err)?;
        crate::script::session::note_widths_computed("allocate_model");
        let all: Vec<u32> = a.bits.iter().flatten().copied().collect();
        if let Some(tiers) = sets.first().map(|c| c.tiers.clone()) {
            // The target is checked on the weighted average, which is what it means.
            let concentrated = allocation_warning(&all, &tiers, None, MIN_ERROR_NOTE);
            if let Some(w) = concentrated {
                eprintln!("warning: allocate_model: {w}");
            }
            if (a.avg_bits - target).abs() > crate::report::summary::TARGET_TOLERANCE {
                eprintln!(
                    "warning: allocate_model: the average is {:.3} bits against a target of {target}",
                    a.avg_bits
                );
            }
        }
        let mut out = Map::new();
        for (name, bits) in names.into_iter().zip(a.bits) {
            out.insert(
                name,
                Dynamic::from(Vector::from_ints(bits.into_iter().map(|b| b as i64))),
            );
        }
        Ok(out)
    }

    /// The curves with channel `j`'s errors multiplied by `weights[j]` (scores
    /// of any importance metric, finite and non-negative): importance steering
    /// a model-wide allocation.
    #[rhai_fn(return_raw)]
    pub fn weighted(curves: &mut ErrorCurves, weights: Vector) -> R<ErrorCurves> {
        curves
            .weighted(weights.as_slice())
            .map_err(super::script_err)
    }

    /// Input channels the curves cover.
    #[rhai_fn(global, get = "channels")]
    pub fn curves_channels(c: &mut ErrorCurves) -> INT {
        c.channels() as INT
    }

    /// Output rows of the linear (the weights one channel holds).
    #[rhai_fn(global, get = "rows")]
    pub fn curves_rows(c: &mut ErrorCurves) -> INT {
        c.rows as INT
    }

    /// The tiers the curves were measured at.
    #[rhai_fn(global, get = "tiers")]
    pub fn curves_tiers(c: &mut ErrorCurves) -> Array {
        c.tiers
            .iter()
            .map(|&t| Dynamic::from_int(t as INT))
            .collect()
    }

    /// Every channel's error at width `bits` (one of the tiers).
    #[rhai_fn(global, return_raw)]
    pub fn errors_at(c: &mut ErrorCurves, bits: INT) -> R<Vector> {
        let Some(t) = c.tiers.iter().position(|&b| b as INT == bits) else {
            return err(format!(
                "errors_at: {bits} is not one of the tiers {:?}",
                c.tiers
            ));
        };
        Ok(Vector::from_f32(
            (0..c.channels()).map(|j| c.curve(j)[t] as f32).collect(),
        ))
    }

    /// The summed error of per-channel widths `bits` (each one of the tiers).
    #[rhai_fn(global, return_raw)]
    pub fn total_error(c: &mut ErrorCurves, bits: Vector) -> R<FLOAT> {
        let b = bits.to_u32s("total_error: bits")?;
        c.total(&b).map_err(super::script_err)
    }

    /// `ErrorCurves(channels, tiers)`.
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn curves_text(c: &mut ErrorCurves) -> String {
        format!(
            "ErrorCurves({} channels × {} rows, tiers {:?})",
            c.channels(),
            c.rows,
            c.tiers
        )
    }

    /// The run's summary: total channels, channels per bit tier, average bits,
    /// one line per linear. An error if bits were requested (or widths were
    /// computed by `allocate_bits`) and nothing was quantized.
    #[rhai_fn(return_raw)]
    pub fn summary(calib: CalibHandle) -> R<Summary> {
        summary_with(calib, Map::new())
    }

    /// The summary with options `#{target_avg, strict, bits_requested}`: a target
    /// the average must meet within `target_tolerance()` bits (a miss is
    /// announced in the first and the last line, and `sparselab run` repeats it
    /// as its last line; with `strict` it is an error) and whether bits were
    /// requested (default: a target was given, widths were computed and not
    /// yet used by a quantizing `prune_layer`, or any linear was quantized).
    #[rhai_fn(name = "summary", return_raw)]
    pub fn summary_with(calib: CalibHandle, options: Map) -> R<Summary> {
        let o = Opts::new("summary", options)?;
        let reports = calib.with(|c| c.reports.clone())?;
        let quantized = reports.iter().any(|r| r.avg_bits.is_some());
        let widths = crate::script::session::widths_pending_by().is_some();
        let intent = RunIntent {
            bits_requested: o.bool("bits_requested")?.unwrap_or(quantized || widths),
            target_avg: o.f64("target_avg")?,
            strict: o.bool("strict")?.unwrap_or(false),
        };
        let s = Summary::from_reports(&reports, &intent).map_err(super::script_err)?;
        if let Some(line) = s.missed_target_line() {
            crate::script::session::note_missed_target(line.to_string());
        }
        Ok(s)
    }

    /// The summary as text (what `print(summary)` shows).
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn summary_text(s: &mut Summary) -> String {
        s.to_string()
    }

    /// The summary as JSON text.
    #[rhai_fn(global, return_raw)]
    pub fn to_json(s: &mut Summary) -> R<String> {
        s.to_json().map_err(super::script_err)
    }

    /// Average bits over the quantized channels, or `()`.
    #[rhai_fn(global, get = "avg_bits")]
    pub fn summary_avg_bits(s: &mut Summary) -> Dynamic {
        s.avg_bits.map(Dynamic::from_float).unwrap_or(Dynamic::UNIT)
    }

    /// Input channels of every reported linear.
    #[rhai_fn(global, get = "total_channels")]
    pub fn summary_total(s: &mut Summary) -> INT {
        s.total_channels as INT
    }

    /// A histogram chart of `values` with options `#{title, bins, log_y, x_label,
    /// path, format}`; with `path` it is also written there (PNG or SVG by the
    /// extension, or by `format`).
    #[rhai_fn(return_raw)]
    pub fn plot_histogram(values: Vector, options: Map) -> R<Plot> {
        let o = Opts::new("plot_histogram", options)?;
        let d = HistOptions::default();
        let opts = HistOptions {
            title: o.string("title")?.unwrap_or(d.title),
            bins: o.usize("bins")?.unwrap_or(d.bins),
            log_y: o.bool("log_y")?.unwrap_or(d.log_y),
            x_label: o.string("x_label")?.unwrap_or(d.x_label),
        };
        let plot = histogram(values.as_slice(), &opts).map_err(super::script_err)?;
        super::finish_plot(&o, plot, "plot_histogram")
    }

    /// Channels per bit tier as bars, overall and per linear type, from a run's
    /// `summary(calib)`. An error when nothing was quantized.
    #[rhai_fn(return_raw)]
    pub fn plot_bits(summary: Summary) -> R<Plot> {
        plot_bits_with(summary, Map::new())
    }

    /// The bits chart with options `#{title, path, format}`: `path` also writes
    /// it (PNG or SVG by the extension, or by `format`: "png" or "svg").
    #[rhai_fn(name = "plot_bits", return_raw)]
    pub fn plot_bits_with(summary: Summary, options: Map) -> R<Plot> {
        let o = Opts::new("plot_bits", options)?;
        let plot = bits_chart(&summary).map_err(super::script_err)?;
        super::finish_plot(&o, plot, "plot_bits")
    }

    /// One field of a run's summary per decoder layer, a line per linear type
    /// (and their mean): `field` is "avg_bits", "sparsity" (percent), "loss"
    /// (OBS loss) or "rel_error" (relative output error).
    #[rhai_fn(return_raw)]
    pub fn plot_layers(summary: Summary, field: &str) -> R<Plot> {
        plot_layers_with(summary, field, Map::new())
    }

    /// The per-layer chart with options `#{title, path, format}` (as for
    /// `plot_bits`).
    #[rhai_fn(name = "plot_layers", return_raw)]
    pub fn plot_layers_with(summary: Summary, field: &str, options: Map) -> R<Plot> {
        let o = Opts::new("plot_layers", options)?;
        let plot = layers_chart(&summary, field).map_err(super::script_err)?;
        super::finish_plot(&o, plot, "plot_layers")
    }

    /// A comparison table (`compare_table(datasets)` filled with `add_row`) as
    /// grouped bars: one group per dataset, one bar per configuration.
    #[rhai_fn(return_raw)]
    pub fn plot_compare(table: CompareTable) -> R<Plot> {
        plot_compare_with(table, Map::new())
    }

    /// The comparison chart with options `#{title, path, format}` (as for
    /// `plot_bits`).
    #[rhai_fn(name = "plot_compare", return_raw)]
    pub fn plot_compare_with(table: CompareTable, options: Map) -> R<Plot> {
        let o = Opts::new("plot_compare", options)?;
        let plot = compare_chart(&table).map_err(super::script_err)?;
        super::finish_plot(&o, plot, "plot_compare")
    }

    /// `ys` against `xs` (arrays of numbers of one length) as a line with
    /// markers, sorted by x: perplexity against average bits over a sweep. The
    /// y axis fits the values. Options `#{title, x_label, y_label, label, path,
    /// format}`: `label` names the series in the legend (default: `y_label`),
    /// the title defaults to "`y_label` against `x_label`".
    #[rhai_fn(return_raw)]
    pub fn plot_xy(xs: Array, ys: Array, options: Map) -> R<Plot> {
        let o = Opts::new("plot_xy", options)?;
        let label = o.string("label")?;
        let y_label = o.string("y_label")?;
        let label = label
            .or(y_label)
            .unwrap_or_else(|| XyOptions::default().y_label);
        let points = super::pairs(&xs, &ys, &label)?;
        super::xy_plot(o, vec![(label, points)])
    }

    /// Several series on one x-y chart, one line each: `series` maps a legend
    /// name to `#{x: [...], y: [...]}` (a family of configurations each). Options
    /// as for `plot_xy(xs, ys, options)` but `label`.
    #[rhai_fn(name = "plot_xy", return_raw)]
    pub fn plot_xy_series(series: Map, options: Map) -> R<Plot> {
        let o = Opts::new("plot_xy", options)?;
        if o.has("label") {
            return err("plot_xy: with several series their names are the legend; `label` applies to plot_xy(xs, ys, options)");
        }
        let mut all = Vec::new();
        for (name, v) in series {
            let m = v.try_cast::<Map>().ok_or_else(|| -> Box<EvalAltResult> {
                format!("plot_xy: series `{name}` must be a map #{{x: [...], y: [...]}}").into()
            })?;
            if let Some(k) = m.keys().find(|k| k.as_str() != "x" && k.as_str() != "y") {
                return err(format!(
                    "plot_xy: series `{name}` has key `{k}`; valid keys: x, y"
                ));
            }
            let get = |k: &str| -> R<Array> {
                m.get(k)
                    .and_then(|a| a.clone().try_cast::<Array>())
                    .ok_or_else(|| {
                        format!("plot_xy: series `{name}` needs `{k}`: an array of numbers").into()
                    })
            };
            all.push((
                name.to_string(),
                super::pairs(&get("x")?, &get("y")?, &name)?,
            ));
        }
        super::xy_plot(o, all)
    }
    /// An empty table of perplexities, one column per dataset name, for
    /// `add_row` and `plot_compare`; it shows as an HTML table in a notebook.
    #[rhai_fn(return_raw)]
    pub fn compare_table(datasets: Array) -> R<CompareTable> {
        let names: Vec<String> = datasets.iter().map(|d| d.to_string()).collect();
        if names.is_empty() {
            return err("compare_table: give at least one dataset name");
        }
        Ok(CompareTable::perplexity(names))
    }

    /// An empty table of another measure than perplexity, one column per
    /// name: `#{metric: "KL from dense (nats)"}` names what the cells are (the
    /// table's corner and the chart's axis); `lower_is_better` (default true)
    /// says which value of a column is marked best.
    #[rhai_fn(name = "compare_table", return_raw)]
    pub fn compare_table_with(datasets: Array, options: Map) -> R<CompareTable> {
        let o = Opts::new("compare_table", options)?;
        let mut table = compare_table(datasets)?;
        if let Some(metric) = o.string("metric")? {
            table.metric = metric;
        }
        if let Some(lower) = o.bool("lower_is_better")? {
            table.lower_is_better = lower;
        }
        Ok(table)
    }

    /// Appends a configuration `name` with one value per dataset (numbers;
    /// `()` for a missing one).
    #[rhai_fn(global, return_raw)]
    pub fn add_row(table: &mut CompareTable, name: &str, values: Array) -> R<()> {
        let vals: Vec<f64> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if v.is_unit() {
                    Ok(f64::NAN)
                } else {
                    super::numbers(&vec![v.clone()], &format!("add_row: values[{i}]")).map(|n| n[0])
                }
            })
            .collect::<R<_>>()?;
        table.add_row(name, vals).map_err(super::script_err)
    }

    /// The value of configuration `row` on dataset `column`, or `()`.
    #[rhai_fn(global, name = "get")]
    pub fn table_get(table: &mut CompareTable, row: &str, column: &str) -> Dynamic {
        table
            .get(row, column)
            .filter(|v| v.is_finite())
            .map(Dynamic::from_float)
            .unwrap_or(Dynamic::UNIT)
    }

    /// The table as aligned text (what `print(table)` shows).
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn table_text(t: &mut CompareTable) -> String {
        t.to_string().trim_end().to_string()
    }

    /// Writes the chart to `path` (PNG or SVG by extension), creating its
    /// directory if needed.
    #[rhai_fn(global, name = "save", return_raw)]
    pub fn plot_save(p: &mut Plot, path: &str) -> R<()> {
        save_plot(p, path, None)
    }

    /// A one-line description of the chart.
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn plot_text(p: &mut Plot) -> String {
        format!("Plot \"{}\" ({}x{})", p.title(), p.width(), p.height())
    }
}
