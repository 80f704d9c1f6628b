//! From importance scores to bit widths: grouping channels by score and
//! assigning each channel a width from a set of tiers, by proportions, by
//! thresholds, or under an average-bit budget.
//!
//! Everything here works on a flat score vector, one value per channel; the
//! unit does not matter (raw or normalised scores give the same ranks). A
//! model-wide allocation is the same call over the concatenated scores of every
//! linear, split back with [`split_per_linear`].

use std::cmp::Ordering;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

/// The default bit tiers.
pub const DEFAULT_TIERS: [u32; 5] = [2, 3, 4, 6, 8];

/// How [`group_channels`] cuts the score axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupMethod {
    /// Equal counts: by rank, `⌊rank · groups / n⌋` (group sizes differ by at
    /// most one; equal scores may straddle a boundary, in index order). Default.
    #[default]
    Quantile,
    /// Optimal 1-D k-means: the partition of the scores into `groups` intervals
    /// with the least within-group sum of squares, found exactly by dynamic
    /// programming (no random restarts).
    KMeans,
}

impl GroupMethod {
    /// `quantile` or `kmeans`; anything else is an error listing both.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "quantile" => Ok(GroupMethod::Quantile),
            "kmeans" => Ok(GroupMethod::KMeans),
            _ => bail!("unknown grouping method `{name}`; valid methods: quantile, kmeans"),
        }
    }
}

/// How [`allocate_bits`] assigns tiers.
#[derive(Debug, Clone, PartialEq)]
pub enum AllocMethod {
    /// Fixed proportions of channels per tier, by rank (least important in the
    /// lowest tier). `None`: equal proportions (on the five default tiers, 20%
    /// each and an average of 4.6 bits). Counts are rounded by largest
    /// remainder (ties to the lower tier), so they sum to the channel count.
    Quantile {
        /// One non-negative fraction per tier, summing to 1.
        proportions: Option<Vec<f64>>,
    },
    /// Meet an average width: see [`allocate_bits`] for the objective and the
    /// guarantee.
    Budget {
        /// Average bits per channel, within `[min tier, max tier]`.
        target_avg: f64,
    },
    /// Explicit score cut-offs: a channel with score `s` gets tier `t`, the
    /// number of thresholds `≤ s` (below the first threshold: the lowest tier).
    /// Thresholds apply to the scores as given (normalise first if they are
    /// meant for mean-1 scores).
    Threshold {
        /// `tiers − 1` finite values, non-decreasing (an equal pair leaves a tier
        /// empty).
        thresholds: Vec<f64>,
    },
    /// Group the channels ([`group_channels`]), then give every group one tier:
    /// the non-decreasing assignment whose average is closest to the target,
    /// and among those the one with the least error proxy. Exhaustive over the
    /// `C(groups + tiers − 1, tiers − 1)` monotone assignments (an error above
    /// 20 million).
    Groups {
        /// Average bits per channel, within `[min tier, max tier]`.
        target_avg: f64,
        /// Number of groups; `None`: one per tier.
        n_groups: Option<usize>,
        /// How the groups are formed.
        grouping: GroupMethod,
    },
}

/// Settings of [`allocate_bits`].
#[derive(Debug, Clone, PartialEq)]
pub struct AllocOptions {
    /// Available widths, strictly ascending, each in `1..=16`. Default
    /// [`DEFAULT_TIERS`].
    pub tiers: Vec<u32>,
    /// The assignment rule. Default: equal quantiles.
    pub method: AllocMethod,
}

impl Default for AllocOptions {
    fn default() -> Self {
        Self {
            tiers: DEFAULT_TIERS.to_vec(),
            method: AllocMethod::Quantile { proportions: None },
        }
    }
}

/// Exhaustive search limit of [`AllocMethod::Groups`].
const MAX_GROUP_ASSIGNMENTS: u128 = 20_000_000;

