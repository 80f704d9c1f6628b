//! `config.json` of the supported architectures, and the tensors each implies.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The model families sparselab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `OPTForCausalLM` (facebook/opt-125m … 66b).
    Opt,
    /// `LlamaForCausalLM` (Llama-2, Vicuna, Llama-3).
    Llama,
}

impl Arch {
    /// The `model_type` string of `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Opt => "opt",
            Arch::Llama => "llama",
        }
    }
}

/// The `model_type` values [`ModelConfig::from_file`] accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["opt", "llama"];

fn default_true() -> bool {
    true
}

/// OPT hyper-parameters, as `transformers.OPTConfig` names them.
#[derive(Debug, Clone, Deserialize)]
pub struct OptConfig {
    /// Vocabulary rows of `embed_tokens`.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Width of `fc1`'s output.
    pub ffn_dim: usize,
    /// Attention heads (head dim = hidden_size / heads).
    pub num_attention_heads: usize,
    /// Learned positions (the table has two more rows: OPT's offset of 2).
    pub max_position_embeddings: usize,
    /// Pre-LayerNorm (true for every OPT but 350m).
    #[serde(default = "default_true")]
    pub do_layer_norm_before: bool,
    /// Embedding width; differs from `hidden_size` in OPT-350m (`project_in`/`project_out`).
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// `relu` for all released OPT models.
    #[serde(default = "default_relu")]
    pub activation_function: String,
    /// Biases on the linears.
    #[serde(default = "default_true")]
    pub enable_bias: bool,
    /// LayerNorms carry weight and bias.
    #[serde(default = "default_true")]
    pub layer_norm_elementwise_affine: bool,
    /// Drops the final LayerNorm (old checkpoints).
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Tied head (the head is `embed_tokens`).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// BOS id (`</s>` = 2 for OPT).
    #[serde(default)]
    pub bos_token_id: Option<u32>,
}

fn default_relu() -> String {
    "relu".to_string()
}

impl OptConfig {
    /// Embedding width (`word_embed_proj_dim`, defaulting to `hidden_size`).
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
    /// Whether `project_in` / `project_out` exist.
    pub fn has_projections(&self) -> bool {
        self.embed_dim() != self.hidden_size
    }
    /// Whether the decoder ends with `final_layer_norm` (as transformers decides).
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }
}

/// RoPE frequency scaling (`rope_scaling`, or `rope_parameters` in transformers 5).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Llama-3's frequency-dependent scaling.
    Llama3 {
        /// Scale factor for low frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) of the low band.
        low_freq_factor: f64,
        /// Wavelength bound of the high band.
        high_freq_factor: f64,
        /// Context the model was trained with.
        original_max_position_embeddings: usize,
    },
}

