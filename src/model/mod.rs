//! Models as a sequence of stages: embed → decoder layer 0 … L−1 → head.
//!
//! [`Model::load`] resolves a local directory or a hub id, checks the checkpoint
//! against `config.json`, and keeps only the embedding and head resident on the
//! compute device; [`Model::layer`] brings one decoder layer onto the device for as
//! long as the caller holds it.

pub mod config;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod opt;
pub mod packed;
pub mod random;
pub mod save;
pub(crate) mod st_write;
pub(crate) mod staging;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use hf_hub::RepoType;

pub use config::{Arch, ModelConfig};
pub use layers::LinearHook;
pub use save::{SaveFormat, SaveOptions, SaveSettings, SaveSummary};
pub use weights::{CheckpointFormat, CompressedInfo, WeightStore};

use crate::data::TextTokenizer;
use crate::hub::{self, HubOptions, RepoSpec};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute device.
    pub device: Device,
    /// Compute dtype; `None` keeps the checkpoint's (f32, f16 or bf16).
    pub dtype: Option<DType>,
    /// Hub revision, overriding an `@revision` in the spec.
    pub revision: Option<String>,
    /// Hub cache and offline mode.
    pub hub: HubOptions,
}

crate::declare_options! {
    /// The options of loading a model: the options map of `load_model(spec,
    /// #{…})` and the loading flags of `sparselab eval` and `sparselab prune`.
    pub struct LoadSettings {
        /// "cpu", "cuda" or "cuda:N" (CUDA needs a `--features cuda` build,
        /// otherwise it is an error that says so).
        device: String = "cpu".to_string(),
        /// "f32", "f16" or "bf16": converts the weights (default: the
        /// checkpoint's); norms, softmax and the loss are computed in f32.
        dtype: String,
        /// Hub revision (branch, tag or commit), overriding an `@revision` in
        /// the model's spec.
        revision: String,
    }
}

impl LoadSettings {
    /// The loading options these settings give (the hub's from the
    /// environment).
    pub fn load_options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            device: crate::runtime::device::parse_device(&self.device())?,
            dtype: self
                .dtype
                .as_deref()
                .map(crate::runtime::device::parse_dtype)
                .transpose()?,
            revision: self.revision.clone(),
            ..LoadOptions::default()
        })
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            revision: None,
            hub: HubOptions::from_env(),
        }
    }
}

/// `config.json` and the tokenizer's settings, made from a GGUF file's metadata.
struct Generated {
    config: serde_json::Value,
    tokenizer: crate::data::TokenizerConfig,
}

enum Outer {
    Opt(opt::OptOuter),
    Llama(llama::LlamaOuter),
}

/// A decoder layer resident on the compute device.
pub enum DecoderLayer {
    /// An OPT layer.
    Opt(opt::OptLayer),
    /// A Llama layer.
    Llama(llama::LlamaLayer),
}

impl DecoderLayer {
    /// Runs the layer over hidden states `[b, t, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_hook(x, None)
    }

    /// Runs the layer, calling `hook(linear name, input)` before each linear.
    pub fn forward_with_hook(
        &self,
        x: &Tensor,
        hook: Option<&mut LinearHook<'_>>,
    ) -> Result<Tensor> {
        let mut hook = hook;
        Ok(match self {
            DecoderLayer::Opt(l) => l.forward(x, &mut hook)?,
            DecoderLayer::Llama(l) => l.forward(x, &mut hook)?,
        })
    }

    /// The layer's linears in the reference's order.
    pub fn linears(&self) -> &[layers::Linear] {
        match self {
            DecoderLayer::Opt(l) => &l.linears,
            DecoderLayer::Llama(l) => &l.linears,
        }
    }

    /// Sets the precision of every linear's CPU GEMM (see
    /// [`crate::compute::kernels::CpuGemm`]).
    pub fn set_cpu_gemm(&mut self, gemm: crate::compute::kernels::CpuGemm) {
        let linears = match self {
            DecoderLayer::Opt(l) => &mut l.linears,
            DecoderLayer::Llama(l) => &mut l.linears,
        };
        linears.iter_mut().for_each(|l| l.set_cpu_gemm(gemm));
    }

    /// The linear named `name` (`self_attn.q_proj`, `fc1`, …), mutably.
    pub fn linear_mut(&mut self, name: &str) -> Result<&mut layers::Linear> {
        let linears = match self {
            DecoderLayer::Opt(l) => &mut l.linears,
            DecoderLayer::Llama(l) => &mut l.linears,
        };
        let names: Vec<&str> = linears.iter().map(|l| l.name).collect();
        match linears.iter_mut().find(|l| l.name == name) {
            Some(l) => Ok(l),
            None => bail!(
                "no linear `{name}` in this layer; linears: {}",
                names.join(", ")
            ),
        }
    }
}

