//! The packed export: compressed linears stored as integer codes, scales and
//! zeros, and pruning masks, and a reader that restores the dense weights bit for
//! bit. The format is described in `docs/packed-format.md`; in short:
//!
//! A packed directory holds `config.json`, the tokenizer files, `compression.json`
//! when a report was given, `packed.json` (the index) and one or more safetensors
//! files (`packed.safetensors`, or `packed-00001-of-0000N.safetensors` when
//! sharded). Every tensor of the source checkpoint appears in the index under its
//! stored name with its dtype and shape, and one of three encodings:
//!
//! - `dense`: the tensor itself, under its own name.
//! - `quantized` (a quantized linear `[rows, cols]`):
//!   `NAME.qcodes` U8 `[rows, row_bytes]`: per row, the integer code of every
//!   column in order, each in `bits[j]` bits, least significant bit first, the row
//!   padded to whole bytes; `NAME.qscales` and `NAME.qzeros` F32
//!   `[rows, groups, widths]`: the grid of each row, group and bit width (index
//!   `widths` is the entry's sorted list of distinct widths); `NAME.qbits` U8
//!   `[cols]`: each column's width; `NAME.qgroups` I32 `[cols]` (only with a
//!   group size): each column's group; `NAME.mask` U8 `[rows, ceil(cols/8)]`:
//!   1 bit per weight, LSB first, set where pruned.
//!   A weight is `0` where the mask is set, else `scale · (code − zero)` computed in
//!   f32, then converted to the entry's dtype.
//! - `sparse` (a pruned, unquantized linear): `NAME.mask` as above and
//!   `NAME.values` (entry dtype, `[nonzero]`): the kept weights in row-major order.
//!
//! The writer checks every encoded tensor by decoding it and comparing the bytes;
//! a tensor that would not come back identical is stored `dense` with a `note`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::st_write::{st_dtype, tensor_bytes, Planned};
use super::weights::CompressedInfo;
use crate::compress::QuantGrid;

/// The index file of a packed directory.
pub const PACKED_INDEX: &str = "packed.json";
/// The `format` field of the index.
pub const PACKED_FORMAT: &str = "sparselab-packed";
/// The `version` field of the index this build writes and reads.
pub const PACKED_VERSION: u32 = 1;

/// One bit per weight of a `[rows, cols]` matrix, rows padded to whole bytes,
/// least significant bit first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitMask {
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl BitMask {
    /// All clear.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            bytes: vec![0; rows * cols.div_ceil(8)],
        }
    }

    /// From a `u8` mask tensor `[rows, cols]` (non-zero = set), on any device.
    pub fn from_tensor(mask: &Tensor) -> Result<Self> {
        let (rows, cols) = mask.dims2().context("a mask must be 2-D")?;
        let v = mask
            .to_dtype(DType::U8)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        let mut m = Self::new(rows, cols);
        let rb = m.row_bytes();
        m.bytes
            .par_chunks_mut(rb.max(1))
            .zip(v.par_chunks(cols.max(1)))
            .for_each(|(dst, src)| {
                for (c, &x) in src.iter().enumerate() {
                    if x != 0 {
                        dst[c / 8] |= 1 << (c % 8);
                    }
                }
            });
        Ok(m)
    }

    /// From stored bytes (`rows · ceil(cols/8)` of them).
    pub fn from_bytes(rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() != rows * cols.div_ceil(8) {
            bail!(
                "a [{rows}, {cols}] bit mask needs {} bytes, got {}",
                rows * cols.div_ceil(8),
                bytes.len()
            );
        }
        Ok(Self { rows, cols, bytes })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols.div_ceil(8)
    }
    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Whether `(r, c)` is set.
    #[inline]
    pub fn get(&self, r: usize, c: usize) -> bool {
        self.bytes[r * self.row_bytes() + c / 8] >> (c % 8) & 1 == 1
    }
    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }
    /// As a `u8` tensor `[rows, cols]` (1 = set) on the host.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let mut v = vec![0u8; self.rows * self.cols];
        v.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = self.get(r, c) as u8;
                }
            });
        Ok(Tensor::from_vec(v, (self.rows, self.cols), &Device::Cpu)?)
    }
}

