//! `flamingo bench --plot FILE.png`: the bench [`Report`] as a chart, drawn
//! with plotters' bitmap backend and a font embedded in the binary (Hack,
//! from `epaint_default_fonts`: no system fonts needed), encoded as PNG.
//!
//! Left: decode latency (batch 1) against context length, one series per
//! shot count. Right: the per-stage breakdown of the largest prompt.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::bench::Report;

const W: u32 = 1100;
const H: u32 = 480;
const FONT: &str = "flamingo-sans";
const SERIES: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR)
            .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded chart font did not load"))
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Decode latency against context length (batch 1, one series per shots).
fn latency_panel(area: &DrawingArea<BitMapBackend, Shift>, report: &Report) -> Result<()> {
    let pts = &report.decode_vs_context;
    let xmax = pts.iter().map(|p| p.context as f64).fold(1.0, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.ms).fold(1e-3, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "decode ms/token vs context (batch 1)",
            (FONT, 18).into_font(),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("ms")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let mut shots: Vec<usize> = pts.iter().map(|p| p.shots).collect();
    shots.dedup();
    for (si, s) in shots.iter().enumerate() {
        let c = SERIES[si % SERIES.len()];
        let series: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| p.shots == *s)
            .map(|p| (p.context as f64, p.ms))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{s} shots"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The stages of the largest prompt at batch 1, in ms.
pub fn stages(report: &Report) -> (usize, usize, Vec<(&'static str, f64)>) {
    let b1 = report
        .decode
        .iter()
        .filter(|d| d.batch == 1)
        .max_by_key(|d| d.shots)
        .or_else(|| report.decode.first());
    let shots = b1.map_or(0, |d| d.shots);
    let media = report.media.iter().find(|m| m.shots == shots);
    let images = media.map_or(1, |m| m.images);
    let stages = vec![
        ("preprocess", report.preprocess_ms * images as f64),
        ("vision", report.vision_encoder_ms_per_image * images as f64),
        (
            "resampler+kv",
            media.map_or(0.0, |m| m.resampler_media_kv_ms),
        ),
        ("prefill", b1.map_or(0.0, |d| d.prefill_ms)),
        ("decode p50", b1.map_or(0.0, |d| d.decode.p50_ms)),
    ];
    (shots, images, stages)
}

/// Per-stage times of the largest prompt at batch 1 (horizontal bars).
fn stages_panel(area: &DrawingArea<BitMapBackend, Shift>, report: &Report) -> Result<()> {
    let (shots, images, stages) = stages(report);
    let max = stages.iter().map(|s| s.1).fold(1e-3, f64::max) * 1.25;
    let n = stages.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("stages, {shots} shots ({images} images), ms"),
            (FONT, 18).into_font(),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(110)
        .build_cartesian_2d(0f64..max, 0f64..n)
        .map_err(err)?;
    let names: Vec<&str> = stages.iter().map(|s| s.0).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(stages.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = (n - y - 0.5).round();
            let centred = (n - y - 0.5 - i).abs() < 1e-6;
            match (centred, names.get(i as usize)) {
                (true, Some(name)) if i >= 0.0 => name.to_string(),
                _ => String::new(),
            }
        })
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for (i, (_, ms)) in stages.iter().enumerate() {
        let y = n - i as f64;
        let c = SERIES[i % SERIES.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.8), (*ms, y - 0.2)],
                c.filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{ms:.1}"),
                (*ms + max * 0.01, y - 0.6),
                (FONT, 13).into_font(),
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// The chart of a bench report as RGB pixels (`W` x `H`).
pub fn chart(report: &Report) -> Result<image::RgbImage> {
    register_font()?;
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "flamingo bench: {} on {} ({})",
            report
                .model
                .file_name()
                .and_then(|m| m.to_str())
                .unwrap_or("model"),
            report.backend,
            report.precision
        );
        let root = root.titled(&title, (FONT, 22).into_font()).map_err(err)?;
        let (left, right) = root.split_horizontally(W / 2);
        latency_panel(&left, report)?;
        stages_panel(&right, report)?;
        root.present().map_err(err)?;
    }
    image::RgbImage::from_raw(W, H, buf).ok_or_else(|| anyhow!("chart buffer of the wrong size"))
}

/// Writes the chart as PNG (temp file, then rename).
pub fn write(report: &Report, path: &Path) -> Result<()> {
    let img = chart(report)?;
    let tmp = path.with_extension(format!("png.partial-{}", std::process::id()));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
