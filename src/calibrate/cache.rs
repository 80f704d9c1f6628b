//! A cache of per-layer calibration statistics, so that a sweep does not
//! recalibrate what it has already seen. Its on-disk form is a documented
//! artifact (`docs/stats-format.md`): one directory per decoder layer that
//! tools outside sparselab can read with numpy alone.
//!
//! An entry holds what one decoder layer's calibration pass produced — each
//! distinct input's Hessian (its lower triangle, packed) with Wanda's row
//! scale, and its activation reservoir — and, when a later calibration may
//! need them, that layer's inputs (one tensor per batch of windows). It is
//! stored under a key that names everything those depend on:
//!
//! - the run: the model (spec, `config.json` hash, weight files' names, sizes
//!   and modification times), compute dtype, dataset, nsamples, seqlen, seed,
//!   batch, reservoir capacity and a hash of the calibration windows' tokens
//!   (the checkpoint's [`Manifest`] fields, without the policy);
//! - the prefix: a hash chain over the decoder layers before this one, each
//!   link the weights of that layer's linears as they were run to make the next
//!   layer's inputs (compressed weights in a sequential calibration, the dense
//!   ones under `sequential: false`), so a change to any earlier layer's
//!   compression changes every later key;
//! - this layer's own linear weights, as the statistics pass saw them;
//! - the dtype the statistics are stored in (f32, or the model's dtype by
//!   [`StoreOptions::dtype`]), so a rounded entry never stands in for an exact one.
//!
//! The entry's directory is named by a hash of that key and holds the key in
//! full (`entry.json`); an entry whose stored key differs from the one asked for
//! is ignored with a warning and replaced, never used. Entries are written into
//! a temporary sibling directory and renamed into place, so an interrupted or
//! failed write leaves no entry behind.
//!
//! Layer inputs are what made the cache large (`nsamples · seqlen · hidden`
//! values, 5.4 GB per layer of a 13B model at 128 × 2048 in f32, against about
//! 1 GB for its statistics). A calibration reads them from an entry only to run
//! a layer whose statistics it reused but whose compression differs from the
//! run that wrote the next entry — which only a sequential calibration can
//! need, and never for the first layer (its inputs are the embeddings) or the
//! last one (nothing runs after it). So by default they are stored for the
//! other layers of a sequential calibration and nowhere else
//! ([`StoreOptions::inputs`]). A commit skips its forward pass only when what
//! comes after can do without this layer's outputs ([`StatCache::skip_to`]);
//! otherwise the outputs are computed as without a cache.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::checkpoint::{fnv1a, hash_words, read_batches, write_batches, write_json, Manifest};
use crate::compress::reservoir::ActivationReservoir;
use crate::compress::HessianAccumulator;
use crate::compute::kernels::{mirror_lower, with_cpu_f32};
use crate::model::st_write::{tensor_bytes, write_safetensors, Planned};
use crate::model::staging::{write_file_atomic, Budget};
use crate::model::{DecoderLayer, Model};

/// The `format` of an entry's key and of `stats.safetensors`' metadata.
pub const FORMAT: &str = "sparselab-calibration-cache";
/// The entry format this build writes and reads. Version 1 stored full
/// Hessians and every layer's inputs; its entries are refused by
/// [`StatCache::open`].
pub const VERSION: u32 = 2;
const ENTRY: &str = "entry.json";
const STATS: &str = "stats.safetensors";
const INPUTS: &str = "inputs.safetensors";
/// `layout` of a Hessian stored as its lower triangle, rows concatenated.
pub const LOWER_PACKED: &str = "lower-packed";
/// `layout` of a Hessian stored whole (one that is not exactly symmetric).
pub const FULL: &str = "full";
/// What an entry's Hessians are, for a reader that has only the artifact.
const HESSIAN_DEFINITION: &str = "H = 2/nsamples * sum over every calibration token x of x x^T \
     (x: the linear's input row, f32; nsamples counts sequences), as SparseGPT/GPTQ accumulate it";
const SCALER_DEFINITION: &str =
    "scaler_row[j] = 1/nsamples * sum over every calibration token x of x_j^2 (Wanda's scale)";

