//! Checkpoint tensors: safetensors (memory-mapped) or PyTorch `.bin`, single or
//! sharded, with names and shapes checked against `config.json` when opened.
//!
//! Tensors are read on demand, so a decoder layer's weights exist on the compute
//! device only while something holds them; the mapped pages a read touched are
//! handed back to the kernel at once, so a sweep over the layers does not leave
//! the whole checkpoint resident. Tensors a compression step replaces are kept as
//! host-side overrides in front of the checkpoint, in memory or, after
//! [`WeightStore::spill_to_disk`], in files of a temporary directory.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::packed::{self, BitMask};
use crate::compress::QuantGrid;

/// What compression recorded about a tensor it replaced, for exports that store
/// it compactly ([`super::packed`]) and for resumable checkpoints.
#[derive(Debug, Clone)]
pub struct CompressedInfo {
    /// The pruning mask (set = pruned).
    pub mask: BitMask,
    /// The quantization grid, when the weight was quantized.
    pub grid: Option<QuantGrid>,
}

/// The on-disk format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `model.safetensors` or shards listed in `model.safetensors.index.json`.
    Safetensors,
    /// `pytorch_model.bin` or shards listed in `pytorch_model.bin.index.json`.
    PyTorch,
    /// A llama.cpp GGUF file, dequantized on load ([`super::gguf`]).
    Gguf,
    /// sparselab's packed export (`packed.json` and its safetensors files; see
    /// [`super::packed`]), decoded to the dense weights on load.
    Packed,
}

enum Backend {
    Safetensors(MmapedSafetensors),
    Pth {
        files: Vec<PthTensors>,
        route: HashMap<String, usize>,
    },
    Packed(packed::PackedReader),
    Gguf(super::gguf::GgufCheckpoint),
}

/// Where a tensor lives and what it is.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    /// Name in the checkpoint file (may lack the `model.` prefix of transformers' names).
    pub stored_name: String,
    /// Stored dtype.
    pub dtype: DType,
    /// Stored shape.
    pub shape: Vec<usize>,
}

/// The tensors of a checkpoint, addressed by transformers' canonical names.
pub struct WeightStore {
    format: CheckpointFormat,
    files: Vec<PathBuf>,
    backend: Backend,
    meta: HashMap<String, TensorMeta>,
    /// Stored tensors that `config.json` does not imply (kept so that a saved copy
    /// holds exactly the source's tensors).
    extras: Vec<TensorMeta>,
    overrides: HashMap<String, Tensor>,
    compressed: HashMap<String, CompressedInfo>,
    /// Where replacements go instead of memory, once spilling is on.
    spill: Option<Spill>,
}

/// Replaced tensors kept on disk: one safetensors file each in a temporary
/// directory that is removed with the store.
struct Spill {
    dir: tempfile::TempDir,
    files: HashMap<String, PathBuf>,
}