/// Llama hyper-parameters, as `transformers.LlamaConfig` names them.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Head shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// Biases on the MLP.
    pub mlp_bias: bool,
    /// BOS id.
    pub bos_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawLlama {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_silu")]
    hidden_act: String,
    #[serde(default)]
    bos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_silu() -> String {
    "silu".to_string()
}

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// An OPT model.
    Opt(OptConfig),
    /// A Llama-family model.
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Reads and validates `config.json`; errors name the file and the key at fault.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in model config {}", path.display()))
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .context("missing key `model_type`")?;
        let config = match model_type {
            "opt" => {
                let c: OptConfig = serde_json::from_value(value.clone())
                    .map_err(|e| anyhow::anyhow!("OPT config: {e}"))?;
                if c.activation_function != "relu" {
                    bail!(
                        "OPT activation_function `{}` is not supported (only relu)",
                        c.activation_function
                    );
                }
                ModelConfig::Opt(c)
            }
            "llama" => ModelConfig::Llama(parse_llama(value.clone())?),
            other => bail!(
                "unsupported model_type `{other}`; supported: {}",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses shapes the layers cannot run (zero sizes, heads that do not divide).
    pub(crate) fn validate(&self) -> Result<()> {
        let (hidden, heads) = (self.hidden_size(), self.num_attention_heads());
        if heads == 0 || hidden == 0 || self.num_layers() == 0 {
            bail!("hidden_size, num_attention_heads and num_hidden_layers must be positive");
        }
        if let ModelConfig::Opt(_) = self {
            if hidden % heads != 0 {
                bail!("hidden_size {hidden} is not divisible by num_attention_heads {heads}");
            }
        }
        if let ModelConfig::Llama(c) = self {
            if c.num_attention_heads % c.num_key_value_heads != 0 {
                bail!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    c.num_attention_heads,
                    c.num_key_value_heads
                );
            }
        }
        Ok(())
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            ModelConfig::Opt(_) => Arch::Opt,
            ModelConfig::Llama(_) => Arch::Llama,
        }
    }
    /// Residual width.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Opt(c) => c.hidden_size,
            ModelConfig::Llama(c) => c.hidden_size,
        }
    }
    /// Decoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Opt(c) => c.num_hidden_layers,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }
    /// Query heads.
    pub fn num_attention_heads(&self) -> usize {
        match self {
            ModelConfig::Opt(c) => c.num_attention_heads,
            ModelConfig::Llama(c) => c.num_attention_heads,
        }
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Opt(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }
    /// Context length.
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            ModelConfig::Opt(c) => c.max_position_embeddings,
            ModelConfig::Llama(c) => c.max_position_embeddings,
        }
    }
    /// The BOS the reference's tokenizer prepends to a named dataset.
    pub fn bos_token_id(&self) -> u32 {
        match self {
            ModelConfig::Opt(c) => c.bos_token_id.unwrap_or(2),
            ModelConfig::Llama(c) => c.bos_token_id.unwrap_or(1),
        }
    }

    /// Names of the linear sublayers of one decoder layer, in the reference's order.
    pub fn linear_names(&self) -> &'static [&'static str] {
        match self {
            ModelConfig::Opt(_) => &[
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.q_proj",
                "self_attn.out_proj",
                "fc1",
                "fc2",
            ],
            ModelConfig::Llama(_) => &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ],
        }
    }

    /// Every tensor the checkpoint must hold, with its shape, named as
    /// transformers names them (`model.decoder.…` for OPT, `model.…` for Llama).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
        match self {
            ModelConfig::Opt(c) => {
                let (h, e, f, v) = (c.hidden_size, c.embed_dim(), c.ffn_dim, c.vocab_size);
                let p = "model.decoder";
                add(format!("{p}.embed_tokens.weight"), vec![v, e]);
                add(
                    format!("{p}.embed_positions.weight"),
                    vec![c.max_position_embeddings + 2, h],
                );
                if c.has_projections() {
                    add(format!("{p}.project_in.weight"), vec![h, e]);
                    add(format!("{p}.project_out.weight"), vec![e, h]);
                }
                if c.has_final_layer_norm() && c.layer_norm_elementwise_affine {
                    add(format!("{p}.final_layer_norm.weight"), vec![h]);
                    add(format!("{p}.final_layer_norm.bias"), vec![h]);
                }
                for i in 0..c.num_hidden_layers {
                    let l = format!("{p}.layers.{i}");
                    for (name, out_dim, in_dim) in [
                        ("self_attn.k_proj", h, h),
                        ("self_attn.v_proj", h, h),
                        ("self_attn.q_proj", h, h),
                        ("self_attn.out_proj", h, h),
                        ("fc1", f, h),
                        ("fc2", h, f),
                    ] {
                        add(format!("{l}.{name}.weight"), vec![out_dim, in_dim]);
                        if c.enable_bias {
                            add(format!("{l}.{name}.bias"), vec![out_dim]);
                        }
                    }
                    if c.layer_norm_elementwise_affine {
                        for n in ["self_attn_layer_norm", "final_layer_norm"] {
                            add(format!("{l}.{n}.weight"), vec![h]);
                            add(format!("{l}.{n}.bias"), vec![h]);
                        }
                    }
                }
                if !c.tie_word_embeddings {
                    add("lm_head.weight".to_string(), vec![v, e]);
                }
            }
            ModelConfig::Llama(c) => {
                let (h, i_sz, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
                let q = c.num_attention_heads * c.head_dim;
                let kv = c.num_key_value_heads * c.head_dim;
                add("model.embed_tokens.weight".to_string(), vec![v, h]);
                add("model.norm.weight".to_string(), vec![h]);
                for i in 0..c.num_hidden_layers {
                    let l = format!("model.layers.{i}");
                    for (name, out_dim, in_dim, bias) in [
                        ("self_attn.q_proj", q, h, c.attention_bias),
                        ("self_attn.k_proj", kv, h, c.attention_bias),
                        ("self_attn.v_proj", kv, h, c.attention_bias),
                        ("self_attn.o_proj", h, q, c.attention_bias),
                        ("mlp.gate_proj", i_sz, h, c.mlp_bias),
                        ("mlp.up_proj", i_sz, h, c.mlp_bias),
                        ("mlp.down_proj", h, i_sz, c.mlp_bias),
                    ] {
                        add(format!("{l}.{name}.weight"), vec![out_dim, in_dim]);
                        if bias {
                            add(format!("{l}.{name}.bias"), vec![out_dim]);
                        }
                    }
                    add(format!("{l}.input_layernorm.weight"), vec![h]);
                    add(format!("{l}.post_attention_layernorm.weight"), vec![h]);
                }
                if !c.tie_word_embeddings {
                    add("lm_head.weight".to_string(), vec![v, h]);
                }
            }
        }
        out
    }
}