/// The dtype an entry's Hessians and reservoirs are stored in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsDType {
    /// f32: a reused entry gives bit for bit what a fresh pass gives.
    #[default]
    F32,
    /// The model's compute dtype (half the size for f16/bf16 models; the
    /// Hessians are rounded, so a run that reuses them differs from a fresh one
    /// in the last bits of its statistics).
    Model,
}

/// How a [`StatCache`] writes its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreOptions {
    /// Dtype of the stored Hessians and reservoirs; default f32.
    #[serde(default)]
    pub dtype: StatsDType,
    /// Store the layer inputs: `None` (the default) stores them where a later
    /// calibration can read them — every layer but the first and the last of a
    /// sequential calibration; `Some(false)` never (a sweep then recomputes the
    /// forward passes but still reuses the Hessians); `Some(true)` for every
    /// layer but the first, in either mode.
    #[serde(default)]
    pub inputs: Option<bool>,
}

/// The identity of one entry: every input of a layer's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryKey {
    /// `sparselab-calibration-cache`.
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The run's settings and model identity (see the module docs).
    pub run: serde_json::Value,
    /// Decoder layer.
    pub layer: usize,
    /// Hash chain over the weights that produced this layer's inputs.
    pub prefix: String,
    /// Hash of this layer's linear weights when its statistics were taken.
    pub weights: String,
    /// Safetensors dtype of the stored Hessians and reservoirs (`F32`, `F16`, `BF16`).
    pub stats_dtype: String,
}

impl EntryKey {
    fn dir_name(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("layer{:05}-{:016x}", self.layer, fnv1a(text.into_bytes()))
    }
}

/// How an entry's statistics were taken (informative; not part of the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Protocol {
    /// `sequential` (after the earlier layers were compressed) or `dense`.
    statistics: String,
    /// Calibration windows (sequences) and their length.
    nsamples: usize,
    seqlen: usize,
    hessian: String,
    scaler_row: String,
}

/// One stored tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorRecord {
    /// Its name in `stats.safetensors`.
    tensor: String,
    /// Safetensors dtype.
    dtype: String,
    /// Shape in the file.
    shape: Vec<usize>,
}

/// One distinct input of the layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InputRecord {
    /// The linears that read it, in the layer's order.
    linears: Vec<String>,
    columns: usize,
    /// Sequences accumulated.
    nsamples: usize,
    /// `lower-packed` or `full`.
    layout: String,
    hessian: TensorRecord,
    scaler_row: TensorRecord,
    reservoir: Option<ReservoirRecord>,
}

/// One reservoir: its tensor (`[rows, columns]`) and the state that lets it
/// go on sampling exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReservoirRecord {
    #[serde(flatten)]
    rows: TensorRecord,
    capacity: usize,
    seen: u64,
    rng: u64,
}

/// The layer's inputs, when stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerInputsRecord {
    /// `inputs.safetensors`: tensors `batch.0` … in window order.
    file: String,
    batches: usize,
    dtype: String,
    /// Shape of each batch `[windows, seqlen, hidden]`.
    shapes: Vec<Vec<usize>>,
}

/// `entry.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryRecord {
    key: EntryKey,
    protocol: Protocol,
    inputs: Vec<InputRecord>,
    layer_inputs: Option<LayerInputsRecord>,
}

/// A layer's statistics as read back.
pub struct CachedStats {
    /// One accumulator per distinct input.
    pub accs: Vec<HessianAccumulator>,
    /// Parallel to `accs` (empty when the run keeps no reservoir).
    pub reservoirs: Vec<ActivationReservoir>,
    /// Linear name → accumulator index.
    pub owner: BTreeMap<String, usize>,
    /// The entry's directory (its inputs are read on demand, [`StatCache::inputs`]).
    pub dir: PathBuf,
    /// Whether the entry holds the layer's inputs.
    pub has_inputs: bool,
}

/// Whether every entry from some layer to the last is in the cache, as a
/// dense-statistics calibration found it ([`StatCache::skip_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Unknown,
    Complete,
    MissingAt(usize),
}

