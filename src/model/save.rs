//! Saving a (compressed) model as a Hugging Face checkpoint directory that
//! transformers and vLLM load unchanged, or in sparselab's packed format.
//!
//! What is written (see [`Model::save`]):
//! - `config.json` as loaded (its `torch_dtype`/`dtype` updated only when the
//!   model was loaded with a different dtype than the checkpoint's), and the
//!   tokenizer files and `generation_config.json` of the source directory;
//! - the weights, with every replaced tensor (compressed linears) in place of the
//!   checkpoint's, under the names, shapes and dtypes the source checkpoint stores
//!   (a facebook/opt `.bin` without the `model.` prefix stays without it; tensors
//!   `config.json` does not imply are copied as they are; a tied head that was not
//!   stored is not added): `model.safetensors`, or shards
//!   `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` when
//!   the data exceed [`SaveOptions::shard_bytes`] (5 GB by default, as
//!   transformers);
//! - or, with [`SaveFormat::Packed`], `packed.json` and its safetensors files
//!   ([`super::packed`], `docs/packed-format.md`);
//! - `compression.json` when a report is given.
//!
//! Tensors are written one at a time, so the whole model is never in memory.
//! Everything goes into a temporary sibling directory that is synced and renamed
//! into place at the end; on any error (a full disk included) it is removed and
//! the destination is left untouched.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use super::config::torch_dtype_name;
use super::packed::{self, Encoding, PackedEntry, PackedIndex};
use super::st_write::{
    plan_shards, shard_name, st_dtype, tensor_bytes, write_safetensors, Planned,
};
use super::staging::{is_disk_full, StagedFile, StagingDir};
use super::Model;

pub use super::staging::check_target;

/// transformers' default shard size (`max_shard_size="5GB"`).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// The report file written beside the weights.
pub const REPORT_FILE: &str = "compression.json";

/// Files copied from the source directory when present (besides `config.json`).
pub const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveFormat {
    /// Dense safetensors with the compressed values in place (loadable by
    /// transformers, vLLM and sparselab).
    #[default]
    Dense,
    /// Integer codes, scales, zeros and masks ([`super::packed`]); loadable by
    /// sparselab, which restores the dense weights bit for bit.
    Packed,
}

impl SaveFormat {
    /// Its name as options spell it: `safetensors` or `packed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dense => "safetensors",
            Self::Packed => "packed",
        }
    }

    /// The format named `s` ([`name`](Self::name)).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "safetensors" => Ok(Self::Dense),
            "packed" => Ok(Self::Packed),
            other => Err(format!(
                "unknown format `{other}`; valid formats: safetensors, packed"
            )),
        }
    }
}

crate::named_option_value!(
    SaveFormat,
    "a format (\"safetensors\" or \"packed\")",
    "safetensors|packed"
);

crate::declare_options! {
    /// The options of saving a model: the options map of `save(model, dir,
    /// #{…})` and the flags that go with `sparselab prune --save DIR`.
    pub struct SaveSettings {
        /// Replace a directory that exists and is not empty (only once the new
        /// copy is complete).
        overwrite: bool = false,
        /// "safetensors" (dense weights with the compressed values in place,
        /// loadable by transformers) or "packed" (integer codes, scales, zeros
        /// and masks: docs/packed-format.md).
        format: SaveFormat = SaveFormat::Dense,
    }
}

/// Settings of [`Model::save`].
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Replace an existing non-empty directory. Default false (an error).
    pub overwrite: bool,
    /// Dense or packed. Default dense.
    pub format: SaveFormat,
    /// Written as `compression.json` when given (see [`crate::report`]).
    pub report: Option<serde_json::Value>,
    /// Largest shard, in bytes of tensor data. Default [`DEFAULT_SHARD_BYTES`].
    pub shard_bytes: u64,
    /// For tests: behave as if the disk had this many free bytes, failing the
    /// write that would exceed them with "No space left on device".
    pub fail_after_bytes: Option<u64>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            format: SaveFormat::Dense,
            report: None,
            shard_bytes: DEFAULT_SHARD_BYTES,
            fail_after_bytes: None,
        }
    }
}

