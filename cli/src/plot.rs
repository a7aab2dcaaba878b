//! `flamingo bench --plot FILE.png`: the bench report as a chart, drawn
//! without a plotting or font dependency (a 5x7 bitmap font, lines, bars).
//!
//! Left: decode latency (batch 1) against context length, one series per
//! shot count. Right: the per-stage breakdown of the largest prompt.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use serde_json::Value;

const W: u32 = 1100;
const H: u32 = 480;
const SCALE: u32 = 2;
const BG: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const SERIES: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
];

/// 5x7 glyphs, one row per byte (bit 4 = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ' ' => [0; 7],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

struct Canvas(RgbImage);

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < W && (y as u32) < H {
            self.0.put_pixel(x as u32, y as u32, c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.put(x, y, c);
            }
        }
    }

    /// A line of width `w` (Bresenham, squares at each step).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), w: i64, c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut e) = (x0, y0, dx + dy);
        loop {
            self.rect(x - w / 2, y - w / 2, x + (w - 1) / 2, y + (w - 1) / 2, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * e;
            if e2 >= dy {
                e += dy;
                x += sx;
            }
            if e2 <= dx {
                e += dx;
                y += sy;
            }
        }
    }

    fn text_width(s: &str) -> i64 {
        (s.chars().count() as u32 * 6 * SCALE) as i64
    }

    /// `s` with its top-left corner at `(x, y)`.
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>) {
        let k = SCALE as i64;
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + i as i64 * 6 * k;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (ox + col * k, y + row as i64 * k);
                        self.rect(px, py, px + k - 1, py + k - 1, c);
                    }
                }
            }
        }
    }
}

/// A round axis step giving about `n` ticks over `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn fmt(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Decode latency against context length (batch 1, one series per shots).
fn latency_panel(cv: &mut Canvas, report: &Value, (x0, y0, x1, y1): (i64, i64, i64, i64)) {
    let pts: Vec<(u64, f64, f64)> = report["decode_vs_context"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["shots"].as_u64()?,
                p["context"].as_f64()?,
                p["ms"].as_f64()?,
            ))
        })
        .collect();
    cv.text(x0, y0 - 34, "DECODE MS/TOKEN VS CONTEXT (BATCH 1)", INK);
    let xmax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.2).fold(1e-3, f64::max) * 1.1;
    let (xs, ys) = (nice_step(xmax, 5.0), nice_step(ymax, 5.0));
    let px = |x: f64| x0 + ((x / xmax) * (x1 - x0) as f64) as i64;
    let py = |y: f64| y1 - ((y / ymax) * (y1 - y0) as f64) as i64;
    let mut t = 0.0;
    while t <= ymax {
        cv.line((x0, py(t)), (x1, py(t)), 1, GRID);
        let l = fmt(t);
        cv.text(x0 - Canvas::text_width(&l) - 6, py(t) - 7, &l, INK);
        t += ys;
    }
    let mut t = 0.0;
    while t <= xmax {
        cv.line((px(t), y1), (px(t), y1 + 5), 1, INK);
        let l = fmt(t);
        cv.text(px(t) - Canvas::text_width(&l) / 2, y1 + 10, &l, INK);
        t += xs;
    }
    cv.line((x0, y0), (x0, y1), 2, INK);
    cv.line((x0, y1), (x1, y1), 2, INK);
    cv.text((x0 + x1) / 2 - 100, y1 + 32, "CONTEXT (TOKENS)", INK);
    let mut shots: Vec<u64> = pts.iter().map(|p| p.0).collect();
    shots.dedup();
    for (si, s) in shots.iter().enumerate() {
        let c = SERIES[si % SERIES.len()];
        let series: Vec<(i64, i64)> = pts
            .iter()
            .filter(|p| p.0 == *s)
            .map(|p| (px(p.1), py(p.2)))
            .collect();
        for w in series.windows(2) {
            cv.line(w[0], w[1], 2, c);
        }
        for p in &series {
            cv.rect(p.0 - 2, p.1 - 2, p.0 + 2, p.1 + 2, c);
        }
        // legend below the axis title, side by side
        let lx = x0 + si as i64 * 130;
        cv.rect(lx, y1 + 58, lx + 12, y1 + 68, c);
        cv.text(lx + 20, y1 + 56, &format!("{s} SHOTS"), INK);
    }
}

/// Per-stage times of the largest prompt at batch 1 (horizontal bars).
fn stages_panel(cv: &mut Canvas, report: &Value, (x0, y0, x1, y1): (i64, i64, i64, i64)) {
    let dec = report["decode"].as_array().cloned().unwrap_or_default();
    let b1 = dec
        .iter()
        .filter(|d| d["batch"] == 1)
        .max_by_key(|d| d["shots"].as_u64().unwrap_or(0))
        .or_else(|| dec.first());
    let shots = b1.and_then(|d| d["shots"].as_u64()).unwrap_or(0);
    let media = report["media"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["shots"].as_u64() == Some(shots));
    let images = media.and_then(|m| m["images"].as_f64()).unwrap_or(1.0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let stages = [
        ("PREPROCESS", f(&report["preprocess_ms"]) * images),
        ("VISION", f(&report["vision_encoder_ms_per_image"]) * images),
        (
            "RESAMPLER+KV",
            media.map(|m| f(&m["resampler_media_kv_ms"])).unwrap_or(0.0),
        ),
        ("PREFILL", b1.map(|d| f(&d["prefill_ms"])).unwrap_or(0.0)),
        (
            "DECODE P50",
            b1.map(|d| f(&d["decode"]["p50_ms"])).unwrap_or(0.0),
        ),
    ];
    cv.text(
        x0,
        y0 - 34,
        &format!("STAGES, {shots} SHOTS ({images} IMAGES), MS"),
        INK,
    );
    let label_w = Canvas::text_width("RESAMPLER+KV") + 12;
    let max = stages.iter().map(|s| s.1).fold(1e-3, f64::max);
    let bar_h = ((y1 - y0) / stages.len() as i64 - 14).max(8);
    for (i, (name, ms)) in stages.iter().enumerate() {
        let y = y0 + i as i64 * (bar_h + 14);
        cv.text(x0, y + bar_h / 2 - 7, name, INK);
        let bx0 = x0 + label_w;
        let span = (x1 - bx0 - 90) as f64;
        let bx1 = bx0 + ((ms / max) * span) as i64;
        cv.rect(
            bx0,
            y,
            bx1.max(bx0 + 1),
            y + bar_h,
            SERIES[i % SERIES.len()],
        );
        cv.text(bx1 + 8, y + bar_h / 2 - 7, &fmt(*ms), INK);
    }
}

/// Draws the chart of a `flamingo bench --json` report.
pub fn chart(report: &Value) -> RgbImage {
    let mut cv = Canvas(RgbImage::from_pixel(W, H, BG));
    let title = format!(
        "FLAMINGO BENCH: {} ON {} ({})",
        report["model"]
            .as_str()
            .and_then(|m| Path::new(m).file_name()?.to_str())
            .unwrap_or("MODEL"),
        report["backend"].as_str().unwrap_or(""),
        report["precision"].as_str().unwrap_or("")
    );
    cv.text(20, 14, &title, INK);
    latency_panel(&mut cv, report, (90, 100, 560, 400));
    stages_panel(&mut cv, report, (620, 100, W as i64 - 20, 420));
    cv.0
}

/// Writes the chart as PNG (temp file, then rename).
pub fn write(report: &Value, path: &Path) -> Result<()> {
    let img = chart(report);
    let tmp = path.with_extension(format!("png.partial-{}", std::process::id()));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
