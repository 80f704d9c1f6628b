//! The end-of-run summary: channels per bit tier, the average against the
//! target, one line per linear and aggregates per linear type, as text and JSON.
//!
//! It is loud about the two ways a mixed-precision run fails silently. A run
//! whose quantizer was never switched on would print "total channels: 0" and
//! identical perplexities; here, bits requested with nothing quantized is an
//! error that says what is missing. Thresholds are not a bit budget and can
//! put most channels in the top tier, far above the target; here, a miss of
//! more than [`TARGET_TOLERANCE`] bits is the first line of the report, and an
//! error under `strict`.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{ImportanceNote, LinearReport};

/// How far (in bits) the achieved average may be from the target before it
/// counts as missed: the one tolerance of the summary, of the scripts'
/// `target_tolerance()` and `target_missed` (so of `report::check_target`, the
/// recipes and the notebooks).
pub const TARGET_TOLERANCE: f64 = 0.05;

/// What the run asked for, so that the summary can tell what did not happen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunIntent {
    /// Some linear was meant to be quantized (any `bits` option was given).
    pub bits_requested: bool,
    /// The average bits per quantized channel the run aimed at. A target
    /// implies that bits were requested.
    pub target_avg: Option<f64>,
    /// A missed target is an error rather than a warning.
    pub strict: bool,
}

/// Channels at one bit width.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TierCount {
    /// Bit width.
    pub bits: u32,
    /// Channels at that width.
    pub channels: usize,
    /// Share of the quantized channels, in percent.
    pub percent: f64,
}

/// One linear's line.
#[derive(Debug, Clone, Serialize)]
pub struct LinearLine {
    /// `layer{L}.{linear}`, e.g. `layer0.self_attn.k_proj`.
    pub name: String,
    /// Decoder layer.
    pub layer: usize,
    /// Linear within the layer.
    pub linear: String,
    /// Linear type: the last component of the name (`k_proj`, `fc1`, …).
    pub kind: String,
    /// Compression method.
    pub method: String,
    /// Input channels.
    pub channels: usize,
    /// Output rows: the weights each channel holds.
    pub rows: usize,
    /// Mean bits over the input channels; `None` when kept in float.
    pub avg_bits: Option<f64>,
    /// Channels per width, ascending (empty when kept in float).
    pub bits_histogram: Vec<(u32, usize)>,
    /// The importance metric and its mean-normalised range, when recorded.
    pub importance: Option<ImportanceNote>,
    /// Fraction of weights pruned.
    pub sparsity: f64,
    /// Relative output error on the calibration inputs.
    pub rel_error: f64,
    /// OBS loss, for SparseGPT/GPTQ.
    pub loss: Option<f64>,
}

/// Aggregates over every linear of one type (all `q_proj`s, all `fc1`s, …),
/// in first-seen order: the unit of per-type plots.
#[derive(Debug, Clone, Serialize)]
pub struct TypeSummary {
    /// Linear type (`q_proj`, `fc1`, …).
    pub kind: String,
    /// Linears of this type.
    pub linears: usize,
    /// Their input channels.
    pub channels: usize,
    /// Of which quantized.
    pub quantized_channels: usize,
    /// Mean bits over the quantized channels.
    pub avg_bits: Option<f64>,
    /// Channels per width (percent of this type's quantized channels).
    pub tiers: Vec<TierCount>,
    /// Mean sparsity, weighted by weight count.
    pub sparsity: f64,
    /// Mean relative output error (unweighted over linears).
    pub mean_rel_error: f64,
    /// Smallest and largest normalised importance over the linears that
    /// recorded one.
    pub importance_range: Option<(f64, f64)>,
}

/// The summary of a compression run. Build it with [`Summary::from_reports`];
/// `Display` gives the text report, [`Summary::to_json`] the same as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Linears reported.
    pub linears: usize,
    /// Linears quantized.
    pub quantized_linears: usize,
    /// Input channels of every reported linear.
    pub total_channels: usize,
    /// Input channels that were quantized.
    pub quantized_channels: usize,
    /// Channels per width over the quantized linears, ascending.
    pub tiers: Vec<TierCount>,
    /// Mean bits over the quantized channels.
    pub avg_bits: Option<f64>,
    /// Mean bits per quantized weight: each channel weighted by its linear's
    /// rows, what a memory budget counts and what the target is checked
    /// against (equal to `avg_bits` when every linear meets the same average).
    pub bits_per_weight: Option<f64>,
    /// The target, if the run had one.
    pub target_avg: Option<f64>,
    /// Whether the average missed the target by more than [`TARGET_TOLERANCE`].
    pub missed_target: bool,
    /// Loud lines printed first (a missed target, linears left in float in a
    /// quantizing run, broken n:m patterns).
    pub warnings: Vec<String>,
    /// One line per linear, in report order.
    pub per_linear: Vec<LinearLine>,
    /// Aggregates per linear type.
    pub per_type: Vec<TypeSummary>,
}