/// Assigns every channel a width from `opts.tiers` by its score (higher = more
/// important). Every method is monotone: a channel with a strictly higher score
/// never gets fewer bits.
///
/// **Budget.** The total never exceeds `round(target · n)` bits and falls
/// short of it by less than the largest gap between adjacent tiers (with the
/// default tiers, by nothing unless the lowest two tiers run out), so
/// `|avg − target| ≤ (max tier − min tier) / n`. Among monotone assignments of
/// that total, it minimises the importance-weighted error proxy
/// `Σ_j s_j · 4^(−b_j)` ([`error_proxy`]): a channel's mean squared rounding
/// error scales as `Δ²/12` with the step `Δ ∝ 2^(−b)`, i.e. as `4^(−b)`, and its
/// importance says how much that error costs. As `4^(−b)` is convex, the gain
/// per bit of an upgrade shrinks with each tier, so the allocation starts
/// greedy: every channel at the lowest tier, then repeatedly the upgrade (one
/// channel, one tier up) with the largest `s_j · (4^(−b) − 4^(−b'))/(b' − b)`,
/// the most important channel of a tier first (which keeps monotonicity).
/// While every upgrade fits, each prefix of that order is a Lagrangian
/// solution, optimal for its own total. When the next upgrade of a tier no
/// longer fits in the bits left (a 2-bit step with 1 bit left), that tier stops
/// and the others go on. Near the end this can spend the last bits on cheap
/// upgrades of unimportant channels where one larger upgrade of an important
/// channel was worth more, so a polish follows: an exhaustive search over every
/// change of up to ±R channels at each tier boundary (R = 10 on five tiers),
/// re-centred until nothing improves. This matched brute force on every small
/// case tested (`tests/it/allocation.rs`), but it is not proven exact in general.
///
/// What the proxy implies: its continuous optimum is the classical
/// reverse water-filling `b_j ≈ b̄ + ½ log₂(s_j / geomean(s))`, one extra bit
/// per 4× importance. Scores nearly equal (a range of 0.98–1.02) give a nearly
/// uniform allocation, because a 4× error increase is never paid for by a 2%
/// importance difference. The proxy is the output error when `s_j` is the
/// output error per unit of squared weight error in channel `j` (`H_jj`-like,
/// as `obs` is); scores in square-root units (`magnitude`, `activation`,
/// `wanda`) can be squared first to match.
///
/// Errors: empty or non-finite scores, tiers out of `1..=16` or not strictly
/// ascending, a target outside `[min tier, max tier]`, thresholds of the wrong
/// length, non-finite or decreasing, proportions of the wrong length, negative
/// or not summing to 1, zero groups.
pub fn allocate_bits(scores: &[f32], opts: &AllocOptions) -> Result<Vec<u32>> {
    check_scores(scores)?;
    let tiers = &opts.tiers;
    check_tiers(tiers)?;
    let n = scores.len();
    match &opts.method {
        AllocMethod::Quantile { proportions } => {
            let props = match proportions {
                Some(p) => {
                    if p.len() != tiers.len() {
                        bail!(
                            "quantile: {} proportions for {} tiers",
                            p.len(),
                            tiers.len()
                        );
                    }
                    if let Some(x) = p.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                        bail!("quantile: proportions must be non-negative numbers, got {x}");
                    }
                    let sum: f64 = p.iter().sum();
                    if (sum - 1.0).abs() > 1e-6 {
                        bail!("quantile: proportions must sum to 1, they sum to {sum}");
                    }
                    p.clone()
                }
                None => vec![1.0 / tiers.len() as f64; tiers.len()],
            };
            let counts = largest_remainder(&props, n);
            let order = ascending_order(scores);
            let mut bits = vec![0u32; n];
            let mut rank = 0;
            for (t, &c) in counts.iter().enumerate() {
                for &j in &order[rank..rank + c] {
                    bits[j as usize] = tiers[t];
                }
                rank += c;
            }
            Ok(bits)
        }
        AllocMethod::Budget { target_avg } => {
            check_target(*target_avg, tiers)?;
            Ok(budget(scores, tiers, *target_avg))
        }
        AllocMethod::Threshold { thresholds } => {
            if thresholds.len() + 1 != tiers.len() {
                bail!(
                    "threshold: {} tiers need {} thresholds, got {}",
                    tiers.len(),
                    tiers.len() - 1,
                    thresholds.len()
                );
            }
            if let Some(x) = thresholds.iter().find(|x| !x.is_finite()) {
                bail!("threshold: thresholds must be finite, got {x}");
            }
            if let Some(w) = thresholds.windows(2).find(|w| w[1] < w[0]) {
                bail!(
                    "threshold: thresholds must be ascending, got {} after {} in {:?}",
                    w[1],
                    w[0],
                    thresholds
                );
            }
            Ok(scores
                .iter()
                .map(|&s| tiers[thresholds.partition_point(|&t| t <= s as f64)])
                .collect())
        }
        AllocMethod::Groups {
            target_avg,
            n_groups,
            grouping,
        } => {
            check_target(*target_avg, tiers)?;
            let g = n_groups.unwrap_or(tiers.len());
            let ids = group_channels(scores, g, *grouping)?;
            groups_to_tiers(scores, &ids, tiers, *target_avg)
        }
    }
}