/// A loaded causal language model.
pub struct Model {
    /// The spec it was loaded from (directory, GGUF file or hub id).
    pub spec: String,
    /// The local directory holding its files.
    pub dir: PathBuf,
    /// Its parsed `config.json`.
    pub config: ModelConfig,
    /// Its tokenizer, when the directory has one.
    pub tokenizer: Option<TextTokenizer>,
    /// What a model whose source is not a Hugging Face directory (a GGUF
    /// file) needs to be saved as one; `None` when `dir` holds `config.json`.
    generated: Option<Generated>,
    /// The token a named dataset's stream starts with (see [`Model::named_bos`]).
    named_bos: Option<u32>,
    weights: WeightStore,
    device: Device,
    dtype: DType,
    /// Embeddings, final norm and head; `None` after
    /// [`release_outer`](Model::release_outer) until the next use loads them again.
    outer: std::sync::Mutex<Option<std::sync::Arc<Outer>>>,
}

impl Model {
    /// Loads a model from a local directory, a GGUF file (or a directory
    /// whose only model file is one), or a hub id `org/name[@revision]`
    /// (`org/name[@revision]:FILE` for one GGUF file of it; [`gguf::locate`]).
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        if let Some(file) = gguf::locate(spec, opts)? {
            return Self::load_gguf(spec, &file, opts)
                .with_context(|| format!("loading GGUF model {}", file.display()));
        }
        let dir = resolve(spec, opts)?;
        Self::load_dir(spec, &dir, opts)
    }

    fn load_dir(spec: &str, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightStore::open(dir, &config.tensor_shapes())?;
        let tokenizer = match TextTokenizer::from_dir(dir) {
            Ok(t) => Some(t),
            Err(e) if e.to_string().starts_with("no tokenizer in") => None,
            Err(e) => return Err(e),
        };
        Self::assemble(spec, dir, config, weights, tokenizer, None, opts)
    }

    /// A GGUF file: config and tokenizer from its metadata, tensors
    /// dequantized as they are read ([`gguf`]).
    fn load_gguf(spec: &str, file: &Path, opts: &LoadOptions) -> Result<Self> {
        let ck = gguf::GgufCheckpoint::open(file)?;
        let config = ck.config()?;
        let tokenizer = crate::data::gguf_tokenizer::from_gguf(ck.metadata())
            .context("building the tokenizer from the GGUF metadata")?;
        let dtype = opts.dtype.unwrap_or(DType::F32);
        let generated = Generated {
            config: ck.hf_config_json(&config, dtype)?,
            tokenizer: crate::data::gguf_tokenizer::config_from_gguf(ck.metadata())?,
        };
        // The tokenizer's own default decides, as it does for transformers'
        // tokenizer built from the file (SmolLM's byte-level BPE adds none); the
        // same flag goes into the saved tokenizer_config.json.
        let named_bos = if generated.tokenizer.add_bos_token {
            Some(
                ck.token_id("bos")?
                    .context("add_bos_token without bos_token_id")?,
            )
        } else {
            None
        };
        let weights = WeightStore::open_gguf(ck, &config.tensor_shapes())?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut model = Self::assemble(
            spec,
            &dir,
            config,
            weights,
            Some(tokenizer),
            Some(generated),
            opts,
        )?;
        model.named_bos = named_bos;
        Ok(model)
    }

    /// The token the reference protocol's tokenizer call puts before a named
    /// dataset's text (`</s>` for OPT, `<s>` for Llama; for a GGUF model what
    /// its `tokenizer.ggml.add_bos_token` says), or `None` for none.
    pub fn named_bos(&self) -> Option<u32> {
        self.named_bos
    }

    fn assemble(
        spec: &str,
        dir: &Path,
        config: ModelConfig,
        weights: WeightStore,
        tokenizer: Option<TextTokenizer>,
        generated: Option<Generated>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let dtype = opts.dtype.unwrap_or_else(|| weights.dominant_dtype());
        if let Some(tok) = &tokenizer {
            let vocab = config.vocab_size();
            if let Some(max) = tok.max_token_id() {
                if max as usize >= vocab {
                    bail!(
                        "the tokenizer in {} does not match the model: it has token ids up to {max}, \
                         but config.json's vocab_size is {vocab}",
                        dir.display()
                    );
                }
            }
        }
        let device = opts.device.clone();
        // From a memory-mapped checkpoint the embeddings and head load on first
        // use (a calibration reads only its tokens' embedding rows, embed_rows),
        // and a bad value in them is found now by a scan that keeps nothing
        // resident. Other formats read a tensor whole on every access: they are
        // loaded (and checked) once, now.
        let outer = if weights.is_mapped() {
            for (name, _) in config.tensor_shapes() {
                if !name.contains(".layers.") {
                    weights.check_finite_streaming(&name)?;
                }
            }
            None
        } else {
            Some(std::sync::Arc::new(load_outer(
                &config, &weights, dtype, &device,
            )?))
        };
        Ok(Self {
            spec: spec.to_string(),
            dir: dir.to_path_buf(),
            named_bos: Some(config.bos_token_id()),
            config,
            tokenizer,
            generated,
            weights,
            device,
            dtype,
            outer: std::sync::Mutex::new(outer),
        })
    }

    /// The embeddings and head, loaded again if they were released.
    fn outer(&self) -> Result<std::sync::Arc<Outer>> {
        let mut slot = self.outer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = slot.as_ref() {
            return Ok(o.clone());
        }
        let o = std::sync::Arc::new(load_outer(
            &self.config,
            &self.weights,
            self.dtype,
            &self.device,
        )?);
        *slot = Some(o.clone());
        Ok(o)
    }

    /// Frees the embedding matrix and head (for OPT-125M 147 MiB in f32, for a
    /// 13B model 500 MiB in f16) until the next [`embed`](Self::embed) or
    /// [`head`](Self::head) loads them again. A calibration needs them only to
    /// embed its windows, so it releases them while the layers are compressed.
    pub fn release_outer(&self) {
        *self.outer.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The model's `config.json`: the file in its directory, or for a GGUF
    /// model the one generated from the file's metadata.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        if let Some(g) = &self.generated {
            return Ok(g.config.clone());
        }
        let path = self.dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    }

    /// Whether `config.json` was generated (a GGUF model) rather than read
    /// from the model's directory, whose other files then do not belong to it.
    pub fn has_generated_config(&self) -> bool {
        self.generated.is_some()
    }

    /// For a GGUF model, the Hugging Face tokenizer files (`tokenizer.json` or
    /// `tokenizer.model`, and `tokenizer_config.json`) that describe its
    /// tokenizer; `None` for a model loaded from a directory, whose own files
    /// are copied instead.
    pub fn generated_tokenizer_files(&self) -> Result<Option<crate::data::tokenizer::NamedFiles>> {
        let Some(g) = &self.generated else {
            return Ok(None);
        };
        Ok(Some(self.tokenizer()?.hf_files(&g.tokenizer)?))
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.config.arch()
    }
    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.config.num_layers()
    }
    /// Residual width.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }
    /// Names of the linears within a decoder layer.
    pub fn linear_names(&self) -> &'static [&'static str] {
        self.config.linear_names()
    }
    /// Compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The checkpoint's tensors.
    pub fn weights(&self) -> &WeightStore {
        &self.weights
    }
    /// The checkpoint's tensors, for replacing compressed ones.
    pub fn weights_mut(&mut self) -> &mut WeightStore {
        &mut self.weights
    }

    /// The tokenizer, or an error saying where it was looked for.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().with_context(|| {
            format!(
                "model {} has no tokenizer: looked for tokenizer.json, tokenizer.model, \
                 and vocab.json + merges.txt in {}",
                self.spec,
                self.dir.display()
            )
        })
    }

    /// Token ids `[b, t]` (u32) → hidden states `[b, t, hidden]` on the compute device.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_device(&self.device)?;
        Ok(match &*self.outer()? {
            Outer::Opt(o) => o.embed(&ids)?,
            Outer::Llama(o) => o.embed(&ids)?,
        })
    }

    /// Token ids `[b, t]` → hidden states `[b, t, hidden]`, as [`embed`](Self::embed),
    /// but unless the embeddings are resident already only the rows of the
    /// tokens in `ids` are read from the checkpoint
    /// ([`WeightStore::gather_rows`]): a calibration's windows use a few thousand
    /// of the vocabulary's rows, and the full matrix (147 MiB for OPT-125M in
    /// f32, 500 MiB for a 7B model in f16) need not be resident at any point.
    pub fn embed_rows(&self, ids: &Tensor) -> Result<Tensor> {
        let resident = self
            .outer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if resident {
            return self.embed(ids);
        }
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut rows = flat.clone();
        rows.sort_unstable();
        rows.dedup();
        let local: Vec<u32> = flat
            .iter()
            .map(|t| rows.binary_search(t).unwrap_or(0) as u32)
            .collect();
        let local = Tensor::from_vec(local, ids.dims(), &self.device)?;
        let name = match &self.config {
            ModelConfig::Opt(_) => opt::EMBED_TOKENS,
            ModelConfig::Llama(_) => llama::EMBED_TOKENS,
        };
        let table = self
            .weights
            .gather_rows(name, &rows, self.dtype, &self.device)?;
        let get = |name: &str, dt: DType| self.weights.get(name, dt, &self.device);
        Ok(match &self.config {
            ModelConfig::Opt(c) => opt::OptOuter::embed_rows(c, self.dtype, &get, &table, &local)?,
            ModelConfig::Llama(_) => llama::embed(&table, &local)?,
        })
    }

    /// Brings decoder layer `index` onto the compute device.
    pub fn layer(&self, index: usize) -> Result<DecoderLayer> {
        if index >= self.num_layers() {
            bail!(
                "layer {index} does not exist: the model has {} layers",
                self.num_layers()
            );
        }
        let get = |name: &str, dt: DType| self.weights.get(name, dt, &self.device);
        let layer: Result<DecoderLayer> = match &self.config {
            ModelConfig::Opt(c) => {
                opt::OptLayer::load(c, index, self.dtype, &get).map(DecoderLayer::Opt)
            }
            ModelConfig::Llama(c) => {
                llama::LlamaLayer::load(c, index, self.dtype, &get).map(DecoderLayer::Llama)
            }
        };
        layer.with_context(|| format!("loading decoder layer {index} of {}", self.spec))
    }

    /// Hidden states `[b, t, hidden]` → logits `[b, t, vocab]` (f32).
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match &*self.outer()? {
            Outer::Opt(o) => o.head(hidden)?,
            Outer::Llama(o) => o.head(hidden)?,
        })
    }

    /// The head's two factors for hidden states `[b, t, hidden]`: the features
    /// `[b·t, d]` (final norm, projection) and the weight `[vocab, d]`, so that
    /// the logits are `features · weightᵀ`. Lets a caller stream the logits by
    /// slices of the vocabulary instead of holding `[b·t, vocab]` at once.
    pub fn head_parts(&self, hidden: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match &*self.outer()? {
            Outer::Opt(o) => (o.head_features(hidden)?, o.lm_head().clone()),
            Outer::Llama(o) => (o.head_features(hidden)?, o.lm_head().clone()),
        })
    }

    /// The canonical tensor name of a linear's weight in decoder layer `index`.
    pub fn linear_weight_name(&self, index: usize, linear: &str) -> String {
        match self.arch() {
            Arch::Opt => format!("model.decoder.layers.{index}.{linear}.weight"),
            Arch::Llama => format!("model.layers.{index}.{linear}.weight"),
        }
    }

    /// Linears that read the same input, in the order GPTQ's `true_sequential`
    /// compresses them: attention inputs, attention output, MLP input(s), MLP output.
    pub fn sequential_groups(&self) -> Vec<Vec<&'static str>> {
        match self.arch() {
            Arch::Opt => vec![
                vec!["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
                vec!["self_attn.out_proj"],
                vec!["fc1"],
                vec!["fc2"],
            ],
            Arch::Llama => vec![
                vec!["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                vec!["self_attn.o_proj"],
                vec!["mlp.gate_proj", "mlp.up_proj"],
                vec!["mlp.down_proj"],
            ],
        }
    }

    /// The whole model at once: ids `[b, t]` → logits `[b, t, vocab]` (f32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for i in 0..self.num_layers() {
            x = self.layer(i)?.forward(&x)?;
        }
        self.head(&x)
    }
}

