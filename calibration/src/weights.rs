//! Weight-only quantisation of MatMul / Gemm weights.
//!
//! - int8: per-output-channel symmetric int8 weights with a standard
//!   `DequantizeLinear` in front of the unchanged MatMul (portable: tract and
//!   ONNX Runtime run it). The dequantized value keeps the weight's name.
//! - int8-ort and int4: ONNX Runtime's `com.microsoft.MatMulNBits` (8 or 4
//!   bits, blocks of `block_size` along K, asymmetric with packed zero
//!   points, `accuracy_level` 4: int8 compute). Such graphs are
//!   ONNX-Runtime-only. The LM head (a plain `A·Bᵀ` Gemm) is quantised to 8
//!   bits in both; when it is tied to the embedding, the float embedding
//!   stays for the lookup and the head reads a quantised copy.
//! - int8-flamingo: per-output-channel symmetric int8 weights in this
//!   runtime's own kernel, `ai.flamingo.MatMulInt8`
//!   ([`flamingo_runtime::int8_matmul`]): float32 activations and
//!   accumulation, the weights streamed at close to the memory bandwidth.
//!   ONNX Runtime through this runtime only (which registers the operator);
//!   the LM head as in int8-ort.
//! - int4-flamingo: symmetric int4 weights in blocks of `block_size` (32,
//!   64, 128, ...) along K in this
//!   runtime's own kernel, `ai.flamingo.MatMulInt4`
//!   ([`flamingo_runtime::int4_matmul`]): int8 activations per block, as
//!   `MatMulNBits` at `accuracy_level` 4, but one `vpmaddubsw` per 32
//!   weights with the output channels in separate lanes. ONNX Runtime
//!   through this runtime only; the LM head at 8 bits as in int8-flamingo,
//!   or at 4 in this kernel.
//!
//! Only float32 initializers read as the weight of a MatMul (`[K, N]`, and
//! by nothing else) or of the head Gemm (`[N, K]`) are quantised.

use std::collections::HashMap;

use flamingo_graphs::{Attr, DType, Graph, Node, Tensor};

use crate::gptq::{quantize_row, refit_scales, Compensation, Hessians};

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
}

impl WeightBits {
    pub fn name(self) -> &'static str {
        match self {
            WeightBits::Int8 => "int8-weights",
            WeightBits::Int8Ort { .. } => "int8-weights-ort",
            WeightBits::Int4 { .. } => "int4-weights",
            WeightBits::Int8Flamingo => "int8-weights-flamingo",
            WeightBits::Int4Flamingo { .. } => "int4-weights-flamingo",
        }
    }

    /// Graphs only ONNX Runtime runs: quantised with the LM head (tied or
    /// not) and fused for ONNX Runtime.
    pub fn ort_only(self) -> bool {
        self != WeightBits::Int8
    }

    /// `MatMulNBits`' bits and block size, for the blockwise kinds.
    fn blocked(self) -> Option<(u32, usize)> {
        match self {
            WeightBits::Int8 | WeightBits::Int8Flamingo | WeightBits::Int4Flamingo { .. } => None,
            WeightBits::Int8Ort { block_size } => Some((8, block_size)),
            WeightBits::Int4 { block_size } => Some((4, block_size)),
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

fn f32s(t: &Tensor) -> Result<Vec<f32>, String> {
    t.to_f32_vec()
}

/// `[rows, cols]` f32 -> per-row symmetric int8 and scales.
fn int8_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales[r] = s;
        for (c, v) in row.iter().enumerate() {
            q[r * cols + c] = ((v / s).round().clamp(-127.0, 127.0) as i8) as u8;
        }
    }
    (q, scales)
}

/// Asymmetric 4-bit (scale, zero point) of a block: the min/max range shrunk
/// by the ratio (1.0 down to 0.7) that gives the least squared error.
fn best_range(vals: &[f32], levels: f32) -> (f32, u8) {
    let mn0 = vals.iter().fold(0f32, |m, v| m.min(*v));
    let mx0 = vals.iter().fold(0f32, |m, v| m.max(*v));
    let mut best = (f32::INFINITY, 1.0f32, 0u8);
    for step in 0..=6 {
        let ratio = 1.0 - 0.05 * step as f32;
        let (mn, mx) = (mn0 * ratio, mx0 * ratio);
        let scale = if mx > mn { (mx - mn) / levels } else { 1.0 };
        let zp = (-mn / scale).round().clamp(0.0, levels) as u8;
        let err: f32 = vals
            .iter()
            .map(|v| {
                let q = ((v / scale).round() + zp as f32).clamp(0.0, levels);
                let d = (q - zp as f32) * scale - v;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale, zp);
        }
    }
    (best.1, best.2)
}

