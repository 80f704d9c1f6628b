//! Llama (`LlamaForCausalLM`): RMSNorm, RoPE (with linear or Llama-3 scaling),
//! grouped-query attention, SwiGLU MLP, tied or untied head.

use candle_core::{DType, Device, Result, Tensor};

use super::config::{LlamaConfig, RopeScaling};
use super::layers::{causal_attention, mlp_swiglu_residual, rms_norm, Linear, LinearHook};

/// RoPE inverse frequencies as transformers computes them for `cfg`.
pub fn inv_freq(cfg: &LlamaConfig) -> Vec<f64> {
    scaled_inv_freq(cfg.rope_theta, cfg.head_dim, &cfg.rope_scaling)
}

/// RoPE inverse frequencies of base `theta` over `head_dim` dimensions, scaled
/// as `scaling` says (transformers' `ROPE_INIT_FUNCTIONS`).
pub fn scaled_inv_freq(theta: f64, head_dim: usize, scaling: &RopeScaling) -> Vec<f64> {
    let dim = head_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    match scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            // transformers' `_compute_llama3_parameters`: long wavelengths are slowed by
            // `factor`, short ones kept, and the band between interpolated smoothly.
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables `[t, head_dim/2]` for positions 0…t−1.
fn rope_tables(
    inv_freq: &[f64],
    t: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for &f in inv_freq {
            // transformers forms the angle in f32; do the same so long contexts agree.
            let angle = (p as f32) * (f as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (t, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (t, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// The rotary embedding of `x` `[b, t, heads·d]` at positions 0…t−1, in that
/// layout (the attention reads it so), with `cos`, `sin` `[t, d/2]` from
/// [`rope_tables`]: `x₁·cos − x₂·sin`, `x₁·sin + x₂·cos` on each head's halves,
/// as candle's and transformers' `rope`. On the CPU in f32, rows in parallel
/// (candle's `rope_thd` runs one thread per sequence).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, width) = x.dims3()?;
    let d = width / heads;
    if !crate::compute::kernels::is_cpu_f32(x) {
        let x = x.reshape((b, t, heads, d))?.contiguous()?;
        return candle_nn::rotary_emb::rope_thd(&x, cos, sin)?.reshape((b, t, width));
    }
    use crate::compute::kernels::with_cpu_f32;
    use rayon::prelude::*;
    let half = d / 2;
    let mut out = vec![0f32; b * t * width];
    with_cpu_f32(x, |xs| {
        with_cpu_f32(cos, |cos| {
            with_cpu_f32(sin, |sin| {
                out.par_chunks_mut(width)
                    .zip(xs.par_chunks(width))
                    .enumerate()
                    .with_min_len(64)
                    .for_each(|(row, (o, x))| {
                        let p = row % t;
                        let c = &cos[p * half..(p + 1) * half];
                        let s = &sin[p * half..(p + 1) * half];
                        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                            let (x1, x2) = x.split_at(half);
                            let (o1, o2) = o.split_at_mut(half);
                            for i in 0..half {
                                o1[i] = x1[i] * c[i] - x2[i] * s[i];
                                o2[i] = x1[i] * s[i] + x2[i] * c[i];
                            }
                        }
                    });
            })
        })
    })???;
    Tensor::from_vec(out, (b, t, width), x.device())
}

/// One Llama decoder layer, resident on a device.
pub struct LlamaLayer {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    inv_freq: Vec<f64>,
    /// `q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`.
    pub linears: Vec<Linear>,
    input_norm: Tensor,
    post_attn_norm: Tensor,
}

impl LlamaLayer {
    /// Loads layer `index` through `get(canonical name, dtype)`.
    pub fn load(
        cfg: &LlamaConfig,
        index: usize,
        dtype: DType,
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Self> {
        let p = format!("model.layers.{index}");
        let mut linears = Vec::new();
        for (name, bias) in [
            ("self_attn.q_proj", cfg.attention_bias),
            ("self_attn.k_proj", cfg.attention_bias),
            ("self_attn.v_proj", cfg.attention_bias),
            ("self_attn.o_proj", cfg.attention_bias),
            ("mlp.gate_proj", cfg.mlp_bias),
            ("mlp.up_proj", cfg.mlp_bias),
            ("mlp.down_proj", cfg.mlp_bias),
        ] {
            let w = get(&format!("{p}.{name}.weight"), dtype)?;
            let b = if bias {
                Some(get(&format!("{p}.{name}.bias"), dtype)?)
            } else {
                None
            };
            linears.push(Linear::new(name, w, b));
        }
        Ok(Self {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_norm_eps,
            inv_freq: inv_freq(cfg),
            linears,
            input_norm: get(&format!("{p}.input_layernorm.weight"), dtype)?,
            post_attn_norm: get(&format!("{p}.post_attention_layernorm.weight"), dtype)?,
        })
    }

    /// Runs the layer over hidden states `[b, t, hidden]` at positions 0…t−1.
    pub fn forward(
        &self,
        x: &Tensor,
        hook: &mut Option<&mut LinearHook<'_>>,
    ) -> anyhow::Result<Tensor> {
        let [q_proj, k_proj, v_proj, o_proj, gate, up, down] = &self.linears[..] else {
            unreachable!("a Llama layer has seven linears")
        };
        let t = x.dim(1)?;
        let h = rms_norm(x, &self.input_norm, self.eps)?;
        let (cos, sin) = rope_tables(&self.inv_freq, t, x.dtype(), x.device())?;
        let q = rope(&q_proj.forward(&h, hook)?, &cos, &sin, self.heads)?;
        let k = rope(&k_proj.forward(&h, hook)?, &cos, &sin, self.kv_heads)?;
        let v = v_proj.forward(&h, hook)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let attn = causal_attention(&q, &k, &v, self.heads, self.kv_heads, scale)?;
        let x = o_proj.forward_residual(&attn, x, hook)?;
        let h = rms_norm(&x, &self.post_attn_norm, self.eps)?;
        mlp_swiglu_residual(gate, up, down, &h, &x, hook)
    }
}

/// The token embedding's tensor name.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";

/// The parts of Llama outside the decoder layers, kept resident on the device.
pub struct LlamaOuter {
    embed_tokens: Tensor,
    norm: Tensor,
    eps: f64,
    lm_head: Tensor,
}

impl LlamaOuter {
    /// Loads the embedding, final norm and head.
    pub fn load(
        cfg: &LlamaConfig,
        dtype: DType,
        get: &dyn Fn(&str, DType) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Self> {
        let embed_tokens = get(EMBED_TOKENS, dtype)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            get("lm_head.weight", dtype)?
        };
        Ok(Self {
            embed_tokens,
            norm: get("model.norm.weight", dtype)?,
            eps: cfg.rms_norm_eps,
            lm_head,
        })
    }

    /// Token ids `[b, t]` → hidden states `[b, t, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        embed(&self.embed_tokens, ids)
    }

    /// Hidden states `[b, t, hidden]` → logits `[b, t, vocab]` in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        crate::compute::kernels::xwt(&self.head_features(x)?, &self.lm_head)?
            .to_dtype(DType::F32)?
            .reshape((b, t, ()))
    }

    /// What the head multiplies by its weight: the final norm applied to
    /// hidden states `[b, t, hidden]`, as `[b·t, hidden]`.
    pub fn head_features(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.eps)?;
        let (b, t, h) = x.dims3()?;
        x.reshape((b * t, h))
    }

    /// The head's weight `[vocab, hidden]`.
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

/// Token ids `[b, t]` → hidden states `[b, t, hidden]`, the rows of `tokens`
/// (the whole embedding, or only the rows `ids` index; see
/// [`super::Model::embed_rows`]).
pub fn embed(tokens: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    tokens
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, ()))
}
