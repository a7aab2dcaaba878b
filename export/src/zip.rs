//! A minimal reader for the zip archives `torch.save` writes: stored (not
//! compressed) entries, zip64 aware. Every offset and size read from the file
//! is checked against the file's length before use, so an entry cannot point
//! outside the archive and a lying header cannot cause a large allocation.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{corrupt, Result};

/// Entry name -> byte range of its data within the archive.
pub type Entries = BTreeMap<String, Range<usize>>;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Lists the entries of the archive `b` (the whole file, memory-mapped).
pub fn entries(path: &Path, b: &[u8]) -> Result<Entries> {
    let bad = |m: &str| corrupt(path, format!("zip archive: {m}"));
    const EOCD: u32 = 0x0605_4b50;
    let search_from = b.len().saturating_sub(22 + 65535);
    let eocd = (search_from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD))
        .ok_or_else(|| bad("no end-of-central-directory record (not a torch zip file?)"))?;
    let mut n_entries = u16_at(b, eocd + 10).ok_or_else(|| bad("short EOCD"))? as u64;
    let mut cd_size = u32_at(b, eocd + 12).ok_or_else(|| bad("short EOCD"))? as u64;
    let mut cd_off = u32_at(b, eocd + 16).ok_or_else(|| bad("short EOCD"))? as u64;
    if n_entries == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff {
        // zip64 end of central directory locator just before the EOCD
        let loc = eocd
            .checked_sub(20)
            .ok_or_else(|| bad("missing zip64 locator"))?;
        if u32_at(b, loc) != Some(0x0706_4b50) {
            return Err(bad("missing zip64 locator"));
        }
        let rec = u64_at(b, loc + 8).ok_or_else(|| bad("short zip64 locator"))? as usize;
        if u32_at(b, rec) != Some(0x0606_4b50) {
            return Err(bad("zip64 record not found where the locator points"));
        }
        n_entries = u64_at(b, rec + 32).ok_or_else(|| bad("short zip64 record"))?;
        cd_size = u64_at(b, rec + 40).ok_or_else(|| bad("short zip64 record"))?;
        cd_off = u64_at(b, rec + 48).ok_or_else(|| bad("short zip64 record"))?;
    }
    let cd_end = cd_off
        .checked_add(cd_size)
        .filter(|&e| e <= b.len() as u64)
        .ok_or_else(|| bad("central directory lies outside the file"))?;
    if n_entries > cd_size / 46 + 1 {
        return Err(bad(
            "entry count larger than the central directory can hold",
        ));
    }
    let mut out = Entries::new();
    let mut p = cd_off as usize;
    for _ in 0..n_entries {
        if u32_at(b, p) != Some(0x0201_4b50) {
            return Err(bad("bad central directory entry signature"));
        }
        let short = || bad("truncated central directory entry");
        let method = u16_at(b, p + 10).ok_or_else(short)?;
        let mut csize = u32_at(b, p + 20).ok_or_else(short)? as u64;
        let mut usize_ = u32_at(b, p + 24).ok_or_else(short)? as u64;
        let name_len = u16_at(b, p + 28).ok_or_else(short)? as usize;
        let extra_len = u16_at(b, p + 30).ok_or_else(short)? as usize;
        let comment_len = u16_at(b, p + 32).ok_or_else(short)? as usize;
        let mut local = u32_at(b, p + 42).ok_or_else(short)? as u64;
        let name_bytes = b.get(p + 46..p + 46 + name_len).ok_or_else(short)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = b
            .get(p + 46 + name_len..p + 46 + name_len + extra_len)
            .ok_or_else(short)?;
        // zip64 extended information: present fields are those set to all-ones
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap_or(0);
            let len = u16_at(extra, e + 2).unwrap_or(0) as usize;
            let body = extra.get(e + 4..e + 4 + len).ok_or_else(short)?;
            if id == 1 {
                let mut q = 0;
                let mut next = |v: &mut u64| -> Result<()> {
                    if *v == 0xffff_ffff {
                        *v = u64_at(body, q).ok_or_else(short)?;
                        q += 8;
                    }
                    Ok(())
                };
                next(&mut usize_)?;
                next(&mut csize)?;
                next(&mut local)?;
            }
            e += 4 + len;
        }
        p += 46 + name_len + extra_len + comment_len;
        if p as u64 > cd_end {
            return Err(short());
        }
        if method != 0 || csize != usize_ {
            return Err(bad(&format!(
                "entry `{name}` is compressed (method {method}); torch writes stored entries"
            )));
        }
        let l = local as usize;
        if u32_at(b, l) != Some(0x0403_4b50) {
            return Err(bad(&format!("entry `{name}` has no local header")));
        }
        let lname = u16_at(b, l + 26).ok_or_else(short)? as u64;
        let lextra = u16_at(b, l + 28).ok_or_else(short)? as u64;
        let start = local + 30 + lname + lextra;
        let end = start
            .checked_add(csize)
            .filter(|&end| end <= b.len() as u64)
            .ok_or_else(|| bad(&format!("entry `{name}` points outside the archive")))?;
        out.insert(name, start as usize..end as usize);
    }
    Ok(out)
}
