//! Resumable calibration: after every committed decoder layer, the layer's
//! compressed weights (with masks and quantization grids), its reports and the
//! inputs of the next layer are written to a checkpoint directory, and
//! `manifest.json` is updated last to name the completed layer count. A new
//! calibration with the same directory and the same settings continues after the
//! last completed layer; one with different settings is refused, naming the
//! setting that differs.
//!
//! Layout: `manifest.json`; per completed layer `k`, `layer-0000k.safetensors`
//! (weights under their canonical names, `NAME.mask` bit masks, `NAME.grid.*`
//! arrays) and `layer-0000k.json` (reports, seconds, grid shapes); and
//! `inputs-0000k.safetensors`, the inputs of the next layer to run (only the
//! latest is kept). Every file is written to a temporary name, synced and
//! renamed, so a crash leaves the previous state intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::CalibOptions;
use crate::compress::QuantGrid;
use crate::model::packed::BitMask;
use crate::model::st_write::{st_dtype, tensor_bytes, write_safetensors, Planned};
use crate::model::staging::{write_file_atomic, Budget};
use crate::model::{CompressedInfo, Model};
use crate::report::LinearReport;
use crate::runtime::device::dtype_name;

const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "sparselab-checkpoint";

/// 64-bit FNV-1a, for fingerprints (not for security).
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A 64-bit fingerprint of a large byte buffer (weights), eight bytes at a
/// time: FNV-1a's multiply over words with a fold of the high half, seeded.
/// Not for security; it tells apart weights that differ.
pub(crate) fn hash_words(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x100000001b3);
        h ^= h >> 29;
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h ^ bytes.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn default_gemm() -> String {
    "f32".to_string()
}

fn default_true() -> bool {
    true
}

/// What a checkpoint was written for; every field but `completed` must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `sparselab-checkpoint`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The model spec.
    pub model: String,
    /// FNV-1a of `config.json`'s bytes.
    pub config_hash: String,
    /// The weight files' names and sizes.
    pub weights: String,
    /// Compute dtype.
    pub dtype: String,
    /// Calibration dataset.
    pub dataset: String,
    /// Windows.
    pub nsamples: usize,
    /// Window length.
    pub seqlen: usize,
    /// Sampler seed.
    pub seed: u64,
    /// Windows per forward pass (results may differ in the last bits otherwise).
    pub batch: usize,
    /// GPTQ's true-sequential order.
    pub true_sequential: bool,
    /// Statistics after the earlier layers are compressed (true) or from the
    /// dense model (false). Manifests written before this field was added were
    /// all sequential.
    #[serde(default = "default_true")]
    pub sequential: bool,
    /// Activation reservoir capacity.
    pub reservoir: usize,
    /// Precision of the CPU GEMMs (`f32`, `bf16`); manifests written before
    /// this field was added were all f32.
    #[serde(default = "default_gemm")]
    pub gemm: String,
    /// The caller's description of its policy (method, targets, script hash, …).
    pub policy: String,
    /// FNV-1a of the calibration windows' token ids.
    pub windows_hash: String,
    /// Decoder layers completed (not compared).
    pub completed: usize,
}

impl Manifest {
    /// The manifest of a calibration of `model` over `windows` with `opts`.
    pub fn new(model: &Model, opts: &CalibOptions, windows: &[Vec<u32>]) -> Result<Self> {
        let config = if model.has_generated_config() {
            serde_json::to_vec(&model.config_json()?)?
        } else {
            let path = model.dir.join("config.json");
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
        };
        let weights = model
            .weights()
            .files()
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{name}:{size}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let windows_hash = fnv1a(windows.iter().flat_map(|w| {
            (w.len() as u32)
                .to_le_bytes()
                .into_iter()
                .chain(w.iter().flat_map(|t| t.to_le_bytes()))
        }));
        Ok(Self {
            format: FORMAT.to_string(),
            version: 1,
            model: model.spec.clone(),
            config_hash: format!("{:016x}", fnv1a(config)),
            weights,
            dtype: dtype_name(model.dtype()).to_string(),
            dataset: opts.dataset.clone(),
            nsamples: windows.len(),
            seqlen: windows.first().map_or(0, Vec::len),
            seed: opts.seed,
            batch: opts.windows_per_pass(windows.first().map_or(0, Vec::len)),
            true_sequential: opts.true_sequential,
            sequential: opts.sequential,
            reservoir: opts.reservoir,
            gemm: opts.gemm.name().to_string(),
            policy: opts.fingerprint.clone(),
            windows_hash: format!("{:016x}", windows_hash),
            completed: 0,
        })
    }

    /// The fields that differ from `other`, as `name: theirs → ours` lines.
    pub(crate) fn differences(&self, stored: &Manifest) -> Vec<String> {
        let a = serde_json::to_value(stored).unwrap_or_default();
        let b = serde_json::to_value(self).unwrap_or_default();
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec!["unreadable manifest".into()];
        };
        let mut out = Vec::new();
        for (k, va) in a {
            if k == "completed" {
                continue;
            }
            let vb = b.get(k).cloned().unwrap_or_default();
            if *va != vb {
                let what = if k == "windows_hash" {
                    " (the calibration windows' tokens differ: a changed dataset file or tokenizer)"
                } else {
                    ""
                };
                out.push(format!("{k}: checkpoint has {va}, this run has {vb}{what}"));
            }
        }
        out
    }
}