/// Symmetric (scale, mid-code zero point) of a block: `max |v|` over the
/// half range, shrunk by the ratio (1.0 down to 0.7) with the least squared
/// error.
fn best_symmetric(vals: &[f32], levels: f32) -> (f32, u8) {
    let zp = (levels + 1.0) / 2.0;
    let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut best = (f32::INFINITY, 1.0f32);
    for step in 0..=6 {
        let scale = if amax > 0.0 {
            amax * (1.0 - 0.05 * step as f32) / (zp - 1.0)
        } else {
            1.0
        };
        let err: f32 = vals
            .iter()
            .map(|v| {
                let d = grid_point(*v, (scale, zp as u8), levels) - v;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, scale);
        }
    }
    (best.1, zp as u8)
}

/// The grid point (`levels` + 1 codes) of `v` under `(scale, zero point)`, dequantized.
fn grid_point(v: f32, (scale, zp): (f32, u8), levels: f32) -> f32 {
    (grid_code(v, scale, zp, levels) as f32 - zp as f32) * scale
}

fn grid_code(v: f32, scale: f32, zp: u8, levels: f32) -> u8 {
    ((v / scale).round() + zp as f32).clamp(0.0, levels) as u8
}

/// `[N, K]` f32 rows -> MatMulNBits (`bits` 4 or 8) blobs `[N, blocks,
/// bs·bits/8]`, scales `[N*blocks]`, zero points (4 bits: two per byte,
/// `[N * ceil(blocks/2)]`; 8 bits: `[N * blocks]`). Round-to-nearest, or
/// GPTQ with `comp`.
fn nbits_rows(
    w: &[f32],
    n: usize,
    k: usize,
    bs: usize,
    bits: u32,
    symmetric: bool,
    comp: Option<&Compensation>,
) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let levels = ((1u32 << bits) - 1) as f32;
    let per_byte = (8 / bits) as usize;
    let blocks = k.div_ceil(bs);
    let zp_row = blocks.div_ceil(per_byte);
    let row_bytes = blocks * bs / per_byte;
    let mut packed = vec![0u8; n * row_bytes];
    let mut scales = vec![0f32; n * blocks];
    let mut zps = vec![0u8; n * zp_row];
    // one output row at a time, rows split over the cores
    let row = |r: usize, packed: &mut [u8], scales: &mut [f32], zps: &mut [u8]| {
        let mut row: Vec<f64> = (0..blocks * bs)
            .map(|i| if i < k { w[r * k + i] as f64 } else { 0.0 })
            .collect();
        let orig = row.clone();
        let mut params = quantize_row(
            &mut row,
            k,
            bs,
            comp,
            |b| {
                if symmetric {
                    best_symmetric(b, levels)
                } else {
                    best_range(b, levels)
                }
            },
            |v, p| grid_point(v, p, levels),
        );
        let codes: Vec<u8> = row
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (scale, zp) = params[i / bs];
                grid_code(*v as f32, scale, zp, levels)
            })
            .collect();
        if let Some(c) = comp {
            let centred: Vec<f64> = codes
                .iter()
                .enumerate()
                .map(|(i, q)| *q as f64 - params[i / bs].1 as f64)
                .collect();
            if let Some(sc) = refit_scales(&orig, &centred, &c.h, k, bs) {
                for (p, s) in params.iter_mut().zip(sc) {
                    p.0 = s as f32;
                }
            }
        }
        let shift = |i: usize| (i % per_byte) as u32 * bits;
        for (b, &(scale, zp)) in params.iter().enumerate() {
            scales[b] = scale;
            zps[b / per_byte] |= zp << shift(b);
        }
        for (i, q) in codes.iter().enumerate() {
            packed[i / per_byte] |= *q << shift(i);
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let chunks = packed
            .chunks_mut(per * row_bytes)
            .zip(scales.chunks_mut(per * blocks))
            .zip(zps.chunks_mut(per * zp_row));
        for (t, ((p, s), z)) in chunks.enumerate() {
            let row = &row;
            sc.spawn(move || {
                for (j, ((p, s), z)) in p
                    .chunks_mut(row_bytes)
                    .zip(s.chunks_mut(blocks))
                    .zip(z.chunks_mut(zp_row))
                    .enumerate()
                {
                    row(t * per + j, p, s, z);
                }
            });
        }
    });
    (packed, scales, zps)
}

