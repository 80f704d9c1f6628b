//! Python's `random` module, bit for bit, for the parts the reference sampler uses.
//!
//! The SparseGPT/GPTQ reference scripts pick calibration windows with
//! `random.seed(seed)` followed by `random.randint(...)`. Published numbers depend on
//! exactly which windows were drawn, so this reproduces CPython's algorithms
//! (`Modules/_randommodule.c` and `Lib/random.py`) rather than any Rust RNG API:
//! MT19937 seeded by `init_by_array`, `getrandbits` assembling 32-bit outputs
//! little-endian, and `_randbelow_with_getrandbits` rejection sampling.

use rand_mt::Mt;

/// A Mersenne Twister that draws the same numbers as CPython's `random.Random`.
#[derive(Clone, Debug)]
pub struct PyRandom {
    mt: Mt,
}

impl PyRandom {
    /// The state after CPython's `random.seed(seed)` for a non-negative `int` seed.
    ///
    /// CPython splits the seed into 32-bit words, least significant first, and feeds
    /// them to `init_by_array`; zero is the one-word key `[0]`, not an empty key.
    pub fn seed(seed: u64) -> Self {
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        let mt = if high == 0 {
            Mt::new_with_key([low])
        } else {
            Mt::new_with_key([low, high])
        };
        Self { mt }
    }

    /// `random.getrandbits(k)` for `k <= 64`: a uniform integer in `[0, 2^k)`.
    ///
    /// CPython fills the result 32 bits at a time starting with the least significant
    /// word, and a partial word takes the *top* bits of its draw, so the order of
    /// the draws matters and is kept here.
    ///
    /// # Panics
    /// If `k > 64` (the result would not fit the return type).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k}): at most 64 bits are supported");
        let mut out = 0u64;
        let mut filled = 0u32;
        while filled < k {
            let take = (k - filled).min(32);
            let word = u64::from(self.mt.next_u32() >> (32 - take));
            out |= word << filled;
            filled += take;
        }
        out
    }

    /// `random._randbelow(n)` (`_randbelow_with_getrandbits`): uniform in `[0, n)`.
    ///
    /// Draws `n.bit_length()` bits and rejects values `>= n`; the number of draws
    /// consumed is part of what must match CPython.
    ///
    /// # Panics
    /// If `n == 0` (CPython never calls it so; it would loop forever).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow(0): the range is empty");
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)`: uniform in `[a, b]`, both ends included.
    ///
    /// # Panics
    /// If `b < a` (CPython raises `ValueError: empty range`) or if the range holds
    /// more than 2^64 − 1 values.
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        assert!(b >= a, "randint({a}, {b}): empty range");
        // randint(a, b) is randrange(a, b + 1) = a + randbelow(b + 1 - a).
        let width = u64::try_from(i128::from(b) - i128::from(a) + 1)
            .unwrap_or_else(|_| panic!("randint({a}, {b}): range too wide"));
        (i128::from(a) + i128::from(self.randbelow(width))) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Expected values from CPython 3.11.7 (`python3 -c "import random; ..."`).

    #[test]
    fn randint_matches_cpython_seed0() {
        // random.seed(0); [random.randint(0, 10**6) for _ in range(8)]
        let mut r = PyRandom::seed(0);
        let got: Vec<i64> = (0..8).map(|_| r.randint(0, 1_000_000)).collect();
        assert_eq!(
            got,
            [885440, 403958, 794772, 933488, 441001, 42450, 271493, 536110]
        );
    }

    #[test]
    fn getrandbits_64_spans_two_words_low_first() {
        // random.seed(0); [random.getrandbits(64) for _ in range(3)]
        let mut r = PyRandom::seed(0);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(64)).collect();
        assert_eq!(
            got,
            [
                7106521602475165645,
                16422101724900707500,
                746805015404516437
            ]
        );
    }

    #[test]
    fn getrandbits_partial_words() {
        // random.seed(0); [random.getrandbits(k) for k in (1, 7, 31, 32, 33, 63)]
        let mut r = PyRandom::seed(0);
        let got: Vec<u64> = [1, 7, 31, 32, 33, 63]
            .iter()
            .map(|&k| r.getrandbits(k))
            .collect();
        assert_eq!(
            got,
            [
                1,
                49,
                1627694678,
                3823568514,
                1806341205,
                8904841857247764026
            ]
        );
        assert_eq!(r.getrandbits(0), 0);
    }

    #[test]
    fn multi_word_seeds() {
        // random.seed(s); [random.randint(0, 10**6) for _ in range(4)]
        let cases: [(u64, [i64; 4]); 3] = [
            (12345678901234, [26257, 586767, 152386, 865442]),
            (1 << 32, [118483, 368376, 438125, 980126]),
            (u64::MAX, [22885, 260863, 354518, 648807]),
        ];
        for (seed, want) in cases {
            let mut r = PyRandom::seed(seed);
            let got: Vec<i64> = (0..4).map(|_| r.randint(0, 1_000_000)).collect();
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn small_and_negative_ranges() {
        // random.seed(42); [random.randrange(1) for _ in range(2)],
        // [random.randint(-5, 5) for _ in range(6)], random.randint(0, 2**40)
        let mut r = PyRandom::seed(42);
        assert_eq!([r.randbelow(1), r.randbelow(1)], [0, 0]);
        let got: Vec<i64> = (0..6).map(|_| r.randint(-5, 5)).collect();
        assert_eq!(got, [-1, -2, -2, -3, -4, 5]);
        assert_eq!(r.randint(0, 1 << 40), 191320892468);
    }
}