/// A statistics cache directory in use by one calibration.
pub struct StatCache {
    dir: PathBuf,
    run: serde_json::Value,
    model_dtype: DType,
    sequential: bool,
    options: StoreOptions,
    tail: Cell<Tail>,
}

/// The chain link after a layer whose linears had `weights_hash` when it made
/// the next layer's inputs.
pub fn chain_next(prefix: u64, layer: usize, weights_hash: u64) -> u64 {
    let mut bytes = prefix.to_le_bytes().to_vec();
    bytes.extend((layer as u64).to_le_bytes());
    bytes.extend(weights_hash.to_le_bytes());
    fnv1a(bytes)
}

/// A hash of a decoder layer's linear weights (names, shapes, dtypes, values).
pub fn layer_weights_hash(layer: &DecoderLayer) -> Result<u64> {
    let parts: Vec<u64> = layer
        .linears()
        .par_iter()
        .map(|l| -> Result<u64> {
            let w = l.weight();
            let mut h = hash_words(&tensor_bytes(w)?, fnv1a(l.name.bytes()));
            h ^= fnv1a(format!("{:?}{:?}", w.dims(), w.dtype()).into_bytes());
            Ok(h)
        })
        .collect::<Result<_>>()?;
    Ok(fnv1a(parts.iter().flat_map(|h| h.to_le_bytes())))
}

/// Elements of the packed lower triangle of an `n × n` matrix.
pub fn packed_len(n: usize) -> usize {
    n * (n + 1) / 2
}

fn st_name(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        other => bail!("statistics cannot be stored as {other:?} (f32, f16 or bf16)"),
    })
}

fn st_type(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        _ => Dtype::F32,
    }
}

fn from_st_name(name: &str) -> Result<DType> {
    Ok(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        other => bail!("unsupported statistics dtype {other}"),
    })
}

/// Little-endian bytes of `values` in `dtype` (f32, f16 or bf16) into `out`.
fn encode(values: &[f32], dtype: DType, out: &mut [u8]) {
    match dtype {
        DType::F16 => values
            .iter()
            .zip(out.chunks_exact_mut(2))
            .for_each(|(v, o)| o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values
            .iter()
            .zip(out.chunks_exact_mut(2))
            .for_each(|(v, o)| o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        _ => values
            .iter()
            .zip(out.chunks_exact_mut(4))
            .for_each(|(v, o)| o.copy_from_slice(&v.to_le_bytes())),
    }
}

/// The values of little-endian `bytes` in `dtype`, widened to f32, into `out`.
fn decode(bytes: &[u8], dtype: DType, out: &mut [f32]) {
    match dtype {
        DType::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }),
        DType::BF16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }),
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }),
    }
}

/// Whether the row-major `n × n` matrix `h` equals its transpose bit for bit.
fn is_symmetric(h: &[f32], n: usize) -> bool {
    // Tiles, so that the transposed reads stay in cache.
    const T: usize = 64;
    let blocks = n.div_ceil(T);
    (0..blocks).into_par_iter().all(|bi| {
        (0..=bi).all(|bj| {
            (bi * T..((bi + 1) * T).min(n)).all(|i| {
                (bj * T..((bj + 1) * T).min(i))
                    .all(|j| h[i * n + j].to_bits() == h[j * n + i].to_bits())
            })
        })
    })
}

/// The lower triangle of the row-major `n × n` matrix `h`, rows concatenated,
/// as little-endian `dtype` bytes.
fn pack_lower(h: &[f32], n: usize, dtype: DType) -> Vec<u8> {
    let size = dtype.size_in_bytes();
    let mut out = vec![0u8; packed_len(n) * size];
    let mut rows = Vec::with_capacity(n);
    let mut rest = out.as_mut_slice();
    for i in 0..n {
        let (row, tail) = rest.split_at_mut((i + 1) * size);
        rows.push(row);
        rest = tail;
    }
    rows.into_par_iter()
        .enumerate()
        .for_each(|(i, row)| encode(&h[i * n..i * n + i + 1], dtype, row));
    out
}

