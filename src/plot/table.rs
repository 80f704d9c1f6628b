//! A comparison table: one metric (perplexity) of several configurations on
//! several datasets.

use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

use super::display::escape;

/// One configuration's values, one per column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// Configuration (`dense`, `50% sparsegpt`, `2:4 + 4 bits`, …).
    pub name: String,
    /// One value per column; NaN where missing.
    pub values: Vec<f64>,
}

/// Rows are configurations, columns are datasets, cells are `f64` values of
/// one metric (NaN where missing). `Display` gives an aligned text table and
/// [`CompareTable::html`] an HTML one, with the best value of each column
/// marked (the lowest unless `lower_is_better` is false).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareTable {
    /// What the cells are (`perplexity`): the corner of the table and the
    /// chart's axis.
    pub metric: String,
    /// Chart title; `None` gives "`metric` per dataset".
    pub title: Option<String>,
    /// Whether the smallest value of a column is the best one. Default true.
    pub lower_is_better: bool,
    /// Dataset names.
    pub columns: Vec<String>,
    /// Configurations, in insertion order.
    pub rows: Vec<CompareRow>,
}

impl CompareTable {
    /// An empty table of `metric` over the given columns.
    pub fn new<S: Into<String>>(metric: &str, columns: impl IntoIterator<Item = S>) -> Self {
        CompareTable {
            metric: metric.to_string(),
            title: None,
            lower_is_better: true,
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// An empty table of perplexities over the given datasets.
    pub fn perplexity<S: Into<String>>(datasets: impl IntoIterator<Item = S>) -> Self {
        Self::new("perplexity", datasets)
    }

    /// Appends a configuration with one value per column. Errors: a value
    /// count that differs from the column count, or a name already present.
    pub fn add_row(&mut self, name: &str, values: Vec<f64>) -> Result<()> {
        if values.len() != self.columns.len() {
            bail!(
                "row `{name}` has {} values; the table has {} columns ({})",
                values.len(),
                self.columns.len(),
                self.columns.join(", ")
            );
        }
        if self.rows.iter().any(|r| r.name == name) {
            bail!("the table already has a row `{name}`");
        }
        self.rows.push(CompareRow {
            name: name.to_string(),
            values,
        });
        Ok(())
    }

    /// [`add_row`](Self::add_row), by value.
    pub fn with_row(mut self, name: &str, values: Vec<f64>) -> Result<Self> {
        self.add_row(name, values)?;
        Ok(self)
    }

    /// Sets one cell, adding the row or the column (NaN elsewhere) if missing:
    /// a table can be filled one evaluation at a time.
    pub fn set(&mut self, row: &str, column: &str, value: f64) {
        let c = match self.columns.iter().position(|c| c == column) {
            Some(c) => c,
            None => {
                self.columns.push(column.to_string());
                for r in &mut self.rows {
                    r.values.push(f64::NAN);
                }
                self.columns.len() - 1
            }
        };
        let r = match self.rows.iter().position(|r| r.name == row) {
            Some(r) => r,
            None => {
                self.rows.push(CompareRow {
                    name: row.to_string(),
                    values: vec![f64::NAN; self.columns.len()],
                });
                self.rows.len() - 1
            }
        };
        self.rows[r].values[c] = value;
    }

    /// The value of one cell; `None` when the row or column is missing or the
    /// cell is NaN.
    pub fn get(&self, row: &str, column: &str) -> Option<f64> {
        let c = self.columns.iter().position(|c| c == column)?;
        let r = self.rows.iter().find(|r| r.name == row)?;
        Some(r.values[c]).filter(|v| !v.is_nan())
    }

    /// Index of the best row of each column (`None` for a column of NaNs).
    pub fn best(&self) -> Vec<Option<usize>> {
        (0..self.columns.len())
            .map(|c| {
                self.rows
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.values[c].is_finite())
                    .min_by(|(_, a), (_, b)| {
                        let o = a.values[c].total_cmp(&b.values[c]);
                        if self.lower_is_better {
                            o
                        } else {
                            o.reverse()
                        }
                    })
                    .map(|(i, _)| i)
            })
            .collect()
    }

    /// The table as HTML (a well-formed `<table>`; the best value of each
    /// column in bold).
    pub fn html(&self) -> String {
        let best = self.best();
        let mut h = String::from("<table class=\"sparselab-compare\">");
        if let Some(t) = &self.title {
            h += &format!("<caption>{}</caption>", escape(t));
        }
        h += &format!(
            "<thead><tr><th style=\"text-align:left\">{}</th>",
            escape(&self.metric)
        );
        for c in &self.columns {
            h += &format!("<th style=\"text-align:right\">{}</th>", escape(c));
        }
        h += "</tr></thead><tbody>";
        for (i, r) in self.rows.iter().enumerate() {
            h += &format!("<tr><td style=\"text-align:left\">{}</td>", escape(&r.name));
            for (c, v) in r.values.iter().enumerate() {
                let cell = fmt_cell(*v);
                if best[c] == Some(i) {
                    h += &format!("<td style=\"text-align:right\"><b>{cell}</b></td>");
                } else {
                    h += &format!("<td style=\"text-align:right\">{cell}</td>");
                }
            }
            h += "</tr>";
        }
        h += "</tbody></table>";
        h
    }
}

/// A cell: two decimals, scientific for very large or small values, `-` for NaN.
pub(crate) fn fmt_cell(v: f64) -> String {
    if v.is_nan() {
        "-".to_string()
    } else if v != 0.0 && v.is_finite() && (v.abs() >= 1e6 || v.abs() < 1e-2) {
        format!("{v:.3e}")
    } else {
        format!("{v:.2}")
    }
}

impl fmt::Display for CompareTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let best = self.best();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.values
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| {
                        let mark = if best[c] == Some(i) && self.rows.len() > 1 {
                            "*"
                        } else {
                            " "
                        };
                        format!("{}{mark}", fmt_cell(v))
                    })
                    .collect()
            })
            .collect();
        let first = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .chain([self.metric.chars().count()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, name)| {
                cells
                    .iter()
                    .map(|row| row[c].chars().count())
                    .chain([name.chars().count() + 1])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        if let Some(t) = &self.title {
            writeln!(f, "{t}")?;
        }
        write!(f, "{:<first$}", self.metric)?;
        for (c, name) in self.columns.iter().enumerate() {
            write!(f, "  {:>w$}", format!("{name} "), w = widths[c])?;
        }
        writeln!(f)?;
        for (r, row) in self.rows.iter().zip(&cells) {
            write!(f, "{:<first$}", r.name)?;
            for (c, cell) in row.iter().enumerate() {
                write!(f, "  {:>w$}", cell, w = widths[c])?;
            }
            writeln!(f)?;
        }
        if self.rows.len() > 1 {
            writeln!(
                f,
                "(* best of each column: {})",
                if self.lower_is_better {
                    "lowest"
                } else {
                    "highest"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CompareTable {
        CompareTable::perplexity(["wikitext2", "ptb"])
            .with_row("dense", vec![27.655, 38.99])
            .unwrap()
            .with_row("50% sparsegpt", vec![30.1, f64::NAN])
            .unwrap()
    }

    #[test]
    fn text_table_is_aligned() {
        let t = table().to_string();
        let expected = "\
perplexity     wikitext2     ptb 
dense              27.66*  38.99*
50% sparsegpt      30.10       - 
(* best of each column: lowest)
";
        assert_eq!(t, expected, "\n{t}");
    }

    #[test]
    fn rows_are_checked_and_cells_set() {
        let mut t = table();
        let e = t.add_row("x", vec![1.0]).unwrap_err();
        assert!(e.to_string().contains("has 1 values"), "{e}");
        let e = t.add_row("dense", vec![1.0, 2.0]).unwrap_err();
        assert!(e.to_string().contains("already has a row `dense`"), "{e}");
        t.set("2:4", "c4", 50.0);
        assert_eq!(t.columns, ["wikitext2", "ptb", "c4"]);
        assert_eq!(t.get("2:4", "c4"), Some(50.0));
        assert_eq!(t.get("2:4", "ptb"), None);
        assert_eq!(t.get("dense", "ptb"), Some(38.99));
        assert_eq!(t.best(), [Some(0), Some(0), Some(2)]);
    }

    #[test]
    fn html_marks_the_best() {
        let h = table().html();
        assert!(
            h.contains("<td style=\"text-align:right\"><b>27.66</b></td>"),
            "{h}"
        );
        assert!(h.contains("<td style=\"text-align:right\">-</td>"), "{h}");
    }
}
