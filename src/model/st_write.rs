//! Writing safetensors files tensor by tensor: the header is computed from the
//! planned names, dtypes and shapes, then each tensor's bytes are produced and
//! written in turn, so that no more than one tensor is in memory at a time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;

/// A tensor to be written: its name, dtype and shape (its bytes come later).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Planned {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Size of the tensor's data in bytes.
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * (self.dtype.bitsize() / 8) as u64
    }
}

/// The safetensors dtype of a candle dtype.
pub(crate) fn st_dtype(d: DType) -> Dtype {
    d.into()
}

/// The header block (8-byte length, JSON padded with spaces to a multiple of 8)
/// for `tensors` laid out contiguously in the given order.
pub(crate) fn header(
    tensors: &[Planned],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert("__metadata__".into(), serde_json::to_value(m)?);
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.nbytes();
        if map.contains_key(&t.name) {
            bail!("tensor {} is planned twice", t.name);
        }
        map.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": format!("{:?}", t.dtype),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&map)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Writes one safetensors file: the header, then the bytes `produce(i)` returns
/// for each planned tensor in order (checked against the planned size). Returns
/// the bytes written.
pub(crate) fn write_safetensors<'a>(
    out: &mut dyn Write,
    tensors: &[Planned],
    metadata: Option<&BTreeMap<String, String>>,
    produce: &mut dyn FnMut(usize) -> Result<Cow<'a, [u8]>>,
) -> Result<u64> {
    let head = header(tensors, metadata)?;
    out.write_all(&head)?;
    let mut total = head.len() as u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = produce(i).with_context(|| format!("preparing tensor {}", t.name))?;
        if bytes.len() as u64 != t.nbytes() {
            bail!(
                "tensor {} has {} bytes, {} were planned ({:?} {:?})",
                t.name,
                bytes.len(),
                t.nbytes(),
                t.dtype,
                t.shape
            );
        }
        out.write_all(&bytes)?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

/// The little-endian bytes of a tensor (any device), as safetensors stores them.
pub(crate) fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    fn le<T, const N: usize>(v: Vec<T>, f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for x in &v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    Ok(match t.dtype() {
        DType::F32 => le(t.to_vec1::<f32>()?, |x| x.to_le_bytes()),
        DType::F16 => le(t.to_vec1::<half::f16>()?, |x| x.to_le_bytes()),
        DType::BF16 => le(t.to_vec1::<half::bf16>()?, |x| x.to_le_bytes()),
        DType::F64 => le(t.to_vec1::<f64>()?, |x| x.to_le_bytes()),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => le(t.to_vec1::<u32>()?, |x| x.to_le_bytes()),
        DType::I64 => le(t.to_vec1::<i64>()?, |x| x.to_le_bytes()),
        other => bail!("cannot write a tensor of dtype {other:?}"),
    })
}

/// Splits tensors of the given sizes, in order, into consecutive shards of at
/// most `max_bytes` each (a tensor larger than that gets a shard of its own).
pub(crate) fn plan_shards(sizes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && acc + s > max_bytes {
            shards.push(start..i);
            start = i;
            acc = 0;
        }
        acc += s;
    }
    if start < sizes.len() || shards.is_empty() {
        shards.push(start..sizes.len());
    }
    shards
}

/// Transformers' shard file names: `{stem}-00001-of-00003.{ext}`, or
/// `{stem}.{ext}` for a single file.
pub(crate) fn shard_name(stem: &str, ext: &str, index: usize, count: usize) -> String {
    if count == 1 {
        format!("{stem}.{ext}")
    } else {
        format!("{stem}-{:05}-of-{count:05}.{ext}", index + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_greedy_and_cover_everything() {
        assert_eq!(plan_shards(&[3, 3, 3], 6), vec![0..2, 2..3]);
        assert_eq!(plan_shards(&[10, 1, 1], 5), vec![0..1, 1..3]);
        assert_eq!(plan_shards(&[1, 1], 100), vec![0..2]);
        assert_eq!(plan_shards(&[], 100), vec![0..0]);
        assert_eq!(
            shard_name("model", "safetensors", 1, 3),
            "model-00002-of-00003.safetensors"
        );
    }

    #[test]
    fn written_file_reads_back() -> Result<()> {
        let a = Tensor::from_vec(vec![1f32, -2.0, 3.5], 3, &Device::Cpu)?;
        let b = Tensor::from_vec(vec![7u8, 8], (1, 2), &Device::Cpu)?;
        let plan = vec![
            Planned::new("a", Dtype::F32, &[3]),
            Planned::new("b", Dtype::U8, &[1, 2]),
        ];
        let mut buf = Vec::new();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let ts = [a.clone(), b.clone()];
        write_safetensors(&mut buf, &plan, Some(&meta), &mut |i| {
            Ok(Cow::Owned(tensor_bytes(&ts[i])?))
        })?;
        let back = candle_core::safetensors::load_buffer(&buf, &Device::Cpu)?;
        assert_eq!(back["a"].to_vec1::<f32>()?, vec![1.0, -2.0, 3.5]);
        assert_eq!(back["b"].to_vec2::<u8>()?, vec![vec![7, 8]]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&buf)?;
        assert_eq!(m.metadata().as_ref().unwrap()["format"], "pt");
        Ok(())
    }
}
