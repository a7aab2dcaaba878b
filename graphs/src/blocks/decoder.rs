//! The frozen LM with OpenFlamingo's gated cross-attention, run incrementally.
//! Before decoder layer i when (i+1) % n == 0:
//!   x += tanh(attn_gate)·XAttn(LN(x), media_kv)   (only the latest media; zero before the first)
//!   x += tanh(ff_gate)·FF(x)
//! then the family's decoder layer with a self-attention KV cache.
//! ids: [B,S] -> logits [B,kept,V]; past/present K/V: [B,H_kv,P(+S),Dh];
//! media_kv k/v: [B,H_x,T·n,Dh_x] (computed once per prompt by [`media_kv`]).
//! Reference: open_flamingo 2.0.1 `helpers.py`/`flamingo_lm.py`, transformers 4.36.2.

use super::primitives::{gelu_erf, layer_norm, linear, merge_heads, split_heads};
use super::resampler::feed_forward;
use crate::ir::{Attr, Scope, Value};
use crate::{DType, Error, Result};
use flamingo_contract::io;

/// Normalisation of a decoder layer.
#[derive(Clone, Debug, PartialEq)]
pub enum NormKind {
    LayerNorm { bias: bool },
    RmsNorm,
}

/// How q, k, v are projected (names relative to the layer).
#[derive(Clone, Debug, PartialEq)]
pub enum QkvLayout {
    /// One matrix, rows [q; k; v] (MPT `attn.Wqkv`).
    Fused { name: String, bias: bool },
    /// One matrix laid out per head: [head][q|k|v][head_dim] (GPT-NeoX).
    FusedPerHead { name: String, bias: bool },
    /// Separate projections (LLaMA).
    Separate {
        q: String,
        k: String,
        v: String,
        bias: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum MlpKind {
    /// `down(gelu(up(x)))` (exact GELU).
    Gelu {
        up: String,
        down: String,
        bias: bool,
    },
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu {
        gate: String,
        up: String,
        down: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum PositionKind {
    /// ALiBi: slope_h * (key - last key).
    Alibi { bias_max: f32, slopes: AlibiSlopes },
    /// Rotate-half RoPE on the first `dims` of each head.
    Rotary { dims: usize, base: f32 },
}

/// How ALiBi's per-head slopes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlibiSlopes {
    /// transformers' MPT: `1/2^(i·max/H')` for i = 1..H', H' the next power
    /// of two, odd ones first when H is not a power of two.
    Interleaved,
    /// MosaicGPT: `1/2^(h·max/H)` for h = 1..H, in order.
    Linear,
}

/// Optional parts of self-attention; the defaults are absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttnOptions {
    /// LayerNorm (weight, and bias as the family's norms) over the
    /// full-width q and k, before the heads are split: their names relative
    /// to the layer (MosaicGPT's `attn_qk_ln`: `attn.q_ln`, `attn.k_ln`).
    pub qk_norm: Option<(String, String)>,
    /// q, k and v clamped to `[-c, c]` (`attn_clip_qkv`).
    pub clip_qkv: Option<f32>,
    /// The softmax scale, where it is not `head_dim^-1/2`.
    pub softmax_scale: Option<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(ln1(x)); x += mlp(ln2(x))`
    Sequential,
    /// `x = x + attn(ln1(x)) + mlp(ln2(x))` (GPT-NeoX `use_parallel_residual`)
    Parallel,
}

/// Tensor names of one decoder layer, relative to `<layers>.<i>`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNames {
    pub ln1: String,
    pub ln2: String,
    pub qkv: QkvLayout,
    pub out: String,
    pub out_bias: bool,
    pub mlp: MlpKind,
}

/// The gated cross-attention blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct XAttnConfig {
    pub every_n: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
    pub dim_visual: usize,
    pub num_latents: usize,
    pub eps: f32,
}

impl XAttnConfig {
    /// Whether a gated block sits before decoder layer `i`.
    pub fn gated(&self, i: usize) -> bool {
        (i + 1).is_multiple_of(self.every_n)
    }
}

/// Everything the decoder graph needs; family differences are data here.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Path of the decoder layers (`lang_encoder.transformer.blocks`).
    pub layers_path: String,
    /// Input embedding `[V, D]` (full name).
    pub embed: String,
    /// Final norm (full path, without `.weight`).
    pub final_norm: String,
    /// LM head `[V, D]` (full name; may equal `embed` when tied).
    pub lm_head: String,
    pub names: LayerNames,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub num_layers: usize,
    pub vocab: usize,
    pub eps: f32,
    pub norm: NormKind,
    pub position: PositionKind,
    pub residual: Residual,
    pub xattn: XAttnConfig,
    /// Optional attention parts (qk norm, clipping, softmax scale).
    pub attn: AttnOptions,
    /// Logits multiplied by this (MosaicGPT's `logit_scale`).
    pub logit_scale: Option<f32>,
}

/// A placeholder every family overrides field by field (`..Default::default()`
/// fills only the optional parts a family does not use).
impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            layers_path: String::new(),
            embed: String::new(),
            final_norm: String::new(),
            lm_head: String::new(),
            names: LayerNames {
                ln1: String::new(),
                ln2: String::new(),
                qkv: QkvLayout::Fused {
                    name: String::new(),
                    bias: false,
                },
                out: String::new(),
                out_bias: false,
                mlp: MlpKind::Gelu {
                    up: String::new(),
                    down: String::new(),
                    bias: false,
                },
            },
            hidden: 0,
            heads: 0,
            kv_heads: 0,
            head_dim: 0,
            intermediate: 0,
            num_layers: 0,
            vocab: 0,
            eps: 1e-5,
            norm: NormKind::LayerNorm { bias: true },
            position: PositionKind::Alibi {
                bias_max: 8.0,
                slopes: AlibiSlopes::Interleaved,
            },
            residual: Residual::Sequential,
            xattn: XAttnConfig {
                every_n: 1,
                heads: 8,
                dim_head: 64,
                ff_mult: 4,
                dim_visual: 0,
                num_latents: 64,
                eps: 1e-5,
            },
            attn: AttnOptions::default(),
            logit_scale: None,
        }
    }
}

impl DecoderConfig {
    pub fn gated_layers(&self) -> Vec<usize> {
        (0..self.num_layers)
            .filter(|&i| self.xattn.gated(i))
            .collect()
    }
    pub fn uses_position_ids(&self) -> bool {
        matches!(self.position, PositionKind::Rotary { .. })
    }
}

impl From<&DecoderConfig> for flamingo_contract::DecoderInfo {
    fn from(c: &DecoderConfig) -> flamingo_contract::DecoderInfo {
        flamingo_contract::DecoderInfo {
            num_layers: c.num_layers,
            hidden_size: c.hidden,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab,
            gated_layers: c.gated_layers(),
            uses_position_ids: c.uses_position_ids(),
            xattn_heads: c.xattn.heads,
            xattn_dim_head: c.xattn.dim_head,
            num_latents: c.xattn.num_latents,
            position: match c.position {
                PositionKind::Alibi { .. } => flamingo_contract::Position::Alibi,
                PositionKind::Rotary { .. } => flamingo_contract::Position::Rotary,
            },
            cache_layout: flamingo_contract::manifest::CACHE_LAYOUT.into(),
        }
    }
}

/// The decoder's graph inputs.
pub struct DecoderInputs {
    pub input_ids: Value,
    pub attention_mask: Value,
    pub position_ids: Option<Value>,
    pub media_time: Value,
    pub num_logits_to_keep: Value,
    /// Per decoder layer.
    pub past: Vec<(Value, Value)>,
    /// Per decoder layer: the media K/V of its gated block, if any.
    pub media: Vec<Option<(Value, Value)>>,
}

pub struct DecoderOutputs {
    pub logits: Value,
    pub present: Vec<(Value, Value)>,
}

/// `media_kv`: latents `[B,T,n,Dv]` -> per gated layer `(k, v)` `[B,H,T·n,Dh]`.
pub fn media_kv(
    s: &mut Scope,
    cfg: &DecoderConfig,
    latents: Value,
) -> Result<Vec<(usize, Value, Value)>> {
    let x = &cfg.xattn;
    let inner = x.heads * x.dim_head;
    let flat = s.reshape(latents, &[0, -1, x.dim_visual as i64]);
    let mut out = Vec::new();
    for i in cfg.gated_layers() {
        let mut a = s.pp(format!(
            "{}.{i}.gated_cross_attn_layer.attn",
            cfg.layers_path
        ));
        let kv = linear(&mut a.pp("to_kv"), flat, x.dim_visual, 2 * inner, false)?;
        let kv = a.split_equal(kv, -1, 2);
        let k = split_heads(&mut a, kv[0], 3, x.heads, x.dim_head);
        let v = split_heads(&mut a, kv[1], 3, x.heads, x.dim_head);
        out.push((i, k, v));
    }
    Ok(out)
}

fn norm(s: &mut Scope, kind: &NormKind, x: Value, dim: usize, eps: f32) -> Result<Value> {
    match kind {
        NormKind::LayerNorm { bias } => layer_norm(s, x, dim, eps, *bias),
        NormKind::RmsNorm => {
            let s = &mut s.fp32();
            let w = s.weight("weight", &[dim])?;
            let sq = s.mul(x, x);
            let var = s.node(
                "ReduceMean",
                &[sq],
                vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
            );
            let e = s.scalar_f32(eps);
            let ve = s.add(var, e);
            let r = s.sqrt(ve);
            let inv = s.reciprocal(r);
            let h = s.mul(x, inv);
            Ok(s.mul(w, h))
        }
    }
}

/// Shared per-call tensors: the self-attention mask and positions.
struct Shared {
    /// `[B,1,S,K]` bool: key allowed (causal and not padding).
    allowed: Value,
    /// `[H,1,K]` ALiBi bias, or rotary `(cos, sin)` `[B,1,S,rot]`.
    alibi: Option<Value>,
    rotary: Option<(Value, Value)>,
    /// `[B,1,S,Tn]` bool: token may see this media latent.
    xmask: Value,
    /// `[B,1,S,1]` bool: token precedes every media.
    no_media: Value,
    /// The dtype minimum used to mask scores.
    fill: Value,
    neg_max: Value,
}

fn scalar_at(s: &mut Scope, shape: Value, i: i64) -> Value {
    let idx = s.scalar_i64(i);
    s.gather(shape, idx, 0)
}

fn shared(s: &mut Scope, cfg: &DecoderConfig, inp: &DecoderInputs) -> Result<Shared> {
    let ids_shape = s.shape(inp.input_ids);
    let seq = scalar_at(s, ids_shape, 1);
    let mask_shape = s.shape(inp.attention_mask);
    let total = scalar_at(s, mask_shape, 1);
    let past = s.sub(total, seq);
    let zero = s.scalar_i64(0);
    let one = s.scalar_i64(1);
    let kidx = s.node("Range", &[zero, total, one], vec![]);
    let qidx = s.node("Range", &[past, total, one], vec![]);
    let q2 = s.unsqueeze(qidx, &[1]);
    let causal = s.node("LessOrEqual", &[kidx, q2], vec![]);
    let pad = s.cast(inp.attention_mask, DType::Bool);
    let pad = s.unsqueeze(pad, &[1, 2]);
    let allowed = s.node("And", &[causal, pad], vec![]);

    let alibi = match cfg.position {
        PositionKind::Alibi { bias_max, slopes } => {
            let s = &mut s.fp32();
            let slopes = match slopes {
                AlibiSlopes::Interleaved => alibi_slopes(cfg.heads, bias_max),
                AlibiSlopes::Linear => linear_alibi_slopes(cfg.heads, bias_max),
            };
            let sl = s.constant(crate::Tensor::from_f32(vec![cfg.heads, 1, 1], &slopes));
            let last = s.sub(total, one);
            let rel = s.sub(kidx, last);
            let rel = s.cast(rel, DType::F32);
            Some(s.mul(sl, rel))
        }
        _ => None,
    };
    let rotary = match (&cfg.position, inp.position_ids) {
        (PositionKind::Rotary { dims, base }, Some(pos)) => {
            let s = &mut s.fp32();
            let half = dims / 2;
            let inv: Vec<f32> = (0..half)
                .map(|i| 1.0 / base.powf((2 * i) as f32 / *dims as f32))
                .collect();
            let inv = s.constant(crate::Tensor::from_f32(vec![half], &inv));
            let p = s.cast(pos, DType::F32);
            let p = s.unsqueeze(p, &[-1]);
            let freqs = s.mul(p, inv);
            let emb = s.concat(&[freqs, freqs], -1);
            let cos = s.node("Cos", &[emb], vec![]);
            let sin = s.node("Sin", &[emb], vec![]);
            Some((s.unsqueeze(cos, &[1]), s.unsqueeze(sin, &[1])))
        }
        (PositionKind::Rotary { .. }, None) => {
            return Err(Error::Config(
                "rotary decoder built without position_ids".into(),
            ))
        }
        _ => None,
    };
    // cross-attention masks from media_time
    let first_media = cfg.gated_layers().first().copied();
    let (xmask, no_media) = match first_media.and_then(|i| inp.media[i]) {
        Some((k, _)) => {
            let kshape = s.shape(k);
            let tn = scalar_at(s, kshape, 2);
            let j = s.node("Range", &[zero, tn, one], vec![]);
            let n = s.scalar_i64(cfg.xattn.num_latents as i64);
            let jm = s.div(j, n);
            let media_of_key = s.add(jm, one);
            let tt = s.unsqueeze(inp.media_time, &[1, 3]);
            let xmask = s.node("Equal", &[tt, media_of_key], vec![]);
            let no = s.node("Equal", &[tt, zero], vec![]);
            (xmask, no)
        }
        None => (inp.media_time, inp.media_time),
    };
    Ok(Shared {
        allowed,
        alibi,
        rotary,
        xmask,
        no_media,
        fill: s.scalar_f32(f32::MIN),
        neg_max: s.scalar_f32(-f32::MAX),
    })
}

/// MPT's ALiBi slopes (transformers `build_mpt_alibi_tensor`).
pub fn alibi_slopes(heads: usize, bias_max: f32) -> Vec<f32> {
    let p2 = heads.next_power_of_two();
    let slopes: Vec<f32> = (1..=p2)
        .map(|i| 1.0 / 2f32.powf(i as f32 * (bias_max / p2 as f32)))
        .collect();
    if p2 == heads {
        return slopes;
    }
    let odd = slopes.iter().skip(1).step_by(2);
    let even = slopes.iter().step_by(2);
    odd.chain(even).take(heads).copied().collect()
}

/// MosaicGPT's ALiBi slopes (`alibi_bias`): `1/2^(h·max/H)`, h = 1..H.
pub fn linear_alibi_slopes(heads: usize, bias_max: f32) -> Vec<f32> {
    (1..=heads)
        .map(|h| 1.0 / 2f32.powf(h as f32 * (bias_max / heads as f32)))
        .collect()
}

/// Rotate-half RoPE on the first `dims` of the last axis of `x` `[B,H,S,Dh]`.
fn apply_rotary(
    s: &mut Scope,
    x: Value,
    cos: Value,
    sin: Value,
    dims: usize,
    head_dim: usize,
) -> Value {
    let (rot, pass) = if dims < head_dim {
        let r = s.slice(x, &[0], &[dims as i64], &[-1]);
        let p = s.slice(x, &[dims as i64], &[i64::MAX], &[-1]);
        (r, Some(p))
    } else {
        (x, None)
    };
    let halves = s.split_equal(rot, -1, 2);
    let neg = s.neg(halves[1]);
    let rh = s.concat(&[neg, halves[0]], -1);
    let a = s.mul(rot, cos);
    let b = s.mul(rh, sin);
    let r = s.add(a, b);
    match pass {
        Some(p) => s.concat(&[r, p], -1),
        None => r,
    }
}

/// Self-attention with the KV cache. Returns (output `[B,S,D]`, present k, v).
fn self_attention(
    s: &mut Scope,
    cfg: &DecoderConfig,
    sh: &Shared,
    h: Value,
    past: (Value, Value),
) -> Result<(Value, Value, Value)> {
    let (d, hd) = (cfg.hidden, cfg.head_dim);
    let (nh, nkv) = (cfg.heads, cfg.kv_heads);
    let (q, k, v) = match &cfg.names.qkv {
        QkvLayout::Fused { name, bias } => {
            let mut qkv = linear(&mut s.pp(name), h, d, (nh + 2 * nkv) * hd, *bias)?;
            if let Some(c) = cfg.attn.clip_qkv {
                let (lo, hi) = (s.scalar_f32(-c), s.scalar_f32(c));
                qkv = s.node("Clip", &[qkv, lo, hi], vec![]);
            }
            let p = s.split(
                qkv,
                -1,
                &[(nh * hd) as i64, (nkv * hd) as i64, (nkv * hd) as i64],
            );
            let (mut q, mut k) = (p[0], p[1]);
            if let Some((qn, kn)) = &cfg.attn.qk_norm {
                let bias = matches!(cfg.norm, NormKind::LayerNorm { bias: true });
                q = layer_norm(&mut s.pp(qn), q, nh * hd, cfg.eps, bias)?;
                k = layer_norm(&mut s.pp(kn), k, nkv * hd, cfg.eps, bias)?;
            }
            (
                split_heads(s, q, 3, nh, hd),
                split_heads(s, k, 3, nkv, hd),
                split_heads(s, p[2], 3, nkv, hd),
            )
        }
        QkvLayout::FusedPerHead { name, bias } => {
            let qkv = linear(&mut s.pp(name), h, d, 3 * nh * hd, *bias)?;
            let r = s.reshape(qkv, &[0, 0, nh as i64, 3 * hd as i64]);
            let p = s.split_equal(r, -1, 3);
            let t = |s: &mut Scope, x| s.transpose(x, &[0, 2, 1, 3]);
            (t(s, p[0]), t(s, p[1]), t(s, p[2]))
        }
        QkvLayout::Separate { q, k, v, bias } => {
            let q = linear(&mut s.pp(q), h, d, nh * hd, *bias)?;
            let k = linear(&mut s.pp(k), h, d, nkv * hd, *bias)?;
            let v = linear(&mut s.pp(v), h, d, nkv * hd, *bias)?;
            (
                split_heads(s, q, 3, nh, hd),
                split_heads(s, k, 3, nkv, hd),
                split_heads(s, v, 3, nkv, hd),
            )
        }
    };
    let (q, k) = match (&cfg.position, sh.rotary) {
        (PositionKind::Rotary { dims, .. }, Some((cos, sin))) => (
            apply_rotary(s, q, cos, sin, *dims, hd),
            apply_rotary(s, k, cos, sin, *dims, hd),
        ),
        _ => (q, k),
    };
    let k = s.concat(&[past.0, k], 2);
    let v = s.concat(&[past.1, v], 2);
    let scale = s.scalar_f32(cfg.attn.softmax_scale.unwrap_or((hd as f32).powf(-0.5)));
    let out = if nkv == nh {
        let kt = s.transpose(k, &[0, 1, 3, 2]);
        let qk = s.matmul(q, kt);
        let mut scores = s.mul(qk, scale);
        if let Some(a) = sh.alibi {
            scores = s.add(scores, a);
        }
        let scores = s.where_(sh.allowed, scores, sh.fill);
        let p = s.fp32().softmax(scores, -1);
        s.matmul(p, v)
    } else {
        // grouped-query attention: q [B,Hkv,rep,S,Dh] against k, v [B,Hkv,1,K,Dh]
        let rep = (nh / nkv) as i64;
        let q5 = s.reshape(q, &[0, nkv as i64, rep, -1, hd as i64]);
        let k5 = s.unsqueeze(k, &[2]);
        let v5 = s.unsqueeze(v, &[2]);
        let kt = s.transpose(k5, &[0, 1, 2, 4, 3]);
        let qk = s.matmul(q5, kt);
        let mut scores = s.mul(qk, scale);
        if let Some(a) = sh.alibi {
            let a5 = s.unsqueeze(a, &[1]);
            scores = s.add(scores, a5);
        }
        let m5 = s.unsqueeze(sh.allowed, &[1]);
        let scores = s.where_(m5, scores, sh.fill);
        let p = s.fp32().softmax(scores, -1);
        let o = s.matmul(p, v5);
        s.reshape(o, &[0, nh as i64, -1, hd as i64])
    };
    let o = merge_heads(s, out, 3, nh, hd);
    let o = linear(&mut s.pp(&cfg.names.out), o, nh * hd, d, cfg.names.out_bias)?;
    Ok((o, k, v))
}

fn mlp(s: &mut Scope, cfg: &DecoderConfig, h: Value) -> Result<Value> {
    let (d, f) = (cfg.hidden, cfg.intermediate);
    match &cfg.names.mlp {
        MlpKind::Gelu { up, down, bias } => {
            let u = linear(&mut s.pp(up), h, d, f, *bias)?;
            let g = gelu_erf(s, u);
            linear(&mut s.pp(down), g, f, d, *bias)
        }
        MlpKind::SwiGlu { gate, up, down } => {
            let g = linear(&mut s.pp(gate), h, d, f, false)?;
            let sg = s.sigmoid(g);
            let silu = s.mul(g, sg);
            let u = linear(&mut s.pp(up), h, d, f, false)?;
            let m = s.mul(silu, u);
            linear(&mut s.pp(down), m, f, d, false)
        }
    }
}

/// `GatedCrossAttentionBlock` at this scope (`...gated_cross_attn_layer`).
fn gated_xattn(
    s: &mut Scope,
    cfg: &DecoderConfig,
    sh: &Shared,
    x: Value,
    kv: (Value, Value),
) -> Result<Value> {
    let xc = &cfg.xattn;
    let (d, inner) = (cfg.hidden, xc.heads * xc.dim_head);
    let a = {
        let mut a = s.pp("attn");
        let h = layer_norm(&mut a.pp("norm"), x, d, xc.eps, true)?;
        let q = linear(&mut a.pp("to_q"), h, d, inner, false)?;
        let q = split_heads(&mut a, q, 3, xc.heads, xc.dim_head);
        let sc = a.scalar_f32((xc.dim_head as f32).powf(-0.5));
        let q = a.mul(q, sc);
        let kt = a.transpose(kv.0, &[0, 1, 3, 2]);
        let sim = a.matmul(q, kt);
        let sim = a.where_(sh.xmask, sim, sh.neg_max);
        let p = a.fp32().softmax(sim, -1);
        let zero = a.scalar_f32(0.0);
        let p = a.where_(sh.no_media, zero, p);
        let o = a.matmul(p, kv.1);
        let o = merge_heads(&mut a, o, 3, xc.heads, xc.dim_head);
        linear(&mut a.pp("to_out"), o, inner, d, false)?
    };
    let ag = s.weight("attn_gate", &[1])?;
    let ag = s.fp32().tanh(ag);
    let a = s.mul(a, ag);
    let x = s.add(a, x);
    let f = feed_forward(&mut s.pp("ff"), d, xc.ff_mult * d, xc.eps, x)?;
    let fg = s.weight("ff_gate", &[1])?;
    let fg = s.fp32().tanh(fg);
    let f = s.mul(f, fg);
    Ok(s.add(f, x))
}

/// The whole decoder at the root scope (weights by full name).
pub fn decoder(s: &mut Scope, cfg: &DecoderConfig, inp: &DecoderInputs) -> Result<DecoderOutputs> {
    if inp.past.len() != cfg.num_layers || inp.media.len() != cfg.num_layers {
        return Err(Error::Config(
            "decoder inputs do not match the layer count".into(),
        ));
    }
    let (d, v) = (cfg.hidden, cfg.vocab);
    let sh = shared(s, cfg, inp)?;
    let emb = s.weight(&cfg.embed, &[v, d])?;
    let mut x = s.gather(emb, inp.input_ids, 0);
    let mut present = Vec::new();
    for i in 0..cfg.num_layers {
        let mut layer = s.pp(format!("{}.{i}", cfg.layers_path));
        if cfg.xattn.gated(i) {
            let kv = inp.media[i].ok_or_else(|| {
                Error::Config(format!("layer {i} is gated but has no media K/V input"))
            })?;
            x = gated_xattn(&mut layer.pp("gated_cross_attn_layer"), cfg, &sh, x, kv)?;
        }
        let h = norm(&mut layer.pp(&cfg.names.ln1), &cfg.norm, x, d, cfg.eps)?;
        let (a, k, vv) = self_attention(&mut layer, cfg, &sh, h, inp.past[i])?;
        present.push((k, vv));
        x = match cfg.residual {
            Residual::Parallel => {
                let h2 = norm(&mut layer.pp(&cfg.names.ln2), &cfg.norm, x, d, cfg.eps)?;
                let m = mlp(&mut layer, cfg, h2)?;
                let ma = layer.add(m, a);
                layer.add(ma, x)
            }
            Residual::Sequential => {
                let x1 = layer.add(a, x);
                let h2 = norm(&mut layer.pp(&cfg.names.ln2), &cfg.norm, x1, d, cfg.eps)?;
                let m = mlp(&mut layer, cfg, h2)?;
                layer.add(m, x1)
            }
        };
    }
    let x = norm(&mut s.pp(&cfg.final_norm), &cfg.norm, x, d, cfg.eps)?;
    // LM head on the last `num_logits_to_keep` positions: Gemm(transB) on the
    // [V, D] matrix as stored, so a tied head shares the embedding's bytes.
    let head = s.weight(&cfg.lm_head, &[v, d])?;
    let mut hs = s.pp("lm_head");
    // a Gather over Range(seq - keep, seq): tract mis-sizes a dynamic Slice here
    let xshape = hs.shape(x);
    let seq = scalar_at(&mut hs, xshape, 1);
    let keep = scalar_at(&mut hs, inp.num_logits_to_keep, 0);
    let start = hs.sub(seq, keep);
    let one = hs.scalar_i64(1);
    let idx = hs.node("Range", &[start, seq, one], vec![]);
    let kept = hs.gather(x, idx, 1);
    let kshape = hs.shape(kept);
    let bk = hs.slice(kshape, &[0], &[2], &[0]);
    let vdim = hs.const_i64(&[v as i64]);
    let out_shape = hs.concat(&[bk, vdim], 0);
    let flat = hs.reshape(kept, &[-1, d as i64]);
    let lg = hs.node("Gemm", &[flat, head], vec![("transB", Attr::Int(1))]);
    let mut logits = hs.reshape_to(lg, out_shape);
    if let Some(ls) = cfg.logit_scale {
        let k = hs.scalar_f32(ls);
        logits = hs.mul(logits, k);
    }
    Ok(DecoderOutputs { logits, present })
}

/// Names every graph input of the decoder in order (for the builder).
pub fn decoder_input_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut n = vec![io::INPUT_IDS.to_string(), io::ATTENTION_MASK.to_string()];
    if cfg.uses_position_ids() {
        n.push(io::POSITION_IDS.into());
    }
    n.push(io::MEDIA_TIME.into());
    n.push(io::NUM_LOGITS_TO_KEEP.into());
    for i in 0..cfg.num_layers {
        n.push(io::past_key(i));
        n.push(io::past_value(i));
    }
    for i in cfg.gated_layers() {
        n.push(io::media_key(i));
        n.push(io::media_value(i));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosaic_gpt_slopes_are_linear_in_the_head_without_interleaving() {
        // 6 heads, max 8: 2^-(8/6), 2^-(16/6), ... 2^-8
        let s = linear_alibi_slopes(6, 8.0);
        assert_eq!(s.len(), 6);
        assert!((s[0] - 2f32.powf(-8.0 / 6.0)).abs() < 1e-7);
        assert!((s[5] - 2f32.powf(-8.0)).abs() < 1e-9);
        assert_eq!(linear_alibi_slopes(4, 8.0), alibi_slopes(4, 8.0));
    }

    #[test]
    fn alibi_slopes_follow_transformers_for_power_of_two_and_other_head_counts() {
        let s4 = alibi_slopes(4, 8.0);
        assert_eq!(s4, vec![0.25, 0.0625, 0.015625, 0.00390625]);
        // 6 heads: 8 slopes, odd ones first then even, first 6
        let s8 = alibi_slopes(8, 8.0);
        let s6 = alibi_slopes(6, 8.0);
        assert_eq!(s6, vec![s8[1], s8[3], s8[5], s8[7], s8[0], s8[2]]);
    }
}
