//! GGUF checkpoints (llama.cpp's format): the config from the file's metadata,
//! llama.cpp's tensor names mapped to transformers', and every tensor
//! dequantized to a float dtype when it is read.
//!
//! llama.cpp's converter stores Llama's q/k projections with their rows
//! permuted (it pairs the two halves of each head's rotary dimensions the way
//! its RoPE kernel reads them); [`GgufCheckpoint::load`] undoes that, so a GGUF
//! model and the Hugging Face model it came from are the same model here. The
//! header is read with candle's GGUF reader; tensor data is read from the file
//! on each access, one tensor at a time, like the other checkpoint formats.
//!
//! RoPE scaling is read as llama.cpp applies it: `rope.scaling.type` linear
//! (also when the type is absent) with `rope.scaling.factor`, and Llama-3's
//! frequency-dependent scaling, which llama.cpp's converter stores as the
//! per-frequency factors of a `rope_freqs.weight` tensor; those factors are
//! turned back into the `rope_scaling` (`llama3`) that reproduces them, so that
//! a saved model runs the same RoPE in transformers. Any other scaling is
//! refused by name.
//!
//! A hub id whose cached snapshot holds GGUF files and no Hugging Face
//! checkpoint loads the GGUF file ([`locate`]); `org/name[@revision]:FILE`
//! picks one of several by file name or by quantization tag (`:Q4_K_M`), as
//! llama.cpp's `-hf` does.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use hf_hub::RepoType;

use super::config::{LlamaConfig, ModelConfig, RopeScaling};
use super::llama::scaled_inv_freq;
use super::LoadOptions;
use crate::hub::{self, RepoSpec};

/// The `general.architecture` values that can be read.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Tensor types whose blocks candle can read from a file and dequantize: every
/// type llama.cpp stores weights in but the i-quants, the ternary types and
/// MXFP4. (Q8_1
/// and Q8_K, llama.cpp's types for activations, candle names but cannot read.)
pub const DEQUANTIZABLE: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// The name of the tensor type ggml numbers `id` (`ggml_type`), for the types
/// candle cannot read, so that the error names what the file holds.
fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2",
        5 => "Q4_3",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31 => "Q4_0_4_4",
        32 => "Q4_0_4_8",
        33 => "Q4_0_8_8",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4",
        37 => "IQ4_NL_4_8",
        38 => "IQ4_NL_8_8",
        39 => "MXFP4",
        _ => return None,
    })
}

/// llama.cpp's tensor of per-frequency RoPE factors (Llama-3.1's scaling).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Relative tolerance when matching `rope_freqs.weight` (stored in f32, made
/// from f32 frequencies) against a Llama-3 scaling.
const ROPE_FACTOR_TOL: f64 = 1e-5;

/// Where a canonical (transformers) tensor lives in the GGUF file.
#[derive(Debug, Clone)]
struct Entry {
    /// llama.cpp's name (`blk.3.attn_q.weight`).
    gguf_name: String,
    /// Heads whose rows llama.cpp permuted (q: attention heads, k: KV heads).
    unpermute_heads: Option<usize>,
}

/// An opened GGUF file: its header, and the canonical name of every tensor.
pub struct GgufCheckpoint {
    path: PathBuf,
    content: Content,
    entries: HashMap<String, Entry>,
    /// Whether the file has `rope_freqs.weight` (read by [`Self::config`]).
    has_rope_freqs: bool,
}

impl std::fmt::Debug for GgufCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufCheckpoint")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn ggml_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "Q2_K".into(),
        GgmlDType::Q3K => "Q3_K".into(),
        GgmlDType::Q4K => "Q4_K".into(),
        GgmlDType::Q5K => "Q5_K".into(),
        GgmlDType::Q6K => "Q6_K".into(),
        GgmlDType::Q8K => "Q8_K".into(),
        other => format!("{other:?}"),
    }
}

/// llama.cpp's per-layer tensor names and transformers' counterparts.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_gate.bias", "mlp.gate_proj.bias"),
    ("ffn_up.bias", "mlp.up_proj.bias"),
    ("ffn_down.bias", "mlp.down_proj.bias"),
];