/// `[n, k]` f32 rows → per-row symmetric int8 codes (`[n, k]`) and scales:
/// `max |w|` over 127 shrunk by the ratio with the least squared error, or
/// GPTQ with `comp`. The `int8-flamingo` weights: `w ≈ code · scale`.
pub fn int8_channels(
    w: &[f32],
    n: usize,
    k: usize,
    comp: Option<&Compensation>,
) -> (Vec<i8>, Vec<f32>) {
    // one block per row; codes are offset by the mid-code 128
    let (codes, scales, _) = nbits_rows(w, n, k, k, 8, true, comp);
    (
        codes.iter().map(|c| (*c as i16 - 128) as i8).collect(),
        scales,
    )
}

/// `[n, k]` f32 rows → symmetric int4 codes (`[n, k]`, 0..15, zero point
/// 8) and scales (`[n, ⌈k/bs⌉]`) in blocks of `bs`: the `int4-flamingo`
/// weights, `w ≈ (code − 8) · scale`. As [`int8_channels`].
pub fn int4_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    bs: usize,
    comp: Option<&Compensation>,
) -> (Vec<u8>, Vec<f32>) {
    let (packed, scales, _) = nbits_rows(w, n, k, bs, 4, true, comp);
    let row_bytes = k.div_ceil(bs) * bs / 2;
    let codes = (0..n * k)
        .map(|i| {
            let (r, c) = (i / k, i % k);
            (packed[r * row_bytes + c / 2] >> (4 * (c % 2))) & 15
        })
        .collect();
    (codes, scales)
}

/// `[n, k]` int8 codes in `MatMulInt8`'s layout, as the tensor's bytes.
fn packed_bytes(codes: &[i8], n: usize, k: usize) -> Vec<u8> {
    flamingo_runtime::int8_matmul::pack(codes, n, k)
        .iter()
        .map(|q| *q as u8)
        .collect()
}

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

/// Replaces MatMul/Gemm `old` (node `ni`, weight `name`) with this
/// runtime's `op` over the quantised weight `q` and its `scales`.
fn own_kernel(
    (initializers, replaced): (&mut Vec<(String, Tensor)>, &mut HashMap<usize, Node>),
    old: &Node,
    ni: usize,
    (name, head): (&str, bool),
    (q, scales): (Tensor, Tensor),
    (op, block_size): (&str, Option<usize>),
    (k, n): (usize, usize),
) {
    let mut attrs = vec![
        ("K".into(), Attr::Int(k as i64)),
        ("N".into(), Attr::Int(n as i64)),
    ];
    if let Some(bs) = block_size {
        attrs.push(("block_size".into(), Attr::Int(bs as i64)));
    }
    let tag = if head { ".head" } else { "" };
    let qn = format!("{name}{tag}.qweight");
    let sn = format!("{name}{tag}.scales");
    initializers.push((qn.clone(), q));
    initializers.push((sn.clone(), scales));
    replaced.insert(
        ni,
        Node {
            name: old.name.clone(),
            op_type: op.into(),
            domain: flamingo_runtime::int8_matmul::DOMAIN.into(),
            inputs: vec![old.inputs[0].clone(), qn, sn],
            outputs: old.outputs.clone(),
            attrs,
            keep_fp32: false,
        },
    );
}

/// Quantises the eligible weights of `g` (round-to-nearest).
pub fn quantize_weights(g: &Graph, bits: WeightBits) -> Result<Graph, String> {
    quantize_weights_with(g, bits, None)
}

