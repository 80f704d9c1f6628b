//! Rich display in notebooks: MIME bundles and evcxr's content blocks.
//!
//! Each displayable type ([`Plot`], [`Summary`], [`CompareTable`], and the
//! script layer's `Vector`, which uses `rich_display!` from its own module so
//! that charts do not depend on scripts) has
//! - `mime_bundle()`: `(MIME type, data)` pairs, richest first, binary data
//!   base64-encoded as Jupyter's `display_data` wants it (a native kernel sends
//!   these as they are);
//! - `html()`: the HTML form alone;
//! - `write_evcxr(w)`: the bundle as the blocks the evcxr kernel reads from a
//!   cell's stdout, `EVCXR_BEGIN_CONTENT <mime>\n<data>\nEVCXR_END_CONTENT\n`
//!   per type, exactly what `evcxr_runtime::mime_type(m).text(data)` prints;
//! - `evcxr_display()`: `write_evcxr` on stdout. evcxr calls this method on
//!   the value of a cell's last expression, so `plot` alone on a line shows the
//!   chart inline.
//!
//! The [`RichDisplay`] trait gives the same to generic code, and each type
//! also implements `evcxr_runtime::Display` through evcxr_runtime's own
//! emitters.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::table::fmt_cell;
use super::{CompareTable, Plot};
use crate::report::summary::Summary;

