//! Charts of compression runs, rendered in memory as SVG and PNG, and rich
//! display of plots, summaries and comparison tables in notebooks.
//!
//! Every chart is a [`Plot`]: its SVG text and PNG bytes are rendered when it is
//! made and kept in memory (for a notebook), and [`Plot::save`] writes either one
//! to a file. Text is drawn with DejaVu Sans compiled into the binary
//! ([`ensure_fonts`]), so a chart renders the same on a machine with no fonts
//! installed; plotters' system-font lookup (`ttf`) is not compiled in.
//!
//! The chart functions take plain data, so that a scripting layer can wrap them:
//! [`histogram`] (any values), [`bits_chart`] (channels per bit tier, overall and
//! per linear type), [`layers_chart`] (one field of a [`Summary`] per layer) and
//! [`compare_chart`] (a [`CompareTable`] of perplexities).
//!
//! [`display`] gives [`Plot`], [`Summary`] and [`CompareTable`] their MIME
//! bundles (`image/png`, `image/svg+xml`, `text/html`, `text/plain`), the
//! `evcxr_display` method the evcxr Jupyter kernel calls, and the same bundles
//! for a native kernel.
//!
//! [`Summary`]: crate::report::summary::Summary

mod charts;
pub mod display;
mod render;
mod table;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

pub use charts::{
    bits_chart, compare_chart, histogram, layers_chart, xy_chart, HistOptions, XyOptions,
    LAYER_FIELDS,
};
pub use display::RichDisplay;
pub use render::ensure_fonts;
pub use table::CompareTable;

use render::Spec;

/// The size a chart is rendered at unless asked otherwise, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);

/// The two file formats a [`Plot`] is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    /// A raster image (RGB, 8 bits per channel).
    Png,
    /// Vector graphics; text stays text (a viewer draws it with its own
    /// sans-serif font).
    Svg,
}

impl PlotFormat {
    /// `png` or `svg`, any case.
    pub fn parse(name: &str) -> Result<PlotFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "png" => Ok(PlotFormat::Png),
            "svg" => Ok(PlotFormat::Svg),
            other => bail!("unknown plot format `{other}`: use `png` or `svg`"),
        }
    }

    /// The format a path's extension names, if it names one.
    pub fn from_path(path: &Path) -> Option<PlotFormat> {
        let ext = path.extension()?.to_str()?;
        PlotFormat::parse(ext).ok()
    }

    /// The MIME type (`image/png`, `image/svg+xml`).
    pub fn mime(&self) -> &'static str {
        match self {
            PlotFormat::Png => "image/png",
            PlotFormat::Svg => "image/svg+xml",
        }
    }
}

impl fmt::Display for PlotFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlotFormat::Png => "png",
            PlotFormat::Svg => "svg",
        })
    }
}

/// A rendered chart: its SVG text and PNG bytes, both kept in memory.
///
/// Made by the chart functions ([`histogram`], [`bits_chart`], [`layers_chart`],
/// [`compare_chart`]); [`Plot::with_size`] renders the same chart at another
/// size.
#[derive(Clone)]
pub struct Plot {
    spec: Arc<Spec>,
    width: u32,
    height: u32,
    svg: String,
    png: Vec<u8>,
}

impl Plot {
    /// Renders `spec` at `(width, height)` as SVG and PNG.
    fn render(spec: Arc<Spec>, (width, height): (u32, u32)) -> Result<Plot> {
        if width < 100 || height < 100 || width > 10_000 || height > 10_000 {
            bail!("plot size {width}x{height} is out of range (100 to 10000 pixels a side)");
        }
        let svg = render::svg(&spec, (width, height))
            .with_context(|| format!("drawing `{}` as SVG", spec.title()))?;
        let png = render::png(&spec, (width, height))
            .with_context(|| format!("drawing `{}` as PNG", spec.title()))?;
        Ok(Plot {
            spec,
            width,
            height,
            svg,
            png,
        })
    }

    /// The same chart rendered at another size (fonts scale with the height).
    pub fn with_size(&self, width: u32, height: u32) -> Result<Plot> {
        Plot::render(self.spec.clone(), (width, height))
    }

    /// The same chart under another title.
    pub fn with_title(&self, title: &str) -> Result<Plot> {
        let mut spec = Spec::clone(&self.spec);
        spec.set_title(title.to_string());
        Plot::render(Arc::new(spec), (self.width, self.height))
    }

    /// The chart's title.
    pub fn title(&self) -> &str {
        self.spec.title()
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> &str {
        &self.svg
    }

    /// The chart as a PNG file's bytes.
    pub fn png(&self) -> &[u8] {
        &self.png
    }

    /// The bytes of the chart in `format`.
    pub fn bytes(&self, format: PlotFormat) -> &[u8] {
        match format {
            PlotFormat::Png => &self.png,
            PlotFormat::Svg => self.svg.as_bytes(),
        }
    }

    /// Writes the chart to `path`, as PNG or SVG by its extension (`.png`,
    /// `.svg`, any case). Errors name the path: an extension that names neither
    /// format, or a failed write.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let Some(format) = PlotFormat::from_path(path) else {
            bail!(
                "cannot tell the plot format of {}: give it a .png or .svg extension, or a format",
                path.display()
            );
        };
        self.save_as(path, format)
    }

    /// Writes the chart to `path` in `format`, whatever the extension.
    pub fn save_as(&self, path: impl AsRef<Path>, format: PlotFormat) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.bytes(format))
            .with_context(|| format!("cannot write the {format} plot to {}", path.display()))
    }
}

impl fmt::Debug for Plot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plot")
            .field("title", &self.title())
            .field("width", &self.width)
            .field("height", &self.height)
            .field("svg_bytes", &self.svg.len())
            .field("png_bytes", &self.png.len())
            .finish()
    }
}

impl fmt::Display for Plot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plot `{}` ({}x{}, PNG {} bytes, SVG {} bytes)",
            self.title(),
            self.width,
            self.height,
            self.png.len(),
            self.svg.len()
        )
    }
}
