//! A name -> tensor table over memory-mapped checkpoint files (safetensors and
//! torch zip pickles). Tensors are read lazily: nothing is copied until a
//! graph writer asks for the bytes, one tensor at a time (deflate-compressed
//! archive entries are inflated into memory when the archive is read).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use flamingo_graphs::{DType, Tensor, TensorData, WeightSource};
use memmap2::Mmap;

use crate::error::{corrupt, io_err, Error, Result};
use crate::{pickle, safetensors, zip};

/// A memory-mapped file, or bytes inflated from one.
pub struct Mapped {
    pub path: PathBuf,
    pub map: Bytes,
}

/// The bytes behind a [`Mapped`].
pub enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl Mapped {
    /// Maps a regular file (a FIFO, socket or device is refused before it
    /// is opened: reading one could block or never end).
    pub fn open(path: &Path) -> Result<Arc<Mapped>> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(Error::Config {
                path: path.display().to_string(),
                message: format!(
                    "not a regular file ({})",
                    flamingo_contract::file_kind(&meta)
                ),
            });
        }
        let f = File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        if len == 0 {
            return Err(corrupt(path, "the file is empty"));
        }
        // SAFETY: the map is read-only; like every mmap reader we assume the
        // file is not truncated by another process while we read it.
        let map = unsafe { Mmap::map(&f) }.map_err(io_err(path))?;
        Ok(Arc::new(Mapped {
            path: path.to_path_buf(),
            map: Bytes::Map(map),
        }))
    }

    /// Bytes held in memory, named `path` in errors (fuzzing, tests).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Arc<Mapped> {
        Arc::new(Mapped {
            path: path.to_path_buf(),
            map: Bytes::Owned(bytes),
        })
    }
}

/// One stored tensor: which file, where, and how.
#[derive(Clone)]
pub struct Entry {
    pub file: Arc<Mapped>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub range: std::ops::Range<usize>,
}

impl Entry {
    /// The tensor's stored bytes (in range: the readers check it).
    pub fn bytes(&self) -> &[u8] {
        &self.file.map[self.range.clone()]
    }
}

/// Named tensors from any number of files; later insertions override.
#[derive(Default, Clone)]
pub struct TensorStore {
    entries: BTreeMap<String, Entry>,
    /// Tensors of dtypes the graphs never read (bool masks, int buffers...),
    /// skipped: name -> dtype.
    skipped: BTreeMap<String, String>,
    files: Vec<String>,
    /// Bounds on the pickles read.
    pub pickle_limits: pickle::PickleLimits,
}

/// What a checkpoint file holds: its tensors, and those skipped for their
/// dtype (name, dtype).
pub struct FileTensors {
    pub tensors: Vec<(String, Entry)>,
    pub skipped: Vec<(String, String)>,
}

impl TensorStore {
    pub fn new() -> TensorStore {
        TensorStore::default()
    }

    /// Adds every tensor of `path` whose name passes `keep`, renamed to `prefix + name`.
    pub fn add_file(
        &mut self,
        path: &Path,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        let read = read_mapped(Mapped::open(path)?, &self.pickle_limits)?;
        let mut n = 0;
        for (name, e) in read.tensors {
            if keep(&name) {
                let full = format!("{prefix}{name}");
                self.skipped.remove(&full);
                self.entries.insert(full, e);
                n += 1;
            }
        }
        for (name, dtype) in read.skipped {
            if keep(&name) {
                self.skipped.insert(format!("{prefix}{name}"), dtype);
            }
        }
        self.files.push(path.display().to_string());
        Ok(n)
    }

    /// [`Self::add_file`] of a shard that an index says holds `expected`:
    /// a listed tensor the shard lacks is an error naming both files.
    pub fn add_shard(
        &mut self,
        path: &Path,
        prefix: &str,
        index: &Path,
        expected: &[&str],
    ) -> Result<usize> {
        let read = read_mapped(Mapped::open(path)?, &self.pickle_limits)?;
        for name in expected {
            let has = read.tensors.iter().any(|(n, _)| n == name)
                || read.skipped.iter().any(|(n, _)| n == name);
            if !has {
                return Err(Error::Config {
                    path: index.display().to_string(),
                    message: format!(
                        "tensor `{name}` is listed for {} but that file does not hold it",
                        path.display()
                    ),
                });
            }
        }
        let mut n = 0;
        for (name, e) in read.tensors {
            let full = format!("{prefix}{name}");
            if let Some(other) = self.entries.get(&full) {
                return Err(Error::Config {
                    path: index.display().to_string(),
                    message: format!(
                        "tensor `{name}` is in two shards, {} and {}",
                        other.file.path.display(),
                        path.display()
                    ),
                });
            }
            self.skipped.remove(&full);
            self.entries.insert(full, e);
            n += 1;
        }
        for (name, dtype) in read.skipped {
            self.skipped.insert(format!("{prefix}{name}"), dtype);
        }
        self.files.push(path.display().to_string());
        Ok(n)
    }