/// Groups channels by score: `ids[j]` is channel `j`'s group, 0 for the least
/// important, ascending with the score. At most `n_groups` groups; fewer when
/// there are fewer channels (quantile) or distinct scores (k-means), and then
/// the ids are `0..used` with none empty.
///
/// K-means is the exact optimum of the within-group sum of squares: on the
/// sorted distinct values (with their multiplicities),
/// `D[g][i] = min_j D[g−1][j] + SSE(j..i)`, each `SSE` O(1) from prefix sums (of values centred on their
/// mean, against cancellation), and the minimising `j` is non-decreasing in `i`
/// (the cost is Monge), so each layer is solved by divide and conquer in
/// `O(m log m)`: `O(groups · m log m)` for `m` distinct values (Grønlund et al.,
/// "Fast exact k-means, k-medians and Bregman divergence clustering in 1D",
/// 2017). 1.78 million channels into 5 groups take about a second.
pub fn group_channels(scores: &[f32], n_groups: usize, method: GroupMethod) -> Result<Vec<usize>> {
    check_scores(scores)?;
    if n_groups == 0 {
        bail!("n_groups must be at least 1");
    }
    let n = scores.len();
    let order = ascending_order(scores);
    let mut ids = vec![0usize; n];
    match method {
        GroupMethod::Quantile => {
            for (rank, &j) in order.iter().enumerate() {
                ids[j as usize] = (rank as u128 * n_groups as u128 / n as u128) as usize;
            }
        }
        GroupMethod::KMeans => {
            // Distinct values and their multiplicities, ascending.
            let mut values: Vec<f64> = Vec::new();
            let mut weights: Vec<f64> = Vec::new();
            let mut which = vec![0u32; n]; // rank → distinct index
            for (rank, &j) in order.iter().enumerate() {
                let v = scores[j as usize] as f64;
                if values.last() != Some(&v) {
                    values.push(v);
                    weights.push(0.0);
                }
                *weights.last_mut().unwrap() += 1.0;
                which[rank] = (values.len() - 1) as u32;
            }
            let seg = kmeans_1d(&values, &weights, n_groups);
            for (rank, &j) in order.iter().enumerate() {
                ids[j as usize] = seg[which[rank] as usize];
            }
        }
    }
    Ok(ids)
}

