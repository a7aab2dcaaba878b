//! `flamingo export-triton`: a Triton Inference Server model repository
//! serving an export.
//!
//! Both kinds serve two models with the same inputs and outputs, from one
//! `model.py` whose code is the `flamingo` wheel's `flamingo.triton`:
//! - `flamingo`: request/response (HTTP and gRPC `infer`), dynamic batching;
//! - `flamingo_stream`: decoupled, one response per token (gRPC streams,
//!   HTTP `generate_stream`).
//!
//! They take `prompt` (TYPE_STRING [1]), `images` (TYPE_STRING [-1], the
//! encoded image files, optional) and optional generation parameters, and
//! give `text` (TYPE_STRING [1]) and `token_ids` (TYPE_INT32 [-1]).
//!
//! `--kind cpu` (what runs without a GPU, on the python backend the
//! `nvidia-pytriton` wheel bundles): the models run the whole pipeline
//! through the Python package; the requests of one execution run as one
//! left-padded batch. The export is hard-linked into `flamingo/1/export`.
//!
//! `--kind gpu` (production): the graphs are Triton models of the
//! `onnxruntime` backend, their configs from the manifest: `vision_encoder`,
//! `resampler` and `media_kv` with dynamic batching, `decoder` with sequence
//! batching and its KV cache as implicit state (`past_key_values.*` in,
//! `present.*` out, empty at a sequence's start); `flamingo` and
//! `flamingo_stream` orchestrate them over BLS (tokenization, preprocessing,
//! the media cache and the decode loop in Python).
//!
//! The repository is written to a temporary directory renamed into place.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flamingo_contract::{GraphRole, KvUpdate, Manifest, Precision, TensorInfo};
use flamingo_runtime::BackendKind;
use serde_json::json;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The whole pipeline in a python-backend model (CPU instances)
    Cpu,
    /// The graphs on the onnxruntime backend (GPU instances), orchestrated over BLS
    Gpu,
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
    /// Instances of each model (cpu: each loads the export; gpu: of each graph, on every GPU)
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// gpu: instances of the orchestrators (python, on CPU)
    #[arg(long, default_value_t = 2)]
    orchestrators: usize,
    /// gpu: run the graphs through ONNX Runtime's TensorRT execution accelerator
    #[arg(long)]
    tensorrt: bool,
    /// gpu, with --tensorrt: fp16 engines
    #[arg(long, requires = "tensorrt")]
    trt_fp16: bool,
    /// gpu: a decoder sequence (request) idle this long (microseconds) loses its KV cache
    #[arg(long, default_value_t = 30_000_000)]
    max_sequence_idle_us: u64,
    /// gpu: bytes of vision tokens each orchestrator keeps (its media cache)
    #[arg(long, default_value_t = 256 << 20)]
    media_cache_bytes: u64,
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
    /// cpu: backend of the pipeline inside each instance: tract, ort-cpu
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

/// The python-backend model of the orchestrators: its code is the wheel's.
fn model_py(kind: Kind) -> String {
    let class = match kind {
        Kind::Cpu => "CpuModel",
        Kind::Gpu => "GpuModel",
    };
    format!(
        "\"\"\"`flamingo export-triton` ({kind:?} kind): the model is flamingo.triton.{class},\n\
         from the `flamingo` wheel (install it where Triton's Python finds it).\"\"\"\n\n\
         from flamingo.triton import {class} as TritonPythonModel  # noqa: F401\n"
    )
}

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

/// The orchestrators, request/response and decoupled.
pub const MODELS: [&str; 2] = ["flamingo", "flamingo_stream"];