    pub fn get_entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// The dtype of `name` if it was skipped for it.
    pub fn skipped(&self, name: &str) -> Option<&str> {
        self.skipped.get(name).map(|s| s.as_str())
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The tensor's values as f32 (tests, small tensors).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        t.to_f32_vec().map_err(|message| {
            Error::Graph(flamingo_graphs::Error::Load {
                name: name.to_string(),
                message,
            })
        })
    }
}

impl WeightSource for TensorStore {
    fn get(&self, name: &str) -> flamingo_graphs::Result<Tensor> {
        let e = match (self.entries.get(name), self.skipped.get(name)) {
            (Some(e), _) => e,
            (None, Some(dtype)) => {
                return Err(flamingo_graphs::Error::Load {
                    name: name.to_string(),
                    message: format!(
                        "stored as {dtype} in {}, which the graphs cannot read (float32, float16 and bfloat16 are)",
                        self.files.join(", ")
                    ),
                })
            }
            (None, None) => {
                return Err(flamingo_graphs::Error::MissingTensor {
                    name: name.to_string(),
                    file: Some(self.files.join(", ")),
                })
            }
        };
        let e = e.clone();
        let shape = e.shape.clone();
        let load: flamingo_graphs::LoadFn = Arc::new(move || Ok(to_f32_bytes(e.dtype, e.bytes())));
        Ok(Tensor {
            dtype: DType::F32,
            shape,
            data: TensorData::Lazy(load),
        })
    }
    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Little-endian f32 bytes from f32/f16/bf16 bytes.
pub fn to_f32_bytes(dtype: DType, b: &[u8]) -> Vec<u8> {
    match dtype {
        DType::F16 => b
            .chunks_exact(2)
            .flat_map(|c| {
                half::f16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .flat_map(|c| {
                half::bf16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect(),
        _ => b.to_vec(),
    }
}

/// Reads the tensor table of a `.safetensors` file or a torch zip (`.pt`,
/// `.bin`, TorchScript archives).
pub fn read_file(path: &Path) -> Result<FileTensors> {
    read_mapped(Mapped::open(path)?, &pickle::PickleLimits::default())
}

/// [`read_file`] of bytes already mapped (or in memory), pickles within `limits`.
pub fn read_mapped(file: Arc<Mapped>, limits: &pickle::PickleLimits) -> Result<FileTensors> {
    if file.map.starts_with(b"PK") {
        read_torch(file, limits)
    } else {
        safetensors::read(file)
    }
}

fn checked_numel(path: &Path, name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| corrupt(path, format!("tensor `{name}`: shape {shape:?} overflows")))
}

/// A torch archive with its inflated entries (views of one storage share it).
struct TorchArchive<'a> {
    file: &'a Arc<Mapped>,
    zip: zip::Archive<'a>,
    inflated: std::collections::HashMap<String, Arc<Mapped>>,
}

impl TorchArchive<'_> {
    /// An entry's bytes: a range of the mapped archive, or inflated once.
    fn get(&mut self, name: &str) -> Result<Option<(Arc<Mapped>, std::ops::Range<usize>)>> {
        Ok(match self.zip.entries.get(name).cloned() {
            None => None,
            Some(zip::Data::Stored(..)) => self
                .zip
                .stored(name, &self.file.map)?
                .map(|r| (self.file.clone(), r)),
            Some(zip::Data::Deflated { .. }) => {
                let m = match self.inflated.get(name) {
                    Some(m) => m.clone(),
                    None => {
                        let m = Arc::new(Mapped {
                            path: self.file.path.clone(),
                            map: Bytes::Owned(self.zip.inflate(name)?),
                        });
                        self.inflated.insert(name.to_string(), m.clone());
                        m
                    }
                };
                let n = m.map.len();
                Some((m, 0..n))
            }
        })
    }
}

fn read_torch(file: Arc<Mapped>, limits: &pickle::PickleLimits) -> Result<FileTensors> {
    let path = file.path.clone();
    let mut archive = TorchArchive {
        file: &file,
        zip: zip::Archive::open(&path, &file.map)?,
        inflated: Default::default(),
    };
    let pkl = archive
        .zip
        .entries
        .keys()
        .find(|k| k.ends_with("data.pkl") && k.matches('/').count() == 1)
        .cloned()
        .ok_or_else(|| corrupt(&path, "no `<name>/data.pkl` entry (not a torch.save file?)"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Some((f, r)) = archive.get(&format!("{prefix}byteorder"))? {
        if &f.map[r] != b"little" {
            return Err(corrupt(&path, "big-endian checkpoints are not supported"));
        }
    }
    let (pf, pr) = archive
        .get(&pkl)?
        .ok_or_else(|| corrupt(&path, "no data.pkl"))?;
    let root = pickle::load_with(&path, &pf.map[pr], limits)?;
    let named = state_dict(&path, &root)?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (name, t) in named {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        let bad = |m: String| corrupt(&path, format!("tensor `{name}`: {m}"));
        let Some(dtype) = t.dtype else {
            // a bool mask, an int buffer: nothing the graphs read
            skipped.push((name, t.dtype_name.clone()));
            continue;
        };
        let (sf, r) = archive
            .get(&format!("{prefix}data/{}", t.key))?
            .ok_or_else(|| bad(format!("storage `{}` is missing from the archive", t.key)))?;
        let es = dtype.size() as u64;
        if t.storage_numel.checked_mul(es) != Some(r.len() as u64) {
            return Err(bad(format!(
                "storage `{}` should hold {} elements but has {} bytes (truncated?)",
                t.key,
                t.storage_numel,
                r.len()
            )));
        }
        let numel = checked_numel(&path, &name, &t.shape)? as u64;
        // contiguous row-major views only
        let mut expect = 1usize;
        for (d, s) in t.shape.iter().zip(&t.stride).rev() {
            if *d > 1 && *s != expect {
                return Err(bad(format!(
                    "non-contiguous tensor (shape {:?}, stride {:?}); save it contiguous",
                    t.shape, t.stride
                )));
            }
            expect = expect.saturating_mul(*d);
        }
        let end = t
            .offset
            .checked_add(numel)
            .filter(|&e| e <= t.storage_numel)
            .ok_or_else(|| bad("view extends past its storage".into()))?;
        let start = r.start + (t.offset * es) as usize;
        out.push((
            name,
            Entry {
                file: sf,
                dtype,
                shape: t.shape.clone(),
                range: start..r.start + (end * es) as usize,
            },
        ));
    }
    Ok(FileTensors {
        tensors: out,
        skipped,
    })
}

/// The named tensors of a pickle: a state dict (or its `model_state_dict` /
/// `state_dict` entry, as OpenFlamingo training checkpoints wrap it), or a
/// TorchScript module whose tree is flattened to dotted names.
fn state_dict(path: &Path, root: &pickle::Val) -> Result<Vec<(String, Rc<pickle::TensorRef>)>> {
    let mut out = Vec::new();
    match root {
        pickle::Val::Dict(d) => {
            let d = d.borrow();
            let inner = d.iter().find_map(|(k, v)| match (k, v) {
                (pickle::Val::Str(k), pickle::Val::Dict(inner))
                    if k == "model_state_dict" || k == "state_dict" =>
                {
                    Some(inner.clone())
                }
                _ => None,
            });
            let items = match &inner {
                Some(i) => i.borrow().clone(),
                None => d.clone(),
            };
            let mut seen = std::collections::HashSet::new();
            for (k, v) in &items {
                if let (pickle::Val::Str(name), pickle::Val::Tensor(t)) = (k, v) {
                    if !seen.insert(name.clone()) {
                        return Err(corrupt(path, format!("tensor `{name}` appears twice")));
                    }
                    out.push((name.clone(), t.clone()));
                }
            }
        }
        pickle::Val::Object { .. } => flatten(path, root, "", 0, &mut out)?,
        _ => {
            return Err(corrupt(
                path,
                "the pickle is not a state dict (a dict of name -> tensor) or a TorchScript module",
            ))
        }
    }
    Ok(out)
}

/// A TorchScript module's tensors by dotted attribute path.
fn flatten(
    path: &Path,
    v: &pickle::Val,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, Rc<pickle::TensorRef>)>,
) -> Result<()> {
    const MAX_DEPTH: usize = 64;
    if depth > MAX_DEPTH {
        return Err(corrupt(
            path,
            format!("TorchScript modules nested deeper than {MAX_DEPTH} (at `{prefix}`)"),
        ));
    }
    let pickle::Val::Object { attrs, .. } = v else {
        return Ok(());
    };
    for (k, v) in attrs.borrow().iter() {
        let pickle::Val::Str(k) = k else { continue };
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            pickle::Val::Tensor(t) => {
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(corrupt(path, format!("tensor `{name}` appears twice")));
                }
                out.push((name, t.clone()))
            }
            pickle::Val::Object { .. } => flatten(path, v, &name, depth + 1, out)?,
            _ => {}
        }
    }
    Ok(())
}
