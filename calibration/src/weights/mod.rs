//! Weight-only quantisation of MatMul / Gemm weights, one format per file
//! behind one trait ([`Format`]):
//!
//! - [`int8`]: per-output-channel symmetric int8 weights behind a standard
//!   `DequantizeLinear` (portable: tract and ONNX Runtime run it);
//! - [`int8_ort`] and [`int4`]: ONNX Runtime's `com.microsoft.MatMulNBits`
//!   at 8 or 4 bits ([`matmul_nbits`]; ONNX Runtime only);
//! - [`int8_flamingo`] and [`int4_flamingo`]: this runtime's own kernels,
//!   `ai.flamingo.MatMulInt8` / `MatMulInt4` (ONNX Runtime through this
//!   runtime only);
//! - [`int8_dynamic`]: int8 weights and activations (integer compute) in
//!   ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul` (ONNX Runtime
//!   only).
//!
//! The quantisation grids they share (clipping search, GPTQ) are in
//! [`grid`]. In the ONNX-Runtime-only formats the LM head (a plain `A·Bᵀ`
//! Gemm) is quantised too; when it is tied to the embedding, the float
//! embedding stays for the lookup and the head reads a quantised copy.
//! Only float32 initializers read as the weight of a MatMul (`[K, N]`, and
//! by nothing else) or of the head Gemm (`[N, K]`) are quantised.

pub mod grid;
pub mod int4;
pub mod int4_flamingo;
pub mod int8;
pub mod int8_dynamic;
pub mod int8_flamingo;
pub mod int8_ort;
pub mod matmul_nbits;

use std::collections::HashMap;

use flamingo_contract::Precision;
use flamingo_graphs::{kernels, Attr, DType, Graph, Node, Tensor};

pub use grid::{int4_blocks, int8_channels};

use crate::gptq::{Compensation, Hessians};

/// The weight formats by name (`flamingo quantize --weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightKind {
    /// Per-channel int8 behind DequantizeLinear (portable)
    Int8,
    /// MatMulNBits 8 bits (ONNX Runtime only, its int8 kernels)
    Int8Ort,
    /// MatMulNBits 4 bits (ONNX Runtime only)
    Int4,
    /// Per-channel int8 in this runtime's kernel inside ONNX Runtime (float32 compute)
    Int8Flamingo,
    /// Symmetric int4 blocks in this runtime's kernel inside ONNX Runtime
    Int4Flamingo,
    /// Per-channel int8 weights, activations quantised at run time: integer
    /// compute (ONNX Runtime's DynamicQuantizeMatMul; ONNX Runtime only)
    Int8Dynamic,
}

