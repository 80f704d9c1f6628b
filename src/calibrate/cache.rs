//! A cache of per-layer calibration statistics, so that a sweep does not
//! recalibrate what it has already seen.
//!
//! An entry holds what one decoder layer's calibration pass produced — each
//! distinct input's Hessian accumulator and activation reservoir — and that
//! layer's inputs (one tensor per batch of windows). It is stored under a key
//! that names everything those depend on:
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
//! - this layer's own linear weights, as the statistics pass saw them.
//!
//! The entry's directory is named by a hash of that key and holds the key in
//! full (`entry.json`); an entry whose stored key differs from the one asked for
//! is ignored with a warning and replaced, never used. Entries are written into
//! a temporary sibling directory and renamed into place, so an interrupted or
//! failed write leaves no entry behind. The tensors use the checkpoint's
//! safetensors writer and reader ([`super::checkpoint`]).
//!
//! Size: a layer's inputs are `nsamples · seqlen · hidden` values (0.8 GB for
//! OPT-125M at 128 × 2048 in f32) plus its Hessians (`Σ columns²` f32) and
//! reservoirs; delete the directory when a sweep is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    fnv1a, hash_words, read_batches, write_batches, write_json, write_tensors, Manifest,
};
use crate::compress::reservoir::ActivationReservoir;
use crate::compress::HessianAccumulator;
use crate::model::st_write::tensor_bytes;
use crate::model::{DecoderLayer, Model};

const FORMAT: &str = "sparselab-calibration-cache";
const VERSION: u32 = 1;
const ENTRY: &str = "entry.json";
const STATS: &str = "stats.safetensors";
const INPUTS: &str = "inputs.safetensors";

/// The identity of one entry: every input of a layer's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryKey {
    /// `sparselab-calibration-cache`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The run's settings and model identity (see the module docs).
    pub run: serde_json::Value,
    /// Decoder layer.
    pub layer: usize,
    /// Hash chain over the weights that produced this layer's inputs.
    pub prefix: String,
    /// Hash of this layer's linear weights when its statistics were taken.
    pub weights: String,
}

impl EntryKey {
    fn dir_name(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("layer{:05}-{:016x}", self.layer, fnv1a(text.into_bytes()))
    }
}

/// One accumulator's scalars (its tensors are in `stats.safetensors`).
#[derive(Serialize, Deserialize)]
struct AccRecord {
    nsamples: usize,
}

/// One reservoir's scalars.
#[derive(Serialize, Deserialize)]
struct ReservoirRecord {
    capacity: usize,
    columns: usize,
    seen: u64,
    rng: u64,
}

/// `entry.json`.
#[derive(Serialize, Deserialize)]
struct EntryRecord {
    key: EntryKey,
    /// Linear name → index of the accumulator it reads.
    owner: BTreeMap<String, usize>,
    accs: Vec<AccRecord>,
    reservoirs: Vec<ReservoirRecord>,
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
}