/// The symmetric `n × n` f32 matrix whose lower triangle `bytes` packs.
fn unpack_lower(bytes: &[u8], n: usize, dtype: DType) -> Result<Tensor> {
    let size = dtype.size_in_bytes();
    if bytes.len() != packed_len(n) * size {
        bail!(
            "a packed {n}×{n} triangle has {} bytes, not {}",
            packed_len(n) * size,
            bytes.len()
        );
    }
    let mut h = vec![0f32; n * n];
    h.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let start = packed_len(i) * size;
        decode(&bytes[start..start + (i + 1) * size], dtype, &mut row[..=i]);
    });
    let t = Tensor::from_vec(h, (n, n), &Device::Cpu)?;
    mirror_lower(&t, 1.0)?;
    Ok(t)
}

/// A tensor's `[rows, columns]` data, f32 on the host, without a copy when it
/// is already there.
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 {
        return Ok(with_cpu_f32(t, f)?);
    }
    let host = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    Ok(with_cpu_f32(&host, f)?)
}

/// The entries in `dir` written in another format or version: their directories.
fn foreign_entries(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("layer") || !path.join(ENTRY).is_file() {
            continue;
        }
        let v: serde_json::Value = std::fs::read_to_string(path.join(ENTRY))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let format = v["key"]["format"].as_str().unwrap_or("");
        let version = v["key"]["version"].as_u64();
        if format != FORMAT || version != Some(VERSION as u64) {
            let what = match version {
                Some(n) if format == FORMAT => format!("version {n}"),
                _ => "an unknown format".to_string(),
            };
            out.push((path, what));
        }
    }
    out.sort();
    out
}

/// Bytes under `path` (files, recursively).
fn du(path: &Path) -> u64 {
    let Ok(read) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    };
    read.flatten().map(|e| du(&e.path())).sum()
}

