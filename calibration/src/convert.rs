//! Rewrites an existing export into a new one (`flamingo convert`): every
//! graph is read back, rewritten, and written with a fresh manifest, into a
//! temporary directory renamed into place on success.

use std::path::Path;

use flamingo_contract::{manifest, GraphRole, Manifest, Precision, Requires};
use flamingo_export::{Error, OutputDir, Progress, Result};
use flamingo_graphs::onnx::{self, WriteOptions};
use flamingo_graphs::{kernels, Graph};

/// A named rewrite applied to each graph role; `None` keeps a graph as is.
pub type RoleRewrite<'a> =
    &'a dyn Fn(GraphRole, &Graph) -> std::result::Result<Option<Graph>, String>;

/// Converts the export at `input` into `out` with `rewrite`, recording `precision`.
pub fn convert(
    input: &Path,
    out: &Path,
    force: bool,
    precision: Precision,
    rewrite: RoleRewrite,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    convert_with(input, out, force, precision, rewrite, &|_| Ok(()), progress)
}

/// [`convert`] of an fp32 export only (`flamingo convert`, `flamingo
/// quantize`): a source already rewritten is refused, as rewrites do not
/// compose.
pub fn convert_fp32(
    input: &Path,
    out: &Path,
    force: bool,
    precision: Precision,
    rewrite: RoleRewrite,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let src = Manifest::load(input)?;
    if src.precision != Precision::Fp32 {
        return Err(Error::Config {
            path: input.display().to_string(),
            message: format!("already {}; start from an fp32 export", src.precision),
        });
    }
    convert(input, out, force, precision, rewrite, progress)
}

/// [`convert`], calling `extra` with the (temporary) output directory before
/// it is hashed and renamed, to add files of its own.
pub fn convert_with(
    input: &Path,
    out: &Path,
    force: bool,
    precision: Precision,
    rewrite: RoleRewrite,
    extra: &dyn Fn(&Path) -> Result<()>,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let mut m = Manifest::load(input)?;
    if input.canonicalize().ok() == out.canonicalize().ok() {
        return Err(Error::Config {
            path: out.display().to_string(),
            message: "the output must differ from the input".into(),
        });
    }
    // the source export as the manifest says it (a corrupted one is not rewritten)
    flamingo_runtime::verify::check(input, &m, true).map_err(|e| Error::Config {
        path: input.display().to_string(),
        message: e.to_string(),
    })?;
    let output = OutputDir::create(out, force, &[input])?;
    let tmp = output.path();
    for (role, info) in m.graphs.clone() {
        let (g, opsets) = onnx::read(&input.join(&info.file))?;
        let g = match rewrite(role, &g).map_err(|message| Error::Config {
            path: info.file.clone(),
            message: format!("{precision} rewrite failed: {message}"),
        })? {
            Some(new) => new,
            None => g,
        };
        let mut opts = WriteOptions {
            extra_opsets: opsets,
            ..Default::default()
        };
        // contrib operators (`com.microsoft`) and this runtime's own
        // (`ai.flamingo`, registered by its ONNX Runtime backend)
        let ort_domains = ["com.microsoft", kernels::int8::DOMAIN];
        for d in ort_domains {
            if g.nodes.iter().any(|n| n.domain == d) && !opts.extra_opsets.iter().any(|o| o.0 == d)
            {
                opts.extra_opsets.push((d.into(), 1));
            }
        }
        progress.stage(role.as_str(), g.weight_bytes() as u64);
        let written = onnx::write(&g, tmp, &info.file, &opts, &mut |n| progress.advance(n))?;
        let gi = m.graphs.get_mut(&role).ok_or_else(|| Error::Config {
            path: role.to_string(),
            message: "graph vanished".into(),
        })?;
        gi.data_file = written
            .data
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        gi.inputs = g.inputs.iter().map(Into::into).collect();
        gi.outputs = g.outputs.iter().map(Into::into).collect();
        gi.doc = g.doc.clone();
        gi.requires = g
            .nodes
            .iter()
            .any(|n| ort_domains.contains(&n.domain.as_str()))
            .then_some(Requires::Onnxruntime);
        gi.kv_update = crate::ort_fuse::kv_update(&g);
    }
    let tok = input.join("tokenizer");
    if tok.is_dir() {
        let dst = tmp.join("tokenizer");
        std::fs::create_dir_all(&dst).map_err(|e| io(&dst, e))?;
        for e in std::fs::read_dir(&tok).map_err(|e| io(&tok, e))? {
            let p = e.map_err(|e| io(&tok, e))?.path();
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, dst.join(name)).map_err(|e| io(&p, e))?;
            }
        }
    }
    extra(tmp)?;
    m.precision = precision;
    m.files = flamingo_export::hash_files(tmp, tmp)?;
    let path = tmp.join(manifest::FILE_NAME);
    std::fs::write(&path, m.to_json()).map_err(|e| io(&path, e))?;
    output.commit()?;
    progress.finish();
    Ok(m)
}

fn io(p: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        source,
    }
}