/// What [`Model::save`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SaveSummary {
    /// The directory.
    pub dir: PathBuf,
    /// Files written, by name.
    pub files: Vec<String>,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
    /// Tensors saved.
    pub tensors: usize,
    /// Packed format: tensors stored quantized or sparse.
    pub packed: usize,
    /// Packed format: compressed tensors that had to be stored dense, with why.
    pub stored_dense: Vec<(String, String)>,
}

/// One tensor to save: its stored name, its canonical name when `config.json`
/// implies it, and the dtype and shape it is written with.
struct Item {
    stored: String,
    canonical: Option<String>,
    dtype: DType,
    shape: Vec<usize>,
}

/// Turns an error from writing `path` into one that says "the disk is full"
/// when that is what happened.
fn file_error(e: anyhow::Error, path: &Path) -> anyhow::Error {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        if is_disk_full(io) {
            return anyhow!("the disk is full: cannot write {} ({io})", path.display());
        }
        return anyhow!("cannot write {}: {io}", path.display());
    }
    e.context(format!("writing {}", path.display()))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl Model {
    /// Saves the model (with every replaced tensor in place) into `dir`; see the
    /// [module docs](self) for what is written. The destination must be absent
    /// or empty unless `opts.overwrite`; it must not be the directory the model
    /// was loaded from. On error nothing is left behind and an existing `dir`
    /// is untouched.
    pub fn save(&self, dir: impl AsRef<Path>, opts: &SaveOptions) -> Result<SaveSummary> {
        let dir = dir.as_ref();
        self.save_inner(dir, opts).with_context(|| {
            format!(
                "saving {} to {} failed; nothing was written there",
                self.spec,
                dir.display()
            )
        })
    }

    fn save_inner(&self, dir: &Path, opts: &SaveOptions) -> Result<SaveSummary> {
        if same_dir(dir, &self.dir) {
            bail!(
                "{} is the directory the model was loaded from; save elsewhere",
                dir.display()
            );
        }
        if opts.shard_bytes == 0 {
            bail!("shard_bytes must be positive");
        }
        let staging = StagingDir::new(dir, opts.overwrite, opts.fail_after_bytes)?;
        let mut files = Vec::new();

        let convert = self.dtype != self.weights.dominant_dtype();
        let config_src = self.dir.join("config.json");
        if self.has_generated_config() {
            // A GGUF model: the directory beside the file is not the model's,
            // so config.json and the tokenizer files are written from what was
            // read from the file, never copied from its neighbours.
            let mut v = self.config_json()?;
            let saved = if convert {
                self.dtype
            } else {
                self.weights.dominant_dtype()
            };
            v["torch_dtype"] = torch_dtype_name(saved).into();
            write_json(&staging, "config.json", &v)?;
            files.push("config.json".to_string());
            for (name, bytes) in self.generated_tokenizer_files()?.unwrap_or_default() {
                let mut f: StagedFile = staging.create(&name)?;
                f.put(&bytes)?;
                f.finish()?;
                files.push(name);
            }
        } else if convert {
            let text = std::fs::read_to_string(&config_src)
                .with_context(|| format!("cannot read {}", config_src.display()))?;
            let mut v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", config_src.display()))?;
            let obj = v
                .as_object_mut()
                .context("config.json is not a JSON object")?;
            let name = serde_json::Value::from(torch_dtype_name(self.dtype));
            let mut set = false;
            for key in ["torch_dtype", "dtype"] {
                if obj.contains_key(key) {
                    obj.insert(key.to_string(), name.clone());
                    set = true;
                }
            }
            if !set {
                obj.insert("torch_dtype".to_string(), name);
            }
            write_json(&staging, "config.json", &v)?;
        } else {
            staging.copy_in(&config_src, "config.json")?;
        }
        if !self.has_generated_config() {
            files.push("config.json".to_string());
            for name in COPIED_FILES {
                let src = self.dir.join(name);
                if src.is_file() {
                    staging.copy_in(&src, name)?;
                    files.push(name.to_string());
                }
            }
        }

        let items = self.save_items(convert);
        let mut summary = match opts.format {
            SaveFormat::Dense => self.write_dense(&staging, items, opts.shard_bytes)?,
            SaveFormat::Packed => self.write_packed(&staging, items, opts.shard_bytes)?,
        };
        if let Some(report) = &opts.report {
            write_json(&staging, REPORT_FILE, report)?;
            files.push(REPORT_FILE.to_string());
        }
        files.append(&mut summary.files);
        summary.files = files;
        summary.dir = staging.target().to_path_buf();
        staging.commit()?;
        Ok(summary)
    }

    /// The tensors to save, with the dtype each is written in: the stored dtype,
    /// or the model's dtype for every tensor `config.json` implies when the model
    /// was loaded with a dtype other than the checkpoint's.
    fn save_items(&self, convert: bool) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .weights
            .names()
            .into_iter()
            .map(|name| {
                let meta = self.weights.meta(name).expect("listed name has metadata");
                Item {
                    stored: meta.stored_name.clone(),
                    canonical: Some(name.to_string()),
                    dtype: if convert { self.dtype } else { meta.dtype },
                    shape: meta.shape.clone(),
                }
            })
            .collect();
        items.extend(self.weights.extras().iter().map(|m| Item {
            stored: m.stored_name.clone(),
            canonical: None,
            dtype: m.dtype,
            shape: m.shape.clone(),
        }));
        items
    }

    /// The dense tensor of an item, on the host, in its save dtype.
    fn item_tensor(&self, item: &Item) -> Result<candle_core::Tensor> {
        let t = match &item.canonical {
            Some(name) => self.weights.get(name, item.dtype, &Device::Cpu)?,
            None => self
                .weights
                .load_stored(&item.stored, &Device::Cpu)?
                .to_dtype(item.dtype)?,
        };
        if t.dims() != item.shape.as_slice() {
            bail!(
                "tensor {} has shape {:?}, expected {:?}",
                item.stored,
                t.dims(),
                item.shape
            );
        }
        Ok(t)
    }

    fn write_dense(
        &self,
        staging: &StagingDir,
        mut items: Vec<Item>,
        shard_bytes: u64,
    ) -> Result<SaveSummary> {
        // Widest dtypes first, so that every tensor's data stays aligned.
        items.sort_by(|a, b| {
            b.dtype
                .size_in_bytes()
                .cmp(&a.dtype.size_in_bytes())
                .then_with(|| a.stored.cmp(&b.stored))
        });
        let plans: Vec<Planned> = items
            .iter()
            .map(|it| Planned::new(&it.stored, st_dtype(it.dtype), &it.shape))
            .collect();
        let sizes: Vec<u64> = plans.iter().map(Planned::nbytes).collect();
        let shards = plan_shards(&sizes, shard_bytes);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut files = Vec::new();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0u64;
        for (si, range) in shards.iter().enumerate() {
            let fname = shard_name("model", "safetensors", si, shards.len());
            let mut f = staging.create(&fname)?;
            let items = &items[range.clone()];
            write_safetensors(&mut f, &plans[range.clone()], Some(&meta), &mut |i| {
                Ok(Cow::Owned(tensor_bytes(&self.item_tensor(&items[i])?)?))
            })
            .map_err(|e| file_error(e, f.path()))?;
            f.finish()?;
            for it in items {
                weight_map.insert(it.stored.clone(), fname.clone().into());
            }
            total += sizes[range.clone()].iter().sum::<u64>();
            files.push(fname);
        }
        if shards.len() > 1 {
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            write_json(staging, "model.safetensors.index.json", &index)?;
            files.push("model.safetensors.index.json".to_string());
        }
        Ok(SaveSummary {
            dir: PathBuf::new(),
            files,
            tensor_bytes: total,
            tensors: items.len(),
            packed: 0,
            stored_dense: Vec::new(),
        })
    }

    fn encode_item(&self, item: &Item) -> Result<packed::Encoded> {
        let t = self.item_tensor(item)?;
        let info = item
            .canonical
            .as_deref()
            .and_then(|c| self.weights.compressed(c));
        packed::encode(&item.stored, &t, info).with_context(|| format!("packing {}", item.stored))
    }

    fn write_packed(
        &self,
        staging: &StagingDir,
        mut items: Vec<Item>,
        shard_bytes: u64,
    ) -> Result<SaveSummary> {
        items.sort_by(|a, b| a.stored.cmp(&b.stored));
        // Pass 1: encode each tensor (checking it decodes to the same bytes) and
        // keep only its entry and the layout of its parts.
        let mut entries: Vec<PackedEntry> = Vec::with_capacity(items.len());
        let mut layouts: Vec<Vec<Planned>> = Vec::with_capacity(items.len());
        for it in &items {
            let enc = self.encode_item(it)?;
            layouts.push(enc.parts.into_iter().map(|(p, _)| p).collect());
            entries.push(enc.entry);
        }
        let sizes: Vec<u64> = layouts
            .iter()
            .map(|parts| parts.iter().map(Planned::nbytes).sum())
            .collect();
        let shards = plan_shards(&sizes, shard_bytes);
        let meta = BTreeMap::from([("format".to_string(), packed::PACKED_FORMAT.to_string())]);
        let mut files = Vec::new();
        let mut total = 0u64;
        // Pass 2: encode again, tensor by tensor, and write the parts.
        for (si, range) in shards.iter().enumerate() {
            let fname = shard_name("packed", "safetensors", si, shards.len());
            let plans: Vec<Planned> = layouts[range.clone()].iter().flatten().cloned().collect();
            let owners: Vec<(usize, usize)> = range
                .clone()
                .flat_map(|i| (0..layouts[i].len()).map(move |k| (i, k)))
                .collect();
            let mut current: Option<(usize, Vec<Vec<u8>>)> = None;
            let mut f = staging.create(&fname)?;
            write_safetensors(&mut f, &plans, Some(&meta), &mut |p| {
                let (i, k) = owners[p];
                if current.as_ref().is_none_or(|(c, _)| *c != i) {
                    let enc = self.encode_item(&items[i])?;
                    current = Some((i, enc.parts.into_iter().map(|(_, b)| b).collect()));
                }
                let parts = &mut current.as_mut().expect("just set").1;
                Ok(Cow::Owned(std::mem::take(&mut parts[k])))
            })
            .map_err(|e| file_error(e, f.path()))?;
            f.finish()?;
            for e in &mut entries[range.clone()] {
                e.file = fname.clone();
            }
            total += sizes[range.clone()].iter().sum::<u64>();
            files.push(fname);
        }
        let packed_count = entries
            .iter()
            .filter(|e| e.encoding != Encoding::Dense)
            .count();
        let stored_dense = items
            .iter()
            .zip(&entries)
            .filter_map(|(it, e)| e.note.clone().map(|n| (it.stored.clone(), n)))
            .collect();
        let index = PackedIndex {
            format: packed::PACKED_FORMAT.to_string(),
            version: packed::PACKED_VERSION,
            tensors: items
                .iter()
                .map(|it| it.stored.clone())
                .zip(entries)
                .collect(),
        };
        write_json(staging, packed::PACKED_INDEX, &index)?;
        files.push(packed::PACKED_INDEX.to_string());
        Ok(SaveSummary {
            dir: PathBuf::new(),
            files,
            tensor_bytes: total,
            tensors: items.len(),
            packed: packed_count,
            stored_dense,
        })
    }
}

fn write_json(staging: &StagingDir, name: &str, value: &impl Serialize) -> Result<()> {
    let mut f: StagedFile = staging.create(name)?;
    let text = serde_json::to_vec_pretty(value)?;
    f.put(&text)?;
    f.put(b"\n")?;
    f.finish()
}
