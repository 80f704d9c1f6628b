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
fn save_plot(plot: &crate::plot::Plot, path: &str) -> R<()> {
    let parent = std::path::Path::new(path).parent();
    if let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| -> Box<EvalAltResult> {
            format!("cannot create {}: {e}", dir.display()).into()
        })?;
    }
    plot.save(path).map_err(script_err)
}

/// Functions registered globally by [`super::new_engine`].
#[export_module]
pub mod mixed {
    use rhai::{Dynamic, EvalAltResult, Map, INT};

    use crate::compress::allocation::{
        allocate_bits as allocate, group_channels as group, AllocMethod, AllocOptions,
        DEFAULT_TIERS,
    };
    use crate::compress::importance::{importance_note, ImportanceOptions};
    use crate::compress::summary::{RunIntent, Summary};
    use crate::plot::{histogram, HistOptions, Plot};
    use crate::script::handles::{CalibHandle, LayerHandle};
    use crate::script::options::{IntOrInts, Opts};
    use crate::script::vector::{err, Vector};

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
        let o = Opts::new("score_importance", options)?;
        let mut opts = ImportanceOptions::default();
        if let Some(p) = o.f64("percdamp")? {
            opts.percdamp = p;
        }
        if let Some(b) = o.usize("bins")? {
            opts.mi.bins = b;
        }
        let scores = layer.with(|w| {
            let scores = w.score(linear, metric, &opts)?;
            w.set_importance(linear, importance_note(metric, &scores)?)?;
            Ok(scores)
        })?;
        Ok(Vector::from_f32(scores))
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
        let o = Opts::new("group_channels", options)?;
        let method = super::grouping(&o.string("method")?, "group_channels")?;
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
        let o = Opts::new("allocate_bits", options)?;
        let tiers = match o.int_or_ints("tiers")? {
            None => DEFAULT_TIERS.to_vec(),
            Some(IntOrInts::One(t)) => vec![t],
            Some(IntOrInts::Many(t)) => t,
        };
        let target = o.f64("target_avg")?;
        let need_target = |m: &str| -> R<f64> {
            target.ok_or_else(|| format!("allocate_bits: method `{m}` needs `target_avg`").into())
        };
        let method_name = o.string("method")?.unwrap_or_else(|| {
            if target.is_some() {
                "budget".into()
            } else {
                "quantile".into()
            }
        });
        let unused = |key: &str| -> R<()> {
            if o.has(key) {
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
                AllocMethod::Quantile { proportions: o.floats("proportions")? }
            }
            "budget" => {
                unused("thresholds")?;
                unused("proportions")?;
                AllocMethod::Budget { target_avg: need_target("budget")? }
            }
            "threshold" => {
                unused("target_avg")?;
                unused("proportions")?;
                let thresholds = o.floats("thresholds")?.ok_or_else(|| -> Box<EvalAltResult> { "allocate_bits: method `threshold` needs `thresholds`".into() })?;
                AllocMethod::Threshold { thresholds }
            }
            "groups" => {
                unused("thresholds")?;
                unused("proportions")?;
                AllocMethod::Groups {
                    target_avg: need_target("groups")?,
                    n_groups: o.usize("n_groups")?,
                    grouping: super::grouping(&o.string("grouping")?, "allocate_bits")?,
                }
            }
            other => return err(format!("allocate_bits: unknown method `{other}`; valid: quantile, budget, threshold, groups")),
        };
        if method_name != "groups" {
            unused("n_groups")?;
            unused("grouping")?;
        }
        let bits = allocate(scores.as_slice(), &AllocOptions { tiers, method })
            .map_err(super::script_err)?;
        Ok(Vector::from_ints(bits.into_iter().map(|b| b as i64)))
    }

    /// The run's summary: total channels, channels per bit tier, average bits,
    /// one line per linear. An error if bits were requested and nothing was
    /// quantized.
    #[rhai_fn(return_raw)]
    pub fn summary(calib: CalibHandle) -> R<Summary> {
        summary_with(calib, Map::new())
    }

    /// The summary with options `#{target_avg, strict, bits_requested}`: a target
    /// the average must meet within 0.05 bits (a miss is announced first; with
    /// `strict` it is an error) and whether bits were requested (default: a
    /// target was given or any linear was quantized).
    #[rhai_fn(name = "summary", return_raw)]
    pub fn summary_with(calib: CalibHandle, options: Map) -> R<Summary> {
        let o = Opts::new("summary", options)?;
        let reports = calib.with(|c| c.reports.clone())?;
        let quantized = reports.iter().any(|r| r.avg_bits.is_some());
        let intent = RunIntent {
            bits_requested: o.bool("bits_requested")?.unwrap_or(quantized),
            target_avg: o.f64("target_avg")?,
            strict: o.bool("strict")?.unwrap_or(false),
        };
        Summary::from_reports(&reports, &intent).map_err(super::script_err)
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
    /// path}`; with `path` it is also written there (PNG or SVG by extension).
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
        if let Some(path) = o.string("path")? {
            save_plot(&plot, &path)?;
        }
        Ok(plot)
    }

    /// Writes the chart to `path` (PNG or SVG by extension), creating its
    /// directory if needed.
    #[rhai_fn(global, name = "save", return_raw)]
    pub fn plot_save(p: &mut Plot, path: &str) -> R<()> {
        save_plot(p, path)
    }

    /// A one-line description of the chart.
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn plot_text(p: &mut Plot) -> String {
        format!("Plot \"{}\" ({}x{})", p.title(), p.width(), p.height())
    }
}