/// How a tensor is stored in a packed directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// As is.
    Dense,
    /// Integer codes, scales, zeros and a pruning mask.
    Quantized,
    /// A pruning mask and the kept values.
    Sparse,
}

/// One tensor of a packed directory's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedEntry {
    /// Its encoding.
    pub encoding: Encoding,
    /// The dense tensor's dtype (`F32`, `F16`, `BF16`, …).
    pub dtype: String,
    /// The dense tensor's shape.
    pub shape: Vec<usize>,
    /// The safetensors file holding its parts.
    pub file: String,
    /// `quantized`: the distinct bit widths, ascending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<u32>>,
    /// `quantized`: the group size, when parameters are per group of columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupsize: Option<usize>,
    /// `quantized`: parameter groups per row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    /// `quantized`, `sparse`: weights pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<usize>,
    /// Why a compressed tensor is stored `dense`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The index of a packed directory (`packed.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedIndex {
    /// Always [`PACKED_FORMAT`].
    pub format: String,
    /// [`PACKED_VERSION`].
    pub version: u32,
    /// Every tensor, by stored name.
    pub tensors: BTreeMap<String, PackedEntry>,
}

/// A tensor encoded for the packed format: its index entry (without `file`) and
/// its parts, in the order they are written.
pub(crate) struct Encoded {
    pub entry: PackedEntry,
    pub parts: Vec<(Planned, Vec<u8>)>,
}

fn dtype_tag(d: DType) -> String {
    format!("{:?}", st_dtype(d))
}

fn parse_dtype_tag(s: &str) -> Result<DType> {
    Ok(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        other => bail!("unsupported dtype {other} in {PACKED_INDEX}"),
    })
}

/// Encodes one tensor (`w` is the dense tensor as it is to be restored, in its
/// final dtype). A tensor with compression info is packed when its bytes come
/// back identical; otherwise, and for every other tensor, it is stored dense.
pub(crate) fn encode(name: &str, w: &Tensor, info: Option<&CompressedInfo>) -> Result<Encoded> {
    let dense_bytes = tensor_bytes(w)?;
    let dense = |note: Option<String>| Encoded {
        entry: PackedEntry {
            encoding: Encoding::Dense,
            dtype: dtype_tag(w.dtype()),
            shape: w.dims().to_vec(),
            file: String::new(),
            widths: None,
            groupsize: None,
            groups: None,
            pruned: None,
            note,
        },
        parts: vec![(
            Planned::new(name, st_dtype(w.dtype()), w.dims()),
            dense_bytes.clone(),
        )],
    };
    let Some(info) = info else {
        return Ok(dense(None));
    };
    let (rows, cols) = w.dims2()?;
    let candidate = match &info.grid {
        Some(grid) => encode_quantized(name, w, grid, &info.mask, rows, cols)?,
        None if info.mask.count() > 0 => encode_sparse(name, w, &info.mask, rows, cols)?,
        None => return Ok(dense(None)),
    };
    let parts: HashMap<&str, (&[usize], &[u8])> = candidate
        .parts
        .iter()
        .map(|(p, b)| (p.name.as_str(), (p.shape.as_slice(), b.as_slice())))
        .collect();
    let restored = decode(name, &candidate.entry, &|part| {
        parts
            .get(part)
            .map(|(s, b)| (s.to_vec(), *b))
            .with_context(|| format!("part {part} missing"))
    })?;
    if tensor_bytes(&restored)? != dense_bytes {
        let what = match candidate.entry.encoding {
            Encoding::Quantized => "its values are not all on the recorded quantization grid",
            _ => "its pruned weights are not all +0.0",
        };
        return Ok(dense(Some(format!(
            "stored dense: {what} in {:?}",
            w.dtype()
        ))));
    }
    Ok(candidate)
}

