//! The chart functions: plain data in, a rendered [`Plot`] out.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::render::{fmt_num, BarsSpec, HistSpec, LinesSpec, Spec};
use super::{CompareTable, Plot, DEFAULT_SIZE};
use crate::report::summary::{LinearLine, Summary};

/// Settings of [`histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistOptions {
    /// Chart title. Default `histogram`.
    pub title: String,
    /// Number of equal-width bins between the smallest and largest finite
    /// value. Default 50.
    pub bins: usize,
    /// Counts on a log10 axis (empty bins are left out). Default false.
    pub log_y: bool,
    /// Label of the x axis. Default `value`.
    pub x_label: String,
}

impl Default for HistOptions {
    fn default() -> Self {
        Self {
            title: "histogram".to_string(),
            bins: 50,
            log_y: false,
            x_label: "value".to_string(),
        }
    }
}

/// Most bins a histogram may have.
pub const MAX_BINS: usize = 10_000;

/// A histogram of `values` (importance scores, weights, errors, …), binned
/// over the range of the finite values; NaN and ±inf are left out and
/// counted beside the chart with n, mean, standard deviation, min and max.
///
/// Errors: no finite value, `bins` 0 or above [`MAX_BINS`].
pub fn histogram(values: &[f32], opts: &HistOptions) -> Result<Plot> {
    if opts.bins == 0 || opts.bins > MAX_BINS {
        bail!(
            "histogram bins must be between 1 and {MAX_BINS}, not {}",
            opts.bins
        );
    }
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let skipped = values.len() - finite.len();
    if finite.is_empty() {
        bail!(
            "histogram `{}`: no finite values to plot ({} given, {skipped} NaN or infinite)",
            opts.title,
            values.len()
        );
    }
    let (min, max) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if max > min {
        (min, max)
    } else {
        let half = if min == 0.0 { 0.5 } else { min.abs() * 0.05 };
        (min - half, min + half)
    };
    let bins = opts.bins;
    let mut counts = vec![0u64; bins];
    for &v in &finite {
        let i = (((v - lo) / (hi - lo)) * bins as f64) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let edges = (0..=bins)
        .map(|i| lo + (hi - lo) * i as f64 / bins as f64)
        .collect();
    let n = finite.len() as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let std = (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    let mut notes = vec![
        format!("n = {}", finite.len()),
        format!("mean = {}", fmt_num(mean)),
        format!("std = {}", fmt_num(std)),
        format!("min = {}", fmt_num(min)),
        format!("max = {}", fmt_num(max)),
    ];
    if skipped > 0 {
        notes.push(format!("{skipped} NaN/inf left out"));
    }
    Plot::render(
        Arc::new(Spec::Hist(HistSpec {
            title: opts.title.clone(),
            x_label: opts.x_label.clone(),
            edges,
            counts,
            log_y: opts.log_y,
            notes,
        })),
        DEFAULT_SIZE,
    )
}

/// Channels per bit tier, overall and per linear type, as grouped bars: one
/// group per bit width, one bar for all quantized channels and one per linear
/// type. Bars are each group's share of its quantized channels (in percent),
/// so that types with few channels compare with the whole; the legend gives
/// each group's channel count and average bits.
///
/// Errors: a summary with no quantized channel.
pub fn bits_chart(summary: &Summary) -> Result<Plot> {
    if summary.quantized_channels == 0 || summary.tiers.is_empty() {
        bail!(
            "the summary has no quantized channels ({} linears, {} channels, all kept in float): \
             nothing to plot per bit tier",
            summary.linears,
            summary.total_channels
        );
    }
    let widths: Vec<u32> = summary.tiers.iter().map(|t| t.bits).collect();
    let categories = widths.iter().map(|b| format!("{b} bits")).collect();
    let share = |tiers: &[crate::report::summary::TierCount]| -> Vec<Option<f64>> {
        widths
            .iter()
            .map(|b| tiers.iter().find(|t| t.bits == *b).map(|t| t.percent))
            .collect()
    };
    let avg = |a: Option<f64>| a.map(|a| format!("{a:.2}")).unwrap_or_default();
    let mut series = vec![(
        format!(
            "all: {} ch, {} bits",
            summary.quantized_channels,
            avg(summary.avg_bits)
        ),
        share(&summary.tiers),
    )];
    for t in summary.per_type.iter().filter(|t| t.quantized_channels > 0) {
        series.push((
            format!(
                "{}: {} ch, {} bits",
                t.kind,
                t.quantized_channels,
                avg(t.avg_bits)
            ),
            share(&t.tiers),
        ));
    }
    let title = match (summary.avg_bits, summary.target_avg) {
        (Some(a), Some(t)) => format!("Channels per bit width (avg {a:.2}, target {t:.2})"),
        (Some(a), None) => format!("Channels per bit width (avg {a:.2} bits)"),
        _ => "Channels per bit width".to_string(),
    };
    let mut notes = Vec::new();
    if summary.missed_target {
        notes.push("MISSED TARGET".to_string());
    }
    Plot::render(
        Arc::new(Spec::Bars(BarsSpec {
            title,
            x_label: "bit width".to_string(),
            y_label: "share of quantized channels (%)".to_string(),
            categories,
            series,
            log_y: false,
            y_max: Some(100.0),
            value_labels: true,
            value_decimals: Some(1),
            value_suffix: "%".to_string(),
            notes,
        })),
        DEFAULT_SIZE,
    )
}

/// The fields [`layers_chart`] plots.
pub const LAYER_FIELDS: [&str; 4] = ["avg_bits", "sparsity", "loss", "rel_error"];

fn field_value(field: &str, l: &LinearLine) -> Option<f64> {
    match field {
        "avg_bits" => l.avg_bits,
        "sparsity" => Some(100.0 * l.sparsity),
        "loss" => l.loss,
        "rel_error" => Some(l.rel_error),
        _ => None,
    }
}

/// One field of a summary per decoder layer: a line (with markers) per linear
/// type, and a dashed line for the mean over the layer's linears when there
/// are several types. `field` is one of [`LAYER_FIELDS`]: `avg_bits` (mean
/// bits per channel, channel-weighted), `sparsity` (percent), `loss` (OBS loss,
/// SparseGPT/GPTQ only) or `rel_error` (relative output error). `loss` and
/// `rel_error` use a log axis when all values are positive and span a factor
/// of 20 or more.
///
/// Errors: an unknown field, or no linear with a value for it (float linears
/// have no `avg_bits`; magnitude and Wanda have no `loss`).
pub fn layers_chart(summary: &Summary, field: &str) -> Result<Plot> {
    if !LAYER_FIELDS.contains(&field) {
        bail!(
            "unknown layer field `{field}`: use one of {}",
            LAYER_FIELDS.join(", ")
        );
    }
    // (kind, layer) -> (sum of value × weight, sum of weights)
    let mut per: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
    let mut mean: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    let kinds: Vec<&str> = summary.per_type.iter().map(|t| t.kind.as_str()).collect();
    let mut values = Vec::new();
    for l in &summary.per_linear {
        let Some(v) = field_value(field, l).filter(|v| v.is_finite()) else {
            continue;
        };
        let k = kinds.iter().position(|k| *k == l.kind).unwrap_or(0);
        let w = if field == "avg_bits" {
            l.channels as f64
        } else {
            1.0
        };
        let e = per.entry((k, l.layer)).or_default();
        e.0 += v * w;
        e.1 += w;
        let e = mean.entry(l.layer).or_default();
        e.0 += v * w;
        e.1 += w;
        values.push(v);
    }
    if values.is_empty() {
        bail!(
            "no linear in the summary has a value for `{field}`{}",
            match field {
                "avg_bits" => " (none was quantized)",
                "loss" => " (the OBS loss is recorded by SparseGPT/GPTQ only)",
                _ => "",
            }
        );
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let pts: Vec<(f64, f64)> = per
            .range((k, 0)..(k + 1, 0))
            .map(|(&(_, layer), &(s, w))| (layer as f64, s / w))
            .collect();
        if !pts.is_empty() {
            series.push((kind.to_string(), pts));
        }
    }
    let mean_series = series.len() > 1;
    if mean_series {
        series.push((
            "layer mean".to_string(),
            mean.iter()
                .map(|(&layer, &(s, w))| (layer as f64, s / w))
                .collect(),
        ));
    }
    let first = *mean.keys().next().expect("values") as f64;
    let last = *mean.keys().last().expect("values") as f64;
    let layers = (last - first) as usize + 1;
    let every = [1usize, 2, 5, 10, 20, 50, 100]
        .into_iter()
        .find(|e| layers.div_ceil(*e) <= 16)
        .unwrap_or(200);
    let x_ticks = (first as usize..=last as usize)
        .filter(|l| l % every == 0 || layers == 1)
        .map(|l| (l as f64, l.to_string()))
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let log_y = matches!(field, "loss" | "rel_error") && lo > 0.0 && hi / lo >= 20.0;
    let (title, y_label) = match field {
        "avg_bits" => ("Average bits per layer", "average bits per channel"),
        "sparsity" => ("Sparsity per layer", "sparsity (%)"),
        "loss" => ("OBS loss per layer", "OBS loss"),
        _ => ("Relative output error per layer", "relative output error"),
    };
    Plot::render(
        Arc::new(Spec::Lines(LinesSpec {
            title: title.to_string(),
            x_label: "decoder layer".to_string(),
            y_label: y_label.to_string(),
            x_ticks,
            x_range: (first - 0.5, last + 0.5),
            series,
            mean_series,
            log_y,
            y_from_zero: true,
            notes: Vec::new(),
        })),
        DEFAULT_SIZE,
    )
}

/// A comparison table as grouped bars: one group per dataset (column), one bar
/// per configuration (row), its value printed above it when the bars are few.
/// The axis is logarithmic when all values are positive and the largest is 20
/// times the smallest or more (a broken configuration next to working ones);
/// NaN cells draw no bar.
///
/// Errors: an empty table or one with no finite value.
pub fn compare_chart(table: &CompareTable) -> Result<Plot> {
    if table.rows.is_empty() || table.columns.is_empty() {
        bail!(
            "the comparison table is empty ({} configurations, {} datasets)",
            table.rows.len(),
            table.columns.len()
        );
    }
    let values: Vec<f64> = table
        .rows
        .iter()
        .flat_map(|r| r.values.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    if values.is_empty() {
        bail!("the comparison table has no finite value to plot");
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let log_y = lo > 0.0 && hi / lo >= 20.0;
    let series = table
        .rows
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.values
                    .iter()
                    .map(|&v| v.is_finite().then_some(v))
                    .collect(),
            )
        })
        .collect();
    let title = table
        .title
        .clone()
        .unwrap_or_else(|| format!("{} per dataset", capitalise(&table.metric)));
    Plot::render(
        Arc::new(Spec::Bars(BarsSpec {
            title,
            x_label: "dataset".to_string(),
            y_label: if log_y {
                format!("{} (log scale)", table.metric)
            } else {
                table.metric.clone()
            },
            categories: table.columns.clone(),
            series,
            log_y,
            y_max: None,
            value_labels: true,
            value_decimals: None,
            value_suffix: String::new(),
            notes: Vec::new(),
        })),
        DEFAULT_SIZE,
    )
}

/// Labels of an [`xy_chart`].
#[derive(Debug, Clone)]
pub struct XyOptions {
    /// Chart title. Default `y against x`.
    pub title: String,
    /// x axis label. Default `x`.
    pub x_label: String,
    /// y axis label. Default `y`.
    pub y_label: String,
}

impl Default for XyOptions {
    fn default() -> Self {
        XyOptions {
            title: "y against x".to_string(),
            x_label: "x".to_string(),
            y_label: "y".to_string(),
        }
    }
}

/// One or more series of `(x, y)` points as lines with markers, each sorted by
/// x (perplexity against average bits over a sweep). The y axis fits the
/// values rather than starting at 0, so that close perplexities stay apart.
///
/// Errors: no series, a series with no point, or a non-finite coordinate.
pub fn xy_chart(series: &[(String, Vec<(f64, f64)>)], opts: &XyOptions) -> Result<Plot> {
    if series.is_empty() || series.iter().any(|(_, p)| p.is_empty()) {
        bail!("an x-y chart needs at least one point in every series");
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = series.to_vec();
    for (name, pts) in &mut series {
        if let Some(p) = pts.iter().find(|(x, y)| !x.is_finite() || !y.is_finite()) {
            bail!("series `{name}` has a non-finite point ({}, {})", p.0, p.1);
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    let (lo, hi) = (lo - pad, hi + pad);
    Plot::render(
        Arc::new(Spec::Lines(LinesSpec {
            title: opts.title.clone(),
            x_label: opts.x_label.clone(),
            y_label: opts.y_label.clone(),
            x_ticks: super::render::linear_ticks(lo, hi, 8)
                .into_iter()
                .filter(|(x, _)| *x >= lo && *x <= hi)
                .collect(),
            x_range: (lo, hi),
            series,
            mean_series: false,
            log_y: false,
            y_from_zero: false,
            notes: Vec::new(),
        })),
        DEFAULT_SIZE,
    )
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