/// A statistics cache directory in use by one calibration.
pub struct StatCache {
    dir: PathBuf,
    run: serde_json::Value,
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
    use rayon::prelude::*;
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

impl StatCache {
    /// Opens (creating) the cache in `dir` for a run described by `manifest`;
    /// returns it and the first link of the hash chain.
    pub fn open(dir: &Path, manifest: &Manifest, model: &Model) -> Result<(Self, u64)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the calibration cache {}", dir.display()))?;
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
        let first = fnv1a(serde_json::to_string(&run)?.into_bytes());
        Ok((
            Self {
                dir: dir.to_path_buf(),
                run,
            },
            first,
        ))
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
        }
    }

    /// The directory of an entry with this key, if a complete one with exactly
    /// this key is there. An entry under the key's name whose stored key differs
    /// or cannot be read is reported and not used.
    pub fn find(&self, key: &EntryKey) -> Option<PathBuf> {
        let dir = self.dir.join(key.dir_name());
        let path = dir.join(ENTRY);
        if !path.is_file() {
            return None;
        }
        let stored: Result<EntryRecord> = std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from));
        match stored {
            Ok(rec) if rec.key == *key => Some(dir),
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

    /// Reads the statistics of the entry with `key` onto `device`, or `None`
    /// when there is no usable entry.
    pub fn load(&self, key: &EntryKey, device: &Device) -> Result<Option<CachedStats>> {
        let Some(dir) = self.find(key) else {
            return Ok(None);
        };
        let rec: EntryRecord = serde_json::from_str(
            &std::fs::read_to_string(dir.join(ENTRY))
                .with_context(|| format!("cannot read {}", dir.join(ENTRY).display()))?,
        )?;
        let spath = dir.join(STATS);
        let mut ts = candle_core::safetensors::load(&spath, device)
            .with_context(|| format!("cannot read {}", spath.display()))?;
        let mut take = |n: String| {
            ts.remove(&n)
                .with_context(|| format!("{} has no tensor {n}", spath.display()))
        };
        let mut accs = Vec::new();
        for (i, a) in rec.accs.iter().enumerate() {
            let h = take(format!("acc.{i}.hessian"))?;
            let s = take(format!("acc.{i}.scaler_row"))?;
            accs.push(HessianAccumulator::from_parts(h, s, a.nsamples)?);
        }
        let mut reservoirs = Vec::new();
        for (i, r) in rec.reservoirs.iter().enumerate() {
            let rows = take(format!("reservoir.{i}"))?
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?;
            reservoirs.push(ActivationReservoir::from_parts(
                r.capacity, r.columns, rows, r.seen, r.rng,
            )?);
        }
        if rec.owner.values().any(|&i| i >= accs.len()) {
            bail!("{} names an accumulator it does not hold", dir.display());
        }
        Ok(Some(CachedStats {
            accs,
            reservoirs,
            owner: rec.owner,
            dir,
        }))
    }

    /// The inputs stored in the entry at `dir`, onto `device`.
    pub fn inputs(dir: &Path, device: &Device) -> Result<Vec<Tensor>> {
        read_batches(&dir.join(INPUTS), device)
            .with_context(|| format!("reading cached layer inputs from {}", dir.display()))
    }

    /// Writes an entry: the layer's accumulators, reservoirs, which linear reads
    /// which, and its inputs. Atomic: the files go into a temporary directory that
    /// is renamed into place (an entry another run finished first is kept).
    pub fn store(
        &self,
        key: &EntryKey,
        accs: &[HessianAccumulator],
        reservoirs: &[ActivationReservoir],
        owner: BTreeMap<String, usize>,
        inputs: &[Tensor],
    ) -> Result<()> {
        let name = key.dir_name();
        let tmp = self.dir.join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let result = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut tensors = Vec::new();
            for (i, a) in accs.iter().enumerate() {
                tensors.push((format!("acc.{i}.hessian"), a.hessian().clone()));
                tensors.push((format!("acc.{i}.scaler_row"), a.scaler_row().clone()));
            }
            for (i, r) in reservoirs.iter().enumerate() {
                tensors.push((
                    format!("reservoir.{i}"),
                    Tensor::from_slice(r.as_slice(), (r.len(), r.columns()), &Device::Cpu)?,
                ));
            }
            write_tensors(&tmp.join(STATS), &tensors)?;
            write_batches(&tmp.join(INPUTS), inputs)?;
            let rec = EntryRecord {
                key: key.clone(),
                owner,
                accs: accs
                    .iter()
                    .map(|a| AccRecord {
                        nsamples: a.nsamples(),
                    })
                    .collect(),
                reservoirs: reservoirs
                    .iter()
                    .map(|r| ReservoirRecord {
                        capacity: r.capacity(),
                        columns: r.columns(),
                        seen: r.seen(),
                        rng: r.rng_state(),
                    })
                    .collect(),
            };
            // entry.json last: a directory without it is never an entry.
            write_json(&tmp.join(ENTRY), &rec)?;
            let dest = self.dir.join(&name);
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
        })
    }
}