fn mask_part(name: &str, mask: &BitMask) -> (Planned, Vec<u8>) {
    (
        Planned::new(
            format!("{name}.mask"),
            Dtype::U8,
            &[mask.rows(), mask.row_bytes()],
        ),
        mask.bytes().to_vec(),
    )
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn encode_quantized(
    name: &str,
    w: &Tensor,
    grid: &QuantGrid,
    mask: &BitMask,
    rows: usize,
    cols: usize,
) -> Result<Encoded> {
    grid.validate(rows, cols)?;
    let x = w
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bits: Vec<u32> = (0..cols).map(|j| grid.bits(j)).collect();
    let row_bits: usize = bits.iter().map(|&b| b as usize).sum();
    let row_bytes = row_bits.div_ceil(8);
    let mut codes = vec![0u8; rows * row_bytes];
    codes
        .par_chunks_mut(row_bytes.max(1))
        .zip(x.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (out, xr))| {
            let mut w = BitWriter::new(out);
            for (j, &v) in xr.iter().enumerate() {
                w.put(grid.code(r, j, v), bits[j]);
            }
        });
    let nw = grid.widths.len();
    let (mut scales, mut zeros) = (
        Vec::with_capacity(grid.params.len() / 2),
        Vec::with_capacity(grid.params.len() / 2),
    );
    for p in grid.params.chunks_exact(2) {
        scales.push(p[0]);
        zeros.push(p[1]);
    }
    let mut parts = vec![
        (
            Planned::new(format!("{name}.qcodes"), Dtype::U8, &[rows, row_bytes]),
            codes,
        ),
        (
            Planned::new(
                format!("{name}.qscales"),
                Dtype::F32,
                &[rows, grid.groups, nw],
            ),
            f32_bytes(&scales),
        ),
        (
            Planned::new(
                format!("{name}.qzeros"),
                Dtype::F32,
                &[rows, grid.groups, nw],
            ),
            f32_bytes(&zeros),
        ),
        (
            Planned::new(format!("{name}.qbits"), Dtype::U8, &[cols]),
            bits.iter().map(|&b| b as u8).collect(),
        ),
    ];
    if grid.groupsize.is_some() {
        parts.push((
            Planned::new(format!("{name}.qgroups"), Dtype::I32, &[cols]),
            grid.column_group
                .iter()
                .flat_map(|&g| (g as i32).to_le_bytes())
                .collect(),
        ));
    }
    parts.push(mask_part(name, mask));
    Ok(Encoded {
        entry: PackedEntry {
            encoding: Encoding::Quantized,
            dtype: dtype_tag(w.dtype()),
            shape: vec![rows, cols],
            file: String::new(),
            widths: Some(grid.widths.clone()),
            groupsize: grid.groupsize,
            groups: Some(grid.groups),
            pruned: Some(mask.count()),
            note: None,
        },
        parts,
    })
}

fn encode_sparse(
    name: &str,
    w: &Tensor,
    mask: &BitMask,
    rows: usize,
    cols: usize,
) -> Result<Encoded> {
    let bytes = tensor_bytes(w)?;
    let size = w.dtype().size_in_bytes();
    let mut values = Vec::with_capacity(bytes.len());
    for r in 0..rows {
        for c in 0..cols {
            if !mask.get(r, c) {
                let at = (r * cols + c) * size;
                values.extend_from_slice(&bytes[at..at + size]);
            }
        }
    }
    let kept = rows * cols - mask.count();
    Ok(Encoded {
        entry: PackedEntry {
            encoding: Encoding::Sparse,
            dtype: dtype_tag(w.dtype()),
            shape: vec![rows, cols],
            file: String::new(),
            widths: None,
            groupsize: None,
            groups: None,
            pruned: Some(mask.count()),
            note: None,
        },
        parts: vec![
            (
                Planned::new(format!("{name}.values"), st_dtype(w.dtype()), &[kept]),
                values,
            ),
            mask_part(name, mask),
        ],
    })
}

type PartGetter<'a> = dyn Fn(&str) -> Result<(Vec<usize>, &'a [u8])> + 'a;

