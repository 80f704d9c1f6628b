//! The method dispatch: how one linear is compressed ([`Method`]), the
//! damping retry of SparseGPT/GPTQ, and a method's settings as the reports
//! record them.

use anyhow::Result;
use candle_core::Tensor;
use serde_json::{json, Value};

use super::{
    fasterprune, magnitude_prune, wanda_prune, BitWidths, CompressResult, HessianAccumulator,
    NotPositiveDefinite, SparseGptOptions, SparsityPattern,
};

/// How to compress one linear.
#[derive(Debug, Clone)]
pub enum Method {
    /// SparseGPT / GPTQ (pruning, quantization or both) with OBS updates.
    SparseGpt(SparseGptOptions),
    /// Smallest |W| per linear (or n:m).
    Magnitude(SparsityPattern),
    /// Wanda: |W_ij|·‖X_j‖ compared within each output row (or n:m).
    Wanda(SparsityPattern),
}

impl Method {
    /// `sparsegpt`, `gptq` (quantization only), `magnitude` or `wanda`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::SparseGpt(o) if !o.pattern.prunes() => "gptq",
            Method::SparseGpt(_) => "sparsegpt",
            Method::Magnitude(_) => "magnitude",
            Method::Wanda(_) => "wanda",
        }
    }
}

/// Compresses the weight `w` with `method`, given its input Hessian `acc`; the
/// damping that succeeded comes back with the result (SparseGPT/GPTQ only).
///
/// A damped Hessian that is not positive definite is retried with ten times
/// the damping, up to three times; each retry is reported on stderr, naming
/// the linear as `what` (`layer 3 fc1`).
pub fn compress_weight(
    w: &Tensor,
    acc: &HessianAccumulator,
    method: &Method,
    what: &str,
) -> Result<(CompressResult, Option<f64>)> {
    Ok(match method {
        Method::SparseGpt(opts) => {
            let mut opts: SparseGptOptions = opts.clone();
            let mut attempt = 0;
            loop {
                match fasterprune(w, acc.hessian(), &opts) {
                    Ok(r) => break (r, Some(opts.percdamp)),
                    Err(e) if e.downcast_ref::<NotPositiveDefinite>().is_some() && attempt < 3 => {
                        let next = opts.percdamp.max(1e-8) * 10.0;
                        eprintln!(
                            "warning: {what}: damped Hessian not positive definite \
                             at percdamp {}; retrying with {next}",
                            opts.percdamp
                        );
                        opts.percdamp = next;
                        attempt += 1;
                    }
                    Err(e) => {
                        return Err(e.context(format!(
                            "{what}: SparseGPT failed (percdamp {})",
                            opts.percdamp
                        )))
                    }
                }
            }
        }
        Method::Magnitude(p) => (magnitude_prune(w, p)?, None),
        Method::Wanda(p) => (wanda_prune(w, acc.scaler_row(), p)?, None),
    })
}

/// A sparsity pattern as JSON: `{"structure": "dense" | "unstructured" | "n:m", …}`.
pub fn pattern_json(p: &SparsityPattern) -> Value {
    match *p {
        SparsityPattern::Dense => json!({"structure": "dense"}),
        SparsityPattern::Unstructured { sparsity } => {
            json!({"structure": "unstructured", "sparsity": sparsity})
        }
        SparsityPattern::NM { n, m } => json!({"structure": "n:m", "n": n, "m": m}),
    }
}

/// The settings of a method as JSON: pattern, and for SparseGPT/GPTQ the block
/// size, damping, order and quantizer.
pub fn method_settings(method: &Method) -> Value {
    match method {
        Method::SparseGpt(o) => json!({
            "pattern": pattern_json(&o.pattern),
            "blocksize": o.blocksize,
            "percdamp": o.percdamp,
            "act_order": o.act_order,
            "quantizer": o.quant.as_ref().map(|q| json!({
                "bits": match &q.bits {
                    BitWidths::Uniform(b) => json!(b),
                    BitWidths::PerColumn(_) => json!("per-channel"),
                },
                "sym": q.quantizer.sym,
                "mse": q.quantizer.mse,
                "norm": q.quantizer.norm,
                "grid": q.quantizer.grid,
                "maxshrink": q.quantizer.maxshrink,
                "groupsize": q.groupsize,
                "static_groups": q.static_groups,
                "range": "per-row min-max containing 0",
            })),
        }),
        Method::Magnitude(p) | Method::Wanda(p) => json!({"pattern": pattern_json(p)}),
    }
}