/// transformers' name of a dtype in `config.json`.
pub(crate) fn torch_dtype_name(d: candle_core::DType) -> &'static str {
    use candle_core::DType;
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

impl LlamaConfig {
    /// The `config.json` transformers writes for this config (for models whose
    /// source has none, such as GGUF files), weights stored as `dtype`.
    pub fn to_hf_json(&self, dtype: candle_core::DType) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => serde_json::Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "torch_dtype": torch_dtype_name(dtype),
        });
        if let Some(bos) = self.bos_token_id {
            v["bos_token_id"] = bos.into();
        }
        v
    }
}

fn parse_llama(value: serde_json::Value) -> Result<LlamaConfig> {
    let raw: RawLlama =
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("Llama config: {e}"))?;
    if raw.hidden_act != "silu" {
        bail!(
            "Llama hidden_act `{}` is not supported (only silu)",
            raw.hidden_act
        );
    }
    // transformers 5 folds rope_theta and rope_scaling into `rope_parameters`;
    // older configs carry them at the top level.
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let theta = raw
        .rope_theta
        .or_else(|| {
            raw.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(|v| v.as_f64())
        })
        .unwrap_or(10_000.0);
    let rope_scaling = match params {
        None | Some(serde_json::Value::Null) => RopeScaling::Default,
        Some(p) => parse_rope_scaling(p, raw.max_position_embeddings)?,
    };
    if raw.num_attention_heads == 0 {
        bail!("num_attention_heads must be positive");
    }
    let head_dim = raw
        .head_dim
        .unwrap_or(raw.hidden_size / raw.num_attention_heads);
    Ok(LlamaConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: raw.num_attention_heads,
        num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
        head_dim,
        rms_norm_eps: raw.rms_norm_eps,
        rope_theta: theta,
        rope_scaling,
        max_position_embeddings: raw.max_position_embeddings,
        tie_word_embeddings: raw.tie_word_embeddings,
        attention_bias: raw.attention_bias,
        mlp_bias: raw.mlp_bias,
        bos_token_id: raw.bos_token_id,
    })
}

fn parse_rope_scaling(p: &serde_json::Value, max_pos: usize) -> Result<RopeScaling> {
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        p.get(key)
            .and_then(|v| v.as_f64())
            .with_context(|| format!("rope scaling `{kind}` is missing key `{key}`"))
    };
    Ok(match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: p
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .unwrap_or(max_pos),
        },
        other => {
            bail!("RoPE scaling `{other}` is not supported; supported: default, linear, llama3")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_names_the_supported_ones() {
        let err = ModelConfig::from_json(r#"{"model_type": "gpt2"}"#).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("gpt2") && msg.contains("opt, llama"), "{msg}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = ModelConfig::from_json(
            r#"{"model_type": "opt", "vocab_size": 10, "num_hidden_layers": 1,
                "ffn_dim": 8, "num_attention_heads": 2, "max_position_embeddings": 8}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("hidden_size"), "{err:#}");
    }

    #[test]
    fn llama_config_round_trips_through_hf_json() {
        let text = r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": true, "bos_token_id": 1,
                "rope_scaling": {"rope_type": "linear", "factor": 2.0}}"#;
        let ModelConfig::Llama(a) = ModelConfig::from_json(text).unwrap() else {
            panic!()
        };
        let json = a.to_hf_json(candle_core::DType::F32).to_string();
        let ModelConfig::Llama(b) = ModelConfig::from_json(&json).unwrap() else {
            panic!()
        };
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn llama3_rope_scaling_parses() {
        let c = ModelConfig::from_json(
            r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "rope_theta": 500000.0,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        let ModelConfig::Llama(l) = c else { panic!() };
        assert_eq!(l.rope_theta, 500000.0);
        assert!(matches!(l.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(l.head_dim, 4);
    }
}