/// Optimal 1-D k-means of sorted distinct `values` with `weights`: the segment
/// (0-based, ascending) of each value. See [`group_channels`].
fn kmeans_1d(values: &[f64], weights: &[f64], k: usize) -> Vec<usize> {
    let m = values.len();
    if m <= k {
        return (0..m).collect();
    }
    let total_w: f64 = weights.iter().sum();
    let mean = values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / total_w;
    let mut pw = vec![0f64; m + 1];
    let mut p1 = vec![0f64; m + 1];
    let mut p2 = vec![0f64; m + 1];
    for i in 0..m {
        let (x, w) = (values[i] - mean, weights[i]);
        pw[i + 1] = pw[i] + w;
        p1[i + 1] = p1[i] + w * x;
        p2[i + 1] = p2[i] + w * x * x;
    }
    // SSE of the values j..i (exclusive); rounding can make it a hair negative.
    let cost = |j: usize, i: usize| -> f64 {
        let w = pw[i] - pw[j];
        let s = p1[i] - p1[j];
        (p2[i] - p2[j] - s * s / w).max(0.0)
    };
    let mut prev: Vec<f64> = (0..=m)
        .map(|i| if i == 0 { 0.0 } else { cost(0, i) })
        .collect();
    // arg[g][i]: start of the last segment of the best split of 0..i into g+1.
    let mut arg: Vec<Vec<u32>> = vec![vec![0; m + 1]];
    for g in 1..k {
        let mut cur = vec![f64::INFINITY; m + 1];
        let mut a = vec![0u32; m + 1];
        // Prefixes 0..i with i ≥ g + 1 can be cut into g + 1 non-empty segments.
        solve_layer(
            &prev,
            &cost,
            g + 1,
            m,
            g,
            m - 1,
            &mut cur[g + 1..=m],
            &mut a[g + 1..=m],
        );
        prev = cur;
        arg.push(a);
    }
    let mut seg = vec![0usize; m];
    let mut end = m;
    for g in (0..k).rev() {
        let start = if g == 0 { 0 } else { arg[g][end] as usize };
        seg[start..end].fill(g);
        end = start;
    }
    seg
}

/// One DP layer by divide and conquer: for each `i` in `lo..=hi`, the best
/// `j` in `jlo..=min(jhi, i − 1)` of `prev[j] + cost(j, i)`, into `out[i − lo]`
/// and `arg[i − lo]` (leftmost minimum). Halves run in parallel when large.
#[allow(clippy::too_many_arguments)]
fn solve_layer<C: Fn(usize, usize) -> f64 + Sync>(
    prev: &[f64],
    cost: &C,
    lo: usize,
    hi: usize,
    jlo: usize,
    jhi: usize,
    out: &mut [f64],
    arg: &mut [u32],
) {
    if lo > hi {
        return;
    }
    let mid = lo + (hi - lo) / 2;
    let (mut best, mut best_j) = (f64::INFINITY, jlo);
    for (j, &p) in prev.iter().enumerate().take(jhi.min(mid - 1) + 1).skip(jlo) {
        let v = p + cost(j, mid);
        if v < best {
            best = v;
            best_j = j;
        }
    }
    let (out_l, out_r) = out.split_at_mut(mid - lo);
    let (arg_l, arg_r) = arg.split_at_mut(mid - lo);
    out_r[0] = best;
    arg_r[0] = best_j as u32;
    let (out_r, arg_r) = (&mut out_r[1..], &mut arg_r[1..]);
    let left = |o: &mut [f64], a: &mut [u32]| {
        if mid > lo {
            solve_layer(prev, cost, lo, mid - 1, jlo, best_j, o, a)
        }
    };
    let right =
        |o: &mut [f64], a: &mut [u32]| solve_layer(prev, cost, mid + 1, hi, best_j, jhi, o, a);
    if hi - lo > 1 << 14 {
        rayon::join(|| left(out_l, arg_l), || right(out_r, arg_r));
    } else {
        left(out_l, arg_l);
        right(out_r, arg_r);
    }
}

/// The importance-weighted quantization-error proxy `Σ_j s_j · 4^(−b_j)` that
/// [`AllocMethod::Budget`] and [`AllocMethod::Groups`] minimise.
pub fn error_proxy(scores: &[f32], bits: &[u32]) -> f64 {
    scores
        .iter()
        .zip(bits)
        .map(|(&s, &b)| s as f64 * 0.25f64.powi(b as i32))
        .sum()
}

