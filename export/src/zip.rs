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
    /// A byte range of the archive (stored entries), and its CRC-32.
    Stored(Range<usize>, u32),
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

/// The entry count the end-of-central-directory record declares (zip64's
/// when the classic field is saturated).
fn declared_entries(b: &[u8]) -> Option<u64> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let from = b.len().saturating_sub(22 + 65535);
    let eocd = (from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(i) == Some(0x0605_4b50))?;
    let n = u16_at(eocd + 10)? as u64;
    if n != 0xffff {
        return Some(n);
    }
    let loc = eocd.checked_sub(20)?;
    (u32_at(loc)? == 0x0706_4b50).then_some(())?;
    let rec = usize::try_from(u64_at(loc + 8)?).ok()?;
    (u32_at(rec)? == 0x0606_4b50).then_some(())?;
    u64_at(rec + 32)
}

impl<'a> Archive<'a> {
    /// Lists the entries of the archive `b` (the whole file, memory-mapped).
    pub fn open(path: &'a Path, b: &'a [u8]) -> Result<Archive<'a>> {
        let bad = |m: String| corrupt(path, format!("zip archive: {m}"));
        let mut zip = zip::ZipArchive::new(Cursor::new(b)).map_err(|e| bad(e.to_string()))?;
        // the zip crate keys entries by name: a name given twice would vanish
        if let Some(n) = declared_entries(b) {
            if n != zip.len() as u64 {
                return Err(bad(format!(
                    "{n} entries declared but {} distinct names (an entry appears twice)",
                    zip.len()
                )));
            }
        }
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
                    Data::Stored(start as usize..end as usize, f.crc32())
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

    /// The byte range of the stored entry `name` in the archive, its CRC-32
    /// checked (a bit flip in a checkpoint is an error, not wrong weights).
    pub fn stored(&self, name: &str, b: &[u8]) -> Result<Option<Range<usize>>> {
        let Some(Data::Stored(r, crc)) = self.entries.get(name) else {
            return Ok(None);
        };
        let got = crc32fast::hash(&b[r.clone()]);
        if got != *crc {
            return Err(corrupt(
                self.path,
                format!(
                    "zip archive: entry `{name}` fails its CRC-32 check ({got:08x}, the archive says {crc:08x})"
                ),
            ));
        }
        Ok(Some(r.clone()))
    }

    /// The bytes of a deflate-compressed entry (the `zip` crate checks its CRC-32).
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
