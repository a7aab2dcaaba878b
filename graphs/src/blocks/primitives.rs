//! Primitives shared by every block: linear, norms, activations, attention.
//! Family differences are parameters (bias or not, activation kind), not copies.

use crate::ir::{Scope, Value};
use crate::Result;

/// `nn.Linear` at this scope: `x @ weight^T (+ bias)`; weight `[out, in]`.
pub fn linear(s: &mut Scope, x: Value, d_in: usize, d_out: usize, bias: bool) -> Result<Value> {
    let w = s.weight_t("weight", [d_out, d_in])?;
    let y = s.matmul(x, w);
    if bias {
        let b = s.weight("bias", &[d_out])?;
        Ok(s.add(y, b))
    } else {
        Ok(y)
    }
}

/// `nn.LayerNorm(dim)` over the last axis (`weight`, optional `bias`). A
/// missing bias is a zero constant: tract wants all three inputs.
pub fn layer_norm(s: &mut Scope, x: Value, dim: usize, eps: f32, bias: bool) -> Result<Value> {
    let w = s.weight("weight", &[dim])?;
    let b = if bias {
        s.weight("bias", &[dim])?
    } else {
        s.constant(crate::Tensor::from_f32(vec![dim], &vec![0.0; dim]))
    };
    Ok(s.fp32().layer_norm_op(x, w, Some(b), eps))
}

/// Exact GELU: `0.5 x (1 + erf(x / sqrt 2))` (torch's default `nn.GELU`).
pub fn gelu_erf(s: &mut Scope, x: Value) -> Value {
    let inv_sqrt2 = s.scalar_f32(std::f32::consts::FRAC_1_SQRT_2);
    let half = s.scalar_f32(0.5);
    let one = s.scalar_f32(1.0);
    let t = s.mul(x, inv_sqrt2);
    let e = s.erf(t);
    let e1 = s.add(e, one);
    let hx = s.mul(x, half);
    s.mul(hx, e1)
}

/// QuickGELU: `x * sigmoid(1.702 x)` (OpenAI CLIP).
pub fn quick_gelu(s: &mut Scope, x: Value) -> Value {
    let k = s.scalar_f32(1.702);
    let t = s.mul(x, k);
    let g = s.sigmoid(t);
    s.mul(x, g)
}

/// `[.., L, H*Dh]` -> `[.., H, L, Dh]` for a tensor of rank `rank` (3 or 4).
pub fn split_heads(s: &mut Scope, x: Value, rank: usize, heads: usize, dh: usize) -> Value {
    match rank {
        3 => {
            let r = s.reshape(x, &[0, 0, heads as i64, dh as i64]);
            s.transpose(r, &[0, 2, 1, 3])
        }
        _ => {
            let r = s.reshape(x, &[0, 0, 0, heads as i64, dh as i64]);
            s.transpose(r, &[0, 1, 3, 2, 4])
        }
    }
}

/// `[.., H, L, Dh]` -> `[.., L, H*Dh]`, inverse of [`split_heads`].
pub fn merge_heads(s: &mut Scope, x: Value, rank: usize, heads: usize, dh: usize) -> Value {
    let inner = (heads * dh) as i64;
    match rank {
        3 => {
            let t = s.transpose(x, &[0, 2, 1, 3]);
            s.reshape(t, &[0, 0, inner])
        }
        _ => {
            let t = s.transpose(x, &[0, 1, 3, 2, 4]);
            s.reshape(t, &[0, 0, 0, inner])
        }
    }
}

/// How [`sdpa`] scales and biases the scores.
#[derive(Clone, Copy, Debug)]
pub struct SdpaOpts {
    pub scale: f32,
    /// Scale q before the product (as the reference writes `q = q * scale`)
    /// rather than the scores.
    pub scale_q: bool,
    /// Added to the scores before the softmax (mask, ALiBi), broadcastable.
    pub bias: Option<Value>,
    /// Rank of q, k and v.
    pub rank: usize,
}

/// `softmax(q k^T * scale [+ bias]) v` over heads; q, k, v: `[.., H, L, Dh]`.
pub fn sdpa(s: &mut Scope, q: Value, k: Value, v: Value, o: &SdpaOpts) -> Value {
    let sc = s.scalar_f32(o.scale);
    let mut perm: Vec<i64> = (0..o.rank as i64).collect();
    perm.swap(o.rank - 1, o.rank - 2);
    let kt = s.transpose(k, &perm);
    let scores = if o.scale_q {
        let qs = s.mul(q, sc);
        s.matmul(qs, kt)
    } else {
        let qk = s.matmul(q, kt);
        s.mul(qk, sc)
    };
    let scores = match o.bias {
        Some(b) => s.add(scores, b),
        None => scores,
    };
    let p = s.fp32().softmax(scores, -1);
    s.matmul(p, v)
}
