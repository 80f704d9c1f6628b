//! Drawing chart specifications with plotters onto SVG and bitmap backends.
//!
//! A chart is first turned into a [`Spec`] (plain data: bins, bars or lines,
//! with their labels), then drawn by one generic routine per kind onto any
//! backend. Axes are [`Axis`] values whose ticks and tick labels are chosen
//! here (category names, powers of ten on log scales), and legends are drawn in
//! a margin to the right of the plotting area so that they never cover data.

use std::io::Cursor;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, KeyPointWeight, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// Registers the embedded DejaVu Sans (regular and bold) as plotters'
/// `sans-serif` family, once per process. Every chart calls it; no system font
/// is ever looked up (plotters' `ttf` feature is off).
pub fn ensure_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if !ok {
        bail!("the embedded DejaVu Sans font could not be registered");
    }
    Ok(())
}

/// Colours of successive series (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const NOTE: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// What a chart draws.
#[derive(Clone)]
pub(crate) enum Spec {
    Hist(HistSpec),
    Bars(BarsSpec),
    Lines(LinesSpec),
}

impl Spec {
    pub(crate) fn title(&self) -> &str {
        match self {
            Spec::Hist(s) => &s.title,
            Spec::Bars(s) => &s.title,
            Spec::Lines(s) => &s.title,
        }
    }

    /// Replaces the title (a script's `#{title}`).
    pub(crate) fn set_title(&mut self, title: String) {
        match self {
            Spec::Hist(s) => s.title = title,
            Spec::Bars(s) => s.title = title,
            Spec::Lines(s) => s.title = title,
        }
    }
}

/// Round ticks over `[lo, hi]`, at most about `max_ticks` of them.
pub(crate) fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<(f64, String)> {
    Axis::linear(lo, hi, max_ticks).ticks
}

/// Counts per bin.
#[derive(Clone)]
pub(crate) struct HistSpec {
    pub title: String,
    pub x_label: String,
    /// `counts.len() + 1` ascending bin edges.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    pub log_y: bool,
    /// Lines of text shown beside the chart (n, mean, …).
    pub notes: Vec<String>,
}

/// Grouped bars: one group per category, one bar per series.
#[derive(Clone)]
pub(crate) struct BarsSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// `(legend label, one value per category)`; `None` draws no bar.
    pub series: Vec<(String, Vec<Option<f64>>)>,
    pub log_y: bool,
    /// A fixed top of a linear axis (100 for percentages), raised a little
    /// when values are printed above the bars.
    pub y_max: Option<f64>,
    /// Print each bar's value above it (when the bars are few enough).
    pub value_labels: bool,
    /// Decimals of the printed values; `None`: about four significant digits.
    pub value_decimals: Option<usize>,
    /// Suffix of the printed values (`%`).
    pub value_suffix: String,
    pub notes: Vec<String>,
}

/// Lines with markers over numbered x positions.
#[derive(Clone)]
pub(crate) struct LinesSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `(x, label)` of each tick.
    pub x_ticks: Vec<(f64, String)>,
    pub x_range: (f64, f64),
    /// `(legend label, points)`; the last series is drawn dashed-black when
    /// `mean_series` is set.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub mean_series: bool,
    pub log_y: bool,
    /// The linear y axis starts at 0 (per-layer quantities); otherwise it fits
    /// the values (perplexities that differ in the third digit).
    pub y_from_zero: bool,
    pub notes: Vec<String>,
}

/// Renders `spec` as an SVG document.
pub(crate) fn svg(spec: &Spec, size: (u32, u32)) -> Result<String> {
    ensure_fonts()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(spec, &root, size)?;
        root.present().map_err(de)?;
    }
    Ok(out)
}

