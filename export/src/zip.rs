//! The zip archives `torch.save` and `torch.jit.save` write, read through
//! the `zip` crate over the memory-mapped file. Stored entries stay slices
//! of the map (no copy); deflate-compressed ones are inflated when asked
//! for, into memory of their declared size. Every offset and size read from
//! the archive is checked against the file before use, so an entry cannot
//! point outside it and a lying header cannot cause a large allocation.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::Path;

use zip::CompressionMethod;

use crate::error::{corrupt, Result};

/// Where an entry's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A byte range of the archive (stored entries).
    Stored(Range<usize>),
    /// Deflate-compressed: the entry's index, inflated by [`Archive::read`].
    Deflated { index: usize, size: u64 },
}

/// An archive's entries by name.
pub struct Archive<'a> {
    path: &'a Path,
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    pub entries: BTreeMap<String, Data>,
}

/// At most this many bytes of inflated data per compressed byte: a bound on
/// what a small hostile entry can make us allocate (deflate's own limit is
/// about 1032).
const MAX_RATIO: u64 = 1100;

impl<'a> Archive<'a> {
    /// Lists the entries of the archive `b` (the whole file, memory-mapped).
    pub fn open(path: &'a Path, b: &'a [u8]) -> Result<Archive<'a>> {
        let bad = |m: String| corrupt(path, format!("zip archive: {m}"));
        let mut zip = zip::ZipArchive::new(Cursor::new(b)).map_err(|e| bad(e.to_string()))?;
        let mut entries = BTreeMap::new();
        for i in 0..zip.len() {
            let f = zip.by_index_raw(i).map_err(|e| bad(e.to_string()))?;
            let name = f.name().map_err(|e| bad(e.to_string()))?.into_owned();
            let (csize, size) = (f.compressed_size(), f.size());
            let start = f
                .data_start()
                .ok_or_else(|| bad(format!("entry `{name}` has no local header")))?;
            let end = start
                .checked_add(csize)
                .filter(|&e| e <= b.len() as u64)
                .ok_or_else(|| bad(format!("entry `{name}` points outside the archive")))?;
            let data = match f.compression() {
                CompressionMethod::Stored if csize == size => {
                    Data::Stored(start as usize..end as usize)
                }
                CompressionMethod::Deflated if size <= csize.saturating_mul(MAX_RATIO) => {
                    Data::Deflated { index: i, size }
                }
                CompressionMethod::Deflated => {
                    return Err(bad(format!(
                        "entry `{name}` claims {size} bytes from {csize} compressed"
                    )))
                }
                other => {
                    return Err(bad(format!(
                        "entry `{name}` is compressed with {other} (stored and deflate entries are read)"
                    )))
                }
            };
            if entries.insert(name.clone(), data).is_some() {
                return Err(bad(format!("entry `{name}` appears twice")));
            }
        }
        Ok(Archive { path, zip, entries })
    }

    /// The bytes of a deflate-compressed entry.
    pub fn inflate(&mut self, name: &str) -> Result<Vec<u8>> {
        let path = self.path;
        let bad = |m: String| corrupt(path, format!("zip archive: entry `{name}`: {m}"));
        let Some(Data::Deflated { index, size }) = self.entries.get(name).cloned() else {
            return Err(bad("not a deflate-compressed entry".into()));
        };
        let mut f = self.zip.by_index(index).map_err(|e| bad(e.to_string()))?;
        let mut out = Vec::with_capacity(size as usize);
        // one byte past the declared size tells a lie apart
        (&mut f)
            .take(size + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
        if out.len() as u64 != size {
            return Err(bad(format!(
                "inflates to {} bytes, {size} declared",
                out.len()
            )));
        }
        Ok(out)
    }
}