/// A value that a notebook can show richly.
pub trait RichDisplay {
    /// `(MIME type, data)` pairs, richest first; binary data base64-encoded.
    fn mime_bundle(&self) -> Vec<(&'static str, String)>;

    /// The bundle as evcxr content blocks.
    fn write_evcxr(&self, w: &mut dyn Write) -> io::Result<()> {
        write_evcxr_blocks(w, &self.mime_bundle())
    }
}

/// Writes `(mime, data)` pairs as evcxr content blocks, byte for byte what
/// `evcxr_runtime::mime_type(mime).text(data)` prints for each, then flushes.
pub fn write_evcxr_blocks(w: &mut dyn Write, bundle: &[(&str, String)]) -> io::Result<()> {
    for (mime, data) in bundle {
        writeln!(w, "EVCXR_BEGIN_CONTENT {mime}\n{data}\nEVCXR_END_CONTENT")?;
    }
    w.flush()
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Inherent `mime_bundle`/`write_evcxr`/`evcxr_display` (so that evcxr finds
/// `evcxr_display` without a trait import) and the two trait impls, for a type
/// with an inherent `mime_bundle()`.
macro_rules! rich_display {
    ($t:ty) => {
        impl $t {
            /// The value as evcxr content blocks (see the [module docs](crate::plot::display)).
            pub fn write_evcxr(&self, w: &mut dyn ::std::io::Write) -> ::std::io::Result<()> {
                $crate::plot::display::write_evcxr_blocks(w, &self.mime_bundle())
            }

            /// Shows the value in an evcxr notebook: [`write_evcxr`](Self::write_evcxr)
            /// on stdout.
            pub fn evcxr_display(&self) {
                let stdout = ::std::io::stdout();
                let mut lock = stdout.lock();
                // A closed stdout has nowhere to report to.
                let _ = self.write_evcxr(&mut lock);
            }
        }

        impl $crate::plot::display::RichDisplay for $t {
            fn mime_bundle(&self) -> Vec<(&'static str, String)> {
                <$t>::mime_bundle(self)
            }
        }

        impl ::evcxr_runtime::Display for $t {
            fn evcxr_display(&self) {
                for (mime, data) in <$t>::mime_bundle(self) {
                    ::evcxr_runtime::mime_type(mime).text(data);
                }
            }
        }
    };
}
pub(crate) use rich_display;

rich_display!(Plot);
rich_display!(Summary);
rich_display!(CompareTable);

impl Plot {
    /// `image/png` (base64), `image/svg+xml` and `text/plain`.
    pub fn mime_bundle(&self) -> Vec<(&'static str, String)> {
        vec![
            ("image/png", base64::encode(self.png())),
            ("image/svg+xml", self.svg().to_string()),
            ("text/plain", self.to_string()),
        ]
    }

    /// An `<img>` with the PNG inline as a data URL.
    pub fn html(&self) -> String {
        format!(
            "<img src=\"data:image/png;base64,{}\" alt=\"{}\" width=\"{}\" height=\"{}\"/>",
            base64::encode(self.png()),
            escape(self.title()),
            self.width(),
            self.height()
        )
    }
}

impl CompareTable {
    /// `text/html` and `text/plain`.
    pub fn mime_bundle(&self) -> Vec<(&'static str, String)> {
        vec![
            ("text/html", self.html()),
            ("text/plain", self.to_string().trim_end().to_string()),
        ]
    }
}

/// An HTML table cell aligned right (numbers).
pub(crate) const TD: &str = "<td style=\"text-align:right\">";
/// An HTML table cell aligned left (names, lists).
pub(crate) const TDL: &str = "<td style=\"text-align:left\">";

fn bits(a: Option<f64>) -> String {
    a.map(|a| format!("{a:.2}"))
        .unwrap_or_else(|| "float".to_string())
}

fn tiers_text(tiers: &[crate::report::summary::TierCount]) -> String {
    tiers
        .iter()
        .map(|t| format!("{}b {:.1}%", t.bits, t.percent))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary {
    /// `text/html` and `text/plain` (the text report).
    pub fn mime_bundle(&self) -> Vec<(&'static str, String)> {
        vec![
            ("text/html", self.html()),
            ("text/plain", self.to_string().trim_end().to_string()),
        ]
    }

    /// The summary as HTML: warnings first (in red), the totals and average
    /// against the target, channels per bit width, a table per linear type and,
    /// folded, one per linear; a missed target once more at the end. Well-formed (XHTML) so that it parses as XML.
    pub fn html(&self) -> String {
        let mut h = String::from("<div class=\"sparselab-summary\">");
        for w in &self.warnings {
            let _ = write!(h, "<p style=\"color:#b00020\"><b>{}</b></p>", escape(w));
        }
        let avg = match (self.avg_bits, self.target_avg) {
            (Some(a), Some(t)) => format!(
                "average {a:.3} bits (target {t:.3}, {}{:.3})",
                if a >= t { "+" } else { "" },
                a - t
            ),
            (Some(a), None) => format!("average {a:.3} bits"),
            (None, _) => "no channel quantized".to_string(),
        };
        let _ = write!(
            h,
            "<p>{} linears ({} quantized), {} input channels ({} quantized); {}</p>",
            self.linears, self.quantized_linears, self.total_channels, self.quantized_channels, avg
        );
        if !self.tiers.is_empty() {
            h += "<table><caption>channels per bit width</caption><thead><tr>\
                  <th>bits</th><th>channels</th><th>%</th></tr></thead><tbody>";
            for t in &self.tiers {
                let _ = write!(
                    h,
                    "<tr>{TD}{}</td>{TD}{}</td>{TD}{:.2}</td></tr>",
                    t.bits, t.channels, t.percent
                );
            }
            h += "</tbody></table>";
        }
        if !self.per_type.is_empty() {
            h += "<table><caption>per linear type</caption><thead><tr><th>type</th>\
                  <th>linears</th><th>channels</th><th>avg bits</th><th>bit widths</th>\
                  <th>sparsity</th><th>mean error</th><th>importance range</th>\
                  </tr></thead><tbody>";
            for t in &self.per_type {
                let range = t
                    .importance_range
                    .map(|(lo, hi)| format!("{lo:.3} – {hi:.3}"))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<tr>{TDL}{}</td>{TD}{}</td>{TD}{}</td>{TD}{}</td>{TDL}{}</td>\
                     {TD}{:.1}%</td>{TD}{:.1e}</td>{TD}{}</td></tr>",
                    escape(&t.kind),
                    t.linears,
                    t.channels,
                    bits(t.avg_bits),
                    escape(&tiers_text(&t.tiers)),
                    100.0 * t.sparsity,
                    t.mean_rel_error,
                    range
                );
            }
            h += "</tbody></table>";
        }
        if !self.per_linear.is_empty() {
            let _ = write!(
                h,
                "<details><summary>per linear ({})</summary><table><thead><tr>\
                 <th>linear</th><th>method</th><th>channels</th><th>avg bits</th>\
                 <th>sparsity</th><th>rel. error</th><th>loss</th><th>importance</th>\
                 </tr></thead><tbody>",
                self.per_linear.len()
            );
            for l in &self.per_linear {
                let importance = l
                    .importance
                    .as_ref()
                    .map(|n| format!("{} {:.3} – {:.3}", n.metric, n.min, n.max))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<tr>{TDL}{}</td>{TDL}{}</td>{TD}{}</td>{TD}{}</td>{TD}{:.1}%</td>\
                     {TD}{:.1e}</td>{TD}{}</td>{TDL}{}</td></tr>",
                    escape(&l.name),
                    escape(&l.method),
                    l.channels,
                    bits(l.avg_bits),
                    100.0 * l.sparsity,
                    l.rel_error,
                    l.loss.map(fmt_cell).unwrap_or_default(),
                    escape(&importance)
                );
            }
            h += "</tbody></table></details>";
        }
        // A miss closes the display too, below the tables it would scroll past.
        if let Some(missed) = self.missed_target_line() {
            let _ = write!(
                h,
                "<p style=\"color:#b00020\"><b>{}</b></p>",
                escape(missed)
            );
        }
        h += "</div>";
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_evcxr_format() {
        let mut out = Vec::new();
        write_evcxr_blocks(
            &mut out,
            &[
                ("text/html", "<b>x</b>".to_string()),
                ("text/plain", "a\nb".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "EVCXR_BEGIN_CONTENT text/html\n<b>x</b>\nEVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT text/plain\na\nb\nEVCXR_END_CONTENT\n"
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("a<b> & \"c\" 'd'"),
            "a&lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;"
        );
    }

    #[test]
    fn compare_table_blocks_exactly() {
        let t = CompareTable::perplexity(["wikitext2"])
            .with_row("dense <ref>", vec![27.5])
            .unwrap();
        let mut out = Vec::new();
        t.write_evcxr(&mut out).unwrap();
        let expected = format!(
            "EVCXR_BEGIN_CONTENT text/html\n\
             <table class=\"sparselab-compare\"><thead><tr><th style=\"text-align:left\">perplexity</th>\
             <th style=\"text-align:right\">wikitext2</th></tr></thead><tbody><tr>\
             <td style=\"text-align:left\">dense &lt;ref&gt;</td>\
             <td style=\"text-align:right\"><b>27.50</b></td></tr></tbody></table>\n\
             EVCXR_END_CONTENT\n\
             EVCXR_BEGIN_CONTENT text/plain\n{}\nEVCXR_END_CONTENT\n",
            t.to_string().trim_end()
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