/// Renders `spec` as a PNG file (RGB, 8 bits).
pub(crate) fn png(spec: &Spec, (w, h): (u32, u32)) -> Result<Vec<u8>> {
    ensure_fonts()?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(spec, &root, (w, h))?;
        root.present().map_err(de)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(Cursor::new(&mut out), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

fn de<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("{e}")
}

/// One axis: a linear range with chosen ticks and their labels.
#[derive(Clone, Debug)]
pub(crate) struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn label(&self, v: f64) -> String {
        self.ticks
            .iter()
            .find(|(t, _)| (t - v).abs() <= 1e-9 * (1.0 + t.abs()))
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// Categories at 0, 1, … n−1.
    fn categories(names: &[String]) -> Axis {
        Axis {
            lo: -0.5,
            hi: names.len() as f64 - 0.5,
            ticks: names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64, n.clone()))
                .collect(),
        }
    }

    /// A linear axis over `[lo, hi]` with about `max_ticks` round ticks.
    fn linear(lo: f64, hi: f64, max_ticks: usize) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        };
        let step = nice_step(hi - lo, max_ticks);
        let decimals = step_decimals(step);
        let mut ticks = Vec::new();
        let mut k = (lo / step).ceil();
        while k * step <= hi + step * 1e-9 {
            let v = k * step;
            let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
            ticks.push((v, fmt_tick(v, decimals)));
            k += 1.0;
        }
        Axis { lo, hi, ticks }
    }

    /// A log10 axis, in log10 units, over `[lo, hi]` (themselves log10 values).
    fn log10(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        };
        let span = hi - lo;
        let every = (span / 10.0).ceil().max(1.0);
        let mut ticks = Vec::new();
        let mut k = lo.ceil();
        while k <= hi + 1e-9 {
            if (k / every).fract().abs() < 1e-9 {
                ticks.push((k, fmt_pow10(k as i32)));
            }
            if span <= 3.0 {
                for m in [2u32, 5] {
                    let v = k + (m as f64).log10();
                    if v <= hi {
                        ticks.push((v, fmt_mpow10(m, k as i32)));
                    }
                }
            }
            k += 1.0;
        }
        if span <= 3.0 && lo.ceil() - lo > 1e-9 {
            for m in [2u32, 5] {
                let v = lo.floor() + (m as f64).log10();
                if v >= lo {
                    ticks.push((v, fmt_mpow10(m, lo.floor() as i32)));
                }
            }
        }
        ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
        Axis { lo, hi, ticks }
    }

    fn widest_label<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        style: &TextStyle,
    ) -> u32 {
        self.ticks
            .iter()
            .map(|(_, l)| area.estimate_text_size(l, style).map(|s| s.0).unwrap_or(0))
            .max()
            .unwrap_or(0)
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        let t = t.clamp(-10.0, 10.0);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        match hint.weight() {
            // No light grid lines: the chosen ticks are the whole grid.
            KeyPointWeight::Any => Vec::new(),
            KeyPointWeight::Bold => self.ticks.iter().map(|(v, _)| *v).collect(),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that splits `span` into at most `max_ticks` steps.
fn nice_step(span: f64, max_ticks: usize) -> f64 {
    let raw = span / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= raw * (1.0 - 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

fn step_decimals(step: f64) -> usize {
    let mut d = 0;
    while d < 12
        && ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() > 1e-6
    {
        d += 1;
    }
    d
}

fn fmt_tick(v: f64, decimals: usize) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        return format!("{v:.1e}");
    }
    if decimals == 0 && v.abs() >= 10_000.0 && (v / 1000.0).fract() == 0.0 {
        return format!("{}k", v / 1000.0);
    }
    format!("{v:.decimals$}")
}

fn fmt_pow10(k: i32) -> String {
    fmt_mpow10(1, k)
}

/// `m`·10^`k` as a short label: `0.002`, `5000`, `2e-5`.
fn fmt_mpow10(m: u32, k: i32) -> String {
    match k {
        -4..=-1 => format!("0.{}{m}", "0".repeat((-k - 1) as usize)),
        0..=5 => format!("{}", m as i64 * 10i64.pow(k as u32)),
        _ => format!("{m}e{k}"),
    }
}

/// A number with about four significant digits, for labels and notes.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Sizes scaled to the chart's height (the defaults are for 500 pixels).
struct Scale(f64);

impl Scale {
    fn px(&self, v: f64) -> u32 {
        (v * self.0).round().max(1.0) as u32
    }
    fn font(&self, v: f64) -> TextStyle<'static> {
        TextStyle::from(("sans-serif", v * self.0).into_font()).color(&BLACK)
    }
    fn bold(&self, v: f64) -> TextStyle<'static> {
        TextStyle::from(FontDesc::new(
            FontFamily::SansSerif,
            v * self.0,
            FontStyle::Bold,
        ))
        .color(&BLACK)
    }
}

/// How a legend entry is marked.
#[derive(Clone, Copy)]
enum Swatch {
    Box(RGBColor),
    Line(RGBColor),
    Dashed,
}