impl WeightStore {
    /// Opens the checkpoint in `dir` and checks it holds every tensor of `expected`
    /// (canonical name, shape) with that shape and a floating-point dtype.
    pub fn open(dir: &Path, expected: &[(String, Vec<usize>)]) -> Result<Self> {
        let (format, files) = find_checkpoint(dir)?;
        let (backend, stored) = match format {
            CheckpointFormat::Safetensors => {
                // SAFETY: the files are opened read-only; like every mmap-based reader we
                // rely on them not being truncated by another process while mapped.
                let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
                    anyhow!(
                        "cannot read safetensors checkpoint in {}: {e}",
                        dir.display()
                    )
                })?;
                let stored: Vec<(String, DType, Vec<usize>)> = st
                    .tensors()
                    .into_iter()
                    .map(|(name, view)| {
                        let dtype = DType::try_from(view.dtype())
                            .map_err(|e| anyhow!("tensor {name} in {}: {e}", dir.display()))?;
                        Ok((name, dtype, view.shape().to_vec()))
                    })
                    .collect::<Result<_>>()?;
                (Backend::Safetensors(st), stored)
            }
            CheckpointFormat::PyTorch => {
                let mut pth = Vec::new();
                let mut route = HashMap::new();
                let mut stored = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    let t = PthTensors::new(f, None).map_err(|e| {
                        anyhow!("cannot read PyTorch checkpoint {}: {e}", f.display())
                    })?;
                    for (name, info) in t.tensor_infos() {
                        route.insert(name.clone(), i);
                        stored.push((name.clone(), info.dtype, info.layout.dims().to_vec()));
                    }
                    pth.push(t);
                }
                (Backend::Pth { files: pth, route }, stored)
            }
            CheckpointFormat::Packed => {
                let reader = packed::PackedReader::open(dir, &files)?;
                let stored = reader.tensors();
                (Backend::Packed(reader), stored)
            }
            CheckpointFormat::Gguf => {
                bail!(
                    "{} is a GGUF checkpoint: open it with open_gguf",
                    dir.display()
                )
            }
        };
        Self::with_backend(dir, format, files, backend, stored, expected)
    }

    /// Opens a GGUF checkpoint (already read by [`super::gguf::GgufCheckpoint`])
    /// and checks it as [`open`](Self::open) does; its tensors are known by
    /// transformers' names.
    pub fn open_gguf(
        ck: super::gguf::GgufCheckpoint,
        expected: &[(String, Vec<usize>)],
    ) -> Result<Self> {
        let path = ck.path().to_path_buf();
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let stored = ck.tensors();
        Self::with_backend(
            &dir,
            CheckpointFormat::Gguf,
            vec![path],
            Backend::Gguf(ck),
            stored,
            expected,
        )
    }

    fn with_backend(
        dir: &Path,
        format: CheckpointFormat,
        files: Vec<PathBuf>,
        backend: Backend,
        stored: Vec<(String, DType, Vec<usize>)>,
        expected: &[(String, Vec<usize>)],
    ) -> Result<Self> {
        let by_name: HashMap<&str, (DType, &Vec<usize>)> = stored
            .iter()
            .map(|(n, d, s)| (n.as_str(), (*d, s)))
            .collect();
        let mut meta = HashMap::new();
        let mut claimed = BTreeSet::new();
        let mut missing = Vec::new();
        for (name, shape) in expected {
            // facebook/opt-* .bin files store `decoder.…` without transformers' `model.` prefix.
            let candidates = [name.clone(), name.trim_start_matches("model.").to_string()];
            let Some(stored_name) = candidates.iter().find(|c| by_name.contains_key(c.as_str()))
            else {
                missing.push(name.clone());
                continue;
            };
            claimed.insert(stored_name.clone());
            let (dtype, got) = by_name[stored_name.as_str()];
            if got != shape {
                bail!(
                    "tensor {name} in {} has shape {got:?}, but config.json implies {shape:?}",
                    describe_files(dir, &files)
                );
            }
            if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                bail!("tensor {name} has dtype {dtype:?}; expected f32, f16 or bf16");
            }
            meta.insert(
                name.clone(),
                TensorMeta {
                    stored_name: stored_name.clone(),
                    dtype,
                    shape: shape.clone(),
                },
            );
        }
        if !missing.is_empty() {
            let shown: Vec<_> = missing.iter().take(5).cloned().collect();
            bail!(
                "{} tensor(s) that config.json requires are missing from {}: {}{}",
                missing.len(),
                describe_files(dir, &files),
                shown.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            );
        }
        let mut extras: Vec<TensorMeta> = stored
            .iter()
            .filter(|(n, _, _)| !claimed.contains(n))
            .map(|(n, d, s)| TensorMeta {
                stored_name: n.clone(),
                dtype: *d,
                shape: s.clone(),
            })
            .collect();
        extras.sort_by(|a, b| a.stored_name.cmp(&b.stored_name));
        Ok(Self {
            format,
            files,
            backend,
            meta,
            extras,
            overrides: HashMap::new(),
            compressed: HashMap::new(),
            spill: None,
        })
    }

    /// From now on keeps replaced tensors in files under a new temporary directory
    /// inside `parent` (the system's temporary directory when `None`) instead of
    /// memory, and moves the ones already replaced there. A compression run then
    /// holds one layer's weights in memory rather than every compressed layer so
    /// far; the directory is removed when the store is dropped.
    pub fn spill_to_disk(&mut self, parent: Option<&Path>) -> Result<()> {
        if self.spill.is_some() {
            return Ok(());
        }
        let dir = match parent {
            Some(p) => tempfile::Builder::new()
                .prefix("sparselab-spill-")
                .tempdir_in(p),
            None => tempfile::Builder::new()
                .prefix("sparselab-spill-")
                .tempdir(),
        }
        .context("creating a directory for compressed weights")?;
        self.spill = Some(Spill {
            dir,
            files: HashMap::new(),
        });
        for (name, t) in std::mem::take(&mut self.overrides) {
            self.store_override(&name, t)?;
        }
        Ok(())
    }

    /// The directory replaced tensors are spilled to, if spilling is on.
    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill.as_ref().map(|s| s.dir.path())
    }

    /// Keeps a replacement (already checked) in memory or in the spill directory.
    fn store_override(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let Some(spill) = &mut self.spill else {
            self.overrides
                .insert(name.to_string(), tensor.to_device(&Device::Cpu)?);
            return Ok(());
        };
        let path = spill.dir.path().join(format!("{name}.safetensors"));
        let tensors = HashMap::from([(name.to_string(), tensor.to_device(&Device::Cpu)?)]);
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|e| anyhow!("writing compressed {name} to {}: {e}", path.display()))?;
        spill.files.insert(name.to_string(), path);
        self.overrides.remove(name);
        Ok(())
    }

    /// The replacement of `name` on the host, if there is one.
    fn replacement(&self, name: &str) -> Result<Option<Tensor>> {
        if let Some(t) = self.overrides.get(name) {
            return Ok(Some(t.clone()));
        }
        let Some(path) = self.spill.as_ref().and_then(|s| s.files.get(name)) else {
            return Ok(None);
        };
        let mut loaded = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| anyhow!("reading compressed {name} from {}: {e}", path.display()))?;
        loaded
            .remove(name)
            .map(Some)
            .with_context(|| format!("{} does not hold {name}", path.display()))
    }

    /// The checkpoint's format.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// The weight files read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Metadata of a tensor by canonical name.
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.meta.get(name)
    }

    /// Canonical names of the tensors `config.json` implies, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.meta.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Stored tensors that `config.json` does not imply (buffers, a duplicate
    /// tied head, …), by stored name.
    pub fn extras(&self) -> &[TensorMeta] {
        &self.extras
    }

    /// Whether a tensor has an in-memory replacement.
    pub fn is_replaced(&self, name: &str) -> bool {
        self.overrides.contains_key(name)
            || self
                .spill
                .as_ref()
                .is_some_and(|s| s.files.contains_key(name))
    }

    /// What compression recorded about a replaced tensor, if anything.
    pub fn compressed(&self, name: &str) -> Option<&CompressedInfo> {
        self.compressed.get(name)
    }

    /// The stored dtype most tensors have (what "the model's dtype" means).
    pub fn dominant_dtype(&self) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for m in self.meta.values() {
            *counts.entry(m.dtype).or_default() += m.shape.iter().product::<usize>();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }

    /// Loads a tensor onto `device` as `dtype`: the in-memory replacement if one was
    /// set, else the checkpoint's copy.
    pub fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(t) = self.replacement(name)? {
            return Ok(t.to_device(device)?.to_dtype(dtype)?);
        }
        let meta = self
            .meta
            .get(name)
            .with_context(|| format!("no tensor named {name} in the checkpoint"))?;
        let t = self.load_stored(&meta.stored_name, device)?;
        check_finite(name, &t, &self.files)?;
        Ok(t.to_dtype(dtype)?)
    }

    /// Rows `rows` of the 2-D tensor `name` (e.g. the embedding rows of the
    /// tokens a calibration uses), as `[rows.len(), columns]` in `dtype` on
    /// `device`. From a safetensors checkpoint only those rows are read (and
    /// their mapped pages handed back), so an embedding matrix of hundreds of
    /// MiB never needs to be resident; other formats load the whole tensor.
    pub fn gather_rows(
        &self,
        name: &str,
        rows: &[u32],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let meta = self
            .meta
            .get(name)
            .with_context(|| format!("no tensor named {name} in the checkpoint"))?;
        let &[nrows, cols] = meta.shape.as_slice() else {
            bail!("{name} is not a matrix: shape {:?}", meta.shape);
        };
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= nrows) {
            bail!("row {bad} of {name} does not exist: it has {nrows} rows");
        }
        let direct = match (&self.backend, self.is_replaced(name)) {
            (Backend::Safetensors(st), false) => Some(st.get(&meta.stored_name)?),
            _ => None,
        };
        let Some(view) = direct else {
            let ids = Tensor::from_slice(rows, rows.len(), device)?;
            return Ok(self.get(name, dtype, device)?.index_select(&ids, 0)?);
        };
        let stored =
            DType::try_from(view.dtype()).map_err(|e| anyhow!("cannot read {name}: {e}"))?;
        let row_bytes = cols * stored.size_in_bytes();
        let data = view.data();
        let mut bytes = vec![0u8; rows.len() * row_bytes];
        // In file order, handing back the mapped pages behind every few MiB: the
        // kernel maps neighbouring pages on each fault, so scattered rows would
        // otherwise leave most of the matrix resident until the end.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by_key(|&i| rows[i]);
        let mut released = 0;
        for i in order {
            let at = rows[i] as usize * row_bytes;
            bytes[i * row_bytes..(i + 1) * row_bytes].copy_from_slice(&data[at..at + row_bytes]);
            if at - released >= 8 << 20 {
                release_mapped_pages(&data[released..at]);
                released = at;
            }
        }
        release_mapped_pages(data);
        let t = Tensor::from_raw_buffer(&bytes, stored, &[rows.len(), cols], &Device::Cpu)?;
        check_finite(name, &t, &self.files)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// Whether tensors are read through a memory map (safetensors), so that
    /// part of one ([`gather_rows`](Self::gather_rows),
    /// [`check_finite_streaming`](Self::check_finite_streaming)) costs only
    /// that part; other formats read a tensor whole.
    pub fn is_mapped(&self) -> bool {
        matches!(self.backend, Backend::Safetensors(_))
    }

    /// Refuses tensor `name` if it holds NaN or ±Inf, as [`get`](Self::get) would,
    /// without keeping it: a safetensors tensor is scanned through the memory
    /// map a few MiB at a time, handing the pages back behind the scan, so that
    /// opening a model checks its embeddings without making them resident.
    pub fn check_finite_streaming(&self, name: &str) -> Result<()> {
        let meta = self
            .meta
            .get(name)
            .with_context(|| format!("no tensor named {name} in the checkpoint"))?;
        let view = match (&self.backend, self.is_replaced(name)) {
            (Backend::Safetensors(st), false) => st.get(&meta.stored_name)?,
            _ => {
                self.get(name, meta.dtype, &Device::Cpu)?;
                return Ok(());
            }
        };
        let dtype =
            DType::try_from(view.dtype()).map_err(|e| anyhow!("cannot read {name}: {e}"))?;
        if !dtype.is_float() {
            return Ok(());
        }
        let size = dtype.size_in_bytes();
        let data = view.data();
        for part in data.chunks((4 << 20) / size * size) {
            let t = Tensor::from_raw_buffer(part, dtype, &[part.len() / size], &Device::Cpu)?;
            let finite = surely_finite(&t)?;
            release_mapped_pages(part);
            if !finite {
                // Rare: the whole tensor's check names the first bad element.
                self.get(name, dtype, &Device::Cpu)?;
                break;
            }
        }
        Ok(())
    }

    /// Loads a stored tensor (by its name in the checkpoint) as stored.
    pub fn load_stored(&self, stored_name: &str, device: &Device) -> Result<Tensor> {
        let t = match &self.backend {
            Backend::Safetensors(st) => {
                let t = st.load(stored_name, device);
                if let Ok(view) = st.get(stored_name) {
                    release_mapped_pages(view.data());
                }
                t
            }
            Backend::Pth { files, route } => {
                let file = *route
                    .get(stored_name)
                    .with_context(|| format!("no tensor named {stored_name} in the checkpoint"))?;
                files[file]
                    .get(stored_name)
                    .and_then(|t| t.ok_or_else(|| candle_core::Error::Msg("vanished".into())))
                    .and_then(|t| t.to_device(device))
            }
            Backend::Packed(p) => return p.load(stored_name, device),
            Backend::Gguf(g) => return g.load(stored_name, device),
        }
        .map_err(|e| anyhow!("cannot load tensor {stored_name}: {e}"))?;
        Ok(t)
    }

    /// Replaces a tensor in memory (kept on the host); later [`get`](Self::get)s see it.
    pub fn set(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let meta = self
            .meta
            .get(name)
            .with_context(|| format!("no tensor named {name} in the checkpoint"))?;
        if tensor.dims() != meta.shape.as_slice() {
            bail!(
                "replacement for {name} has shape {:?}, expected {:?}",
                tensor.dims(),
                meta.shape
            );
        }
        self.store_override(name, tensor)?;
        self.compressed.remove(name);
        Ok(())
    }

    /// Replaces a tensor with its compressed version and keeps what compression
    /// recorded about it (mask, quantization grid).
    pub fn set_compressed(
        &mut self,
        name: &str,
        tensor: Tensor,
        info: CompressedInfo,
    ) -> Result<()> {
        self.set(name, tensor)?;
        let shape = &self.meta[name].shape;
        if shape.len() != 2 || info.mask.rows() != shape[0] || info.mask.cols() != shape[1] {
            bail!(
                "the mask of {name} is [{}, {}], the tensor is {shape:?}",
                info.mask.rows(),
                info.mask.cols()
            );
        }
        if let Some(g) = &info.grid {
            g.validate(shape[0], shape[1])
                .with_context(|| format!("quantization grid of {name}"))?;
        }
        self.compressed.insert(name.to_string(), info);
        Ok(())
    }
}