/// Share of channels in one tier from which an allocation over several tiers
/// is called concentrated ([`allocation_warning`]).
pub const CONCENTRATION_WARNING: f64 = 0.9;

/// What is suspicious about an allocation over `tiers`, if anything: all but a
/// sliver of the channels in one tier although several were offered (as
/// thresholds can do, putting most channels at the top width), or an average
/// further than [`TARGET_TOLERANCE`](crate::report::TARGET_TOLERANCE) from
/// `target`. `why` is appended: the reason the method at hand tends to do this.
pub fn allocation_warning(
    bits: &[u32],
    tiers: &[u32],
    target: Option<f64>,
    why: &str,
) -> Option<String> {
    if bits.is_empty() {
        return None;
    }
    let n = bits.len() as f64;
    let avg = average_bits(bits);
    let mut problems = Vec::new();
    if let Some(t) = target {
        if (avg - t).abs() > crate::report::TARGET_TOLERANCE {
            problems.push(format!(
                "the average is {avg:.3} bits against a target of {t} (off by {:+.3})",
                avg - t
            ));
        }
    }
    if tiers.len() > 1 {
        let (tier, count) = tiers
            .iter()
            .map(|&t| (t, bits.iter().filter(|&&b| b == t).count()))
            .max_by_key(|&(_, c)| c)
            .expect("tiers is not empty");
        if count as f64 >= CONCENTRATION_WARNING * n {
            problems.push(format!(
                "{:.1}% of the {} channels got {tier} bits although the tiers are {tiers:?}",
                100.0 * count as f64 / n,
                bits.len()
            ));
        }
    }
    if problems.is_empty() {
        return None;
    }
    let mut msg = problems.join("; ");
    if !why.is_empty() {
        msg.push_str(": ");
        msg.push_str(why);
    }
    Some(msg)
}

/// Why a score-based method may collapse to one tier, from the scores' range.
pub fn score_spread_note(scores: &[f32], method: &AllocMethod) -> String {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
    let span = if lo > 0.0 {
        format!("scores span {:.2}×", hi / lo)
    } else {
        format!("scores range over [{lo:.3e}, {hi:.3e}]")
    };
    match method {
        AllocMethod::Budget { .. } | AllocMethod::Groups { .. } => format!(
            "{span}, too narrow for the budget objective Σ s·4^(−b), which moves a channel one \
             tier only for a 4× difference in importance; method `error` (channel_errors) \
             weighs measured errors instead"
        ),
        AllocMethod::Threshold { thresholds } => {
            format!("{span} and the thresholds are {thresholds:?}: they sit outside most scores")
        }
        AllocMethod::Quantile { .. } => format!("{span}; the proportions put them there"),
    }
}

/// Mean of a bit assignment (0 for an empty one).
pub fn average_bits(bits: &[u32]) -> f64 {
    if bits.is_empty() {
        return 0.0;
    }
    bits.iter().map(|&b| b as f64).sum::<f64>() / bits.len() as f64
}

/// Splits a model-wide vector (scores or widths over the concatenated channels
/// of several linears) back into one vector per linear, `sizes` giving each
/// linear's channel count in concatenation order. Errors when the sizes do not
/// add up to the length.
pub fn split_per_linear<T: Clone>(values: &[T], sizes: &[usize]) -> Result<Vec<Vec<T>>> {
    let total: usize = sizes.iter().sum();
    if total != values.len() {
        bail!(
            "cannot split {} values into linears of {} channels in all ({} linears)",
            values.len(),
            total,
            sizes.len()
        );
    }
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &s in sizes {
        out.push(values[start..start + s].to_vec());
        start += s;
    }
    Ok(out)
}

fn check_scores(scores: &[f32]) -> Result<()> {
    if scores.is_empty() {
        bail!("no scores: there are no channels to allocate");
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!(
            "score of channel {i} is not finite ({}); importance scores must be finite numbers",
            scores[i]
        );
    }
    Ok(())
}