pub fn run(a: Args) -> Result<()> {
    if a.instances == 0 || a.orchestrators == 0 || a.max_batch == 0 || a.max_queue == 0 {
        bail!("--instances, --orchestrators, --max-batch and --max-queue must be at least 1");
    }
    if a.default_tokens == 0 || a.default_tokens > a.max_tokens {
        bail!(
            "--default-tokens {} must be within 1..=--max-tokens {}",
            a.default_tokens,
            a.max_tokens
        );
    }
    if a.kind == Kind::Cpu && !matches!(a.backend, BackendKind::Tract | BackendKind::OrtCpu) {
        bail!(
            "--kind cpu runs on CPU instances: --backend tract or ort-cpu, not {}",
            a.backend
        );
    }
    // the export must load as an export (a wrong directory fails here, not in Triton)
    let manifest = Manifest::load(&a.model)?;
    if a.kind == Kind::Gpu {
        check_gpu(&manifest)?;
    }
    let model = a
        .model
        .canonicalize()
        .with_context(|| format!("{}", a.model.display()))?;
    let output = flamingo_export::OutputDir::create(&a.out, a.force, &[&a.model])?;
    let root = output.path().to_path_buf();
    let model_dir = if a.reference {
        model.display().to_string()
    } else {
        let dst = root.join(MODELS[0]).join("1/export");
        match a.kind {
            Kind::Cpu => link_tree(&model, &dst)?,
            // the orchestrator reads the manifest and the tokenizer only
            Kind::Gpu => {
                std::fs::create_dir_all(&dst).with_context(|| dst.display().to_string())?;
                link_file(&model.join("manifest.json"), &dst.join("manifest.json"))?;
                link_tree(&model.join("tokenizer"), &dst.join("tokenizer"))?;
            }
        }
        "1/export".to_string()
    };
    for (name, decoupled) in [(MODELS[0], false), (MODELS[1], true)] {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("1")).with_context(|| dir.display().to_string())?;
        let md = if a.reference || name == MODELS[0] {
            model_dir.clone()
        } else {
            format!("../{}/{model_dir}", MODELS[0])
        };
        write(
            &dir.join("config.pbtxt"),
            &orchestrator_config(&a, name, decoupled, &md),
        )?;
        write(&dir.join("1/model.py"), &model_py(a.kind))?;
    }
    let mut models: Vec<String> = MODELS.iter().map(|m| m.to_string()).collect();
    if a.kind == Kind::Gpu {
        for (role, g) in &manifest.graphs {
            let dir = root.join(role.as_str()).join("1");
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            for f in std::iter::once(&g.file).chain(g.data_file.as_ref()) {
                link_file(&model.join(f), &dir.join(f))?;
            }
            write(
                &root.join(role.as_str()).join("config.pbtxt"),
                &graph_config(&a, &manifest, *role, g)?,
            )?;
            models.push(role.as_str().to_string());
        }
    }
    write(&root.join("README.md"), &readme(&a, &manifest))?;
    output.commit()?;
    if a.json {
        println!(
            "{}",
            json!({
                "repository": a.out,
                "kind": format!("{:?}", a.kind).to_lowercase(),
                "models": models,
                "instances": a.instances,
                "max_batch": a.max_batch,
            })
        );
    } else {
        println!(
            "wrote a Triton model repository to {} (models {}; see its README.md)",
            a.out.display(),
            models.join(", ")
        );
    }
    Ok(())
}