impl Summary {
    /// Summarises the reports of a run against what it intended.
    ///
    /// Errors: bits requested (or a target given) and no channel quantized, with
    /// what was missing; a missed target under `strict`; a report whose bit
    /// histogram does not add up to its channel count.
    pub fn from_reports(reports: &[LinearReport], intent: &RunIntent) -> Result<Summary> {
        let mut per_linear = Vec::with_capacity(reports.len());
        for r in reports {
            per_linear.push(line(r)?);
        }
        let total_channels: usize = per_linear.iter().map(|l| l.channels).sum();
        let quantized: Vec<&LinearLine> =
            per_linear.iter().filter(|l| l.avg_bits.is_some()).collect();
        let quantized_channels: usize = quantized.iter().map(|l| l.channels).sum();
        let hist = merge_histograms(quantized.iter().map(|l| &l.bits_histogram));
        let tiers = tier_counts(&hist);
        let avg_bits = average(&hist);
        let weights: f64 = quantized.iter().map(|l| (l.rows * l.channels) as f64).sum();
        let bits_per_weight = (weights > 0.0).then(|| {
            quantized
                .iter()
                .map(|l| l.avg_bits.unwrap_or(0.0) * (l.rows * l.channels) as f64)
                .sum::<f64>()
                / weights
        });

        let bits_requested = intent.bits_requested || intent.target_avg.is_some();
        if bits_requested && quantized_channels == 0 {
            if reports.is_empty() {
                bail!(
                    "bits were requested but no channel was quantized: no linear was compressed at all \
                     (0 reports, total channels: 0) — did the policy run over any layer, and did it \
                     compress any linear?"
                );
            }
            let mut methods: Vec<&str> = per_linear.iter().map(|l| l.method.as_str()).collect();
            methods.sort_unstable();
            methods.dedup();
            bail!(
                "bits were requested but no channel was quantized: total channels: {total_channels} in \
                 {} linears, quantized channels: 0 (methods used: {}) — did the policy call \
                 prune_layer with bits (a `quant` option)?",
                reports.len(),
                methods.join(", ")
            );
        }

        let mut warnings = Vec::new();
        let mut missed_target = false;
        if let (Some(target), Some(avg)) = (intent.target_avg, bits_per_weight) {
            if (avg - target).abs() > TARGET_TOLERANCE {
                missed_target = true;
                let top = tiers
                    .iter()
                    .max_by(|a, b| a.channels.cmp(&b.channels).then(b.bits.cmp(&a.bits)))
                    .expect("quantized channels exist");
                let msg = format!(
                    "MISSED TARGET: average {avg:.2} bits per weight against a target of {target:.2} \
                     ({:.1}% of channels at {} bits)",
                    top.percent, top.bits
                );
                if intent.strict {
                    bail!("{msg} [strict]");
                }
                warnings.push(msg);
            }
        }
        if bits_requested && quantized.len() < per_linear.len() {
            let float: Vec<&str> = per_linear
                .iter()
                .filter(|l| l.avg_bits.is_none())
                .map(|l| l.name.as_str())
                .collect();
            warnings.push(format!(
                "{} of {} linears kept float weights although bits were requested (first: {})",
                float.len(),
                per_linear.len(),
                float[0]
            ));
        }
        let broken: Vec<String> = reports
            .iter()
            .filter(|r| r.nm_valid == Some(false))
            .map(|r| format!("layer{}.{}", r.layer, r.linear))
            .collect();
        if !broken.is_empty() {
            warnings.push(format!(
                "n:m pattern violated in {} linears (first: {})",
                broken.len(),
                broken[0]
            ));
        }

        let per_type = aggregate_types(reports, &per_linear);
        Ok(Summary {
            linears: per_linear.len(),
            quantized_linears: quantized.len(),
            total_channels,
            quantized_channels,
            tiers,
            avg_bits,
            bits_per_weight,
            target_avg: intent.target_avg,
            missed_target,
            warnings,
            per_linear,
            per_type,
        })
    }

    /// The "MISSED TARGET: …" warning, when the average missed the target.
    pub fn missed_target_line(&self) -> Option<&str> {
        self.warnings
            .iter()
            .find(|w| w.starts_with("MISSED TARGET"))
            .map(String::as_str)
    }