fn read_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Restores the dense tensor of `entry` from its parts.
pub(crate) fn decode<'a>(name: &str, entry: &PackedEntry, part: &PartGetter<'a>) -> Result<Tensor> {
    let dtype = parse_dtype_tag(&entry.dtype)?;
    let expect = |p: &str, shape: &[usize]| -> Result<&'a [u8]> {
        let (s, b) = part(p)?;
        if s != shape {
            bail!("part {p} has shape {s:?}, expected {shape:?}");
        }
        Ok(b)
    };
    let two_d = || -> Result<(usize, usize)> {
        match entry.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => bail!("a {:?} tensor must be 2-D, got {s:?}", entry.encoding),
        }
    };
    let t = match entry.encoding {
        Encoding::Dense => {
            let b = expect(name, &entry.shape)?;
            Tensor::from_raw_buffer(b, dtype, &entry.shape, &Device::Cpu)?
        }
        Encoding::Sparse => {
            let (rows, cols) = two_d()?;
            let mask = BitMask::from_bytes(
                rows,
                cols,
                expect(&format!("{name}.mask"), &[rows, cols.div_ceil(8)])?.to_vec(),
            )?;
            let kept = rows * cols - mask.count();
            let values = expect(&format!("{name}.values"), &[kept])?;
            let size = dtype.size_in_bytes();
            let mut out = vec![0u8; rows * cols * size];
            let mut k = 0;
            for r in 0..rows {
                for c in 0..cols {
                    if !mask.get(r, c) {
                        let at = (r * cols + c) * size;
                        out[at..at + size].copy_from_slice(&values[k * size..(k + 1) * size]);
                        k += 1;
                    }
                }
            }
            Tensor::from_raw_buffer(&out, dtype, &[rows, cols], &Device::Cpu)?
        }
        Encoding::Quantized => {
            let (rows, cols) = two_d()?;
            let widths = entry
                .widths
                .clone()
                .context("a quantized entry needs `widths`")?;
            let groups = entry.groups.context("a quantized entry needs `groups`")?;
            let nw = widths.len();
            let bits = expect(&format!("{name}.qbits"), &[cols])?;
            let column_width = bits
                .iter()
                .map(|b| {
                    widths
                        .binary_search(&(*b as u32))
                        .map(|i| i as u8)
                        .map_err(|_| anyhow!("column width {b} is not among the widths {widths:?}"))
                })
                .collect::<Result<Vec<u8>>>()?;
            let column_group = match entry.groupsize {
                Some(_) => expect(&format!("{name}.qgroups"), &[cols])?
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
                    .collect(),
                None => vec![0u32; cols],
            };
            let scales = read_f32(expect(&format!("{name}.qscales"), &[rows, groups, nw])?);
            let zeros = read_f32(expect(&format!("{name}.qzeros"), &[rows, groups, nw])?);
            let params: Vec<f32> = scales
                .iter()
                .zip(&zeros)
                .flat_map(|(s, z)| [*s, *z])
                .collect();
            let grid = QuantGrid {
                rows,
                widths,
                column_width,
                groupsize: entry.groupsize,
                column_group,
                groups,
                params,
            };
            grid.validate(rows, cols)?;
            let row_bits: usize = (0..cols).map(|j| grid.bits(j) as usize).sum();
            let row_bytes = row_bits.div_ceil(8);
            let codes = expect(&format!("{name}.qcodes"), &[rows, row_bytes])?;
            let mask = BitMask::from_bytes(
                rows,
                cols,
                expect(&format!("{name}.mask"), &[rows, cols.div_ceil(8)])?.to_vec(),
            )?;
            let mut out = vec![0f32; rows * cols];
            out.par_chunks_mut(cols)
                .zip(codes.par_chunks(row_bytes.max(1)))
                .enumerate()
                .for_each(|(r, (o, cr))| {
                    let mut rd = BitReader::new(cr);
                    for (j, x) in o.iter_mut().enumerate() {
                        let code = rd.get(grid.bits(j));
                        *x = if mask.get(r, j) {
                            0.0
                        } else {
                            grid.dequantize(r, j, code)
                        };
                    }
                });
            Tensor::from_vec(out, (rows, cols), &Device::Cpu)?.to_dtype(dtype)?
        }
    };
    Ok(t)
}