/// What the gpu kind's graphs may not need: this runtime's own kernels
/// (registered only by its ONNX Runtime backend) or the in-place cache
/// (buffers Triton's implicit state does not keep).
fn check_gpu(m: &Manifest) -> Result<()> {
    if matches!(
        m.precision,
        Precision::Int8WeightsFlamingo | Precision::Int4WeightsFlamingo
    ) {
        bail!(
            "a {} export runs this runtime's own kernels, which Triton's onnxruntime backend lacks; \
             quantize with --weights int8-ort or int4 for --kind gpu",
            m.precision
        );
    }
    if m.graphs.get(&GraphRole::Decoder).and_then(|g| g.kv_update) == Some(KvUpdate::InPlace) {
        bail!(
            "this decoder updates its KV cache in place (GroupQueryAttention buffers); \
             Triton keeps the cache as implicit state: quantize with --plain-kv-cache for --kind gpu"
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Hard-links `from` to `to`, or copies it (another file system).
fn link_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
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
            link_file(&from, &to)?;
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

fn orchestrator_config(a: &Args, name: &str, decoupled: bool, model_dir: &str) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# flamingo export-triton --kind {:?}: {}",
        a.kind,
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
    let count = match a.kind {
        Kind::Cpu => a.instances,
        Kind::Gpu => a.orchestrators,
    };
    let _ = writeln!(c, "instance_group [ {{ count: {count} kind: KIND_CPU }} ]");
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
    let mut params = vec![
        ("model_dir", model_dir.to_string()),
        ("max_tokens_cap", a.max_tokens.to_string()),
        (
            "generate_defaults",
            json!({"max_new_tokens": a.default_tokens}).to_string(),
        ),
    ];
    match a.kind {
        Kind::Cpu => params.push(("backend", a.backend.as_str().to_string())),
        Kind::Gpu => {
            params.push(("media_cache_bytes", a.media_cache_bytes.to_string()));
            params.push(("graph_max_batch", a.max_batch.to_string()));
        }
    }
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

/// Triton's name of a manifest dtype.
fn triton_type(t: &TensorInfo) -> Result<&'static str> {
    Ok(match t.dtype.as_str() {
        "float32" => "TYPE_FP32",
        "float16" => "TYPE_FP16",
        "int64" => "TYPE_INT64",
        "int32" => "TYPE_INT32",
        "int8" => "TYPE_INT8",
        "uint8" => "TYPE_UINT8",
        "bool" => "TYPE_BOOL",
        other => bail!("{}: no Triton type for dtype {other}", t.name),
    })
}

/// A manifest shape as Triton dims: symbols are -1.
fn dims(shape: &[serde_json::Value]) -> Vec<i64> {
    shape.iter().map(|d| d.as_i64().unwrap_or(-1)).collect()
}

fn dims_text(d: &[i64]) -> String {
    let v: Vec<String> = d.iter().map(i64::to_string).collect();
    format!("[ {} ]", v.join(", "))
}

/// A tensor entry of `input [...]` / `output [...]`.
fn tensor_entry(t: &TensorInfo, skip_batch: bool) -> Result<String> {
    let d = dims(&t.shape);
    let d = if skip_batch { &d[1..] } else { &d[..] };
    Ok(format!(
        "  {{ name: {} data_type: {} dims: {} }}",
        quoted(&t.name),
        triton_type(t)?,
        dims_text(d)
    ))
}

/// The config of a graph model (`--kind gpu`): the onnxruntime backend,
/// shapes from the manifest; a graph whose every tensor starts with a
/// symbolic dim batches along it, the decoder keeps its KV cache as
/// implicit state.
fn graph_config(
    a: &Args,
    m: &Manifest,
    role: GraphRole,
    g: &flamingo_contract::manifest::GraphInfo,
) -> Result<String> {
    let mut c = String::new();
    let name = role.as_str();
    let _ = writeln!(
        c,
        "# flamingo export-triton --kind gpu: {} of {}",
        g.file,
        a.model.display()
    );
    let _ = writeln!(c, "name: {}", quoted(name));
    let _ = writeln!(c, "backend: \"onnxruntime\"");
    let _ = writeln!(c, "default_model_filename: {}", quoted(&g.file));
    let decoder = role == GraphRole::Decoder;
    let is_state =
        |t: &TensorInfo| t.name.starts_with("past_key_values.") || t.name.starts_with("present.");
    let batched = !decoder
        && g.inputs
            .iter()
            .chain(&g.outputs)
            .all(|t| t.shape.first().is_some_and(|d| d.is_string()));
    let _ = writeln!(
        c,
        "max_batch_size: {}",
        if batched { a.max_batch } else { 0 }
    );
    let entries = |ts: &[TensorInfo]| -> Result<String> {
        let e: Vec<String> = ts
            .iter()
            .filter(|t| !is_state(t))
            .map(|t| tensor_entry(t, batched))
            .collect::<Result<_>>()?;
        Ok(e.join(",\n"))
    };
    let _ = writeln!(c, "input [\n{}\n]", entries(&g.inputs)?);
    let _ = writeln!(c, "output [\n{}\n]", entries(&g.outputs)?);
    if batched {
        let _ = writeln!(
            c,
            "dynamic_batching {{ max_queue_delay_microseconds: {} }}",
            a.max_queue_delay_us
        );
    }
    if decoder {
        let d = &m.model.decoder;
        let _ = writeln!(c, "sequence_batching {{");
        let _ = writeln!(
            c,
            "  max_sequence_idle_microseconds: {}",
            a.max_sequence_idle_us
        );
        let _ = writeln!(c, "  direct {{ }}");
        let mut states = Vec::new();
        for layer in 0..d.num_layers {
            for (past, present) in [
                (
                    flamingo_contract::io::past_key(layer),
                    flamingo_contract::io::present_key(layer),
                ),
                (
                    flamingo_contract::io::past_value(layer),
                    flamingo_contract::io::present_value(layer),
                ),
            ] {
                let t = g
                    .inputs
                    .iter()
                    .find(|t| t.name == past)
                    .with_context(|| format!("{}: no input {past}", g.file))?;
                if !g.outputs.iter().any(|t| t.name == present) {
                    bail!("{}: no output {present}", g.file);
                }
                // one row per sequence; the past grows
                let mut live = dims(&t.shape);
                live[0] = 1;
                let empty: Vec<i64> = live.iter().map(|&x| x.max(0)).collect();
                states.push(format!(
                    "    {{ input_name: {} output_name: {} data_type: {} dims: {}\n      \
                     initial_state {{ name: \"empty\" data_type: {} dims: {} zero_data: true }} }}",
                    quoted(&past),
                    quoted(&present),
                    triton_type(t)?,
                    dims_text(&live),
                    triton_type(t)?,
                    dims_text(&empty),
                ));
            }
        }
        let _ = writeln!(c, "  state [\n{}\n  ]", states.join(",\n"));
        let _ = writeln!(c, "}}");
    }
    let _ = writeln!(
        c,
        "instance_group [ {{ count: {} kind: KIND_GPU }} ]",
        a.instances
    );
    if a.tensorrt {
        let precision = if a.trt_fp16 { "FP16" } else { "FP32" };
        let _ = writeln!(
            c,
            "optimization {{ execution_accelerators {{ gpu_execution_accelerator: [ {{ name: \"tensorrt\" \
             parameters {{ key: \"precision_mode\" value: \"{precision}\" }} }} ] }} }}"
        );
    }
    Ok(c)
}

fn readme(a: &Args, m: &Manifest) -> String {
    format!(
        r#"# Triton model repository for a Flamingo export

Written by `flamingo export-triton --kind {kind}` from `{model}` ({family} LM,
{layers} layers, {precision}). Models:

- `flamingo`: request/response over HTTP and gRPC, dynamic batching (up to
  {batch} requests per execution).
- `flamingo_stream`: decoupled, one response per token (gRPC streaming, or
  HTTP `POST /v2/models/flamingo_stream/generate_stream`).
{kind_models}
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
        kind = format!("{:?}", a.kind).to_lowercase(),
        precision = m.precision,
        kind_models = match a.kind {
            Kind::Cpu => format!(
                "\nBoth run the whole pipeline through the `flamingo` package ({} CPU instance(s) each,\n\
                 graphs on {}); the export is linked into `flamingo/1/export`.\n",
                a.instances, a.backend
            ),
            Kind::Gpu => format!(
                "- `vision_encoder`, `resampler`, `media_kv`: the graphs on the onnxruntime backend,\n  \
                 dynamic batching, {} GPU instance(s){}.\n\
                 - `decoder`: sequence batching (one sequence per request, its KV cache the\n  \
                 implicit state `past_key_values.*` <- `present.*`, empty at the start).\n\n\
                 `flamingo` and `flamingo_stream` ({} python instance(s) each) orchestrate them over\n\
                 BLS: tokenization, preprocessing, the media cache, the decode loop (greedy and\n\
                 sampling). They need a Triton image with the onnxruntime and python backends\n\
                 (`nvcr.io/nvidia/tritonserver:*-py3`) and the `flamingo` wheel in its Python.\n",
                a.instances,
                if a.tensorrt { ", TensorRT accelerated" } else { "" },
                a.orchestrators
            ),
        },
        model = a.model.display(),
        family = m.model.family,
        layers = m.model.lm.num_layers,
        batch = a.max_batch,
        max_tokens = a.max_tokens,
        default_tokens = a.default_tokens,
        out = a.out.display(),
    )
}