impl WeightKind {
    pub fn name(self) -> &'static str {
        match self {
            WeightKind::Int8 => "int8",
            WeightKind::Int8Ort => "int8-ort",
            WeightKind::Int4 => "int4",
            WeightKind::Int8Flamingo => "int8-flamingo",
            WeightKind::Int4Flamingo => "int4-flamingo",
            WeightKind::Int8Dynamic => "int8-dynamic",
        }
    }

    pub const ALL: [WeightKind; 6] = [
        WeightKind::Int8,
        WeightKind::Int8Ort,
        WeightKind::Int4,
        WeightKind::Int8Flamingo,
        WeightKind::Int4Flamingo,
        WeightKind::Int8Dynamic,
    ];

    /// The kind named `name` (as [`WeightKind::name`] spells it).
    pub fn parse(name: &str) -> Result<WeightKind, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown weight format {name:?} (one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What `flamingo quantize` makes of an fp32 export.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeSpec {
    pub bits: WeightBits,
    pub opts: BlockOptions,
    /// The vision encoder, resampler and media K/V too, not only the decoder.
    pub include_vision: bool,
}

/// Quantises the fp32 export `input` into `out`: GPTQ on the decoder where
/// `hessians` were observed, rounding to nearest elsewhere.
pub fn quantize_export(
    input: &std::path::Path,
    out: &std::path::Path,
    force: bool,
    spec: &QuantizeSpec,
    hessians: Option<&Hessians>,
    progress: &mut dyn flamingo_export::Progress,
) -> flamingo_export::Result<flamingo_contract::Manifest> {
    use flamingo_contract::GraphRole;
    spec.bits
        .check(&spec.opts, hessians.is_some())
        .map_err(|message| flamingo_export::Error::Config {
            path: out.display().to_string(),
            message,
        })?;
    crate::convert::convert_fp32(
        input,
        out,
        force,
        spec.bits.precision(),
        &|role, g| match role {
            GraphRole::Decoder => quantize_decoder(g, spec.bits, hessians, &spec.opts).map(Some),
            _ if spec.include_vision => {
                quantize_media_graph(g, spec.bits, None, &spec.opts).map(Some)
            }
            _ => Ok(None),
        },
        progress,
    )
}

/// What to quantise weights to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightBits {
    /// Per-channel int8 behind `DequantizeLinear` (portable).
    Int8,
    /// Blockwise int8 in `MatMulNBits` (ONNX Runtime only; int8 kernels).
    Int8Ort { block_size: usize },
    /// Blockwise int4 in `MatMulNBits` (ONNX Runtime only).
    Int4 { block_size: usize },
    /// Per-channel int8 in `ai.flamingo.MatMulInt8` (this runtime's ONNX
    /// Runtime backend only).
    Int8Flamingo,
    /// Symmetric int4 in blocks of `block_size` (a power of two, at least
    /// 32) in `ai.flamingo.MatMulInt4` (this runtime's ONNX Runtime backend
    /// only).
    Int4Flamingo { block_size: usize },
    /// Per-channel int8 weights in `com.microsoft.DynamicQuantizeMatMul`,
    /// activations quantised when it runs (ONNX Runtime only).
    Int8Dynamic,
}

/// The block size along K when none is asked for.
pub const DEFAULT_BLOCK_SIZE: usize = 32;

impl WeightBits {
    /// The format `kind` with `block_size` (the blockwise kinds; default
    /// [`DEFAULT_BLOCK_SIZE`]), checked.
    pub fn new(kind: WeightKind, block_size: Option<usize>) -> Result<WeightBits, String> {
        let bs = block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        let bits = match kind {
            WeightKind::Int8 | WeightKind::Int8Flamingo | WeightKind::Int8Dynamic
                if block_size.is_some() =>
            {
                return Err(format!(
                    "--block-size applies to --weights int8-ort, int4 and int4-flamingo; {} is per channel",
                    kind.name()
                ))
            }
            WeightKind::Int8 => WeightBits::Int8,
            WeightKind::Int8Flamingo => WeightBits::Int8Flamingo,
            WeightKind::Int8Dynamic => WeightBits::Int8Dynamic,
            WeightKind::Int8Ort => WeightBits::Int8Ort { block_size: bs },
            WeightKind::Int4 => WeightBits::Int4 { block_size: bs },
            WeightKind::Int4Flamingo => WeightBits::Int4Flamingo { block_size: bs },
        };
        bits.check_block_size()?;
        Ok(bits)
    }

    pub fn kind(self) -> WeightKind {
        match self {
            WeightBits::Int8 => WeightKind::Int8,
            WeightBits::Int8Ort { .. } => WeightKind::Int8Ort,
            WeightBits::Int4 { .. } => WeightKind::Int4,
            WeightBits::Int8Flamingo => WeightKind::Int8Flamingo,
            WeightBits::Int4Flamingo { .. } => WeightKind::Int4Flamingo,
            WeightBits::Int8Dynamic => WeightKind::Int8Dynamic,
        }
    }

    /// The manifest's precision of graphs quantised so.
    pub fn precision(self) -> Precision {
        match self {
            WeightBits::Int8 => Precision::Int8Weights,
            WeightBits::Int8Ort { .. } => Precision::Int8WeightsOrt,
            WeightBits::Int4 { .. } => Precision::Int4Weights,
            WeightBits::Int8Flamingo => Precision::Int8WeightsFlamingo,
            WeightBits::Int4Flamingo { .. } => Precision::Int4WeightsFlamingo,
            WeightBits::Int8Dynamic => Precision::Int8Dynamic,
        }
    }

