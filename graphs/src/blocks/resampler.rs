//! OpenFlamingo's `PerceiverResampler` (per media item).
//! x: [B, T, F, v, D] (+ frame_embs[:F]) -> [B, T, F·v, D] (+ media_time_embs[:T]);
//! latents [64, D] per (B, T); each layer: latents += attn(x, latents);
//! latents += ff(latents); then LayerNorm.  Output: [B, T, 64, D].

use super::primitives::{gelu_erf, layer_norm, linear, merge_heads, sdpa, split_heads, SdpaOpts};
use crate::ir::{Scope, Value};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct ResamplerConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub num_latents: usize,
    pub ff_mult: usize,
    pub eps: f32,
    /// `frame_embs` rows (video checkpoints), else `None`.
    pub max_num_frames: Option<usize>,
    /// `media_time_embs` rows (video checkpoints), else `None`.
    pub max_num_media: Option<usize>,
}

impl From<&ResamplerConfig> for flamingo_contract::ResamplerInfo {
    fn from(r: &ResamplerConfig) -> flamingo_contract::ResamplerInfo {
        flamingo_contract::ResamplerInfo {
            dim: r.dim,
            depth: r.depth,
            heads: r.heads,
            dim_head: r.dim_head,
            num_latents: r.num_latents,
            ff_mult: r.ff_mult,
            max_num_frames: r.max_num_frames,
            max_num_media: r.max_num_media,
        }
    }
}

/// The resampler at scope `perceiver`: `[B,T,F,v,D]` -> `[B,T,n_latents,D]`.
pub fn perceiver_resampler(s: &mut Scope, cfg: &ResamplerConfig, x: Value) -> Result<Value> {
    let d = cfg.dim;
    let x_shape = s.shape(x);
    let x = match cfg.max_num_frames {
        Some(f_max) => {
            let fe = s.weight("frame_embs", &[f_max, d])?;
            let zero = s.const_i64(&[0]);
            let f = s.slice(x_shape, &[2], &[3], &[0]);
            let fe = s.slice_dyn(fe, zero, f, &[0]);
            let fe = s.unsqueeze(fe, &[1]);
            s.add(x, fe)
        }
        None => x,
    };
    let x = s.reshape(x, &[0, 0, -1, d as i64]);
    let x = match cfg.max_num_media {
        Some(t_max) => {
            let te = s.weight("media_time_embs", &[t_max, 1, d])?;
            let zero = s.const_i64(&[0]);
            let t = s.slice(x_shape, &[1], &[2], &[0]);
            let te = s.slice_dyn(te, zero, t, &[0]);
            s.add(x, te)
        }
        None => x,
    };
    let lat = s.weight("latents", &[cfg.num_latents, d])?;
    let bt = s.slice(x_shape, &[0], &[2], &[0]);
    let nd = s.const_i64(&[cfg.num_latents as i64, d as i64]);
    let lat_shape = s.concat(&[bt, nd], 0);
    let mut latents = s.expand(lat, lat_shape);
    for i in 0..cfg.depth {
        let mut layer = s.pp(format!("layers.{i}"));
        let a = attention(&mut layer.pp(0), cfg, x, latents)?;
        latents = layer.add(a, latents);
        let f = feed_forward(&mut layer.pp(1), d, cfg.ff_mult * d, cfg.eps, latents)?;
        latents = layer.add(f, latents);
    }
    layer_norm(&mut s.pp("norm"), latents, d, cfg.eps, true)
}

/// `PerceiverAttention`: q from the latents; k, v from [media; latents].
fn attention(s: &mut Scope, cfg: &ResamplerConfig, x: Value, latents: Value) -> Result<Value> {
    let (d, inner) = (cfg.dim, cfg.heads * cfg.dim_head);
    let xm = layer_norm(&mut s.pp("norm_media"), x, d, cfg.eps, true)?;
    let lt = layer_norm(&mut s.pp("norm_latents"), latents, d, cfg.eps, true)?;
    let q = linear(&mut s.pp("to_q"), lt, d, inner, false)?;
    let kv_in = s.concat(&[xm, lt], 2);
    let kv = linear(&mut s.pp("to_kv"), kv_in, d, 2 * inner, false)?;
    let kv = s.split_equal(kv, -1, 2);
    let q = split_heads(s, q, 4, cfg.heads, cfg.dim_head);
    let k = split_heads(s, kv[0], 4, cfg.heads, cfg.dim_head);
    let v = split_heads(s, kv[1], 4, cfg.heads, cfg.dim_head);
    let opts = SdpaOpts {
        scale: (cfg.dim_head as f32).powf(-0.5),
        scale_q: true,
        bias: None,
        rank: 5,
    };
    let o = sdpa(s, q, k, v, &opts);
    let o = merge_heads(s, o, 4, cfg.heads, cfg.dim_head);
    linear(&mut s.pp("to_out"), o, inner, d, false)
}

/// `FeedForward`: LayerNorm (`.0`) -> Linear (`.1`, no bias) -> GELU -> Linear (`.3`).
pub fn feed_forward(s: &mut Scope, d: usize, hidden: usize, eps: f32, x: Value) -> Result<Value> {
    let h = layer_norm(&mut s.pp(0), x, d, eps, true)?;
    let h = linear(&mut s.pp(1), h, d, hidden, false)?;
    let h = gelu_erf(s, h);
    linear(&mut s.pp(3), h, hidden, d, false)
}