/// Fills the background, draws the title and splits off a legend column wide
/// enough for `entries` and `notes`, and draws them there. Returns the area
/// left for the chart.
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (w, h): (u32, u32),
    title: &str,
    entries: &[(String, Swatch)],
    notes: &[String],
) -> Result<DrawingArea<DB, Shift>> {
    let s = Scale(h as f64 / 500.0);
    root.fill(&WHITE).map_err(de)?;
    // The title is drawn by hand rather than with `titled`: plotters' ab_glyph
    // text sits about a quarter of its size above the anchor, which clips a
    // title anchored at the top edge.
    let band = s.px(44.0);
    let (head, body) = root.split_vertically(band);
    head.draw(&Text::new(
        title.to_string(),
        ((w / 2) as i32, (band / 2 + s.px(3.0)) as i32),
        s.bold(22.0).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(de)?;
    if entries.is_empty() && notes.is_empty() {
        return Ok(body);
    }
    let legend_font = s.font(15.0);
    let note_font = s.font(13.0);
    let text_w = entries
        .iter()
        .map(|(l, _)| {
            body.estimate_text_size(l, &legend_font)
                .map(|t| t.0 + s.px(30.0))
                .unwrap_or(0)
        })
        .chain(notes.iter().map(|n| {
            body.estimate_text_size(n, &note_font)
                .map(|t| t.0)
                .unwrap_or(0)
        }))
        .max()
        .unwrap_or(0);
    let legend_w = (text_w + s.px(24.0)).min(w * 2 / 5);
    let (plot, legend) = body.split_horizontally(w.saturating_sub(legend_w));
    let x0 = s.px(4.0) as i32;
    let mut y = s.px(24.0) as i32;
    let line_h = s.px(24.0) as i32;
    let sw = s.px(18.0) as i32;
    for (label, swatch) in entries {
        match swatch {
            Swatch::Box(c) => legend
                .draw(&Rectangle::new(
                    [(x0, y - sw / 2 + 2), (x0 + sw, y + sw / 2 - 2)],
                    c.filled(),
                ))
                .map_err(de)?,
            Swatch::Line(c) => {
                legend
                    .draw(&PathElement::new(
                        vec![(x0, y), (x0 + sw, y)],
                        c.stroke_width(s.px(2.5)),
                    ))
                    .map_err(de)?;
                legend
                    .draw(&Circle::new((x0 + sw / 2, y), s.px(4.0), c.filled()))
                    .map_err(de)?;
            }
            Swatch::Dashed => {
                for k in 0..3 {
                    let a = x0 + k * sw / 3;
                    legend
                        .draw(&PathElement::new(
                            vec![(a, y), (a + sw / 5, y)],
                            BLACK.stroke_width(s.px(2.5)),
                        ))
                        .map_err(de)?;
                }
            }
        }
        legend
            .draw(&Text::new(
                label.clone(),
                (x0 + sw + s.px(8.0) as i32, y),
                legend_font.pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(de)?;
        y += line_h;
    }
    if !entries.is_empty() {
        y += line_h / 2;
    }
    for note in notes {
        legend
            .draw(&Text::new(
                note.clone(),
                (x0, y),
                note_font
                    .color(&NOTE)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(de)?;
        y += s.px(20.0) as i32;
    }
    Ok(plot)
}

/// Builds the cartesian chart with both axes, their labels and the grid.
fn axes<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    h: u32,
    x: &Axis,
    y: &Axis,
    x_label: &str,
    y_label: &str,
    x_grid: bool,
) -> Result<ChartContext<'a, DB, Cartesian2d<Axis, Axis>>> {
    let s = Scale(h as f64 / 500.0);
    let tick_font = s.font(15.0);
    let desc_font = s.font(17.0);
    let y_area = y.widest_label(area, &tick_font) + s.px(20.0) + s.px(26.0);
    let mut chart = ChartBuilder::on(area)
        .margin_top(s.px(8.0))
        .margin_right(s.px(16.0))
        .margin_left(s.px(8.0))
        .margin_bottom(s.px(6.0))
        .x_label_area_size(s.px(54.0))
        .y_label_area_size(y_area)
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(de)?;
    let xf = |v: &f64| x.label(*v);
    let yf = |v: &f64| y.label(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .x_labels(x.ticks.len().max(1))
        .y_labels(y.ticks.len().max(1))
        .label_style(tick_font)
        .axis_desc_style(desc_font)
        .bold_line_style(GRID)
        .axis_style(BLACK.stroke_width(1));
    if !x_grid {
        mesh.disable_x_mesh();
    }
    mesh.draw().map_err(de)?;
    Ok(chart)
}

fn draw<DB: DrawingBackend>(
    spec: &Spec,
    root: &DrawingArea<DB, Shift>,
    size: (u32, u32),
) -> Result<()> {
    match spec {
        Spec::Hist(s) => draw_hist(s, root, size),
        Spec::Bars(s) => draw_bars(s, root, size),
        Spec::Lines(s) => draw_lines(s, root, size),
    }
}

/// The y axis for values in `[lo, hi]` (log10 of the values when `log`).
fn value_axis(lo: f64, hi: f64, log: bool, headroom: f64) -> Axis {
    if log {
        Axis::log10(lo, hi + headroom * (hi - lo).max(0.5))
    } else {
        let hi = hi + headroom * (hi - lo);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let step = nice_step(hi - lo, 6);
        Axis::linear(lo, (hi / step).ceil() * step, 6)
    }
}

fn draw_hist<DB: DrawingBackend>(
    spec: &HistSpec,
    root: &DrawingArea<DB, Shift>,
    (w, h): (u32, u32),
) -> Result<()> {
    let area = frame(root, (w, h), &spec.title, &[], &spec.notes)?;
    let lo = spec.edges[0];
    let hi = *spec.edges.last().expect("edges");
    let x = Axis::linear(lo, hi, 8);
    let max = spec.counts.iter().copied().max().unwrap_or(0) as f64;
    let (y, base, y_label) = if spec.log_y {
        let min = spec
            .counts
            .iter()
            .copied()
            .filter(|&c| c > 0)
            .min()
            .unwrap_or(1) as f64;
        let base = min.log10().floor().min(0.0) - 0.3;
        (
            value_axis(base, max.max(1.0).log10(), true, 0.05),
            base,
            "count (log scale)",
        )
    } else {
        (value_axis(0.0, max, false, 0.05), 0.0, "count")
    };
    let mut chart = axes(&area, h, &x, &y, &spec.x_label, y_label, true)?;
    let fill = color(0);
    let bins = spec.counts.len();
    let outline = bins <= 200;
    let bars = spec
        .counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| {
            let top = if spec.log_y {
                (c as f64).log10()
            } else {
                c as f64
            };
            ((spec.edges[i], base), (spec.edges[i + 1], top))
        });
    chart
        .draw_series(
            bars.clone()
                .map(|(a, b)| Rectangle::new([a, b], fill.filled())),
        )
        .map_err(de)?;
    if outline {
        chart
            .draw_series(bars.map(|(a, b)| Rectangle::new([a, b], WHITE.stroke_width(1))))
            .map_err(de)?;
    }
    Ok(())
}

/// Bars totalling at most this many get their value printed above them.
const MAX_LABELLED_BARS: usize = 24;

fn draw_bars<DB: DrawingBackend>(
    spec: &BarsSpec,
    root: &DrawingArea<DB, Shift>,
    (w, h): (u32, u32),
) -> Result<()> {
    let entries: Vec<(String, Swatch)> = spec
        .series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), Swatch::Box(color(i))))
        .collect();
    let area = frame(root, (w, h), &spec.title, &entries, &spec.notes)?;
    let values: Vec<f64> = spec
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .collect();
    let max = values.iter().copied().fold(0.0f64, f64::max);
    let groups = spec.series.len().max(1) as f64;
    let width = 0.8 / groups;
    let s = Scale(h as f64 / 500.0);
    let value_font = s.font(12.0).pos(Pos::new(HPos::Center, VPos::Bottom));
    let value_text = |v: f64| {
        let n = match spec.value_decimals {
            Some(d) => format!("{v:.d$}"),
            None => fmt_num(v),
        };
        format!("{n}{}", spec.value_suffix)
    };
    let mut labelled = spec.value_labels && values.len() <= MAX_LABELLED_BARS;
    if labelled {
        // Only when every value fits over its bar (and the gap beside it); the
        // plotting width is the area less about the y labels and margins.
        let plot_w = area.dim_in_pixel().0 as f64 - s.px(110.0) as f64;
        let bar_px = plot_w * width / spec.categories.len().max(1) as f64;
        let widest = values
            .iter()
            .map(|&v| {
                area.estimate_text_size(&value_text(v), &value_font)
                    .map(|t| t.0)
                    .unwrap_or(u32::MAX)
            })
            .max()
            .unwrap_or(0) as f64;
        labelled = widest <= bar_px * 1.05;
    }
    let headroom = if labelled { 0.12 } else { 0.05 };
    let (y, base) = if spec.log_y {
        let min = values
            .iter()
            .copied()
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let base = min.log10().floor();
        let base = if min.log10() - base < 0.15 {
            base - 0.3
        } else {
            base
        };
        (value_axis(base, max.log10(), true, headroom), base)
    } else if let Some(top) = spec.y_max.filter(|&t| t >= max) {
        let room = if labelled { 1.1 } else { 1.0 };
        (Axis::linear(0.0, top * room, 6), 0.0)
    } else {
        (value_axis(0.0, max, false, headroom), 0.0)
    };
    let x = Axis::categories(&spec.categories);
    let mut chart = axes(&area, h, &x, &y, &spec.x_label, &spec.y_label, false)?;
    for (g, (_, vals)) in spec.series.iter().enumerate() {
        let c = color(g);
        let bars: Vec<(f64, f64, f64)> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (i, v)))
            .map(|(i, v)| {
                let x0 = i as f64 - 0.4 + g as f64 * width;
                let top = if spec.log_y { v.max(1e-300).log10() } else { v };
                (x0, top, v)
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x0, top, _)| {
                Rectangle::new([(x0, base), (x0 + width * 0.92, top)], c.filled())
            }))
            .map_err(de)?;
        if labelled {
            chart
                .draw_series(bars.iter().map(|&(x0, top, v)| {
                    EmptyElement::at((x0 + width * 0.46, top))
                        + Text::new(value_text(v), (0, -(s.px(3.0) as i32)), value_font.clone())
                }))
                .map_err(de)?;
        }
    }
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    spec: &LinesSpec,
    root: &DrawingArea<DB, Shift>,
    (w, h): (u32, u32),
) -> Result<()> {
    let n = spec.series.len();
    let entries: Vec<(String, Swatch)> = spec
        .series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let sw = if spec.mean_series && i + 1 == n {
                Swatch::Dashed
            } else {
                Swatch::Line(color(i))
            };
            (name.clone(), sw)
        })
        .collect();
    let area = frame(root, (w, h), &spec.title, &entries, &spec.notes)?;
    let ys: Vec<f64> = spec
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let tr = |y: f64| if spec.log_y { y.log10() } else { y };
    let y = if spec.log_y {
        let (a, b) = (lo.log10(), hi.log10());
        let pad = 0.05 * (b - a).max(0.5);
        value_axis(a - pad, b, true, 0.05)
    } else if spec.y_from_zero {
        value_axis(lo.min(0.0), hi, false, 0.08)
    } else {
        let pad = 0.08 * (hi - lo).max(hi.abs() * 1e-3).max(1e-9);
        let step = nice_step(hi - lo + 2.0 * pad, 6);
        value_axis(((lo - pad) / step).floor() * step, hi, false, 0.08)
    };
    let x = Axis {
        lo: spec.x_range.0,
        hi: spec.x_range.1,
        ticks: spec.x_ticks.clone(),
    };
    let mut chart = axes(&area, h, &x, &y, &spec.x_label, &spec.y_label, true)?;
    let s = Scale(h as f64 / 500.0);
    for (i, (_, points)) in spec.series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, tr(y))).collect();
        if spec.mean_series && i + 1 == n {
            chart
                .draw_series(DashedLineSeries::new(
                    pts.clone(),
                    s.px(8.0),
                    s.px(5.0),
                    BLACK.stroke_width(s.px(2.5)),
                ))
                .map_err(de)?;
            continue;
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(s.px(2.5))))
            .map_err(de)?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, s.px(4.0), c.filled())))
            .map_err(de)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_ticks() {
        assert_eq!(nice_step(10.0, 5), 2.0);
        assert_eq!(nice_step(1.0, 4), 0.25);
        assert_eq!(nice_step(7.0, 7), 1.0);
        let a = Axis::linear(0.0, 1.0, 4);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.00", "0.25", "0.50", "0.75", "1.00"]);
        let a = Axis::linear(0.0, 40_000.0, 4);
        assert_eq!(a.ticks.last().unwrap().1, "40k");
        let a = Axis::log10(-0.3, 4.2);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "10", "100", "1000", "10000"]);
        let a = Axis::log10(0.0, 1.0);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10"]);
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(27.6612), "27.66");
        assert_eq!(fmt_num(4.0), "4");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(1.5e-6), "1.500e-6");
        assert_eq!(fmt_num(1234.6), "1235");
        assert_eq!(fmt_pow10(-2), "0.01");
        assert_eq!(fmt_pow10(7), "1e7");
        assert_eq!(fmt_mpow10(5, -4), "0.0005");
        assert_eq!(fmt_mpow10(2, -6), "2e-6");
        assert_eq!(fmt_mpow10(5, 2), "500");
    }
}