struct BitWriter<'a> {
    out: &'a mut [u8],
    acc: u64,
    n: u32,
    k: usize,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Self {
            out,
            acc: 0,
            n: 0,
            k: 0,
        }
    }
    #[inline]
    fn put(&mut self, code: u32, bits: u32) {
        self.acc |= ((code as u64) & ((1u64 << bits) - 1)) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out[self.k] = self.acc as u8;
            self.acc >>= 8;
            self.n -= 8;
            self.k += 1;
        }
        if self.n > 0 {
            // Keep the partial byte written, so that the row's last byte is set.
            self.out[self.k] = self.acc as u8;
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    acc: u64,
    n: u32,
    k: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            acc: 0,
            n: 0,
            k: 0,
        }
    }
    #[inline]
    fn get(&mut self, bits: u32) -> u32 {
        while self.n < bits {
            self.acc |= (self.bytes[self.k] as u64) << self.n;
            self.k += 1;
            self.n += 8;
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.n -= bits;
        v
    }
}

/// Reads a packed directory: the index and its memory-mapped files.
pub struct PackedReader {
    st: MmapedSafetensors,
    index: PackedIndex,
}

fn read_index(index_path: &Path) -> Result<PackedIndex> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let index: PackedIndex = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid packed index", index_path.display()))?;
    if index.format != PACKED_FORMAT || index.version != PACKED_VERSION {
        bail!(
            "{} is format {} version {}; this sparselab reads {PACKED_FORMAT} version {PACKED_VERSION}",
            index_path.display(),
            index.format,
            index.version
        );
    }
    Ok(index)
}

/// The files a packed index names, in a stable order; every one must exist.
pub fn files_from_index(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let index = read_index(index_path)?;
    let mut files: Vec<&str> = index.tensors.values().map(|e| e.file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if !p.is_file() {
                bail!("file {f} listed in {} is missing", index_path.display());
            }
            Ok(p)
        })
        .collect()
}

impl PackedReader {
    /// Opens the packed directory `dir` whose files are `files`.
    pub fn open(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let index = read_index(&dir.join(PACKED_INDEX))?;
        // SAFETY: read-only maps of files we do not modify; see WeightStore::open.
        let st = unsafe { MmapedSafetensors::multi(files) }
            .map_err(|e| anyhow!("cannot read packed files in {}: {e}", dir.display()))?;
        Ok(Self { st, index })
    }

    /// The index.
    pub fn index(&self) -> &PackedIndex {
        &self.index
    }

    /// Every dense tensor: (stored name, dtype, shape).
    pub fn tensors(&self) -> Vec<(String, DType, Vec<usize>)> {
        self.index
            .tensors
            .iter()
            .filter_map(|(n, e)| {
                parse_dtype_tag(&e.dtype)
                    .ok()
                    .map(|d| (n.clone(), d, e.shape.clone()))
            })
            .collect()
    }

    /// Restores one dense tensor onto `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let entry = self
            .index
            .tensors
            .get(name)
            .with_context(|| format!("no tensor named {name} in the packed index"))?;
        let get = |part: &str| -> Result<(Vec<usize>, &[u8])> {
            let v = self
                .st
                .get(part)
                .map_err(|e| anyhow!("packed part {part} of {name}: {e}"))?;
            Ok((v.shape().to_vec(), v.data()))
        };
        let t = decode(name, entry, &get).with_context(|| format!("decoding packed {name}"))?;
        Ok(t.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_in_mixed_widths() {
        let widths = [1u32, 3, 8, 16, 2, 5, 7, 4, 12];
        let codes: Vec<u32> = widths
            .iter()
            .map(|&b| ((1u64 << b) - 1) as u32 / 3)
            .collect();
        let total: u32 = widths.iter().sum();
        let mut buf = vec![0u8; (total as usize).div_ceil(8)];
        let mut w = BitWriter::new(&mut buf);
        for (&c, &b) in codes.iter().zip(&widths) {
            w.put(c, b);
        }
        let mut r = BitReader::new(&buf);
        for (&c, &b) in codes.iter().zip(&widths) {
            assert_eq!(r.get(b), c);
        }
    }

    #[test]
    fn bitmask_round_trip() -> Result<()> {
        let t = Tensor::from_vec(
            (0..30u8).map(|i| (i % 3 == 0) as u8).collect::<Vec<_>>(),
            (3, 10),
            &Device::Cpu,
        )?;
        let m = BitMask::from_tensor(&t)?;
        assert_eq!(m.row_bytes(), 2);
        assert_eq!(m.count(), 10);
        assert_eq!(m.to_tensor()?.to_vec2::<u8>()?, t.to_vec2::<u8>()?);
        Ok(())
    }
}
