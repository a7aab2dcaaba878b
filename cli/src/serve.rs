//! `flamingo serve`: the OpenAI-compatible server (`flamingo-server`) over
//! an export, on 127.0.0.1 unless told otherwise.

use std::path::PathBuf;

use anyhow::{Context, Result};
use flamingo_runtime::BackendKind;

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// Backend: tract (default), ort-cpu, ort-cuda, ort-tensorrt
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// Address to listen on (127.0.0.1: this machine only)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed)
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name /v1/models lists (default: the export's directory name)
    #[arg(long)]
    served_model_name: Option<String>,
    /// Requests decoding together at most (continuous batching)
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests waiting to join the batch at most; more get 429 at once
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// The most new tokens a request may ask for
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// New tokens when a request does not say
    #[arg(long, default_value_t = 64)]
    default_tokens: usize,
    /// Serve file:// media under this directory (refused otherwise)
    #[arg(long)]
    allow_local_media: Option<PathBuf>,
    /// Images and videos per request at most
    #[arg(long, default_value_t = 16)]
    max_images: usize,
    /// Largest request body in bytes
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Bytes of prompt-prefix KV cache kept across requests
    #[arg(long, default_value_t = 256 << 20)]
    prefix_cache_bytes: usize,
    #[command(flatten)]
    load: crate::load::LoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    flamingo_server::engine::tune_allocator();
    if let Some(d) = &a.allow_local_media {
        anyhow::ensure!(
            d.is_dir(),
            "--allow-local-media {}: not a directory",
            d.display()
        );
    }
    let pipeline = a.load.pipeline(&a.model, a.backend, &Default::default())?;
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        a.model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "flamingo".into())
    });
    let cfg = flamingo_server::Config {
        model_name: name.clone(),
        max_batch: a.max_batch,
        max_waiting: a.max_waiting,
        max_tokens: a.max_tokens,
        default_tokens: a.default_tokens,
        allow_local_media: a.allow_local_media.clone(),
        max_images: a.max_images,
        max_body_bytes: a.max_body_bytes,
        prefix_cache_bytes: a.prefix_cache_bytes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (listener, addr) = flamingo_server::bind(&a.host, a.port)
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        println!("flamingo serve: {name} on http://{addr}/v1");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        flamingo_server::serve(pipeline, cfg, listener)
            .await
            .context("serving")
    })
}
