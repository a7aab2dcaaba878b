//! Bounds on what a request may make the runtime do, each named as the
//! command-line option that sets it (`--max-media-bytes`, ...), so that no
//! input can exhaust memory: media files are read only when they are
//! regular files under the size bound, images are refused before decoding
//! when their header claims too many pixels, and the searches and scorers
//! refuse more beams or candidates than allowed.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// The runtime's bounds; the defaults suit a model serving single users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Media items (images or videos) per request (`--max-media`).
    pub max_media: usize,
    /// Bytes of one media file (`--max-media-bytes`).
    pub max_media_bytes: u64,
    /// Pixels (width x height) of one image, checked before it is decoded
    /// (`--max-image-pixels`).
    pub max_image_pixels: u64,
    /// Beams of a beam search (`--max-beams`).
    pub max_beams: usize,
    /// Candidates of one close-ended scoring (`--max-candidates`).
    pub max_candidates: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_media: 64,
            max_media_bytes: 64 << 20,
            max_image_pixels: 40_000_000,
            max_beams: 16,
            max_candidates: 256,
        }
    }
}

/// Checks that `path` is a regular file (not a FIFO, socket or device,
/// which could block or never end) of at most `max` bytes (`flag` names
/// the bound); returns its size.
pub fn regular_file(path: &Path, max: u64, flag: &str) -> Result<u64> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::Input(format!(
            "{}: not a regular file ({})",
            path.display(),
            flamingo_contract::file_kind(&meta)
        )));
    }
    if meta.len() > max {
        return Err(Error::Input(format!(
            "{}: {} bytes, more than {flag} {max}",
            path.display(),
            meta.len()
        )));
    }
    Ok(meta.len())
}

/// The bytes of the media file `path`, within `limits`.
pub fn read_media(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    let max = limits.max_media_bytes;
    regular_file(path, max, "--max-media-bytes")?;
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // the file may grow after the check: read no more than the bound allows
    f.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(Error::Input(format!(
            "{}: more than --max-media-bytes {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = std::env::temp_dir().join(format!("flamingo-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, vec![0u8; 100]).unwrap();
        let l = Limits {
            max_media_bytes: 99,
            ..Default::default()
        };
        let e = read_media(&f, &l).unwrap_err().to_string();
        assert!(
            e.contains("--max-media-bytes") && e.contains("a.bin"),
            "{e}"
        );
        assert_eq!(read_media(&f, &Limits::default()).unwrap().len(), 100);
        let e = read_media(Path::new("/dev/zero"), &l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = read_media(&dir, &l).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
