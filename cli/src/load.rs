//! How the commands that run an export load it: the sha256 check of its
//! files (`--no-verify` skips it for trusted paths) and the bounds on what
//! a request may make the runtime do.

use flamingo_runtime::{Limits, LoadOptions};

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Skip checking every file of the export against the manifest's
    /// sha256 (paths are still checked to stay inside the export)
    #[arg(long)]
    pub no_verify: bool,
    /// Neither read nor write the optimised-graph cache beside the export
    /// (`DIR/.flamingo-cache/`, where ONNX Runtime CPU keeps each graph
    /// optimised with its weights prepacked, so that later loads skip that
    /// work; it is keyed by the graphs' sha256s, ONNX Runtime's build and
    /// the CPU, and rebuilt when any changes)
    #[arg(long)]
    pub no_graph_cache: bool,
    /// Media items (images, videos) per request at most
    #[arg(long, default_value_t = Limits::default().max_media)]
    pub max_media: usize,
    /// Bytes of one media file at most
    #[arg(long, default_value_t = Limits::default().max_media_bytes)]
    pub max_media_bytes: u64,
    /// Pixels of one image at most, checked before it is decoded
    #[arg(long, default_value_t = Limits::default().max_image_pixels)]
    pub max_image_pixels: u64,
    /// Beams of a beam search at most
    #[arg(long, default_value_t = Limits::default().max_beams)]
    pub max_beams: usize,
    /// Candidates of one scoring at most
    #[arg(long, default_value_t = Limits::default().max_candidates)]
    pub max_candidates: usize,
}

impl LoadArgs {
    pub fn options(&self, gpu: &crate::gpu::GpuArgs) -> LoadOptions {
        LoadOptions {
            gpu: gpu.options(),
            no_verify: self.no_verify,
            no_graph_cache: self.no_graph_cache,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_media: self.max_media,
            max_media_bytes: self.max_media_bytes,
            max_image_pixels: self.max_image_pixels,
            max_beams: self.max_beams,
            max_candidates: self.max_candidates,
        }
    }

    /// A pipeline of `model` with these options and bounds.
    pub fn pipeline(
        &self,
        model: &std::path::Path,
        backend: flamingo_runtime::BackendKind,
        gpu: &crate::gpu::GpuArgs,
    ) -> anyhow::Result<flamingo_runtime::Pipeline> {
        let mut p = flamingo_runtime::Pipeline::load_opts(model, backend, &self.options(gpu))?;
        p.model.limits = self.limits();
        Ok(p)
    }

    /// A model of `model` with these options and bounds.
    pub fn model(
        &self,
        model: &std::path::Path,
        backend: flamingo_runtime::BackendKind,
        gpu: &crate::gpu::GpuArgs,
    ) -> anyhow::Result<flamingo_runtime::Model> {
        let mut m = flamingo_runtime::Model::load_opts(model, backend, &self.options(gpu))?;
        m.limits = self.limits();
        Ok(m)
    }
}

/// Refuses to write the file `out` over anything but a regular file, and
/// over an existing one without `force` (the write goes to a temporary
/// file renamed over it).
pub fn check_output_file(out: &std::path::Path, force: bool, flag: &str) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !meta.is_file() {
        anyhow::bail!(
            "{flag} {}: exists and is not a regular file (a directory, link, FIFO or device); not replaced",
            out.display()
        );
    }
    if !force {
        anyhow::bail!(
            "{flag} {}: exists (pass --force to replace it)",
            out.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `out` through a temporary sibling renamed over it, so
/// that `out` is never left half-written.
pub fn write_file_atomic(out: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let r = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, out));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("writing {}", out.display()))
}