    pub fn name(self) -> &'static str {
        self.precision().as_str()
    }

    /// Graphs only ONNX Runtime runs: quantised with the LM head (tied or
    /// not) and fused for ONNX Runtime.
    pub fn ort_only(self) -> bool {
        self != WeightBits::Int8
    }

    fn check_block_size(self) -> Result<(), String> {
        let unit = kernels::int4::BLOCK;
        match self {
            WeightBits::Int4Flamingo { block_size: bs } if bs < unit || !bs.is_power_of_two() => {
                Err(format!(
                    "--block-size {bs}: int4-flamingo's blocks are a power of two, at least {unit}"
                ))
            }
            WeightBits::Int8Ort { block_size: bs } | WeightBits::Int4 { block_size: bs }
                if bs < 16 || !bs.is_power_of_two() =>
            {
                Err(format!(
                    "--block-size {bs}: MatMulNBits blocks are a power of two, at least 16"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks the settings that apply to this format (`gptq`: Hessians
    /// from calibration data will be given). Messages name the options as
    /// `flamingo quantize` spells them.
    pub fn check(self, opts: &BlockOptions, gptq: bool) -> Result<(), String> {
        self.check_block_size()?;
        if ![4, 8].contains(&opts.head_bits) {
            return Err(format!("--head-bits {}: expected 4 or 8", opts.head_bits));
        }
        match self {
            WeightBits::Int8 if opts.symmetric || opts.head_bits != 8 || opts.plain_kv_cache => {
                Err("--symmetric, --head-bits and --plain-kv-cache apply to --weights int8-ort and int4"
                    .into())
            }
            WeightBits::Int8 if gptq => Err(
                "--data (GPTQ) applies to --weights int4, int8-ort and int8-flamingo; int8 rounds \
                 per channel"
                    .into(),
            ),
            WeightBits::Int8Dynamic if opts.symmetric || opts.head_bits != 8 => Err(
                "--symmetric and --head-bits apply to --weights int8-ort and int4; int8-dynamic \
                 is symmetric per channel, the head included"
                    .into(),
            ),
            WeightBits::Int8Flamingo if opts.symmetric || opts.head_bits != 8 => Err(
                "--symmetric and --head-bits apply to --weights int8-ort and int4; int8-flamingo \
                 is symmetric per channel, the head included"
                    .into(),
            ),
            WeightBits::Int4Flamingo { .. } if opts.symmetric => Err(
                "--symmetric applies to --weights int8-ort and int4; int4-flamingo is symmetric"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The format that quantises one weight (`head`: the LM head).
    fn format(self, head: bool, opts: &BlockOptions) -> Box<dyn Format> {
        match self {
            WeightBits::Int8 => Box::new(int8::Int8),
            WeightBits::Int8Ort { block_size } => Box::new(int8_ort::Int8Ort { block_size }),
            WeightBits::Int4 { block_size } => Box::new(int4::Int4 { block_size }),
            WeightBits::Int8Flamingo => Box::new(int8_flamingo::Int8Flamingo),
            WeightBits::Int8Dynamic => Box::new(int8_dynamic::Int8Dynamic),
            // int4-flamingo's head at 8 bits: in the int8 kernel
            WeightBits::Int4Flamingo { .. } if head && opts.head_bits == 8 => {
                Box::new(int8_flamingo::Int8Flamingo)
            }
            WeightBits::Int4Flamingo { block_size } => {
                Box::new(int4_flamingo::Int4Flamingo { block_size })
            }
        }
    }
}

/// Settings of the blockwise (`MatMulNBits`) kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Symmetric blocks: no zero points (ONNX Runtime's default mid-code),
    /// one fewer value per block to read and its faster kernels; coarser.
    pub symmetric: bool,
    /// Bits of the LM head (4 or 8). At 8 (the default) the head's error
    /// stays small next to the body's; 4 reads half the bytes.
    pub head_bits: u32,
    /// Self-attention over a concatenated cache (`MultiHeadAttention`)
    /// instead of `GroupQueryAttention` updating it in place: for the CUDA
    /// provider, which has no float32 `GroupQueryAttention`.
    pub plain_kv_cache: bool,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            symmetric: false,
            head_bits: 8,
            plain_kv_cache: false,
        }
    }
}

/// One weight to quantise.
pub struct Target<'a> {
    /// The weight initializer's name.
    pub name: &'a str,
    /// The MatMul / Gemm reading it, and its index in the graph.
    pub node: &'a Node,
    pub ni: usize,
    /// The LM head (a Gemm over the `[N, K]` matrix) rather than a MatMul.
    pub head: bool,
    pub n_out: usize,
    pub k_in: usize,
    /// The weight as `[n_out, k_in]` rows: its values, and lazily.
    pub w: &'a [f32],
    pub src: Tensor,
    /// GPTQ's compensation where the weight's input was observed.
    pub comp: Option<&'a Compensation>,
    pub opts: &'a BlockOptions,
}

/// What the formats add to the rewritten graph.
#[derive(Default)]
pub struct Rewrite {
    pub initializers: Vec<(String, Tensor)>,
    /// Nodes inserted before the node of that index.
    pub extra_nodes: Vec<(usize, Node)>,
    /// Nodes replacing the node of that index.
    pub replaced: HashMap<usize, Node>,
}

/// One weight format.
pub trait Format {
    /// Replaces `t`'s product with this format's operators over quantised
    /// weights, adding them to `out`.
    fn quantize(&self, t: &Target, out: &mut Rewrite) -> Result<(), String>;
}

/// A lazy transform of `src`'s float32 values into a new tensor.
fn lazy(
    dtype: DType,
    shape: Vec<usize>,
    src: Tensor,
    f: impl Fn(&[f32]) -> Vec<u8> + Send + Sync + 'static,
) -> Tensor {
    src.map(dtype, shape, move |b| {
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        f(&v)
    })
}

/// `t`'s weight as per-channel int8 codes ([`int8_channels`]; GPTQ where
/// `t` has a compensation) laid out by `layout` (`[n, k]` codes to the
/// tensor's bytes) as a tensor of `shape`, and the scales. Without GPTQ the
/// codes are made lazily, when written: no second copy in memory.
fn int8_weight(
    t: &Target,
    shape: Vec<usize>,
    layout: fn(&[i8], usize, usize) -> Vec<u8>,
) -> (Tensor, Vec<f32>) {
    let (n_out, k_in) = (t.n_out, t.k_in);
    match t.comp {
        Some(c) => {
            let (codes, scales) = int8_channels(t.w, n_out, k_in, Some(c));
            let q = Tensor {
                dtype: DType::I8,
                shape,
                data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(layout(
                    &codes, n_out, k_in,
                ))),
            };
            (q, scales)
        }
        None => {
            let (_, scales) = int8_channels(t.w, n_out, k_in, None);
            let q = lazy(DType::I8, shape, t.src.clone(), move |w| {
                layout(&int8_channels(w, n_out, k_in, None).0, n_out, k_in)
            });
            (q, scales)
        }
    }
}

/// Replaces `t`'s product with this runtime's `op` over the quantised
/// weight `q` and its `scales`.
fn own_kernel(
    out: &mut Rewrite,
    t: &Target,
    (q, scales): (Tensor, Tensor),
    (op, block_size): (&str, Option<usize>),
) {
    let mut attrs = vec![
        ("K".into(), Attr::Int(t.k_in as i64)),
        ("N".into(), Attr::Int(t.n_out as i64)),
    ];
    if let Some(bs) = block_size {
        attrs.push(("block_size".into(), Attr::Int(bs as i64)));
    }
    let tag = if t.head { ".head" } else { "" };
    let qn = format!("{}{tag}.qweight", t.name);
    let sn = format!("{}{tag}.scales", t.name);
    out.initializers.push((qn.clone(), q));
    out.initializers.push((sn.clone(), scales));
    out.replaced.insert(
        t.ni,
        Node {
            name: t.node.name.clone(),
            op_type: op.into(),
            domain: kernels::int8::DOMAIN.into(),
            inputs: vec![t.node.inputs[0].clone(), qn, sn],
            outputs: t.node.outputs.clone(),
            attrs,
            keep_fp32: false,
        },
    );
}

/// Quantises the eligible weights of `g` (round-to-nearest).
pub fn quantize_weights(g: &Graph, bits: WeightBits) -> Result<Graph, String> {
    quantize_weights_with(g, bits, None)
}

/// Quantises the eligible weights of `g`; a MatMul whose data input has a
/// Hessian in `hessians` is quantised with GPTQ's error compensation (see
/// [`crate::gptq`]; not in `int8`), the others by rounding.
pub fn quantize_weights_with(
    g: &Graph,
    bits: WeightBits,
    hessians: Option<&Hessians>,
) -> Result<Graph, String> {
    quantize_weights_opts(g, bits, hessians, &BlockOptions::default())
}

/// A decoder as `flamingo quantize` writes it: the weights quantised and,
/// for the ONNX-Runtime-only kinds, ONNX Runtime's fused attention, GELU
/// and skip-LayerNorm kernels ([`crate::ort_fuse`]).
pub fn quantize_decoder(
    g: &Graph,
    bits: WeightBits,
    hessians: Option<&Hessians>,
    opts: &BlockOptions,
) -> Result<Graph, String> {
    let q = quantize_weights_opts(g, bits, hessians, opts)?;
    let q = if bits.ort_only() {
        crate::ort_fuse::fuse_decoder_with(&q, !opts.plain_kv_cache).0
    } else {
        q
    };
    Ok(finish(q, bits))
}

/// A vision encoder, resampler or media K/V graph as `flamingo quantize
/// --include-vision` writes it.
pub fn quantize_media_graph(
    g: &Graph,
    bits: WeightBits,
    hessians: Option<&Hessians>,
    opts: &BlockOptions,
) -> Result<Graph, String> {
    Ok(finish(
        quantize_weights_opts(g, bits, hessians, opts)?,
        bits,
    ))
}

/// The format's last rewrite: int8-dynamic's biases folded into its
/// operator.
fn finish(g: Graph, bits: WeightBits) -> Graph {
    match bits {
        WeightBits::Int8Dynamic => int8_dynamic::fold_bias(&g),
        _ => g,
    }
}

/// [`quantize_weights_with`] with the blockwise kinds' settings.
pub fn quantize_weights_opts(
    g: &Graph,
    bits: WeightBits,
    hessians: Option<&Hessians>,
    opts: &BlockOptions,
) -> Result<Graph, String> {
    bits.check(opts, false)?;
    let inits: HashMap<&str, &Tensor> = g
        .initializers
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    // how each initializer is read
    let mut uses: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        for (ii, i) in n.inputs.iter().enumerate() {
            if inits.contains_key(i.as_str()) {
                uses.entry(i.as_str()).or_default().push((ni, ii));
            }
        }
    }
    let trans_b = |n: &Node| {
        n.attrs
            .iter()
            .any(|(k, a)| k == "transB" && matches!(a, Attr::Int(1)))
    };
    // a plain `A·Bᵀ` Gemm: no bias, alpha, beta or transA
    let plain_gemm =
        |n: &Node| trans_b(n) && n.inputs.len() == 2 && n.attrs.iter().all(|(k, _)| k == "transB");
    // weight name -> (node index, transposed [N,K] layout)
    let mut targets: HashMap<String, (usize, bool)> = HashMap::new();
    for (name, u) in &uses {
        let t = inits[name];
        let as_weight: Vec<usize> = u
            .iter()
            .filter(|(_, ii)| *ii == 1)
            .map(|(ni, _)| *ni)
            .collect();
        if t.dtype != DType::F32 || t.shape.len() != 2 || as_weight.len() != 1 {
            continue;
        }
        let ni = as_weight[0];
        let n = &g.nodes[ni];
        // other readers: only embedding lookups (a tied LM head)
        let only_gathers = u
            .iter()
            .all(|(i, ii)| *i == ni || (g.nodes[*i].op_type == "Gather" && *ii == 0));
        match n.op_type.as_str() {
            "MatMul" if u.len() == 1 => {
                targets.insert(name.to_string(), (ni, false));
            }
            // the LM head: int8 behind DequantizeLinear when it is not tied;
            // in the MatMulNBits kinds always 8-bit (at 4 bits it would
            // dominate the logits' error), a quantised copy beside the float
            // embedding when tied
            "Gemm" if plain_gemm(n) && bits == WeightBits::Int8 && u.len() == 1 => {
                targets.insert(name.to_string(), (ni, true));
            }
            "Gemm" if plain_gemm(n) && bits.ort_only() && only_gathers => {
                targets.insert(name.to_string(), (ni, true));
            }
            _ => {}
        }
    }
    let mut factors: HashMap<String, Option<Compensation>> = HashMap::new();
    let mut out = Rewrite::default();
    for (name, t) in &g.initializers {
        let Some(&(ni, head)) = targets.get(name) else {
            out.initializers.push((name.clone(), t.clone()));
            continue;
        };
        if uses.get(name.as_str()).is_some_and(|u| u.len() > 1) {
            // still read by an embedding lookup
            out.initializers.push((name.clone(), t.clone()));
        }
        let (r, c) = (t.shape[0], t.shape[1]);
        // rows = output channels
        let (n_out, k_in) = if head { (r, c) } else { (c, r) };
        let src = if head {
            t.clone()
        } else {
            t.clone().transpose_2d().map_err(|e| e.to_string())?
        };
        let w = src.to_f32_vec()?;
        // GPTQ where the weight's input was observed (not for int8)
        let data_input = g.nodes[ni].inputs[0].as_str();
        let comp = match hessians.and_then(|h| h.get(data_input)) {
            Some(h) if h.k == k_in && bits != WeightBits::Int8 => {
                let entry = factors.entry(data_input.to_string());
                entry.or_insert_with(|| Compensation::new(h, 0.01)).as_ref()
            }
            _ => None,
        };
        let target = Target {
            name,
            node: &g.nodes[ni],
            ni,
            head,
            n_out,
            k_in,
            w: &w,
            src,
            comp,
            opts,
        };
        bits.format(head, opts).quantize(&target, &mut out)?;
    }
    let mut nodes = Vec::with_capacity(g.nodes.len() + out.extra_nodes.len());
    let mut extra: HashMap<usize, Vec<Node>> = HashMap::new();
    for (i, n) in out.extra_nodes {
        extra.entry(i).or_default().push(n);
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(pre) = extra.remove(&i) {
            nodes.extend(pre);
        }
        nodes.push(out.replaced.remove(&i).unwrap_or_else(|| n.clone()));
    }
    Ok(Graph {
        name: g.name.clone(),
        doc: format!("{} ({})", g.doc, bits.name()),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes,
        initializers: out.initializers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_once_and_their_settings_checked_once() {
        let b = WeightBits::new(WeightKind::Int4, None).unwrap();
        assert_eq!(b, WeightBits::Int4 { block_size: 32 });
        assert_eq!(b.precision(), Precision::Int4Weights);
        for (kind, bs) in [
            (WeightKind::Int8, Some(64)),
            (WeightKind::Int4Flamingo, Some(48)),
            (WeightKind::Int4Flamingo, Some(16)),
            (WeightKind::Int4, Some(8)),
        ] {
            let e = WeightBits::new(kind, bs).unwrap_err();
            assert!(e.contains("--block-size"), "{e}");
        }
        let sym = BlockOptions {
            symmetric: true,
            ..Default::default()
        };
        assert!(WeightBits::Int8Flamingo.check(&sym, false).is_err());
        assert!(WeightBits::Int4 { block_size: 32 }
            .check(&sym, true)
            .is_ok());
        assert!(WeightBits::Int8
            .check(&BlockOptions::default(), true)
            .unwrap_err()
            .contains("--data"));
    }
}