/// Hands the pages of a read-only file mapping that `bytes` lies in back to the
/// kernel once their contents were copied out: they stay in the page cache (a
/// later read maps them again), but no longer count as this process's memory.
/// Without this, reading every layer once leaves the whole checkpoint resident.
fn release_mapped_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let start = bytes.as_ptr() as usize / page * page;
        let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
        if bytes.len() >= page && end > start {
            // SAFETY: the range covers pages of a private, read-only file mapping
            // that stays mapped; MADV_DONTNEED only drops their resident copies,
            // and the next access faults the unchanged file contents back in.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// True when every element of a float tensor is finite, decided cheaply; false
/// means "maybe not" (an f32 sum can overflow), for a full scan to settle. An
/// f32 sum needs no tensor-sized temporary; half precision sums overflow too
/// easily, so there `x − x` (0 or NaN) is summed.
fn surely_finite(t: &Tensor) -> Result<bool> {
    let probe = if t.dtype() == DType::F32 {
        t.sum_all()?.to_scalar::<f32>()?
    } else {
        t.sub(t)?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?
    };
    Ok(probe.is_finite())
}

/// Refuses a tensor holding NaN or ±Inf, naming it and the first bad element.
/// Cheap when all is well: one elementwise `x − x` and a sum on the tensor's device.
fn check_finite(name: &str, t: &Tensor, files: &[PathBuf]) -> Result<()> {
    if !t.dtype().is_float() || surely_finite(t)? {
        return Ok(());
    }
    let flat = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let count = flat.iter().filter(|x| !x.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let first = flat.iter().position(|x| !x.is_finite()).unwrap_or(0);
    let mut index = Vec::new();
    let mut rest = first;
    for &d in t.dims().iter().rev() {
        index.push(rest % d.max(1));
        rest /= d.max(1);
    }
    index.reverse();
    let where_ = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "tensor {name} has {count} non-finite value(s) (first: {} at {index:?}) in {where_}",
        flat[first]
    )
}

fn describe_files(dir: &Path, files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    format!("{} ({})", dir.display(), names.join(", "))
}

/// Finds the weight files of the checkpoint in `dir`, preferring safetensors.
pub fn find_checkpoint(dir: &Path) -> Result<(CheckpointFormat, Vec<PathBuf>)> {
    let packed_index = dir.join(packed::PACKED_INDEX);
    for (format, single, index) in [
        (
            CheckpointFormat::Safetensors,
            "model.safetensors",
            "model.safetensors.index.json",
        ),
        (
            CheckpointFormat::PyTorch,
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        ),
    ] {
        let index_path = dir.join(index);
        if index_path.is_file() {
            return Ok((format, shards_from_index(dir, &index_path)?));
        }
        if dir.join(single).is_file() {
            return Ok((format, vec![dir.join(single)]));
        }
    }
    if packed_index.is_file() {
        return Ok((
            CheckpointFormat::Packed,
            packed::files_from_index(dir, &packed_index)?,
        ));
    }
    bail!(
        "no weights in {}: looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin, pytorch_model.bin.index.json and packed.json",
        dir.display()
    )
}

/// The shard files an index names, in a stable order; every one must exist.
pub fn shards_from_index(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no `weight_map`", index_path.display()))?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let mut out = Vec::new();
    for shard in shards {
        let path = dir.join(shard);
        if !path.is_file() {
            bail!(
                "shard {shard} listed in {} is missing",
                index_path.display()
            );
        }
        out.push(path);
    }
    Ok(out)
}
