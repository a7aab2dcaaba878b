//! `.safetensors` files through the `safetensors` crate: the header read
//! over the memory-mapped file (offsets checked to tile the data exactly:
//! no overlap, nothing outside the file), and float32 tensors written
//! atomically (temp file, then rename).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use flamingo_graphs::DType;
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

use crate::error::{corrupt, io_err, Error, Result};
use crate::store::{Entry, FileTensors, Mapped};

/// The tensors of the mapped safetensors file `file`, in offset order
/// (those of dtypes the graphs never read skipped).
pub fn read(file: Arc<Mapped>) -> Result<FileTensors> {
    let path = file.path.clone();
    let b = &file.map[..];
    let (n, meta) = SafeTensors::read_metadata(b).map_err(|e| {
        corrupt(
            &path,
            match e {
                SafeTensorError::InvalidHeaderDeserialization(e) => {
                    format!("safetensors header is not valid JSON: {e}")
                }
                SafeTensorError::HeaderTooSmall => "shorter than a safetensors header".into(),
                SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
                    let n = b
                        .get(..8)
                        .and_then(|h| h.try_into().ok())
                        .map(u64::from_le_bytes)
                        .unwrap_or(0);
                    format!(
                        "neither a torch zip archive nor a safetensors file (read as safetensors, its header claims {n} bytes; the file has {})",
                        b.len()
                    )
                }
                SafeTensorError::MetadataIncompleteBuffer => {
                    "the tensors' data_offsets do not cover the file (truncated?)".into()
                }
                SafeTensorError::InvalidOffset(name) => format!(
                    "tensor `{name}`: data_offsets overlap or leave a gap (truncated or corrupt?)"
                ),
                other => format!("safetensors header: {other}"),
            },
        )
    })?;
    // serde keeps the last of a repeated key: find repeats in the raw header
    if let Some(name) = repeated_key(&b[8..8 + n]) {
        return Err(corrupt(
            &path,
            format!("tensor `{name}` appears twice in the safetensors header"),
        ));
    }
    let data_start = 8 + n;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 => DType::I64,
            other => {
                skipped.push((name, other.to_string()));
                continue;
            }
        };
        let (s, e) = info.data_offsets;
        out.push((
            name,
            Entry {
                file: file.clone(),
                dtype,
                shape: info.shape.clone(),
                range: data_start + s..data_start + e,
            },
        ));
    }
    Ok(FileTensors {
        tensors: out,
        skipped,
    })
}

/// The first top-level key of the JSON object `header` that appears twice.
fn repeated_key(header: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::de::Visitor<'de> for &mut Keys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(k.clone()) && self.0.is_none() {
                    self.0 = Some(k);
                }
            }
            Ok(())
        }
    }
    let mut keys = Keys(None);
    let mut de = serde_json::Deserializer::from_slice(header);
    serde::Deserializer::deserialize_map(&mut de, &mut keys).ok()?;
    keys.0
}

/// One tensor to write: name, shape, values (row-major).
pub struct Named<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl View for &Named<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `tensors` to `path` (a temp file beside it, renamed into place).
pub fn write_f32(path: &Path, tensors: &[Named]) -> Result<()> {
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::Config {
                path: path.display().to_string(),
                message: format!(
                    "tensor `{}`: {} values for shape {:?}",
                    t.name,
                    t.data.len(),
                    t.shape
                ),
            });
        }
    }
    let tmp = path.with_extension(format!("safetensors.partial-{}", std::process::id()));
    let result = safetensors::serialize_to_file(tensors.iter().map(|t| (t.name, t)), None, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e {
            SafeTensorError::IoError(e) => io_err(path)(e),
            other => Error::Config {
                path: path.display().to_string(),
                message: other.to_string(),
            },
        });
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Arc<Mapped> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        Mapped::from_bytes(Path::new("m.safetensors"), b)
    }

    fn err(header: &str, data: usize) -> String {
        match read(file(header, data)) {
            Ok(_) => panic!("{header} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn repeated_overlapping_or_gapped_entries_are_rejected() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
        assert_eq!(read(file(ok, 16)).unwrap().tensors.len(), 2);
        // the same key twice, even with the same offsets
        let dup = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let e = err(dup, 8);
        assert!(
            e.contains("`a` appears twice") && e.contains("m.safetensors"),
            "{e}"
        );
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let e = err(overlap, 12);
        assert!(e.contains("overlap"), "{e}");
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let e = err(gap, 12);
        assert!(e.contains("overlap or leave a gap"), "{e}");
        let outside = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let e = err(outside, 8);
        assert!(e.contains("truncated"), "{e}");
    }
}
