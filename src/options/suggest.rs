//! "Did you mean …?": the nearest names to a misspelt one (option keys, methods,
//! functions), for every front end and for the combination rules.

/// Edit distance between two strings (by chars), counting an adjacent
/// transposition as one edit (optimal string alignment).
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

/// Up to `n` candidates close to `name`: an edit distance of at most a third of
/// the name's length (at least 1), or sharing a prefix of 4+ characters, or
/// containing it; nearest first, then alphabetically.
pub fn nearest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .filter(|c| *c != name && !c.is_empty())
        .filter_map(|c| {
            let cl = c.to_ascii_lowercase();
            let d = distance(&lower, &cl);
            let common = lower
                .chars()
                .zip(cl.chars())
                .take_while(|(x, y)| x == y)
                .count();
            let related = d <= limit
                || common >= 4
                || (lower.len() >= 3
                    && (cl.contains(&lower) || lower.contains(&cl) && cl.len() >= 3));
            related.then(|| (d, c.to_string()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_near_names() {
        assert_eq!(distance("prune_layr", "prune_layer"), 1);
        let c = ["prune_layer", "eval_ppl", "load_model", "calibrate"];
        assert_eq!(nearest("prune_layr", c, 3), vec!["prune_layer"]);
        assert_eq!(nearest("evalppl", c, 3), vec!["eval_ppl"]);
        assert!(nearest("zzzz", c, 3).is_empty());
        assert_eq!(distance("tabel", "table"), 1);
    }
}