/// Tiers must be non-empty, strictly ascending, each in `1..=16`.
pub(crate) fn check_tiers(tiers: &[u32]) -> Result<()> {
    if tiers.is_empty() {
        bail!("tiers: at least one bit width is needed");
    }
    if let Some(b) = tiers.iter().find(|b| !(1..=16).contains(*b)) {
        bail!("tiers: bit widths must be in 1..=16, got {b} in {tiers:?}");
    }
    if tiers.windows(2).any(|w| w[1] <= w[0]) {
        bail!("tiers must be strictly ascending without duplicates, got {tiers:?}");
    }
    Ok(())
}

fn check_target(target: f64, tiers: &[u32]) -> Result<()> {
    let (lo, hi) = (tiers[0] as f64, *tiers.last().unwrap() as f64);
    if !(target.is_finite() && target >= lo && target <= hi) {
        bail!("target_avg {target} is outside the tiers' range [{lo}, {hi}] ({tiers:?})");
    }
    Ok(())
}

/// Channel indices by ascending score, ties by index.
fn ascending_order(scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.par_sort_unstable_by(|&a, &b| {
        scores[a as usize]
            .total_cmp(&scores[b as usize])
            .then(a.cmp(&b))
    });
    order
}

/// Integer counts proportional to `props` summing to `n`: floors, then one more
/// to the largest remainders (ties to the lower index).
fn largest_remainder(props: &[f64], n: usize) -> Vec<usize> {
    let exact: Vec<f64> = props.iter().map(|p| p * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let assigned: usize = counts.iter().sum();
    let mut rest: Vec<usize> = (0..props.len()).collect();
    rest.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.partial_cmp(&ra)
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &t in rest.iter().take(n.saturating_sub(assigned)) {
        counts[t] += 1;
    }
    counts
}

/// The budget allocation (see [`allocate_bits`]).
///
/// State: channels in descending score order; `taken[t]` = how many of the
/// most important channels have been lifted from tier `t` to `t + 1`, so the
/// channel of rank `r` sits at tier `#{t : taken[t] > r}`. Monotonicity is
/// `taken[0] ≥ taken[1] ≥ …`, and the next upgrade of transition `t` is rank
/// `taken[t]`, allowed while `taken[t] < taken[t − 1]`.
fn budget(scores: &[f32], tiers: &[u32], target: f64) -> Vec<u32> {
    let n = scores.len();
    let nt = tiers.len() - 1;
    let desc: Vec<u32> = ascending_order(scores).into_iter().rev().collect();
    let s = |r: usize| scores[desc[r] as usize] as f64;
    let step: Vec<i64> = (0..nt).map(|t| (tiers[t + 1] - tiers[t]) as i64).collect();
    let rate: Vec<f64> = (0..nt)
        .map(|t| {
            (0.25f64.powi(tiers[t] as i32) - 0.25f64.powi(tiers[t + 1] as i32)) / step[t] as f64
        })
        .collect();
    let total = (target * n as f64).round() as i64;
    let mut remaining = total - tiers[0] as i64 * n as i64;
    let mut taken = vec![0usize; nt];
    let mut open = vec![true; nt];
    let limit = |taken: &[usize], t: usize| if t == 0 { n } else { taken[t - 1] };

    loop {
        let mut best: Option<(usize, f64)> = None;
        for t in 0..nt {
            if !open[t] {
                continue;
            }
            if taken[t] >= limit(&taken, t) {
                // Blocked for good once the transition below it has stopped.
                if t == 0 || !open[t - 1] {
                    open[t] = false;
                }
                continue;
            }
            let gain = s(taken[t]) * rate[t];
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((t, gain));
            }
        }
        let Some((t, _)) = best else { break };
        if step[t] <= remaining {
            taken[t] += 1;
            remaining -= step[t];
        } else {
            open[t] = false;
        }
    }

    polish(
        &mut taken,
        &desc,
        scores,
        tiers,
        total - tiers[0] as i64 * n as i64,
    );
    let mut bits = vec![0u32; n];
    for (r, &j) in desc.iter().enumerate() {
        let tier = taken.iter().filter(|&&k| k > r).count();
        bits[j as usize] = tiers[tier];
    }
    bits
}

