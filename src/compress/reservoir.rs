//! A bounded, uniform sample of the token rows a linear sees during calibration.
//!
//! The Hessian keeps second moments only; metrics that look at the *shape* of a
//! channel's activations (how heavy its tails are, how much it tells about the
//! output) need the activations themselves. Keeping all of them is out of the
//! question (128 windows × 2048 tokens × 13824 columns is 14 GB for one linear),
//! so each linear keeps a fixed-size uniform sample of its input rows.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Default number of token rows kept per linear.
pub const DEFAULT_RESERVOIR_CAPACITY: usize = 4096;

/// A uniform random sample, without replacement, of at most `capacity` token rows
/// of a linear's input, over every batch fed to it.
///
/// Algorithm R (Vitter 1985): token number `i` of the stream (0-based, counted
/// over all batches) fills the next free slot while `i < capacity`; afterwards it
/// replaces slot `j`, with `j` uniform in `0..=i`, when `j < capacity`. After any
/// number of tokens `n`, every `min(n, capacity)`-subset of them is equally
/// likely to be the sample.
///
/// The random draws depend only on the seed and on token positions, never on the
/// values, so the same stream split into different batches gives the same sample,
/// and the same seed gives the same sample on every run and device. The draw of a
/// whole batch is decided before any data moves: only the selected rows are
/// gathered on the input's device and copied to the host, so feeding a large
/// CUDA batch costs one small gather, not a full device-to-host copy.
///
/// Rows are stored on the host in f32 (`capacity × columns × 4` bytes: 4096
/// tokens of a 13824-wide input are 226 MB), in slot order.
#[derive(Debug, Clone)]
pub struct ActivationReservoir {
    capacity: usize,
    columns: usize,
    /// Row-major `[len, columns]`.
    rows: Vec<f32>,
    /// Tokens offered so far.
    seen: u64,
    rng: SplitMix64,
}

impl ActivationReservoir {
    /// An empty reservoir keeping at most `capacity` token rows of a linear with
    /// `columns` input features, with its own random stream seeded by `seed`.
    pub fn new(capacity: usize, columns: usize, seed: u64) -> Result<Self> {
        if capacity == 0 {
            bail!("an activation reservoir needs a capacity of at least one token");
        }
        if columns == 0 {
            bail!("an activation reservoir needs at least one input column");
        }
        Ok(Self {
            capacity,
            columns,
            rows: Vec::new(),
            seen: 0,
            rng: SplitMix64(seed),
        })
    }

    /// A reservoir restored from its parts (a statistics cache): `rows` is the
    /// row-major sample (a whole number of rows, at most `capacity`), `seen` the
    /// tokens offered so far and `rng` the state [`Self::rng_state`] returned.
    pub fn from_parts(
        capacity: usize,
        columns: usize,
        rows: Vec<f32>,
        seen: u64,
        rng: u64,
    ) -> Result<Self> {
        let mut me = Self::new(capacity, columns, rng)?;
        if !rows.len().is_multiple_of(columns) || rows.len() / columns > capacity {
            bail!(
                "a reservoir sample of {} values is not at most {capacity} rows of {columns}",
                rows.len()
            );
        }
        me.rows = rows;
        me.seen = seen;
        Ok(me)
    }

    /// The state of the slot-choosing random stream (to restore it exactly).
    pub fn rng_state(&self) -> u64 {
        self.rng.0
    }

    /// Offers every token row of a batch: `[batch, seq, columns]` or
    /// `[tokens, columns]` (the shapes [`super::HessianAccumulator::add_batch`]
    /// takes), any float dtype, any device. Tokens are offered in row-major
    /// order (batch, then position).
    pub fn add_batch(&mut self, inp: &Tensor) -> Result<()> {
        let x = match *inp.dims() {
            [tokens, d] => inp.reshape((tokens, d))?,
            [b, s, d] => inp.reshape((b * s, d))?,
            _ => bail!(
                "reservoir input must be [batch, seq, columns] or [tokens, columns], got {:?}",
                inp.dims()
            ),
        };
        let (tokens, d) = x.dims2()?;
        if d != self.columns {
            bail!(
                "reservoir input has {d} columns, the reservoir expects {}",
                self.columns
            );
        }
        if tokens == 0 {
            bail!("empty calibration batch {:?}", inp.dims());
        }

        // Which token of this batch ends up in which slot (the last writer wins
        // when a slot is replaced twice within one batch).
        let mut writer: Vec<Option<u32>> = Vec::new();
        for t in 0..tokens {
            let i = self.seen;
            self.seen += 1;
            let slot = if (i as usize) < self.capacity {
                i as usize
            } else {
                let j = self.rng.below(i + 1);
                if j >= self.capacity as u64 {
                    continue;
                }
                j as usize
            };
            if writer.len() <= slot {
                writer.resize(slot + 1, None);
            }
            writer[slot] = Some(t as u32);
        }

        let slots: Vec<(usize, u32)> = writer
            .iter()
            .enumerate()
            .filter_map(|(s, t)| t.map(|t| (s, t)))
            .collect();
        if slots.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = slots.iter().map(|&(_, t)| t).collect();
        let ids = Tensor::from_vec(ids, slots.len(), x.device())?;
        let picked = x
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let new_len = slots.last().map_or(0, |&(s, _)| s + 1).max(self.len());
        self.rows.resize(new_len * d, 0.0);
        for (k, &(s, _)) in slots.iter().enumerate() {
            self.rows[s * d..(s + 1) * d].copy_from_slice(&picked[k * d..(k + 1) * d]);
        }
        Ok(())
    }