/// What a checkpoint restores.
pub struct Restored {
    /// Layers completed.
    pub completed: usize,
    /// The inputs of layer `completed` (on the model's device); empty when every
    /// layer is done.
    pub inputs: Vec<Tensor>,
    /// Compressed weights of the completed layers: canonical name, tensor, info.
    pub weights: Vec<(String, Tensor, CompressedInfo)>,
    /// Reports of the completed layers.
    pub reports: Vec<LinearReport>,
    /// Wall time of each completed layer.
    pub per_layer: Vec<f64>,
}

/// A checkpoint directory in use by a calibration.
pub struct Checkpoint {
    dir: PathBuf,
    manifest: Manifest,
}

/// A layer's side file.
#[derive(Serialize, Deserialize)]
struct LayerRecord {
    layer: usize,
    seconds: f64,
    reports: Vec<LinearReport>,
    /// Per compressed linear (canonical name): its grid's widths, group size and
    /// group count (arrays are in the safetensors file).
    grids: BTreeMap<String, GridShape>,
    /// Canonical names of the compressed linears, in order.
    linears: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct GridShape {
    widths: Vec<u32>,
    groupsize: Option<usize>,
    groups: usize,
}

fn layer_file(k: usize, ext: &str) -> String {
    format!("layer-{k:05}.{ext}")
}

fn inputs_file(k: usize) -> String {
    format!("inputs-{k:05}.safetensors")
}

/// Writes `value` as pretty JSON to `path` atomically (temporary file, sync, rename).
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    write_file_atomic(path, &Budget::default(), |f| f.put(&text))
}

/// Writes named tensors as one safetensors file at `path`, atomically.
pub(crate) fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let plans: Vec<Planned> = tensors
        .iter()
        .map(|(n, t)| Planned::new(n, st_dtype(t.dtype()), t.dims()))
        .collect();
    write_file_atomic(path, &Budget::default(), |f| {
        write_safetensors(f, &plans, None, &mut |i| {
            Ok(std::borrow::Cow::Owned(tensor_bytes(&tensors[i].1)?))
        })
        .map(|_| ())
        .with_context(|| format!("writing {}", path.display()))
    })
}

/// Writes a layer's inputs (one tensor per batch of windows, `batch.{i}`).
pub(crate) fn write_batches(path: &Path, inputs: &[Tensor]) -> Result<()> {
    let named: Vec<(String, Tensor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("batch.{i}"), t.clone()))
        .collect();
    write_tensors(path, &named)
}

/// Reads what [`write_batches`] wrote, onto `device`.
pub(crate) fn read_batches(path: &Path, device: &Device) -> Result<Vec<Tensor>> {
    let mut ts: HashMap<String, Tensor> = candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut inputs = Vec::new();
    for i in 0..ts.len() {
        inputs.push(
            ts.remove(&format!("batch.{i}"))
                .with_context(|| format!("{} has no tensor batch.{i}", path.display()))?,
        );
    }
    if inputs.is_empty() {
        bail!("{} holds no inputs", path.display());
    }
    Ok(inputs)
}