    /// The summary as pretty-printed JSON (the same fields as the text).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.warnings {
            writeln!(f, "{w}")?;
        }
        if !self.warnings.is_empty() {
            writeln!(f)?;
        }
        writeln!(
            f,
            "total channels: {} ({} quantized, in {} of {} linears)",
            self.total_channels, self.quantized_channels, self.quantized_linears, self.linears
        )?;
        if !self.tiers.is_empty() {
            writeln!(f, "bits per channel:")?;
            for t in &self.tiers {
                writeln!(
                    f,
                    "  {:>2} bits: {:>10} ({:.2}%)",
                    t.bits, t.channels, t.percent
                )?;
            }
        }
        match (self.avg_bits, self.bits_per_weight) {
            (Some(a), Some(w)) => {
                write!(f, "average bits: {a:.3} per channel, {w:.3} per weight")?;
                match self.target_avg {
                    Some(t) => writeln!(
                        f,
                        " (target {t:.3}, {}{:.3})",
                        if w >= t { "+" } else { "" },
                        w - t
                    )?,
                    None => writeln!(f)?,
                }
            }
            _ => writeln!(f, "average bits: none quantized")?,
        }
        if !self.per_linear.is_empty() {
            writeln!(f, "per linear:")?;
            for l in &self.per_linear {
                write!(f, "  {}: avg=", l.name)?;
                match l.avg_bits {
                    Some(a) => write!(f, "{a:.2} bits")?,
                    None => write!(f, "float")?,
                }
                if let Some(n) = &l.importance {
                    write!(f, ", importance_range=({:.3}, {:.3})", n.min, n.max)?;
                }
                writeln!(
                    f,
                    ", sparsity={:.1}%, error={:.1e}",
                    100.0 * l.sparsity,
                    l.rel_error
                )?;
            }
        }
        if !self.per_type.is_empty() {
            writeln!(f, "per linear type:")?;
            for t in &self.per_type {
                write!(
                    f,
                    "  {}: {} linears, {} channels, avg=",
                    t.kind, t.linears, t.channels
                )?;
                match t.avg_bits {
                    Some(a) => write!(f, "{a:.2} bits")?,
                    None => write!(f, "float")?,
                }
                if let Some((lo, hi)) = t.importance_range {
                    write!(f, ", importance_range=({lo:.3}, {hi:.3})")?;
                }
                writeln!(
                    f,
                    ", sparsity={:.1}%, mean error={:.1e}",
                    100.0 * t.sparsity,
                    t.mean_rel_error
                )?;
            }
        }
        // A miss is the first line and the last: a long report scrolls.
        if let Some(missed) = self.missed_target_line() {
            writeln!(f, "{missed}")?;
        }
        Ok(())
    }
}

/// One report as a line, with its histogram checked (or derived from a
/// uniform `avg_bits`).
fn line(r: &LinearReport) -> Result<LinearLine> {
    let name = format!("layer{}.{}", r.layer, r.linear);
    let mut hist = r.bits_histogram.clone();
    if hist.is_empty() {
        if let Some(a) = r.avg_bits {
            // Reports older than the histogram: only a uniform width can be recovered.
            if a.fract() != 0.0 || a < 1.0 {
                bail!("{name}: avg_bits {a} without a bits histogram");
            }
            hist = vec![(a as u32, r.columns)];
        }
    }
    let counted: usize = hist.iter().map(|(_, c)| c).sum();
    if !hist.is_empty() && counted != r.columns {
        bail!(
            "{name}: the bits histogram counts {counted} channels, the linear has {}",
            r.columns
        );
    }
    Ok(LinearLine {
        kind: r.linear.rsplit('.').next().unwrap_or(&r.linear).to_string(),
        name,
        layer: r.layer,
        linear: r.linear.clone(),
        method: r.method.clone(),
        channels: r.columns,
        rows: r.rows,
        avg_bits: average(&hist),
        bits_histogram: hist,
        importance: r.importance.clone(),
        sparsity: r.sparsity,
        rel_error: r.rel_error,
        loss: r.loss,
    })
}

fn merge_histograms<'a>(hists: impl Iterator<Item = &'a Vec<(u32, usize)>>) -> Vec<(u32, usize)> {
    let mut m = BTreeMap::new();
    for h in hists {
        for &(b, c) in h {
            *m.entry(b).or_insert(0usize) += c;
        }
    }
    m.into_iter().filter(|&(_, c)| c > 0).collect()
}

fn tier_counts(hist: &[(u32, usize)]) -> Vec<TierCount> {
    let total: usize = hist.iter().map(|(_, c)| c).sum();
    hist.iter()
        .map(|&(bits, channels)| TierCount {
            bits,
            channels,
            percent: 100.0 * channels as f64 / total as f64,
        })
        .collect()
}

fn average(hist: &[(u32, usize)]) -> Option<f64> {
    let n: usize = hist.iter().map(|(_, c)| c).sum();
    (n > 0).then(|| hist.iter().map(|&(b, c)| b as f64 * c as f64).sum::<f64>() / n as f64)
}

