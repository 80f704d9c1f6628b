//! Policies: which linears a uniform run compresses, the standard pipeline's
//! policy, and the dense scoring pass of a model-wide allocation.

use anyhow::Result;

use super::{CalibOptions, Calibration, LayerWork};
use crate::compress::importance::ImportanceOptions;
use crate::compress::Method;
use crate::model::Model;

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
