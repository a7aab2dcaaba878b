//! `flamingo export-triton`: a Triton Inference Server model repository
//! serving an export.
//!
//! `--kind cpu` (what runs without a GPU, on the python backend that the
//! `nvidia-pytriton` wheel bundles): two models over the same export and
//! the same `model.py`, which runs the whole pipeline through the `flamingo`
//! Python package:
//! - `flamingo`: request/response (HTTP and gRPC `infer`), dynamic batching
//!   (the requests of one execution run as one left-padded batch);
//! - `flamingo_stream`: decoupled, one response per token (gRPC streams,
//!   HTTP `generate_stream`).
//!
//! Both take `prompt` (TYPE_STRING [1]), `images` (TYPE_STRING [-1], the
//! encoded image files, optional) and optional generation parameters, and
//! give `text` (TYPE_STRING [1]) and `token_ids` (TYPE_INT32 [-1]). The
//! export is hard-linked (or copied) into `flamingo/1/export`, so the
//! repository is self-contained; the repository is written to a temporary
//! directory renamed into place.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flamingo_contract::Manifest;
use flamingo_runtime::BackendKind;
use serde_json::json;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The whole pipeline in a python-backend model (CPU instances)
    Cpu,
}

#[derive(clap::Args)]
pub struct Args {
    /// Export directory
    #[arg(long)]
    model: PathBuf,
    /// The model repository to write
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    kind: Kind,
    /// Instances of each model (each loads the export once)
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Requests one execution batches at most
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// How long a request waits for others to batch with, in microseconds
    #[arg(long, default_value_t = 5000)]
    max_queue_delay_us: u64,
    /// Requests waiting at most; more are rejected at once
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// A request waiting longer than this (microseconds) is rejected (0: no limit)
    #[arg(long, default_value_t = 60_000_000)]
    queue_timeout_us: u64,
    /// `max_tokens` a request may ask for at most
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    /// New tokens when a request does not say
    #[arg(long, default_value_t = 20)]
    default_tokens: u32,
    /// Backend of the pipeline inside each instance: tract, ort-cpu
    #[arg(long, default_value = "tract")]
    backend: BackendKind,
    /// Refer to the export by its absolute path instead of linking it into the repository
    #[arg(long)]
    reference: bool,
    /// Replace the output directory if it exists
    #[arg(long)]
    force: bool,
    /// Print what was written as JSON
    #[arg(long)]
    json: bool,
}

/// The python-backend model of `--kind cpu`.
const CPU_MODEL_PY: &str = include_str!("triton/cpu_model.py");

/// The inputs of the `flamingo` models besides `prompt` and `images`:
/// (name, Triton type), each optional, one value.
const PARAMETERS: [(&str, &str); 8] = [
    ("max_tokens", "TYPE_INT32"),
    ("temperature", "TYPE_FP32"),
    ("top_p", "TYPE_FP32"),
    ("top_k", "TYPE_INT32"),
    ("seed", "TYPE_UINT64"),
    ("num_beams", "TYPE_INT32"),
    ("do_sample", "TYPE_BOOL"),
    ("repetition_penalty", "TYPE_FP32"),
];

/// The names of the models `--kind cpu` writes.
pub const CPU_MODELS: [&str; 2] = ["flamingo", "flamingo_stream"];

