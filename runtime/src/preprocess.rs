//! CLIP preprocessing exactly as open_clip's eval transform does it on PIL
//! images (FLAMINGO.md section 3): RGB; resize the shorter side to
//! `image_size` with PIL's antialiased bicubic on uint8 (two separable passes,
//! 22-bit fixed-point coefficients, each pass rounded back to uint8); center
//! crop (torchvision's rounding); scale to [0, 1]; normalise.

use std::path::Path;

use flamingo_contract::PreprocessConfig;
use ndarray::Array3;

use crate::limits::Limits;
use crate::{Error, Result};

/// An 8-bit RGB image, row-major, interleaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes an image file (PNG, JPEG, BMP, WebP) into RGB, within the
/// default [`Limits`].
pub fn load_image(path: &Path) -> Result<Rgb8> {
    load_image_within(path, &Limits::default())
}

/// [`load_image`] within `limits` (file size, pixels before decoding).
pub fn load_image_within(path: &Path, limits: &Limits) -> Result<Rgb8> {
    let bytes = crate::limits::read_media(path, limits)?;
    decode_image_within(&bytes, limits.max_image_pixels).map_err(|message| Error::BadImage {
        path: path.display().to_string(),
        message,
    })
}

/// Decodes image bytes into RGB (alpha dropped, as PIL's `convert("RGB")`),
/// within the default pixel bound.
pub fn decode_image(bytes: &[u8]) -> Result<Rgb8, String> {
    decode_image_within(bytes, Limits::default().max_image_pixels)
}

/// [`decode_image`], refusing an image whose header claims more than
/// `max_pixels` before anything is decoded (a small file can claim
/// 20000 x 20000), and bounding what the decoder may allocate.
pub fn decode_image_within(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, String> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    let (w, h) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
    if w as u64 * h as u64 > max_pixels {
        return Err(format!(
            "{w} x {h} pixels, more than --max-image-pixels {max_pixels}"
        ));
    }
    let mut r = reader()?;
    let mut l = image::Limits::default();
    // the decoded image (up to 16 bytes a pixel) and the decoder's own buffers
    l.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    r.limits(l);
    let img = r.decode().map_err(|e| e.to_string())?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("the image is empty".into());
    }
    Ok(Rgb8 {
        width: w as usize,
        height: h as usize,
        data: rgb.into_raw(),
    })
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel,
/// the first input index and its fixed-point weights.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let w: Vec<f64> = (0..n)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    if f < 0.0 {
                        (f - 0.5) as i32
                    } else {
                        (f + 0.5) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((w, h), BICUBIC)` on an RGB uint8 image.
pub fn resize_bicubic(img: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let mut cur = img.clone();
    if out_w != cur.width {
        let k = coeffs(cur.width, out_w);
        let mut data = vec![0u8; out_w * cur.height * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (xx, (xmin, w)) in k.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &wi) in w.iter().enumerate() {
                        ss += row[(xmin + i) * 3 + c] as i64 * wi as i64;
                    }
                    data[(y * out_w + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb8 {
            width: out_w,
            height: cur.height,
            data,
        };
    }
    if out_h != cur.height {
        let k = coeffs(cur.height, out_h);
        let w3 = cur.width * 3;
        let mut data = vec![0u8; w3 * out_h];
        for (yy, (ymin, w)) in k.iter().enumerate() {
            for x in 0..w3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &wi) in w.iter().enumerate() {
                    ss += cur.data[(ymin + i) * w3 + x] as i64 * wi as i64;
                }
                data[yy * w3 + x] = clip8(ss);
            }
        }
        cur = Rgb8 {
            width: cur.width,
            height: out_h,
            data,
        };
    }
    cur
}

/// Python's `round` (half to even), as torchvision's center crop uses it.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// Shortest side to `size` (torchvision: long side `int(size * long / short)`).
pub fn resized_dims(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    }
}

/// The full transform: `[3, size, size]` float32 pixel values.
pub fn preprocess(img: &Rgb8, cfg: &PreprocessConfig) -> Array3<f32> {
    let size = cfg.image_size;
    let (rw, rh) = resized_dims(img.width, img.height, size);
    let r = resize_bicubic(img, rw, rh);
    let top = round_half_even((rh as f64 - size as f64) / 2.0).max(0) as usize;
    let left = round_half_even((rw as f64 - size as f64) / 2.0).max(0) as usize;
    let mut out = Array3::<f32>::zeros((3, size, size));
    for y in 0..size.min(rh) {
        for x in 0..size.min(rw) {
            for c in 0..3 {
                let v = r.data[((top + y) * rw + left + x) * 3 + c] as f32 / 255.0;
                out[[c, y, x]] = (v - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_is_half_to_even() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.2), 3);
    }

    #[test]
    fn shorter_side_goes_to_the_target() {
        assert_eq!(resized_dims(80, 60, 32), (42, 32));
        assert_eq!(resized_dims(50, 90, 32), (32, 57));
    }

    #[test]
    fn resizing_a_flat_image_keeps_its_value() {
        let img = Rgb8 {
            width: 7,
            height: 5,
            data: vec![77; 7 * 5 * 3],
        };
        let r = resize_bicubic(&img, 3, 9);
        assert!(r.data.iter().all(|&v| v == 77));
    }

    #[test]
    fn a_non_image_is_an_error() {
        assert!(decode_image(b"not an image").is_err());
    }
}