impl GgufCheckpoint {
    /// Reads the header of `path` and maps every tensor to its canonical name;
    /// a tensor that has no place in a supported architecture, or a type candle
    /// cannot dequantize, is refused by name.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = BufReader::new(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        let content = Content::read(&mut file).map_err(|e| {
            // candle stops at the first tensor type it does not know, by number.
            // (Its message may go on with a backtrace after the first line.)
            let msg = e.to_string();
            let named = msg
                .lines()
                .next()
                .unwrap_or("")
                .strip_prefix("unknown dtype for tensor ")
                .and_then(|id| id.trim().parse::<u32>().ok())
                .map(|id| match ggml_type_name(id) {
                    Some(name) => format!("a tensor has type {name} (ggml type {id})"),
                    None => format!("a tensor has the unknown ggml type {id}"),
                });
            match named {
                Some(what) => anyhow!(
                    "{}: {what}, which cannot be read; readable tensor types: {}",
                    path.display(),
                    DEQUANTIZABLE.join(", ")
                ),
                None => anyhow!(
                    "cannot read the GGUF header of {}: {e} (readable tensor types: {})",
                    path.display(),
                    DEQUANTIZABLE.join(", ")
                ),
            }
        })?;
        let mut ck = Self {
            path: path.to_path_buf(),
            content,
            entries: HashMap::new(),
            has_rope_freqs: false,
        };
        if let Some(n) = ck.opt_usize_key("split.count")?.filter(|&n| n > 1) {
            bail!(
                "{} is one of {n} split GGUF files, which are not supported; merge them with \
                 llama.cpp's `llama-gguf-split --merge` first",
                path.display()
            );
        }
        let arch = ck.architecture()?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            bail!(
                "{}: GGUF architecture `{arch}` is not supported; supported: {}",
                path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            );
        }
        let heads_key = format!("{arch}.attention.head_count");
        let heads = ck.opt_usize_key(&heads_key)?;
        let kv_heads = ck
            .opt_usize_key(&format!("{arch}.attention.head_count_kv"))?
            .or(heads);
        let mut names: Vec<&String> = ck.content.tensor_infos.keys().collect();
        names.sort();
        let mut entries = HashMap::new();
        for name in names {
            let info = &ck.content.tensor_infos[name];
            let kind = ggml_name(info.ggml_dtype);
            if !DEQUANTIZABLE.contains(&kind.as_str()) {
                bail!(
                    "{}: tensor {name} has type {kind}, which cannot be dequantized; \
                     readable types: {}",
                    path.display(),
                    DEQUANTIZABLE.join(", ")
                );
            }
            if name == ROPE_FREQS {
                // Not a weight: part of the config (see `rope_scaling`).
                ck.has_rope_freqs = true;
                continue;
            }
            let canonical = canonical_name(name).with_context(|| {
                format!(
                    "{}: tensor {name} has no counterpart in a {arch} model",
                    path.display()
                )
            })?;
            let is = |kind: &str| {
                name.ends_with(&format!("{kind}.weight")) || name.ends_with(&format!("{kind}.bias"))
            };
            let unpermute_heads = if is("attn_q") {
                Some(heads)
            } else if is("attn_k") {
                Some(kv_heads)
            } else {
                None
            };
            let unpermute_heads = match unpermute_heads {
                Some(h) => Some(h.with_context(|| {
                    format!("{}: GGUF metadata has no {heads_key}", path.display())
                })?),
                None => None,
            };
            entries.insert(
                canonical,
                Entry {
                    gguf_name: name.clone(),
                    unpermute_heads,
                },
            );
        }
        ck.entries = entries;
        Ok(ck)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's metadata (`general.*`, `llama.*`, `tokenizer.ggml.*`).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<String> {
        Ok(self
            .content
            .metadata
            .get("general.architecture")
            .context("GGUF metadata has no general.architecture")?
            .to_string()
            .map_err(|e| anyhow!("general.architecture: {e}"))?
            .clone())
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn opt_usize_key(&self, key: &str) -> Result<Option<usize>> {
        self.value(key)
            .map(|v| value_u64(v).map(|n| n as usize))
            .transpose()
            .with_context(|| format!("GGUF metadata {key} in {}", self.path.display()))
    }

    fn usize_key(&self, key: &str) -> Result<usize> {
        self.opt_usize_key(key)?
            .with_context(|| format!("GGUF metadata of {} has no {key}", self.path.display()))
    }

    fn opt_f64_key(&self, key: &str) -> Result<Option<f64>> {
        self.value(key)
            .map(value_f64)
            .transpose()
            .with_context(|| format!("GGUF metadata {key} in {}", self.path.display()))
    }

    /// The stored shape (row-major, as transformers' tensor) of a canonical tensor.
    fn shape(&self, canonical: &str) -> Option<Vec<usize>> {
        let e = self.entries.get(canonical)?;
        Some(
            self.content.tensor_infos[&e.gguf_name]
                .shape
                .dims()
                .to_vec(),
        )
    }

    /// The model config the metadata describes, in transformers' terms.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = self.usize_key(&key("embedding_length"))?;
        let heads = self.usize_key(&key("attention.head_count"))?;
        if heads == 0 {
            bail!(
                "{}: {} is 0",
                self.path.display(),
                key("attention.head_count")
            );
        }
        let kv_heads = self
            .opt_usize_key(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = match self.opt_usize_key(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden / heads,
        };
        if let Some(rot) = self.opt_usize_key(&key("rope.dimension_count"))? {
            if rot != head_dim {
                bail!(
                    "{}: partial rotary embeddings ({} = {rot}, head dim {head_dim}) are not \
                     supported",
                    self.path.display(),
                    key("rope.dimension_count")
                );
            }
        }
        let vocab = match self.opt_usize_key(&key("vocab_size"))? {
            Some(v) => v,
            None => self
                .shape("model.embed_tokens.weight")
                .and_then(|s| s.first().copied())
                .context("GGUF file has no token_embd.weight")?,
        };
        let rope_theta = self
            .opt_f64_key(&key("rope.freq_base"))?
            .unwrap_or(10_000.0);
        let rope_scaling = self.rope_scaling(&arch, rope_theta, head_dim)?;
        let intermediate = self.usize_key(&key("feed_forward_length"))?;
        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: self.usize_key(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .opt_f64_key(&key("attention.layer_norm_rms_epsilon"))?
                .context("GGUF metadata has no attention.layer_norm_rms_epsilon")?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.opt_usize_key(&key("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !self.entries.contains_key("lm_head.weight"),
            attention_bias: self
                .entries
                .contains_key("model.layers.0.self_attn.q_proj.bias"),
            mlp_bias: self.entries.contains_key("model.layers.0.mlp.up_proj.bias"),
            bos_token_id: self.token_id("bos")?,
        };
        let config = ModelConfig::Llama(config);
        config.validate()?;
        Ok(config)
    }

    /// RoPE scaling as llama.cpp applies it to this file: `rope.scaling.type`
    /// (linear when absent, as llama.cpp reads it) with `rope.scaling.factor`
    /// (or the older `rope.scale_linear`; 0 or 1 is no scaling), and the
    /// per-frequency factors of `rope_freqs.weight`, which are turned back into
    /// the Llama-3 scaling that gives them.
    fn rope_scaling(&self, arch: &str, theta: f64, head_dim: usize) -> Result<RopeScaling> {
        let key = |k: &str| format!("{arch}.{k}");
        let kind = match self.value(&key("rope.scaling.type")) {
            Some(v) => Some(
                v.to_string()
                    .map_err(|e| anyhow!("{}: {e}", key("rope.scaling.type")))?
                    .clone(),
            ),
            None => None,
        };
        let factor = match self.opt_f64_key(&key("rope.scaling.factor"))? {
            Some(f) => Some(f),
            None => self.opt_f64_key(&key("rope.scale_linear"))?,
        };
        let linear = match kind.as_deref() {
            None | Some("linear") => factor.filter(|&f| f != 0.0 && f != 1.0),
            Some("none") => None,
            Some(other) => bail!(
                "{}: RoPE scaling `{other}` ({}) is not supported; supported: none, linear, and \
                 Llama-3's per-frequency factors ({ROPE_FREQS})",
                self.path.display(),
                key("rope.scaling.type")
            ),
        };
        if !self.has_rope_freqs {
            return Ok(match linear {
                Some(factor) => RopeScaling::Linear { factor },
                None => RopeScaling::Default,
            });
        }
        if let Some(f) = linear {
            bail!(
                "{}: RoPE scaled both linearly (factor {f}) and by per-frequency factors \
                 ({ROPE_FREQS}); that combination is not supported",
                self.path.display()
            );
        }
        let factors = self.rope_freqs()?;
        let original = self.opt_usize_key(&key("rope.scaling.original_context_length"))?;
        llama3_from_factors(theta, head_dim, &factors, original)
            .with_context(|| format!("{}: {ROPE_FREQS}", self.path.display()))
    }

    /// The values of `rope_freqs.weight`.
    fn rope_freqs(&self) -> Result<Vec<f32>> {
        let info = &self.content.tensor_infos[ROPE_FREQS];
        let mut file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let t = info
            .read(&mut file, self.content.tensor_data_offset, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| anyhow!("cannot read {ROPE_FREQS} from {}: {e}", self.path.display()))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// A special token id from `tokenizer.ggml.<kind>_token_id`.
    pub fn token_id(&self, kind: &str) -> Result<Option<u32>> {
        let key = format!("tokenizer.ggml.{kind}_token_id");
        self.value(&key)
            .map(|v| value_u64(v).map(|n| n as u32))
            .transpose()
            .with_context(|| format!("GGUF metadata {key}"))
    }

    /// The `config.json` transformers would write for this model.
    pub fn hf_config_json(&self, config: &ModelConfig, dtype: DType) -> Result<serde_json::Value> {
        let ModelConfig::Llama(c) = config else {
            bail!("GGUF models are Llama models");
        };
        let mut v = c.to_hf_json(dtype);
        if let Some(eos) = self.token_id("eos")? {
            v["eos_token_id"] = eos.into();
        }
        if let Some(pad) = self.token_id("padding")? {
            v["pad_token_id"] = pad.into();
        }
        Ok(v)
    }

    /// Canonical name → stored dtype (the working dtype a quantized tensor
    /// dequantizes to is f32) and shape, for every tensor in the file.
    pub fn tensors(&self) -> Vec<(String, DType, Vec<usize>)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .map(|(canonical, e)| {
                let info = &self.content.tensor_infos[&e.gguf_name];
                let dtype = match info.ggml_dtype {
                    GgmlDType::F16 => DType::F16,
                    GgmlDType::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                (canonical.clone(), dtype, info.shape.dims().to_vec())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Reads, dequantizes and (for q/k) un-permutes the tensor with canonical
    /// name `canonical`, on `device` in its stored float dtype (f32 for
    /// quantized types).
    pub fn load(&self, canonical: &str, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(canonical)
            .with_context(|| format!("no tensor named {canonical} in {}", self.path.display()))?;
        let info = &self.content.tensor_infos[&e.gguf_name];
        let mut file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let q = info
            .read(&mut file, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|err| {
                anyhow!(
                    "cannot read tensor {} ({}) from {}: {err}",
                    e.gguf_name,
                    ggml_name(info.ggml_dtype),
                    self.path.display()
                )
            })?;
        let t = match info.ggml_dtype {
            GgmlDType::F16 | GgmlDType::BF16 => {
                let dt = if info.ggml_dtype == GgmlDType::F16 {
                    DType::F16
                } else {
                    DType::BF16
                };
                q.dequantize(&Device::Cpu)?.to_dtype(dt)?
            }
            _ => q.dequantize(&Device::Cpu)?,
        };
        let t = match e.unpermute_heads {
            Some(heads) => unpermute_rows(&t, heads)
                .with_context(|| format!("un-permuting {}", e.gguf_name))?,
            None => t,
        };
        Ok(t.to_device(device)?)
    }
}

/// The Llama-3 RoPE scaling (transformers' `rope_type: llama3`) whose
/// per-frequency factors are `factors`: llama.cpp divides the i-th inverse
/// frequency of base `theta` by `factors[i]` (its converter writes them from the
/// Hugging Face `rope_scaling`). `RopeScaling::Default` when every factor is 1.
///
/// Llama-3.1 to 3.3 use low/high frequency factors 1 and 4 over an original
/// context of 8192 (or `original_context`): tried first, so that a saved
/// config.json has the model's own numbers. Otherwise the parameters are fitted
/// to the factors between the two bands, where `1/factor` is linear in the
/// frequency. Either way the result must reproduce every factor (to 1e-5), or
/// it is an error: other per-frequency scalings are not supported.
pub fn llama3_from_factors(
    theta: f64,
    head_dim: usize,
    factors: &[f32],
    original_context: Option<usize>,
) -> Result<RopeScaling> {
    let half = head_dim / 2;
    if factors.len() != half {
        bail!(
            "{} factors for {half} rotary frequencies (head dim {head_dim})",
            factors.len()
        );
    }
    let r: Vec<f64> = factors.iter().map(|&x| x as f64).collect();
    if let Some(i) = r.iter().position(|x| !x.is_finite() || *x <= 0.0) {
        bail!("factor {i} is {}", r[i]);
    }
    if r.iter().all(|x| (x - 1.0).abs() <= ROPE_FACTOR_TOL) {
        return Ok(RopeScaling::Default);
    }
    let base = scaled_inv_freq(theta, head_dim, &RopeScaling::Default);
    let factor = r.iter().copied().fold(1.0, f64::max);
    let old = original_context.unwrap_or(8192);
    let reproduces = |s: &RopeScaling| {
        let scaled = scaled_inv_freq(theta, head_dim, s);
        base.iter()
            .zip(&scaled)
            .zip(&r)
            .all(|((b, s), r)| (b / s / r - 1.0).abs() <= ROPE_FACTOR_TOL)
    };
    let llama3 = |low: f64, high: f64| RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old,
    };
    let canonical = llama3(1.0, 4.0);
    if reproduces(&canonical) {
        return Ok(canonical);
    }
    // Between the bands transformers interpolates 1/r = (1 - s)/factor + s with
    // s = (old/(2π) · f − low)/(high − low): s is linear in the frequency f.
    let band: Vec<(f64, f64)> = base
        .iter()
        .zip(&r)
        .filter(|(_, &r)| r > 1.0 + ROPE_FACTOR_TOL && r < factor * (1.0 - ROPE_FACTOR_TOL))
        .map(|(&f, &r)| (f, (1.0 / r - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    if band.len() >= 2 {
        let n = band.len() as f64;
        let mf = band.iter().map(|p| p.0).sum::<f64>() / n;
        let ms = band.iter().map(|p| p.1).sum::<f64>() / n;
        let sff: f64 = band.iter().map(|p| (p.0 - mf).powi(2)).sum();
        let sfs: f64 = band.iter().map(|p| (p.0 - mf) * (p.1 - ms)).sum();
        let slope = sfs / sff;
        let intercept = ms - slope * mf;
        if slope > 0.0 {
            let width = old as f64 / (2.0 * std::f64::consts::PI * slope);
            let low = -intercept * width;
            // Rounded to 7 significant digits where that still reproduces the
            // factors, so that config.json shows 4 rather than 3.9999996.
            let round = |x: f64| {
                let scale = 10f64.powi(6 - x.abs().log10().floor() as i32);
                (x * scale).round() / scale
            };
            for fitted in [
                llama3(round(low), round(low + width)),
                llama3(low, low + width),
            ] {
                if low > 0.0 && reproduces(&fitted) {
                    return Ok(fitted);
                }
            }
        }
    }
    let (min, max) = r
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    bail!(
        "per-frequency RoPE factors from {min} to {max} that no Llama-3 scaling \
         (rope_type llama3) reproduces; other per-frequency scalings are not supported"
    )
}

/// Inverts llama.cpp's q/k row permutation: the converter stores
/// `W.reshape(heads, 2, d/2, in).swapaxes(1, 2)`, each head's rows interleaved
/// pair-wise; transformers' RoPE wants the two halves one after the other.
pub fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        bail!("{rows} rows cannot be split into {heads} heads of pairs");
    }
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    Ok(t.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// llama.cpp's tensor name → transformers' (`blk.3.ffn_up.weight` →
/// `model.layers.3.mlp.up_proj.weight`); `None` for names without one.
pub fn canonical_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (index, tail) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let ours = LAYER_NAMES.iter().find(|(g, _)| *g == tail)?.1;
    Some(format!("model.layers.{index}.{ours}"))
}

/// The GGUF file a model spec names: the spec itself when it is a `.gguf`
/// file, or the only `.gguf` file of a directory without `config.json`.
/// `Ok(None)` when the spec is something else (a Hugging Face directory or a
/// hub id); an error for a directory holding several.
pub fn find_gguf(spec: &Path) -> Result<Option<PathBuf>> {
    let is_gguf = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    };
    if spec.is_file() && is_gguf(spec) {
        return Ok(Some(spec.to_path_buf()));
    }
    if !spec.is_dir() || spec.join("config.json").is_file() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(spec)
        .with_context(|| format!("cannot list {}", spec.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_gguf(p))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!(
            "{} holds {} GGUF files ({}); name the one to load",
            spec.display(),
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn is_gguf_name(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The GGUF file a model spec names, if any: a local `.gguf` file or a
/// directory holding one ([`find_gguf`]), or a hub id
/// `org/name[@revision][:FILE]` whose snapshot (from the cache, else
/// downloaded unless offline) holds GGUF files and no Hugging Face checkpoint.
/// `FILE` picks one of several GGUF files: a file name of the repository, or a
/// quantization tag matched against the names (`:Q4_K_M` picks
/// `….Q4_K_M.gguf`); with it the GGUF file is loaded even beside a Hugging Face
/// checkpoint. `Ok(None)` for every other spec (a Hugging Face directory or
/// repository).
pub fn locate(spec: &str, opts: &LoadOptions) -> Result<Option<PathBuf>> {
    let (repo_part, wanted) = hub::split_file(spec);
    if Path::new(spec).exists() || !hub::looks_like_hub_id(repo_part) {
        return find_gguf(Path::new(spec));
    }
    let mut repo = RepoSpec::parse(repo_part)?;
    if let Some(rev) = &opts.revision {
        repo.revision = rev.clone();
    }
    let cache = &opts.hub.cache_dir;
    if let Some(snap) = hub::cached_snapshot(cache, RepoType::Model, &repo) {
        let names = snapshot_files(&snap)?;
        match wanted {
            Some(w) => match pick_gguf(&names, w) {
                Ok(name) => return Ok(Some(snap.join(name))),
                Err(e) if opts.hub.offline => {
                    return Err(e.context(format!(
                        "in the cached snapshot {} of {} (HF_HUB_OFFLINE is set)",
                        snap.display(),
                        repo.id
                    )))
                }
                Err(_) => {}
            },
            None => {
                let has_hf = snap.join("config.json").is_file()
                    && super::weights::find_checkpoint(&snap).is_ok();
                if has_hf {
                    return Ok(None);
                }
                if let Some(name) = only_gguf(&names, &repo)? {
                    return Ok(Some(snap.join(name)));
                }
            }
        }
    }
    if opts.hub.offline {
        return match wanted {
            Some(w) => bail!(
                "{w} of {} is not in the hub cache {} (revision `{}`), and HF_HUB_OFFLINE is set",
                repo.id,
                cache.display(),
                repo.revision
            ),
            None => Ok(None),
        };
    }
    let choose = |files: &[String]| -> Result<Vec<String>> {
        if let Some(w) = wanted {
            return Ok(vec![pick_gguf(files, w)?]);
        }
        let hf_weights = files.iter().any(|f| {
            !f.contains('/') && (f.ends_with(".safetensors") || f.starts_with("pytorch_model"))
        });
        if files.iter().any(|f| f == "config.json") && hf_weights {
            return Ok(Vec::new());
        }
        Ok(only_gguf(files, &repo)?.into_iter().collect())
    };
    match hub::download(&opts.hub, RepoType::Model, &repo, &choose) {
        Ok(paths) => Ok(paths.into_iter().next()),
        Err(e) if wanted.is_some() => Err(e),
        // Not a GGUF repository as far as can be told: the Hugging Face
        // resolution reports what is wrong.
        Err(_) => Ok(None),
    }
}

/// Every file of a snapshot, as paths relative to it with `/`.
fn snapshot_files(snap: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let path = entry?.path();
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let rel = format!("{prefix}{name}");
            if path.is_dir() {
                walk(&path, &format!("{rel}/"), out)?;
            } else if path.is_file() {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(snap, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// The GGUF file of a repository's `files` when there is exactly one; `None`
/// for none; an error listing them for several.
fn only_gguf(files: &[String], repo: &RepoSpec) -> Result<Option<String>> {
    let ggufs: Vec<&String> = files.iter().filter(|f| is_gguf_name(f)).collect();
    match ggufs[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => bail!(
            "hub repository {} holds {} GGUF files ({}); name one as {}:FILE (a file name or a \
             quantization tag such as Q4_K_M)",
            repo.id,
            ggufs.len(),
            ggufs
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            repo.id
        ),
    }
}

/// The file of `files` that `wanted` names: that file itself, else the one
/// GGUF file whose name ends with the tag `wanted` (`….Q4_K_M.gguf`), else the
/// one whose name contains it (case-insensitively).
fn pick_gguf(files: &[String], wanted: &str) -> Result<String> {
    if files.iter().any(|f| f == wanted) {
        if !is_gguf_name(wanted) {
            bail!("{wanted} is not a GGUF file");
        }
        return Ok(wanted.to_string());
    }
    let ggufs: Vec<&String> = files.iter().filter(|f| is_gguf_name(f)).collect();
    let w = wanted.to_ascii_lowercase();
    let containing: Vec<&String> = ggufs
        .iter()
        .copied()
        .filter(|f| f.to_ascii_lowercase().contains(&w))
        .collect();
    let ending: Vec<&String> = containing
        .iter()
        .copied()
        .filter(|f| {
            let stem = f.to_ascii_lowercase();
            let stem = &stem[..stem.len() - ".gguf".len()];
            stem.strip_suffix(&w)
                .is_some_and(|head| head.is_empty() || head.ends_with(['.', '-', '_', '/']))
        })
        .collect();
    let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    match (&ending[..], &containing[..]) {
        ([one], _) | ([], [one]) => Ok((*one).clone()),
        (_, []) => bail!(
            "no file named or tagged `{wanted}`; GGUF files: {}",
            if ggufs.is_empty() {
                "none".to_string()
            } else {
                list(&ggufs)
            }
        ),
        (_, several) => bail!(
            "`{wanted}` matches several GGUF files ({}); name one in full",
            list(several)
        ),
    }
}

fn value_u64(v: &Value) -> Result<u64> {
    crate::data::gguf_tokenizer::integer(v)
        .and_then(|x| u64::try_from(x).ok())
        .with_context(|| format!("expected a non-negative integer, found {v:?}"))
}

fn value_f64(v: &Value) -> Result<f64> {
    Ok(match v {
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        other => value_u64(other)? as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter, `LlamaModel.permute`, written out in plain loops.
    fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = vec![0.0; w.len()];
        // out.reshape(h, half, 2) [h][i][j] = w.reshape(h, 2, half) [h][j][i]
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let dst = h * 2 * half + i * 2 + j;
                    let src = h * 2 * half + j * half + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (rows, cols, heads) = (24, 5, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let stored =
            Tensor::from_vec(permute(&w, rows, cols, heads), (rows, cols), &Device::Cpu).unwrap();
        let back = unpermute_rows(&stored, heads).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w);
        // A bias (1-D) goes through the same permutation.
        let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let stored = Tensor::from_vec(permute(&b, rows, 1, heads), rows, &Device::Cpu).unwrap();
        let back = unpermute_rows(&stored, heads).unwrap();
        assert_eq!(back.dims(), &[rows]);
        assert_eq!(back.to_vec1::<f32>().unwrap(), b);
        assert!(unpermute_rows(&stored, 5).is_err());
    }

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            canonical_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            canonical_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(canonical_name("blk.x.attn_q.weight"), None);
        assert_eq!(canonical_name("blk.0.ffn_gate_exps.weight"), None);
        assert_eq!(canonical_name("rope_freqs.weight"), None);
    }
}