/// Candidates a polish round may examine.
const POLISH_CANDIDATES: f64 = 200_000.0;

/// Improves a greedy budget solution `taken` (see [`budget`]) by exhaustive
/// search of every change of at most `±R` channels at each tier boundary,
/// re-centred on the best until nothing improves. `R` is the largest radius
/// with `(2R + 1)^(tiers − 1)` at most [`POLISH_CANDIDATES`] (10 on five tiers,
/// capped at 64; 0, no polish, from 13 tiers on).
///
/// Why: the greedy is exact only while every upgrade it meets fits. Near the
/// end of the budget, it may fill the last bits with cheap one-bit upgrades of
/// unimportant channels where one two-bit upgrade of an important channel was
/// worth more (a knapsack effect). Those are moves of a few channels at a few
/// boundaries, which the window covers. Candidates are ranked by the bits left
/// under the budget (fewer first), then by the proxy, computed in O(tiers) from
/// prefix sums of the sorted scores: with `P(k)` the sum of the `k` highest
/// scores, `Σ_j s_j 4^(−b_j) = 4^(−b_0) P(n) − Σ_t (4^(−b_t) − 4^(−b_(t+1))) P(k_t)`.
fn polish(taken: &mut [usize], desc: &[u32], scores: &[f32], tiers: &[u32], budget: i64) {
    let nt = taken.len();
    if nt == 0 {
        return;
    }
    let radius = (((POLISH_CANDIDATES.powf(1.0 / nt as f64) - 1.0) / 2.0).floor() as i64).min(64);
    if radius < 1 {
        return;
    }
    let n = desc.len();
    let mut prefix = vec![0f64; n + 1];
    for (r, &j) in desc.iter().enumerate() {
        prefix[r + 1] = prefix[r] + scores[j as usize] as f64;
    }
    let step: Vec<i64> = (0..nt).map(|t| (tiers[t + 1] - tiers[t]) as i64).collect();
    let drop: Vec<f64> = (0..nt)
        .map(|t| 0.25f64.powi(tiers[t] as i32) - 0.25f64.powi(tiers[t + 1] as i32))
        .collect();
    // (bits left under the budget, proxy without its constant term)
    let key = |k: &[usize]| -> Option<(i64, f64)> {
        let used: i64 = k.iter().zip(&step).map(|(&k, &w)| k as i64 * w).sum();
        let left = budget - used;
        (left >= 0).then(|| {
            let gain: f64 = k.iter().zip(&drop).map(|(&k, &d)| d * prefix[k]).sum();
            (left, -gain)
        })
    };
    let better =
        |a: (i64, f64), b: (i64, f64)| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1 - 1e-15 * b.1.abs());
    let mut best = key(taken).expect("the greedy never exceeds the budget");
    let side = (2 * radius + 1) as usize;
    let mut cand = vec![0usize; nt];
    loop {
        let centre = taken.to_vec();
        let mut improved = false;
        'combos: for code in 0..side.pow(nt as u32) {
            let mut c = code;
            for t in 0..nt {
                let k = centre[t] as i64 + (c % side) as i64 - radius;
                c /= side;
                let upper = if t == 0 { n } else { cand[t - 1] };
                if k < 0 || k as usize > upper {
                    continue 'combos;
                }
                cand[t] = k as usize;
            }
            if let Some(k) = key(&cand) {
                if better(k, best) {
                    best = k;
                    taken.copy_from_slice(&cand);
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
}

/// The group allocation (see [`AllocMethod::Groups`]).
fn groups_to_tiers(scores: &[f32], ids: &[usize], tiers: &[u32], target: f64) -> Result<Vec<u32>> {
    let ng = ids.iter().max().map_or(0, |m| m + 1);
    let mut size = vec![0u64; ng];
    let mut sum = vec![0f64; ng];
    for (&g, &s) in ids.iter().zip(scores) {
        size[g] += 1;
        sum[g] += s as f64;
    }
    let nt = tiers.len();
    let count = binomial((ng + nt - 1) as u128, (nt - 1) as u128);
    if count > MAX_GROUP_ASSIGNMENTS {
        bail!(
            "groups: {ng} groups over {nt} tiers have {count} monotone assignments, more than the \
             {MAX_GROUP_ASSIGNMENTS} searched exhaustively; use fewer groups or method `budget`"
        );
    }
    let goal = target * scores.len() as f64;

    struct Search<'a> {
        size: &'a [u64],
        sum: &'a [f64],
        tiers: &'a [u32],
        goal: f64,
        cur: Vec<usize>,
        best: Option<(f64, f64, Vec<usize>)>,
    }
    impl Search<'_> {
        fn go(&mut self, g: usize, min_tier: usize, bits: u64, cost: f64) {
            if g == self.size.len() {
                let miss = (bits as f64 - self.goal).abs();
                let better = match &self.best {
                    None => true,
                    // Closer by more than rounding, or as close and cheaper.
                    Some((m, c, _)) => miss < m - 1e-9 || (miss <= m + 1e-9 && cost < *c),
                };
                if better {
                    self.best = Some((miss, cost, self.cur.clone()));
                }
                return;
            }
            for t in min_tier..self.tiers.len() {
                let b = self.tiers[t];
                self.cur.push(t);
                self.go(
                    g + 1,
                    t,
                    bits + self.size[g] * b as u64,
                    cost + self.sum[g] * 0.25f64.powi(b as i32),
                );
                self.cur.pop();
            }
        }
    }
    let mut search = Search {
        size: &size,
        sum: &sum,
        tiers,
        goal,
        cur: Vec::with_capacity(ng),
        best: None,
    };
    search.go(0, 0, 0, 0.0);
    let (_, _, choice) = search.best.context("groups: no assignment found")?;
    Ok(ids.iter().map(|&g| tiers[choice[g]]).collect())
}