pub fn run(a: Args) -> Result<()> {
    if a.instances == 0 || a.max_batch == 0 || a.max_queue == 0 {
        bail!("--instances, --max-batch and --max-queue must be at least 1");
    }
    if a.default_tokens == 0 || a.default_tokens > a.max_tokens {
        bail!(
            "--default-tokens {} must be within 1..=--max-tokens {}",
            a.default_tokens,
            a.max_tokens
        );
    }
    if !matches!(a.backend, BackendKind::Tract | BackendKind::OrtCpu) {
        bail!(
            "--kind cpu runs on CPU instances: --backend tract or ort-cpu, not {}",
            a.backend
        );
    }
    // the export must load as an export (a wrong directory fails here, not in Triton)
    let manifest = Manifest::load(&a.model)?;
    let model = a
        .model
        .canonicalize()
        .with_context(|| format!("{}", a.model.display()))?;
    let output = flamingo_export::OutputDir::create(&a.out, a.force, &[&a.model])?;
    let root = output.path().to_path_buf();
    let model_dir = if a.reference {
        model.display().to_string()
    } else {
        let dst = root.join("flamingo/1/export");
        link_tree(&model, &dst)?;
        "1/export".to_string()
    };
    for (name, decoupled) in [(CPU_MODELS[0], false), (CPU_MODELS[1], true)] {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("1")).with_context(|| dir.display().to_string())?;
        let md = if a.reference || name == CPU_MODELS[0] {
            model_dir.clone()
        } else {
            format!("../{}/{model_dir}", CPU_MODELS[0])
        };
        write(
            &dir.join("config.pbtxt"),
            &cpu_config(&a, name, decoupled, &md),
        )?;
        write(&dir.join("1/model.py"), CPU_MODEL_PY)?;
    }
    write(&root.join("README.md"), &readme(&a, &manifest))?;
    output.commit()?;
    if a.json {
        println!(
            "{}",
            json!({
                "repository": a.out,
                "kind": "cpu",
                "models": CPU_MODELS,
                "export": if a.reference { model.display().to_string() } else { format!("{}/flamingo/1/export", a.out.display()) },
                "instances": a.instances,
                "max_batch": a.max_batch,
            })
        );
    } else {
        println!(
            "wrote a Triton model repository to {} (models {}; see its README.md)",
            a.out.display(),
            CPU_MODELS.join(", ")
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Hard-links every file of `src` into `dst` (copies where links fail:
/// another file system).
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| dst.display().to_string())?;
    for e in std::fs::read_dir(src).with_context(|| src.display().to_string())? {
        let e = e.with_context(|| src.display().to_string())?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ty = e.file_type().with_context(|| from.display().to_string())?;
        if ty.is_dir() {
            link_tree(&from, &to)?;
        } else if ty.is_file() {
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        } else {
            bail!("{}: not a file or directory", from.display());
        }
    }
    Ok(())
}

/// A protobuf text string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn cpu_config(a: &Args, name: &str, decoupled: bool, model_dir: &str) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# flamingo export-triton --kind cpu: {}",
        a.model.display()
    );
    let _ = writeln!(c, "name: {}", quoted(name));
    let _ = writeln!(c, "backend: \"python\"");
    let _ = writeln!(c, "max_batch_size: {}", a.max_batch);
    if decoupled {
        let _ = writeln!(c, "model_transaction_policy {{ decoupled: true }}");
    }
    let _ = writeln!(c, "input [");
    let _ = writeln!(
        c,
        "  {{ name: \"prompt\" data_type: TYPE_STRING dims: [ 1 ] }},"
    );
    let _ = write!(
        c,
        "  {{ name: \"images\" data_type: TYPE_STRING dims: [ -1 ] optional: true allow_ragged_batch: true }}"
    );
    for (n, t) in PARAMETERS {
        let _ = write!(
            c,
            ",\n  {{ name: \"{n}\" data_type: {t} dims: [ 1 ] optional: true }}"
        );
    }
    let _ = writeln!(c, "\n]");
    let _ = writeln!(c, "output [");
    let _ = writeln!(
        c,
        "  {{ name: \"text\" data_type: TYPE_STRING dims: [ 1 ] }},"
    );
    let _ = writeln!(
        c,
        "  {{ name: \"token_ids\" data_type: TYPE_INT32 dims: [ -1 ] }}"
    );
    let _ = writeln!(c, "]");
    let _ = writeln!(
        c,
        "instance_group [ {{ count: {} kind: KIND_CPU }} ]",
        a.instances
    );
    let _ = writeln!(c, "dynamic_batching {{");
    let _ = writeln!(
        c,
        "  max_queue_delay_microseconds: {}",
        a.max_queue_delay_us
    );
    let _ = writeln!(c, "  default_queue_policy {{");
    let _ = writeln!(c, "    max_queue_size: {}", a.max_queue);
    if a.queue_timeout_us > 0 {
        let _ = writeln!(c, "    timeout_action: REJECT");
        let _ = writeln!(
            c,
            "    default_timeout_microseconds: {}",
            a.queue_timeout_us
        );
    }
    let _ = writeln!(c, "  }}");
    let _ = writeln!(c, "}}");
    let params = [
        ("model_dir", model_dir.to_string()),
        ("backend", a.backend.as_str().to_string()),
        ("max_tokens_cap", a.max_tokens.to_string()),
        (
            "generate_defaults",
            json!({"max_new_tokens": a.default_tokens}).to_string(),
        ),
    ];
    for (k, v) in params {
        let _ = writeln!(
            c,
            "parameters {{ key: {} value {{ string_value: {} }} }}",
            quoted(k),
            quoted(&v)
        );
    }
    c
}