impl StatCache {
    /// Opens (creating) the cache in `dir` for a run described by `manifest`;
    /// returns it and the first link of the hash chain. A directory holding
    /// entries of another format version (version 1 stored full Hessians and
    /// every layer's inputs) is refused, naming them: they would never be
    /// read, only take up space.
    pub fn open(dir: &Path, manifest: &Manifest, model: &Model) -> Result<(Self, u64)> {
        let mut run = serde_json::to_value(manifest)?;
        if let Some(o) = run.as_object_mut() {
            // Not what a layer's statistics depend on: the policy and progress,
            // and the calibration mode (the prefix hash chain says what produced
            // the layer's inputs, so both modes share the entries they can).
            o.remove("policy");
            o.remove("completed");
            o.remove("sequential");
            let mtimes = model
                .weights()
                .files()
                .iter()
                .map(|f| {
                    std::fs::metadata(f)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos())
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(",");
            o.insert("weights_mtime".into(), mtimes.into());
        }
        let cache = Self::with_run(dir, run, model.dtype(), manifest.sequential)?;
        let first = fnv1a(serde_json::to_string(&cache.run)?.into_bytes());
        Ok((cache, first))
    }

    /// Opens (creating) the cache in `dir` for a run described by `run` (any
    /// JSON; it goes into every key) with compute dtype `model_dtype`, whose
    /// statistics are `sequential` or dense. [`open`](Self::open) builds `run`
    /// from a calibration's manifest; this is for tools and benchmarks without
    /// a model. Refuses a directory with entries of another format version.
    pub fn with_run(
        dir: &Path,
        run: serde_json::Value,
        model_dtype: DType,
        sequential: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the calibration cache {}", dir.display()))?;
        let foreign = foreign_entries(dir);
        if let Some((first, what)) = foreign.first() {
            let bytes: u64 = foreign.iter().map(|(p, _)| du(p)).sum();
            bail!(
                "the calibration cache {} holds {} entries written in {what} of its format \
                 (this sparselab reads version {VERSION}, docs/stats-format.md), for example {}; \
                 they would never be read. Delete them ({:.2} GB) or use another cache directory",
                dir.display(),
                foreign.len(),
                first.display(),
                bytes as f64 / 1e9
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            run,
            model_dtype,
            sequential,
            options: StoreOptions::default(),
            tail: Cell::new(Tail::Unknown),
        })
    }

    /// Sets how later entries are written (and which entries are looked up:
    /// the stored dtype is part of the key).
    pub fn set_options(&mut self, options: StoreOptions) -> Result<()> {
        self.options = options;
        st_name(self.stats_dtype())?;
        Ok(())
    }

    /// How entries are written.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// The dtype Hessians and reservoirs are stored in.
    pub fn stats_dtype(&self) -> DType {
        match self.options.dtype {
            StatsDType::F32 => DType::F32,
            StatsDType::Model => self.model_dtype,
        }
    }

    /// Whether the entry of layer `layer` (of `layers`) stores the layer's
    /// inputs ([`StoreOptions::inputs`]). Never the first layer's: they are the
    /// embeddings, which every calibration computes anyway.
    pub fn stores_inputs(&self, layer: usize, layers: usize) -> bool {
        layer > 0
            && match self.options.inputs {
                Some(b) => b,
                None => self.sequential && layer + 1 < layers,
            }
    }

    /// The key of layer `layer`'s statistics after the prefix `prefix`, with
    /// the layer's own linear weights hashing to `weights`.
    pub fn key(&self, layer: usize, prefix: u64, weights: u64) -> EntryKey {
        EntryKey {
            format: FORMAT.into(),
            version: VERSION,
            run: self.run.clone(),
            layer,
            prefix: format!("{prefix:016x}"),
            weights: format!("{weights:016x}"),
            stats_dtype: st_name(self.stats_dtype()).unwrap_or("F32").into(),
        }
    }

    /// The record of an entry with this key, if a complete one with exactly
    /// this key is there. An entry under the key's name whose stored key differs
    /// or cannot be read is reported and not used.
    fn lookup(&self, key: &EntryKey) -> Option<(PathBuf, EntryRecord)> {
        let dir = self.dir.join(key.dir_name());
        let path = dir.join(ENTRY);
        if !path.is_file() {
            return None;
        }
        let stored: Result<EntryRecord> = std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from));
        match stored {
            Ok(rec) if rec.key == *key => Some((dir, rec)),
            Ok(_) => {
                eprintln!(
                    "warning: calibration cache entry {} was written for other settings; \
                     ignoring it (it will be replaced)",
                    dir.display()
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "warning: calibration cache entry {} is unreadable ({e:#}); ignoring it",
                    dir.display()
                );
                None
            }
        }
    }

    /// The directory of an entry with this key, if a complete one with exactly
    /// this key is there (see [`lookup`](Self::lookup)'s warnings).
    pub fn find(&self, key: &EntryKey) -> Option<PathBuf> {
        self.lookup(key).map(|(d, _)| d)
    }

    /// The entry of layer `next` (after the prefix `chain`, its weights hashing
    /// to `next_hash`) when a commit may skip making that layer's inputs
    /// because of it: the entry is there, and whatever a later commit may need
    /// of `next`'s inputs it can read — the entry stores them, or `next` is
    /// the last layer (nothing runs after it), or, for dense statistics, every
    /// later layer's entry is in the cache too (no later commit runs a layer).
    /// `None` otherwise: the commit computes the inputs, as without a cache.
    pub fn skip_to(
        &self,
        model: &Model,
        next: usize,
        chain: u64,
        next_hash: u64,
    ) -> Result<Option<PathBuf>> {
        let Some((dir, rec)) = self.lookup(&self.key(next, chain, next_hash)) else {
            return Ok(None);
        };
        let layers = model.num_layers();
        if rec.layer_inputs.is_some() || next + 1 >= layers {
            return Ok(Some(dir));
        }
        if self.sequential {
            // The later keys depend on compressions not chosen yet.
            return Ok(None);
        }
        match self.tail.get() {
            // A tail found complete from an earlier layer is complete from this one.
            Tail::Complete => return Ok(Some(dir)),
            // Found missing at a layer this run has not reached: nothing wrote it since.
            Tail::MissingAt(m) if m > next => return Ok(None),
            _ => {}
        }
        // Dense statistics: the later layers are still as the keys hash them.
        let (mut c, mut h) = (chain, next_hash);
        for j in next..layers {
            if j > next {
                h = layer_weights_hash(&model.layer(j)?)?;
            }
            if self.lookup(&self.key(j, c, h)).is_none() {
                self.tail.set(Tail::MissingAt(j));
                return Ok(None);
            }
            c = chain_next(c, j, h);
        }
        self.tail.set(Tail::Complete);
        Ok(Some(dir))
    }

    /// Reads the statistics of the entry with `key` onto `device`, or `None`
    /// when there is no usable entry. Hessians stored in f16/bf16 come back
    /// widened to f32.
    pub fn load(&self, key: &EntryKey, device: &Device) -> Result<Option<CachedStats>> {
        let Some((dir, rec)) = self.lookup(key) else {
            return Ok(None);
        };
        let (accs, reservoirs, owner) = read_stats(&dir, &rec, device)?;
        Ok(Some(CachedStats {
            accs,
            reservoirs,
            owner,
            has_inputs: rec.layer_inputs.is_some(),
            dir,
        }))
    }

    /// The inputs stored in the entry at `dir`, onto `device`; an error naming
    /// the entry when it stores none.
    pub fn inputs(dir: &Path, device: &Device) -> Result<Vec<Tensor>> {
        let path = dir.join(INPUTS);
        if !path.is_file() {
            bail!(
                "the calibration cache entry {} holds no layer inputs (entries of the first and \
                 last layers and of `sequential: false` calibrations store none), and this \
                 calibration needs them: the entries after it changed while it ran. Run the \
                 calibration again",
                dir.display()
            );
        }
        read_batches(&path, device)
            .with_context(|| format!("reading cached layer inputs from {}", dir.display()))
    }

    /// Writes an entry: the layer's accumulators, reservoirs (parallel to
    /// `accs`, or empty), which linear reads which (`owner`, in the layer's
    /// order) and, when given, its inputs. Atomic: the files go into a temporary
    /// directory that is renamed into place (an entry another run finished first
    /// is kept). Returns the entry's directory.
    pub fn store(
        &self,
        key: &EntryKey,
        accs: &[HessianAccumulator],
        reservoirs: &[ActivationReservoir],
        owner: &[(String, usize)],
        inputs: Option<&[Tensor]>,
    ) -> Result<PathBuf> {
        let name = key.dir_name();
        let dest = self.dir.join(&name);
        let tmp = self.dir.join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let result = (|| -> Result<()> {
            if owner.iter().any(|(_, i)| *i >= accs.len()) {
                bail!("a linear reads an accumulator that is not stored");
            }
            if !reservoirs.is_empty() && reservoirs.len() != accs.len() {
                bail!(
                    "{} reservoirs for {} accumulators",
                    reservoirs.len(),
                    accs.len()
                );
            }
            std::fs::create_dir_all(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let rec = self.record(key, accs, reservoirs, owner, inputs)?;
            write_stats(&tmp.join(STATS), &rec, accs, reservoirs, self.stats_dtype())?;
            if let Some(inputs) = inputs {
                write_batches(&tmp.join(INPUTS), inputs)?;
            }
            // entry.json last: a directory without it is never an entry.
            write_json(&tmp.join(ENTRY), &rec)?;
            if dest.exists() {
                // A stale entry (its key differed) or one another run just wrote.
                if self.find(key).is_some() {
                    return Ok(());
                }
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("cannot replace {}", dest.display()))?;
            }
            std::fs::rename(&tmp, &dest).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), dest.display())
            })?;
            Ok(())
        })();
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.with_context(|| {
            format!(
                "writing layer {} to the calibration cache {}",
                key.layer,
                self.dir.display()
            )
        })?;
        Ok(dest)
    }

    /// `entry.json` for these statistics.
    fn record(
        &self,
        key: &EntryKey,
        accs: &[HessianAccumulator],
        reservoirs: &[ActivationReservoir],
        owner: &[(String, usize)],
        inputs: Option<&[Tensor]>,
    ) -> Result<EntryRecord> {
        let dtype = self.stats_dtype();
        let dname = st_name(dtype)?.to_string();
        let tensor = |name: String, dtype: &str, shape: Vec<usize>| TensorRecord {
            tensor: name,
            dtype: dtype.to_string(),
            shape,
        };
        let mut records = Vec::new();
        for (i, a) in accs.iter().enumerate() {
            let n = a.columns();
            let symmetric = with_host_f32(a.hessian(), |h| is_symmetric(h, n))?;
            let (layout, shape) = if symmetric {
                (LOWER_PACKED, vec![packed_len(n)])
            } else {
                (FULL, vec![n, n])
            };
            records.push(InputRecord {
                linears: owner
                    .iter()
                    .filter(|(_, j)| *j == i)
                    .map(|(l, _)| l.clone())
                    .collect(),
                columns: n,
                nsamples: a.nsamples(),
                layout: layout.into(),
                hessian: tensor(format!("input.{i}.hessian"), &dname, shape),
                scaler_row: tensor(format!("input.{i}.scaler_row"), "F32", vec![n]),
                reservoir: reservoirs.get(i).map(|r| ReservoirRecord {
                    rows: tensor(
                        format!("input.{i}.reservoir"),
                        &dname,
                        vec![r.len(), r.columns()],
                    ),
                    capacity: r.capacity(),
                    seen: r.seen(),
                    rng: r.rng_state(),
                }),
            });
        }
        let run = &key.run;
        let layer_inputs = inputs.map(|ts| LayerInputsRecord {
            file: INPUTS.into(),
            batches: ts.len(),
            dtype: ts
                .first()
                .map(|t| st_name(t.dtype()).unwrap_or("F32"))
                .unwrap_or("F32")
                .into(),
            shapes: ts.iter().map(|t| t.dims().to_vec()).collect(),
        });
        Ok(EntryRecord {
            key: key.clone(),
            protocol: Protocol {
                statistics: if self.sequential {
                    "sequential"
                } else {
                    "dense"
                }
                .into(),
                nsamples: run["nsamples"].as_u64().unwrap_or(0) as usize,
                seqlen: run["seqlen"].as_u64().unwrap_or(0) as usize,
                hessian: HESSIAN_DEFINITION.into(),
                scaler_row: SCALER_DEFINITION.into(),
            },
            inputs: records,
            layer_inputs,
        })
    }
}