fn aggregate_types(reports: &[LinearReport], lines: &[LinearLine]) -> Vec<TypeSummary> {
    let mut order: Vec<String> = Vec::new();
    for l in lines {
        if !order.contains(&l.kind) {
            order.push(l.kind.clone());
        }
    }
    order
        .into_iter()
        .map(|kind| {
            let members: Vec<(&LinearReport, &LinearLine)> = reports
                .iter()
                .zip(lines)
                .filter(|(_, l)| l.kind == kind)
                .collect();
            let hist = merge_histograms(members.iter().map(|(_, l)| &l.bits_histogram));
            let weights: usize = members.iter().map(|(r, _)| r.rows * r.columns).sum();
            let sparsity = if weights > 0 {
                members
                    .iter()
                    .map(|(r, _)| r.sparsity * (r.rows * r.columns) as f64)
                    .sum::<f64>()
                    / weights as f64
            } else {
                0.0
            };
            let notes: Vec<&ImportanceNote> = members
                .iter()
                .filter_map(|(_, l)| l.importance.as_ref())
                .collect();
            let importance_range = (!notes.is_empty()).then(|| {
                notes
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), n| {
                        (lo.min(n.min), hi.max(n.max))
                    })
            });
            TypeSummary {
                linears: members.len(),
                channels: members.iter().map(|(_, l)| l.channels).sum(),
                quantized_channels: hist.iter().map(|(_, c)| c).sum(),
                avg_bits: average(&hist),
                tiers: tier_counts(&hist),
                sparsity,
                mean_rel_error: members.iter().map(|(_, l)| l.rel_error).sum::<f64>()
                    / members.len() as f64,
                importance_range,
                kind,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(layer: usize, linear: &str, hist: Vec<(u32, usize)>) -> LinearReport {
        let columns = hist.iter().map(|(_, c)| c).sum::<usize>().max(8);
        let avg = (!hist.is_empty()).then(|| {
            hist.iter()
                .map(|&(b, c)| (b as usize * c) as f64)
                .sum::<f64>()
                / columns as f64
        });
        LinearReport {
            layer,
            linear: linear.to_string(),
            method: "sparsegpt".to_string(),
            rows: 4,
            columns,
            sparsity: 0.5,
            nm_valid: None,
            avg_bits: avg,
            bits_histogram: hist,
            bits_rle: Vec::new(),
            settings: serde_json::Value::Null,
            importance: Some(ImportanceNote {
                metric: "wanda".into(),
                min: 0.979,
                max: 1.021,
            }),
            loss: Some(1.0),
            rel_error: 1.2e-3,
            dead_columns: 0,
            percdamp: Some(0.01),
            seconds: 0.1,
        }
    }

    #[test]
    fn line_format_and_types() -> Result<()> {
        let reports = vec![
            report(
                0,
                "self_attn.k_proj",
                vec![(2, 2), (3, 2), (4, 2), (6, 2), (8, 2)],
            ),
            report(0, "fc1", vec![(4, 8)]),
            report(1, "self_attn.k_proj", vec![(4, 10)]),
        ];
        let s = Summary::from_reports(
            &reports,
            &RunIntent {
                bits_requested: true,
                target_avg: Some(4.2),
                strict: false,
            },
        )?;
        let text = s.to_string();
        assert!(
            text.contains(
                "layer0.self_attn.k_proj: avg=4.60 bits, importance_range=(0.979, 1.021), sparsity=50.0%, error=1.2e-3"
            ),
            "{text}"
        );
        assert!(!s.missed_target, "{text}");
        assert_eq!(s.total_channels, 28);
        assert_eq!(s.per_type.len(), 2);
        assert_eq!(s.per_type[0].kind, "k_proj");
        assert_eq!(s.per_type[0].linears, 2);
        assert!((s.per_type[0].avg_bits.unwrap() - 4.3).abs() < 1e-12);
        let json: serde_json::Value = serde_json::from_str(&s.to_json()?)?;
        assert_eq!(json["quantized_channels"], 28);
        assert_eq!(json["per_linear"][0]["name"], "layer0.self_attn.k_proj");
        Ok(())
    }

    #[test]
    fn histogram_must_add_up() {
        let mut r = report(0, "fc1", vec![(4, 8)]);
        r.columns = 9;
        let e = Summary::from_reports(&[r], &RunIntent::default()).unwrap_err();
        assert!(e.to_string().contains("counts 8 channels"), "{e}");
    }

    #[test]
    fn float_linears_in_a_quantizing_run_are_flagged() -> Result<()> {
        let reports = vec![report(0, "fc1", vec![(4, 8)]), report(0, "fc2", vec![])];
        let s = Summary::from_reports(
            &reports,
            &RunIntent {
                bits_requested: true,
                ..Default::default()
            },
        )?;
        assert!(
            s.warnings[0].contains("1 of 2 linears kept float"),
            "{:?}",
            s.warnings
        );
        assert!(s.to_string().contains("layer0.fc2: avg=float"));
        Ok(())
    }
}