    /// The sample as a host f32 tensor `[len, columns]` (rows in slot order, not
    /// stream order). With no token seen yet it is `[0, columns]`.
    pub fn samples(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.rows.clone(),
            (self.len(), self.columns),
            &Device::Cpu,
        )?)
    }

    /// The sample as a row-major `[len, columns]` slice.
    pub fn as_slice(&self) -> &[f32] {
        &self.rows
    }

    /// Rows held: `min(tokens seen, capacity)`.
    pub fn len(&self) -> usize {
        self.rows.len() / self.columns
    }

    /// Whether no token has been seen.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Tokens offered so far, over all batches.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Most rows kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Input columns.
    pub fn columns(&self) -> usize {
        self.columns
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, seedable with any `u64`, and
/// good enough for choosing sample slots; no dependency needed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), exactly: Lemire's multiply-shift with
    /// rejection of the `2^64 mod n` biased low products.
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = self.next_u64() as u128 * n as u128;
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token `i` of a stream is the row `[i, i, …]`, so a sample's rows name
    /// the tokens they came from.
    fn stream(tokens: usize, d: usize) -> Tensor {
        let v: Vec<f32> = (0..tokens)
            .flat_map(|i| std::iter::repeat_n(i as f32, d))
            .collect();
        Tensor::from_vec(v, (tokens, d), &Device::Cpu).unwrap()
    }

    fn sampled_tokens(r: &ActivationReservoir) -> Vec<usize> {
        let mut ids: Vec<usize> = r
            .as_slice()
            .chunks(r.columns())
            .map(|row| row[0] as usize)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn keeps_everything_below_capacity() -> Result<()> {
        let mut r = ActivationReservoir::new(100, 3, 7)?;
        assert!(r.is_empty());
        assert_eq!(r.samples()?.dims(), &[0, 3]);
        r.add_batch(&stream(40, 3).reshape((2, 20, 3))?)?;
        assert_eq!(r.len(), 40);
        assert_eq!(sampled_tokens(&r), (0..40).collect::<Vec<_>>());
        assert_eq!(r.samples()?.dims(), &[40, 3]);
        Ok(())
    }

    #[test]
    fn bounded_distinct_and_independent_of_batching() -> Result<()> {
        let x = stream(1000, 2);
        let mut one = ActivationReservoir::new(64, 2, 3)?;
        one.add_batch(&x)?;
        let mut many = ActivationReservoir::new(64, 2, 3)?;
        for (start, len) in [(0, 10), (10, 300), (310, 1), (311, 689)] {
            many.add_batch(&x.narrow(0, start, len)?.to_dtype(DType::F16)?)?;
        }
        assert_eq!(one.len(), 64);
        assert_eq!(one.seen(), 1000);
        let ids = sampled_tokens(&one);
        let mut dedup = ids.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 64, "rows must be distinct tokens");
        // f16 holds these integers exactly, so the samples are identical.
        assert_eq!(one.as_slice(), many.as_slice());
        // Same seed, same sample; another seed, another sample.
        let mut again = ActivationReservoir::new(64, 2, 3)?;
        again.add_batch(&x)?;
        assert_eq!(again.as_slice(), one.as_slice());
        let mut other = ActivationReservoir::new(64, 2, 4)?;
        other.add_batch(&x)?;
        assert_ne!(sampled_tokens(&other), ids);
        Ok(())
    }

    #[test]
    fn inclusion_is_uniform() -> Result<()> {
        // 200 tokens, capacity 20: each token is kept with probability 0.1. Over
        // 2000 seeds a token's count is Binomial(2000, 0.1): mean 200, sd 13.4.
        // Every count within ±6 sd, and the early/late halves within 3%.
        let x = stream(200, 1);
        let mut counts = [0usize; 200];
        for seed in 0..2000 {
            let mut r = ActivationReservoir::new(20, 1, seed)?;
            r.add_batch(&x.narrow(0, 0, 77)?)?;
            r.add_batch(&x.narrow(0, 77, 123)?)?;
            for t in sampled_tokens(&r) {
                counts[t] += 1;
            }
        }
        for (t, &c) in counts.iter().enumerate() {
            assert!((120..=280).contains(&c), "token {t} kept {c} times");
        }
        let early: usize = counts[..100].iter().sum();
        let late: usize = counts[100..].iter().sum();
        let ratio = early as f64 / late as f64;
        assert!((0.97..1.03).contains(&ratio), "early/late {ratio}");
        Ok(())
    }

    #[test]
    fn rejects_wrong_shapes() -> Result<()> {
        let mut r = ActivationReservoir::new(4, 3, 0)?;
        let e = r.add_batch(&stream(5, 2)).unwrap_err();
        assert!(e.to_string().contains("expects 3"), "{e}");
        let e = r
            .add_batch(&Tensor::zeros(3, DType::F32, &Device::Cpu)?)
            .unwrap_err();
        assert!(e.to_string().contains("[batch, seq, columns]"), "{e}");
        assert!(ActivationReservoir::new(0, 3, 0).is_err());
        Ok(())
    }
}