fn binomial(n: u128, k: u128) -> u128 {
    let mut r: u128 = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_remainder_sums() {
        assert_eq!(
            largest_remainder(&[0.2; 5], 9216),
            vec![1844, 1843, 1843, 1843, 1843]
        );
        assert_eq!(largest_remainder(&[0.5, 0.5], 3), vec![2, 1]);
        assert_eq!(largest_remainder(&[0.0, 1.0], 3), vec![0, 3]);
    }

    #[test]
    fn binomial_small() {
        assert_eq!(binomial(9, 4), 126);
        assert_eq!(binomial(5, 0), 1);
    }

    #[test]
    fn kmeans_separates_obvious_clusters() {
        let s = [1.0, 1.1, 0.9, 10.0, 10.2, 5.0, 5.1];
        let ids = group_channels(&s, 3, GroupMethod::KMeans).unwrap();
        assert_eq!(ids, vec![0, 0, 0, 2, 2, 1, 1]);
        // Fewer distinct values than groups: one group per value.
        let ids = group_channels(&[3.0, 1.0, 3.0], 5, GroupMethod::KMeans).unwrap();
        assert_eq!(ids, vec![1, 0, 1]);
    }

    #[test]
    fn budget_repair_gets_closer_with_coarse_tiers() {
        // Tiers [2, 4, 8], target 5 on 7 channels: 35 bits; totals are even, so
        // 34 is the best possible.
        let s: Vec<f32> = (1..=7).map(|i| i as f32).collect();
        let bits = allocate_bits(
            &s,
            &AllocOptions {
                tiers: vec![2, 4, 8],
                method: AllocMethod::Budget { target_avg: 5.0 },
            },
        )
        .unwrap();
        let total: u32 = bits.iter().sum();
        assert_eq!(total, 34, "{bits:?}");
        assert!(bits.windows(2).all(|w| w[0] <= w[1]), "{bits:?}");
    }
}