/// Quantises the eligible weights of `g`; at 4 bits, a MatMul whose data
/// input has a Hessian in `hessians` is quantised with GPTQ's error
/// compensation (see [`crate::gptq`]), the others by rounding.
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
    Ok(if bits.ort_only() {
        crate::ort_fuse::fuse_decoder_with(&q, !opts.plain_kv_cache).0
    } else {
        q
    })
}

/// [`quantize_weights_with`] with the blockwise kinds' settings.
pub fn quantize_weights_opts(
    g: &Graph,
    bits: WeightBits,
    hessians: Option<&Hessians>,
    opts: &BlockOptions,
) -> Result<Graph, String> {
    if ![4, 8].contains(&opts.head_bits) {
        return Err(format!("head bits {}: expected 4 or 8", opts.head_bits));
    }
    if let WeightBits::Int4Flamingo { block_size } = bits {
        if opts.symmetric {
            return Err(format!(
                "{}: symmetric blocks always; the symmetric setting is for the MatMulNBits kinds",
                bits.name()
            ));
        }
        let unit = flamingo_runtime::int4_matmul::BLOCK;
        if block_size < unit || !block_size.is_power_of_two() {
            return Err(format!(
                "{}: block size {block_size} must be a power of two, at least {unit}",
                bits.name()
            ));
        }
    }
    if matches!(bits, WeightBits::Int8 | WeightBits::Int8Flamingo)
        && (opts.head_bits != 8 || opts.symmetric)
    {
        return Err(format!(
            "{}: per-channel symmetric 8-bit weights; the head-bits and symmetric settings are for \
             the MatMulNBits kinds",
            bits.name()
        ));
    }
    let symmetric = opts.symmetric;
    if let Some((_, block_size)) = bits.blocked() {
        if block_size < 16 || !block_size.is_power_of_two() {
            return Err(format!(
                "block size {block_size} must be a power of two, at least 16"
            ));
        }
    }
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
    let mut initializers = Vec::new();
    let mut extra_nodes: Vec<(usize, Node)> = Vec::new();
    let mut replaced_nodes: HashMap<usize, Node> = HashMap::new();
    for (name, t) in &g.initializers {
        let Some(&(ni, nk_layout)) = targets.get(name) else {
            initializers.push((name.clone(), t.clone()));
            continue;
        };
        if uses.get(name.as_str()).is_some_and(|u| u.len() > 1) {
            // still read by an embedding lookup
            initializers.push((name.clone(), t.clone()));
        }
        let (r, c) = (t.shape[0], t.shape[1]);
        // rows = output channels
        let (n_out, k_in) = if nk_layout { (r, c) } else { (c, r) };
        let src = if nk_layout {
            t.clone()
        } else {
            t.clone().transpose_2d().map_err(|e| e.to_string())?
        };
        let w = f32s(&src)?;
        // GPTQ where the weight's input was observed (not for int8)
        let data_input = g.nodes[ni].inputs[0].as_str();
        let comp = match hessians.and_then(|h| h.get(data_input)) {
            Some(h) if h.k == k_in && bits != WeightBits::Int8 => {
                let entry = factors.entry(data_input.to_string());
                entry.or_insert_with(|| Compensation::new(h, 0.01)).as_ref()
            }
            _ => None,
        };
        // int4-flamingo's head at 8 bits: in the int8 kernel
        let kind = match bits {
            WeightBits::Int4Flamingo { .. } if nk_layout && opts.head_bits == 8 => {
                WeightBits::Int8Flamingo
            }
            b => b,
        };
        match kind {
            WeightBits::Int8 => {
                let qn = format!("{name}.qweight");
                let sn = format!("{name}.scale");
                let zn = format!("{name}.zero_point");
                let q = lazy(DType::I8, vec![n_out, k_in], src.clone(), move |w| {
                    int8_rows(w, n_out, k_in).0
                });
                // scales computed eagerly (small), from the same values
                let (_, scales) = int8_rows(&w, n_out, k_in);
                // dequantize to [N, K] then, for MatMul, transpose back to [K, N]
                initializers.push((qn.clone(), q));
                initializers.push((sn.clone(), Tensor::from_f32(vec![n_out], &scales)));
                initializers.push((
                    zn.clone(),
                    Tensor {
                        dtype: DType::I8,
                        shape: vec![n_out],
                        data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(vec![
                            0u8;
                            n_out
                        ])),
                    },
                ));
                let deq_out = if nk_layout {
                    name.clone()
                } else {
                    format!("{name}/dequantized")
                };
                extra_nodes.push((
                    ni,
                    Node {
                        name: format!("{name}/DequantizeLinear"),
                        op_type: "DequantizeLinear".into(),
                        domain: String::new(),
                        inputs: vec![qn, sn, zn],
                        outputs: vec![deq_out.clone()],
                        attrs: vec![("axis".into(), Attr::Int(0))],
                        keep_fp32: false,
                    },
                ));
                if !nk_layout {
                    extra_nodes.push((
                        ni,
                        Node {
                            name: format!("{name}/Transpose"),
                            op_type: "Transpose".into(),
                            domain: String::new(),
                            inputs: vec![deq_out],
                            outputs: vec![name.clone()],
                            attrs: vec![("perm".into(), Attr::Ints(vec![1, 0]))],
                            keep_fp32: false,
                        },
                    ));
                }
            }
            WeightBits::Int8Flamingo => {
                use flamingo_runtime::int8_matmul as mi;
                let shape = mi::packed_shape(n_out, k_in).to_vec();
                let (q, scales) = match comp {
                    Some(c) => {
                        let (codes, scales) = int8_channels(&w, n_out, k_in, Some(c));
                        let q = Tensor {
                            dtype: DType::I8,
                            shape,
                            data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(
                                packed_bytes(&codes, n_out, k_in),
                            )),
                        };
                        (q, scales)
                    }
                    None => {
                        // packed lazily, when written: no second copy in memory
                        let (_, scales) = int8_channels(&w, n_out, k_in, None);
                        let q = lazy(DType::I8, shape, src, move |w| {
                            packed_bytes(&int8_channels(w, n_out, k_in, None).0, n_out, k_in)
                        });
                        (q, scales)
                    }
                };
                own_kernel(
                    (&mut initializers, &mut replaced_nodes),
                    &g.nodes[ni],
                    ni,
                    (name, nk_layout),
                    (q, Tensor::from_f32(vec![n_out], &scales)),
                    (mi::OP, None),
                    (k_in, n_out),
                );
            }
            WeightBits::Int4Flamingo { block_size: bs } => {
                use flamingo_runtime::int4_matmul as m4;
                let shape = m4::packed_shape(n_out, k_in).to_vec();
                let (q, scales) = match comp {
                    Some(c) => {
                        let (codes, scales) = int4_blocks(&w, n_out, k_in, bs, Some(c));
                        let q = Tensor {
                            dtype: DType::U8,
                            shape,
                            data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(
                                m4::pack(&codes, n_out, k_in),
                            )),
                        };
                        (q, scales)
                    }
                    None => {
                        // packed lazily, when written: no second copy in memory
                        let (_, scales) = int4_blocks(&w, n_out, k_in, bs, None);
                        let q = lazy(DType::U8, shape, src, move |w| {
                            m4::pack(&int4_blocks(w, n_out, k_in, bs, None).0, n_out, k_in)
                        });
                        (q, scales)
                    }
                };
                let scales = Tensor::from_f32(
                    m4::scales_shape(n_out, k_in, bs).to_vec(),
                    &m4::pack_scales(&scales, n_out, k_in, bs),
                );
                own_kernel(
                    (&mut initializers, &mut replaced_nodes),
                    &g.nodes[ni],
                    ni,
                    (name, nk_layout),
                    (q, scales),
                    (m4::OP, Some(bs)),
                    (k_in, n_out),
                );
            }
            WeightBits::Int4 { .. } | WeightBits::Int8Ort { .. } => {
                let (nbits, block_size) = bits.blocked().unwrap_or((4, 32));
                let nbits = if nk_layout { opts.head_bits } else { nbits };
                let blocks = k_in.div_ceil(block_size);
                let qshape = vec![n_out, blocks, block_size * nbits as usize / 8];
                let (q, scales, zps) = match comp {
                    Some(c) => {
                        let (packed, scales, zps) =
                            nbits_rows(&w, n_out, k_in, block_size, nbits, symmetric, Some(c));
                        let q = Tensor {
                            dtype: DType::U8,
                            shape: qshape,
                            data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(packed)),
                        };
                        (q, scales, zps)
                    }
                    None => {
                        // packed lazily, when written: no second copy in memory
                        let (_, scales, zps) =
                            nbits_rows(&w, n_out, k_in, block_size, nbits, symmetric, None);
                        let q = lazy(DType::U8, qshape, src, move |w| {
                            nbits_rows(w, n_out, k_in, block_size, nbits, symmetric, None).0
                        });
                        (q, scales, zps)
                    }
                };
                let tag = if nk_layout { ".head" } else { "" };
                let qn = format!("{name}{tag}.qweight");
                let sn = format!("{name}{tag}.scales");
                let zn = format!("{name}{tag}.zero_points");
                initializers.push((qn.clone(), q));
                initializers.push((sn.clone(), Tensor::from_f32(vec![n_out * blocks], &scales)));
                let mut inputs = vec![g.nodes[ni].inputs[0].clone(), qn, sn];
                // symmetric: no zero points, ONNX Runtime's default is the mid-code
                if !symmetric {
                    let zlen = zps.len();
                    initializers.push((
                        zn.clone(),
                        Tensor {
                            dtype: DType::U8,
                            shape: vec![zlen],
                            data: flamingo_graphs::TensorData::Bytes(std::sync::Arc::new(zps)),
                        },
                    ));
                    inputs.push(zn);
                }
                let old = &g.nodes[ni];
                replaced_nodes.insert(
                    ni,
                    Node {
                        name: old.name.clone(),
                        op_type: "MatMulNBits".into(),
                        domain: "com.microsoft".into(),
                        inputs,
                        outputs: old.outputs.clone(),
                        attrs: vec![
                            ("K".into(), Attr::Int(k_in as i64)),
                            ("N".into(), Attr::Int(n_out as i64)),
                            ("bits".into(), Attr::Int(nbits as i64)),
                            ("block_size".into(), Attr::Int(block_size as i64)),
                            // int8 activations per block: ONNX Runtime's fast kernels
                            ("accuracy_level".into(), Attr::Int(4)),
                        ],
                        keep_fp32: false,
                    },
                );
            }
        }
    }
    let mut nodes = Vec::with_capacity(g.nodes.len() + extra_nodes.len());
    let mut extra: HashMap<usize, Vec<Node>> = HashMap::new();
    for (i, n) in extra_nodes {
        extra.entry(i).or_default().push(n);
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(pre) = extra.remove(&i) {
            nodes.extend(pre);
        }
        nodes.push(replaced_nodes.remove(&i).unwrap_or_else(|| n.clone()));
    }
    Ok(Graph {
        name: g.name.clone(),
        doc: format!("{} ({})", g.doc, bits.name()),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes,
        initializers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_packing_dequantizes_within_half_a_step() {
        let (n, k, bs) = (3, 40, 16);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let (packed, scales, zps) = nbits_rows(&w, n, k, bs, 4, false, None);
        let blocks = k.div_ceil(bs);
        for r in 0..n {
            for kk in 0..k {
                let b = kk / bs;
                let i = kk % bs;
                let byte = packed[(r * blocks + b) * bs / 2 + i / 2];
                let q = if i % 2 == 0 { byte & 15 } else { byte >> 4 };
                let zb = zps[r * blocks.div_ceil(2) + b / 2];
                let zp = if b % 2 == 0 { zb & 15 } else { zb >> 4 };
                let s = scales[r * blocks + b];
                let deq = (q as f32 - zp as f32) * s;
                // within half a step, or clipped to the range edge
                let v = w[r * k + kk];
                assert!(
                    (deq - v).abs() <= s * 0.5 + 1e-6 || q == 0 || q == 15,
                    "{deq} vs {v}"
                );
            }
        }
    }

    #[test]
    fn int8_rows_are_symmetric_per_channel() {
        let w = [1.0f32, -2.0, 0.5, 4.0, 0.0, -4.0];
        let (q, s) = int8_rows(&w, 2, 3);
        assert_eq!(s, vec![2.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q[1] as i8, -127);
        assert_eq!(q[3] as i8, 127);
    }
}
