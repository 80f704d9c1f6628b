//! Model directories with random weights, for tests and benchmarks that must not
//! depend on downloaded checkpoints.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand_mt::Mt64;

use super::config::ModelConfig;

/// Writes `config.json` and `model.safetensors` (every tensor `config_json`
/// implies, in `dtype`) into `dir`. Linear and embedding weights are uniform
/// with standard deviation 0.02 (transformers' `init_std`), norm weights 1 and
/// biases 0; the same `seed` gives the same files.
pub fn write_random_model(
    dir: &Path,
    config_json: &serde_json::Value,
    dtype: DType,
    seed: u64,
) -> Result<()> {
    let config = ModelConfig::from_json(&config_json.to_string())?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config_json)?,
    )?;
    let mut rng = Mt64::new(seed);
    // Uniform on [−a, a] has std a/√3.
    let a = 0.02f32 * 3f32.sqrt();
    let mut tensors = HashMap::new();
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let is_norm = name.contains("norm");
        let data: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else if is_norm {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a)
                .collect()
        };
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .with_context(|| format!("cannot write {}", dir.join("model.safetensors").display()))?;
    Ok(())
}

/// A `config.json` for an OPT model of the given shape (pre-LN, ReLU, tied head).
pub fn opt_config(
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    max_pos: usize,
) -> serde_json::Value {
    serde_json::json!({
        "model_type": "opt",
        "architectures": ["OPTForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "ffn_dim": ffn,
        "max_position_embeddings": max_pos,
        "word_embed_proj_dim": hidden,
        "do_layer_norm_before": true,
        "activation_function": "relu",
        "enable_bias": true,
        "layer_norm_elementwise_affine": true,
        "tie_word_embeddings": true,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "torch_dtype": "float32"
    })
}

/// A `config.json` for a Llama model of the given shape (untied head, GQA when
/// `kv_heads < heads`).
pub fn llama_config(
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    max_pos: usize,
) -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32"
    })
}