/// Loads the embeddings, final norm and head onto `device`.
fn load_outer(
    config: &ModelConfig,
    weights: &WeightStore,
    dtype: DType,
    device: &Device,
) -> Result<Outer> {
    let get = |name: &str, dt: DType| weights.get(name, dt, device);
    Ok(match config {
        ModelConfig::Opt(c) => Outer::Opt(opt::OptOuter::load(c, dtype, &get)?),
        ModelConfig::Llama(c) => Outer::Llama(llama::LlamaOuter::load(c, dtype, &get)?),
    })
}

/// Resolves a model spec to a local directory holding `config.json`.
///
/// A spec that names an existing path, or looks like one (starts with `/`, `.` or
/// `~`, or has more than one `/`), is a local directory; otherwise it is a hub id
/// looked up in the cache, then downloaded unless offline.
pub fn resolve(spec: &str, opts: &LoadOptions) -> Result<PathBuf> {
    let path = Path::new(spec);
    let looks_local = path.exists()
        || spec.starts_with(['/', '.', '~'])
        || spec.matches('/').count() != 1
        || spec.contains('\\');
    if looks_local {
        if !path.is_dir() {
            bail!("model directory {spec} does not exist");
        }
        if !path.join("config.json").is_file() {
            bail!("{spec} is not a model directory: it has no config.json");
        }
        return Ok(path.to_path_buf());
    }
    let mut repo = RepoSpec::parse(spec)?;
    if let Some(rev) = &opts.revision {
        repo.revision = rev.clone();
    }
    if let Some(snap) = hub::cached_snapshot(&opts.hub.cache_dir, RepoType::Model, &repo) {
        if snap.join("config.json").is_file() && weights::find_checkpoint(&snap).is_ok() {
            return Ok(snap);
        }
    }
    let fetched = hub::download(&opts.hub, RepoType::Model, &repo, &choose_model_files)
        .with_context(|| {
            format!(
            "model {spec} is not a local directory and revision `{}` is not in the hub cache {}",
            repo.revision,
            opts.hub.cache_dir.display()
        )
        })?;
    let config = fetched
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "config.json"))
        .context("config.json was not downloaded")?;
    Ok(config
        .parent()
        .context("config.json has no folder")?
        .to_path_buf())
}

/// The files of a hub model repository worth downloading: config, tokenizer and
/// one complete set of weights (safetensors preferred).
fn choose_model_files(files: &[String]) -> Result<Vec<String>> {
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has("config.json") {
        bail!("the repository has no config.json");
    }
    let mut out: Vec<String> = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ]
    .iter()
    .filter(|f| has(f))
    .map(|f| f.to_string())
    .collect();
    let shards = |prefix: &str, ext: &str| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.starts_with(prefix) && f.ends_with(ext) && !f.contains('/'))
            .cloned()
            .collect()
    };
    if has("model.safetensors.index.json") {
        out.push("model.safetensors.index.json".into());
        out.extend(shards("model-", ".safetensors"));
    } else if has("model.safetensors") {
        out.push("model.safetensors".into());
    } else if has("pytorch_model.bin.index.json") {
        out.push("pytorch_model.bin.index.json".into());
        out.extend(shards("pytorch_model-", ".bin"));
    } else if has("pytorch_model.bin") {
        out.push("pytorch_model.bin".into());
    } else {
        bail!("the repository has neither safetensors nor pytorch_model.bin weights");
    }
    Ok(out)
}