impl Checkpoint {
    /// Opens (or starts) the checkpoint in `dir` for a run described by
    /// `manifest`. A directory that holds another run's checkpoint is refused with
    /// the differing fields named; a non-empty directory without a manifest is
    /// refused too. Returns what it restores, if any layer was completed.
    pub fn open(
        dir: &Path,
        mut manifest: Manifest,
        model: &Model,
    ) -> Result<(Self, Option<Restored>)> {
        let mpath = dir.join(MANIFEST);
        if !mpath.is_file() {
            if dir.is_dir()
                && std::fs::read_dir(dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .next()
                    .is_some()
            {
                bail!(
                    "{} is not empty and holds no sparselab checkpoint ({MANIFEST}); \
                     give a new or empty directory",
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
            write_json(&mpath, &manifest)?;
            return Ok((
                Self {
                    dir: dir.to_path_buf(),
                    manifest,
                },
                None,
            ));
        }
        let text = std::fs::read_to_string(&mpath)
            .with_context(|| format!("cannot read {}", mpath.display()))?;
        let stored: Manifest = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a sparselab checkpoint manifest", mpath.display())
        })?;
        let diffs = manifest.differences(&stored);
        if !diffs.is_empty() {
            bail!(
                "the checkpoint in {} was written by a different run; refusing to resume it \
                 (use another checkpoint directory, or delete this one):\n  {}",
                dir.display(),
                diffs.join("\n  ")
            );
        }
        manifest.completed = stored.completed;
        let me = Self {
            dir: dir.to_path_buf(),
            manifest,
        };
        if stored.completed == 0 {
            return Ok((me, None));
        }
        if stored.completed > model.num_layers() {
            bail!(
                "{} says {} layers are complete, but the model has {}",
                mpath.display(),
                stored.completed,
                model.num_layers()
            );
        }
        let restored = me
            .restore(model)
            .with_context(|| format!("restoring the checkpoint in {}", dir.display()))?;
        Ok((me, Some(restored)))
    }

    fn restore(&self, model: &Model) -> Result<Restored> {
        let completed = self.manifest.completed;
        let mut weights = Vec::new();
        let mut reports = Vec::new();
        let mut per_layer = Vec::new();
        for k in 0..completed {
            let jpath = self.dir.join(layer_file(k, "json"));
            let rec: LayerRecord = serde_json::from_str(
                &std::fs::read_to_string(&jpath)
                    .with_context(|| format!("cannot read {}", jpath.display()))?,
            )
            .with_context(|| format!("{} is not a valid layer record", jpath.display()))?;
            let spath = self.dir.join(layer_file(k, "safetensors"));
            let mut ts = candle_core::safetensors::load(&spath, &Device::Cpu)
                .with_context(|| format!("cannot read {}", spath.display()))?;
            let mut take = |n: &str| {
                ts.remove(n)
                    .with_context(|| format!("{} has no tensor {n}", spath.display()))
            };
            for name in &rec.linears {
                let w = take(name)?;
                let (rows, cols) = w.dims2()?;
                let mask = take(&format!("{name}.mask"))?;
                let mask = BitMask::from_bytes(rows, cols, mask.flatten_all()?.to_vec1::<u8>()?)?;
                let grid = match rec.grids.get(name) {
                    Some(g) => Some(QuantGrid {
                        rows,
                        widths: g.widths.clone(),
                        column_width: take(&format!("{name}.grid.column_width"))?
                            .to_vec1::<u8>()?,
                        groupsize: g.groupsize,
                        column_group: take(&format!("{name}.grid.column_group"))?
                            .to_vec1::<u32>()?,
                        groups: g.groups,
                        params: take(&format!("{name}.grid.params"))?.to_vec1::<f32>()?,
                    }),
                    None => None,
                };
                weights.push((name.clone(), w, CompressedInfo { mask, grid }));
            }
            reports.extend(rec.reports);
            per_layer.push(rec.seconds);
        }
        let inputs = if completed < model.num_layers() {
            read_batches(&self.dir.join(inputs_file(completed)), model.device())?
        } else {
            Vec::new()
        };
        Ok(Restored {
            completed,
            inputs,
            weights,
            reports,
            per_layer,
        })
    }

    /// Records committed layer `k`: its compressed weights, reports and wall time,
    /// and the inputs of layer `k + 1` (`None` after the last layer); then moves
    /// the manifest on and drops the previous inputs.
    pub fn save_layer(
        &mut self,
        k: usize,
        compressed: &[(String, Tensor, CompressedInfo)],
        reports: &[LinearReport],
        seconds: f64,
        next_inputs: Option<&[Tensor]>,
    ) -> Result<()> {
        if k != self.manifest.completed {
            bail!(
                "checkpoint at layer {} cannot record layer {k}",
                self.manifest.completed
            );
        }
        let mut tensors = Vec::new();
        let mut grids = BTreeMap::new();
        for (name, w, info) in compressed {
            tensors.push((name.clone(), w.to_device(&Device::Cpu)?));
            let m = &info.mask;
            tensors.push((
                format!("{name}.mask"),
                Tensor::from_vec(m.bytes().to_vec(), (m.rows(), m.row_bytes()), &Device::Cpu)?,
            ));
            if let Some(g) = &info.grid {
                let cols = g.columns();
                tensors.push((
                    format!("{name}.grid.column_width"),
                    Tensor::from_vec(g.column_width.clone(), cols, &Device::Cpu)?,
                ));
                tensors.push((
                    format!("{name}.grid.column_group"),
                    Tensor::from_vec(g.column_group.clone(), cols, &Device::Cpu)?,
                ));
                tensors.push((
                    format!("{name}.grid.params"),
                    Tensor::from_vec(g.params.clone(), g.params.len(), &Device::Cpu)?,
                ));
                grids.insert(
                    name.clone(),
                    GridShape {
                        widths: g.widths.clone(),
                        groupsize: g.groupsize,
                        groups: g.groups,
                    },
                );
            }
        }
        let rec = LayerRecord {
            layer: k,
            seconds,
            reports: reports.to_vec(),
            grids,
            linears: compressed.iter().map(|(n, _, _)| n.clone()).collect(),
        };
        write_tensors(&self.dir.join(layer_file(k, "safetensors")), &tensors)?;
        write_json(&self.dir.join(layer_file(k, "json")), &rec)?;
        if let Some(inputs) = next_inputs {
            write_batches(&self.dir.join(inputs_file(k + 1)), inputs)?;
        }
        let mut next = self.manifest.clone();
        next.completed = k + 1;
        write_json(&self.dir.join(MANIFEST), &next)?;
        self.manifest = next;
        let _ = std::fs::remove_file(self.dir.join(inputs_file(k)));
        Ok(())
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Layers completed.
    pub fn completed(&self) -> usize {
        self.manifest.completed
    }
}