fn readme(a: &Args, m: &Manifest) -> String {
    format!(
        r#"# Triton model repository for a Flamingo export

Written by `flamingo export-triton --kind cpu` from `{model}` ({family} LM,
{layers} layers). Models:

- `flamingo`: request/response over HTTP and gRPC, dynamic batching (up to
  {batch} requests per execution, {instances} CPU instance(s)).
- `flamingo_stream`: decoupled, one response per token (gRPC streaming, or
  HTTP `POST /v2/models/flamingo_stream/generate_stream`).

Inputs: `prompt` (BYTES [1], with one `<image>` per image), `images` (BYTES
[-1], the encoded image files, optional), and optional one-value
`max_tokens` (INT32, at most {max_tokens}; default {default_tokens}),
`temperature`, `top_p`, `repetition_penalty` (FP32), `top_k`, `num_beams`
(INT32), `seed` (UINT64), `do_sample` (BOOL). Outputs: `text` (BYTES [1]) and
`token_ids` (INT32 [-1], the new tokens). The models import the `flamingo`
Python package (`scripts/python-wheel.sh` builds its wheel): install it where
the python backend's interpreter finds it.

## Launch (CPU, the python backend of the `nvidia-pytriton` wheel)

```sh
python3 -m venv V && V/bin/pip install nvidia-pytriton==0.7.0 flamingo-*.whl
SP=V/lib/python3.11/site-packages; P=$SP/pytriton/tritonserver; BE=/tmp/triton-be
mkdir -p $BE/python
cp $P/backends/python/libtriton_python.so $P/backends/python/triton_python_backend_utils.py $BE/python/
cp $P/python_backend_stubs/3.11/triton_python_backend_stub $BE/python/
PATH=$PWD/V/bin:$PATH CUDA_VISIBLE_DEVICES="" \
LD_LIBRARY_PATH=$(python3 -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))'):$SP/nvidia_pytriton.libs \
$P/bin/tritonserver --model-repository=$PWD/{out} --backend-directory=$BE \
  --http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1
```

On a Triton container image (`nvcr.io/nvidia/tritonserver:*-py3`), install
the wheel into its Python and pass `--model-repository` alone.

## Query

```python
import numpy as np, tritonclient.http as http
c = http.InferenceServerClient("127.0.0.1:8000")
img = open("cat.png", "rb").read()
inputs = [http.InferInput("prompt", [1, 1], "BYTES"), http.InferInput("images", [1, 1], "BYTES")]
inputs[0].set_data_from_numpy(np.array([["<image>A photo of".encode()]], dtype=object))
inputs[1].set_data_from_numpy(np.array([[img]], dtype=object))
r = c.infer("flamingo", inputs)
print(r.as_numpy("text")[0][0].decode(), r.as_numpy("token_ids")[0])
```
"#,
        model = a.model.display(),
        family = m.model.family,
        layers = m.model.lm.num_layers,
        batch = a.max_batch,
        instances = a.instances,
        max_tokens = a.max_tokens,
        default_tokens = a.default_tokens,
        out = a.out.display(),
    )
}