/// Writes `stats.safetensors`: per input its Hessian (as `rec` lays it out),
/// row scale and reservoir, with the entry record in the header's metadata so
/// the file alone describes itself. One tensor's bytes are held at a time.
fn write_stats(
    path: &Path,
    rec: &EntryRecord,
    accs: &[HessianAccumulator],
    reservoirs: &[ActivationReservoir],
    dtype: DType,
) -> Result<()> {
    enum Part {
        Hessian(usize),
        Scaler(usize),
        Reservoir(usize),
    }
    let mut plans = Vec::new();
    let mut parts = Vec::new();
    for (i, r) in rec.inputs.iter().enumerate() {
        plans.push(Planned::new(
            &r.scaler_row.tensor,
            Dtype::F32,
            &r.scaler_row.shape,
        ));
        parts.push(Part::Scaler(i));
        plans.push(Planned::new(
            &r.hessian.tensor,
            st_type(dtype),
            &r.hessian.shape,
        ));
        parts.push(Part::Hessian(i));
        if let Some(res) = &r.reservoir {
            plans.push(Planned::new(
                &res.rows.tensor,
                st_type(dtype),
                &res.rows.shape,
            ));
            parts.push(Part::Reservoir(i));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("version".to_string(), VERSION.to_string());
    meta.insert("layer".to_string(), rec.key.layer.to_string());
    meta.insert("entry".to_string(), serde_json::to_string(rec)?);
    write_file_atomic(path, &Budget::default(), |f| {
        write_safetensors(f, &plans, Some(&meta), &mut |k| {
            let bytes = match parts[k] {
                Part::Scaler(i) => tensor_bytes(&accs[i].scaler_row().to_dtype(DType::F32)?)?,
                Part::Hessian(i) => {
                    let n = accs[i].columns();
                    let packed = rec.inputs[i].layout == LOWER_PACKED;
                    with_host_f32(accs[i].hessian(), |h| {
                        if packed {
                            pack_lower(h, n, dtype)
                        } else {
                            let mut out = vec![0u8; h.len() * dtype.size_in_bytes()];
                            encode(h, dtype, &mut out);
                            out
                        }
                    })?
                }
                Part::Reservoir(i) => {
                    let r = reservoirs[i].as_slice();
                    let mut out = vec![0u8; r.len() * dtype.size_in_bytes()];
                    encode(r, dtype, &mut out);
                    out
                }
            };
            Ok(std::borrow::Cow::Owned(bytes))
        })
        .map(|_| ())
        .with_context(|| format!("writing {}", path.display()))
    })
}

type Stats = (
    Vec<HessianAccumulator>,
    Vec<ActivationReservoir>,
    BTreeMap<String, usize>,
);

/// Reads what [`write_stats`] wrote (memory-mapped: one tensor's f32 copy is
/// made at a time).
fn read_stats(dir: &Path, rec: &EntryRecord, device: &Device) -> Result<Stats> {
    let spath = dir.join(STATS);
    // SAFETY: entries are written once, into a temporary directory renamed
    // into place, and never modified in place.
    let st = unsafe { MmapedSafetensors::new(&spath) }
        .with_context(|| format!("cannot read {}", spath.display()))?;
    let view = |t: &TensorRecord| -> Result<safetensors::tensor::TensorView<'_>> {
        let v = st
            .get(&t.tensor)
            .with_context(|| format!("{} has no tensor {}", spath.display(), t.tensor))?;
        let dtype = from_st_name(&t.dtype)?;
        let elems: usize = t.shape.iter().product();
        if v.shape() != t.shape.as_slice()
            || v.dtype() != st_type(dtype)
            || v.data().len() != elems * dtype.size_in_bytes()
        {
            bail!(
                "{}: tensor {} is {:?} {:?}, entry.json says {} {:?}",
                spath.display(),
                t.tensor,
                v.dtype(),
                v.shape(),
                t.dtype,
                t.shape
            );
        }
        Ok(v)
    };
    let mut accs = Vec::new();
    let mut reservoirs = Vec::new();
    let mut owner = BTreeMap::new();
    for (i, r) in rec.inputs.iter().enumerate() {
        let n = r.columns;
        let dtype = from_st_name(&r.hessian.dtype)?;
        let expected = match r.layout.as_str() {
            LOWER_PACKED => vec![packed_len(n)],
            FULL => vec![n, n],
            other => bail!("{}: unknown Hessian layout {other}", spath.display()),
        };
        if r.hessian.shape != expected || r.scaler_row.shape != [n] {
            bail!(
                "{}: input {i}'s tensors do not match its {n} columns",
                spath.display()
            );
        }
        let hv = view(&r.hessian)?;
        let h = if r.layout == LOWER_PACKED {
            unpack_lower(hv.data(), n, dtype)?
        } else {
            let mut h = vec![0f32; n * n];
            decode(hv.data(), dtype, &mut h);
            Tensor::from_vec(h, (n, n), &Device::Cpu)?
        };
        let mut s = vec![0f32; n];
        decode(view(&r.scaler_row)?.data(), DType::F32, &mut s);
        let s = Tensor::from_vec(s, n, &Device::Cpu)?;
        accs.push(HessianAccumulator::from_parts(
            h.to_device(device)?,
            s.to_device(device)?,
            r.nsamples,
        )?);
        if let Some(res) = &r.reservoir {
            let dtype = from_st_name(&res.rows.dtype)?;
            if res.rows.shape.len() != 2 || res.rows.shape[1] != n {
                bail!(
                    "{}: {} is not [rows, {n}]",
                    spath.display(),
                    res.rows.tensor
                );
            }
            let v = view(&res.rows)?;
            let mut rows = vec![0f32; res.rows.shape[0] * n];
            decode(v.data(), dtype, &mut rows);
            reservoirs.push(ActivationReservoir::from_parts(
                res.capacity,
                n,
                rows,
                res.seen,
                res.rng,
            )?);
        }
        for l in &r.linears {
            owner.insert(l.clone(), i);
        }
    }
    if !reservoirs.is_empty() && reservoirs.len() != accs.len() {
        bail!("{} stores reservoirs for some inputs only", dir.display());
    }
    Ok((accs, reservoirs, owner))
}
