//! OPT (`OPTForCausalLM`): learned positions with an offset of 2, pre- or
//! post-LayerNorm, ReLU MLP, optional `project_in`/`project_out`, tied head.

use candle_core::{DType, Device, Result, Tensor};

use super::config::OptConfig;
use super::layers::{causal_attention, layer_norm, mlp_relu_residual, Linear, LinearHook};

/// OPT's LayerNorm epsilon (torch's default).
const LN_EPS: f64 = 1e-5;
/// OPT's learned position table starts at row 2.
pub const POSITION_OFFSET: usize = 2;

/// A LayerNorm's f32 weight and bias (absent without elementwise affine).
#[derive(Clone)]
pub struct Norm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Norm {
    /// Loads `{prefix}.weight` / `{prefix}.bias` as f32 when `affine`.
    pub fn load(
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
        prefix: &str,
        affine: bool,
    ) -> anyhow::Result<Self> {
        if !affine {
            return Ok(Self {
                weight: None,
                bias: None,
            });
        }
        Ok(Self {
            weight: Some(get(&format!("{prefix}.weight"), DType::F32)?),
            bias: Some(get(&format!("{prefix}.bias"), DType::F32)?),
        })
    }

    /// Applies the norm (f32 inside, `x`'s dtype out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), LN_EPS)
    }
}

/// One OPT decoder layer, resident on a device.
pub struct OptLayer {
    heads: usize,
    head_dim: usize,
    pre_norm: bool,
    /// `k_proj, v_proj, q_proj, out_proj, fc1, fc2`, in the reference's order.
    pub linears: Vec<Linear>,
    attn_norm: Norm,
    mlp_norm: Norm,
}

impl OptLayer {
    /// Loads layer `index` through `get(canonical name, dtype)`.
    pub fn load(
        cfg: &OptConfig,
        index: usize,
        dtype: DType,
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Self> {
        let p = format!("model.decoder.layers.{index}");
        let mut linears = Vec::new();
        for name in [
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.q_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        ] {
            let w = get(&format!("{p}.{name}.weight"), dtype)?;
            let b = if cfg.enable_bias {
                Some(get(&format!("{p}.{name}.bias"), dtype)?)
            } else {
                None
            };
            linears.push(Linear::new(name, w, b));
        }
        let affine = cfg.layer_norm_elementwise_affine;
        Ok(Self {
            heads: cfg.num_attention_heads,
            head_dim: cfg.hidden_size / cfg.num_attention_heads,
            pre_norm: cfg.do_layer_norm_before,
            linears,
            attn_norm: Norm::load(get, &format!("{p}.self_attn_layer_norm"), affine)?,
            mlp_norm: Norm::load(get, &format!("{p}.final_layer_norm"), affine)?,
        })
    }

    /// Runs the layer over hidden states `[b, t, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        hook: &mut Option<&mut LinearHook<'_>>,
    ) -> anyhow::Result<Tensor> {
        let [k_proj, v_proj, q_proj, out_proj, fc1, fc2] = &self.linears[..] else {
            unreachable!("an OPT layer has six linears")
        };
        let residual = x;
        let h = if self.pre_norm {
            self.attn_norm.forward(x)?
        } else {
            x.clone()
        };
        let q = q_proj.forward(&h, hook)?;
        let k = k_proj.forward(&h, hook)?;
        let v = v_proj.forward(&h, hook)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let attn = causal_attention(&q, &k, &v, self.heads, self.heads, scale)?;
        let mut x = out_proj.forward_residual(&attn, residual, hook)?;
        if !self.pre_norm {
            x = self.attn_norm.forward(&x)?;
        }
        let residual = &x;
        let h = if self.pre_norm {
            self.mlp_norm.forward(&x)?
        } else {
            x.clone()
        };
        let mut out = mlp_relu_residual(fc1, fc2, &h, residual, hook)?;
        if !self.pre_norm {
            out = self.mlp_norm.forward(&out)?;
        }
        Ok(out)
    }
}

/// The parts of OPT outside the decoder layers, kept resident on the device.
pub struct OptOuter {
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Tensor>,
    project_out: Option<Tensor>,
    final_norm: Option<Norm>,
    lm_head: Tensor,
}

impl OptOuter {
    /// Loads embeddings, projections, final norm and head.
    pub fn load(
        cfg: &OptConfig,
        dtype: DType,
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Self> {
        let p = "model.decoder";
        let embed_tokens = get(EMBED_TOKENS, dtype)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            get("lm_head.weight", dtype)?
        };
        let (project_in, project_out) = if cfg.has_projections() {
            (
                Some(get(&format!("{p}.project_in.weight"), dtype)?),
                Some(get(&format!("{p}.project_out.weight"), dtype)?),
            )
        } else {
            (None, None)
        };
        let final_norm = if cfg.has_final_layer_norm() {
            Some(Norm::load(
                get,
                &format!("{p}.final_layer_norm"),
                cfg.layer_norm_elementwise_affine,
            )?)
        } else {
            None
        };
        Ok(Self {
            embed_tokens,
            embed_positions: get(&format!("{p}.embed_positions.weight"), dtype)?,
            project_in,
            project_out,
            final_norm,
            lm_head,
        })
    }

    /// Token ids `[b, t]` → hidden states `[b, t, hidden]` (positions 0…t−1).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        embed(
            &self.embed_tokens,
            &self.embed_positions,
            self.project_in.as_ref(),
            ids,
        )
    }

    /// [`embed`](Self::embed) from the token rows `table` alone (`ids` index
    /// into it), loading only the small position table and projection through
    /// `get`: what a calibration needs, without the `[vocab, hidden]` matrix.
    pub fn embed_rows(
        cfg: &OptConfig,
        dtype: DType,
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
        table: &Tensor,
        ids: &Tensor,
    ) -> anyhow::Result<Tensor> {
        let p = "model.decoder";
        let project_in = if cfg.has_projections() {
            Some(get(&format!("{p}.project_in.weight"), dtype)?)
        } else {
            None
        };
        let positions = get(&format!("{p}.embed_positions.weight"), dtype)?;
        Ok(embed(table, &positions, project_in.as_ref(), ids)?)
    }
}

/// The token embedding's tensor name.
pub const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

fn embed(
    tokens: &Tensor,
    positions: &Tensor,
    project_in: Option<&Tensor>,
    ids: &Tensor,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let mut x = tokens.index_select(&ids.flatten_all()?, 0)?;
    if let Some(w) = project_in {
        x = crate::compute::kernels::xwt(&x, w)?;
    }
    let x = x.reshape((b, t, ()))?;
    let pos = positions.narrow(0, POSITION_OFFSET, t)?;
    x.broadcast_add(&pos)
}

impl OptOuter {
    /// Hidden states `[b, t, hidden]` → logits `[b, t, vocab]` in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        crate::compute::kernels::xwt(&self.head_features(x)?, &self.lm_head)?
            .to_dtype(DType::F32)?
            .reshape((b, t, ()))
    }

    /// What the head multiplies by its weight: the final norm and
    /// `project_out` applied to hidden states `[b, t, hidden]`, as `[b·t, d]`.
    pub fn head_features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(n) = &self.final_norm {
            x = n.forward(&x)?;
        }
        let (b, t, h) = x.dims3()?;
        let mut x = x.reshape((b * t, h))?;
        if let Some(w) = &self.project_out {
            x = crate::compute::kernels::xwt(&x, w)?;
        }
        Ok(x)
    }

    /// The head's weight `[vocab, d]`.
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The device the resident parts live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }
}
