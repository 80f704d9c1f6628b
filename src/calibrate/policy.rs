//! Policies: which linears a uniform run compresses, the standard pipeline's
//! policy, and the dense scoring pass of a model-wide allocation.

use anyhow::{bail, Result};

use super::{CalibOptions, Calibration, LayerWork};
use crate::compress::importance::ImportanceOptions;
use crate::compress::Method;
use crate::model::Model;
use crate::report::LinearReport;

/// Which layers and linears a uniform policy touches (the reference's
/// `--minlayer`, `--maxlayer` and `--prune_only`).
#[derive(Debug, Clone, Default)]
pub struct LayerFilter {
    /// First layer compressed (inclusive).
    pub min_layer: Option<usize>,
    /// Layers from here on are left as they are (exclusive bound).
    pub max_layer: Option<usize>,
    /// Only linears whose name contains this.
    pub only: Option<String>,
}

impl LayerFilter {
    /// Whether `linear` of layer `index` is to be compressed.
    pub fn accepts(&self, index: usize, linear: &str) -> bool {
        self.min_layer.is_none_or(|m| index >= m)
            && self.max_layer.is_none_or(|m| index < m)
            && self.only.as_deref().is_none_or(|o| linear.contains(o))
    }
}

/// The standard pipeline's policy: every accepted linear of every layer with
/// one method, in the reference's order.
pub fn uniform_policy(
    method: Method,
    filter: LayerFilter,
) -> impl FnMut(&mut LayerWork) -> Result<()> {
    move |work: &mut LayerWork| {
        for linear in work.linears() {
            if filter.accepts(work.index, linear) {
                work.compress(linear, &method)?;
            }
        }
        Ok(())
    }
}

/// `sparselab prune`'s compression: a calibration of `model` with `opts` in
/// which every linear `filter` accepts is compressed with `method`, in the
/// reference's order (the stdlib pipeline's `run_filtered`). `on_layer` sees
/// each layer's reports as it finishes. Fails when `filter` accepted no linear.
pub fn compress_uniform(
    model: &mut Model,
    opts: CalibOptions,
    method: Method,
    filter: LayerFilter,
    mut on_layer: impl FnMut(&[LinearReport]),
) -> Result<Calibration> {
    let mut calib = Calibration::new(model, opts)?;
    let mut policy = uniform_policy(method, filter);
    calib.run(model, |work| {
        policy(work)?;
        on_layer(&work.reports);
        Ok(())
    })?;
    if calib.reports.is_empty() {
        bail!("no linear was compressed: check the layer range and the linear filter");
    }
    Ok(calib)
}

/// One linear's importance scores.
#[derive(Debug, Clone)]
pub struct LinearScores {
    /// Decoder layer.
    pub layer: usize,
    /// Linear within the layer.
    pub linear: &'static str,
    /// One score per input channel.
    pub scores: Vec<f32>,
}

/// Scores every linear of every layer on the dense model: a calibration pass
/// that compresses nothing (so every layer sees dense activations). This is the
/// first pass of a model-wide allocation, which needs all scores before any
/// linear is compressed.
pub fn score_dense(
    model: &mut Model,
    opts: CalibOptions,
    metric: &str,
    iopts: &ImportanceOptions,
) -> Result<Vec<LinearScores>> {
    let mut calib = Calibration::new(model, opts)?;
    let mut out = Vec::new();
    calib.run(model, |work| {
        for linear in work.linears() {
            let scores = work.score(linear, metric, iopts)?;
            out.push(LinearScores {
                layer: work.index,
                linear,
                scores,
            });
        }
        Ok(())
    })?;
    Ok(out)
}
