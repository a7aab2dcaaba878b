//! open_clip `VisionTransformer` as OpenFlamingo uses it (open_clip 2.20):
//! conv1 (no bias, stride = patch) -> patches -> [CLS; patches] + pos -> ln_pre
//! -> resblocks -> the per-patch tokens, **without CLS and without ln_post**.
//! pixels: [N, 3, H, W] -> tokens: [N, P, D], P = (H / patch)^2.

use super::primitives::{
    gelu_erf, layer_norm, linear, merge_heads, quick_gelu, sdpa, split_heads, SdpaOpts,
};
use crate::ir::{Attr, Scope, Value};
use crate::{Error, Result};

/// The MLP activation of the tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI-pretrained CLIP, `quick_gelu: true`).
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub activation: Activation,
    pub eps: f32,
}

impl VisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens per image (patches, no CLS).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::Config(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "width {} is not divisible into {} heads",
                self.width, self.heads
            )));
        }
        Ok(())
    }
}

impl From<&VisionConfig> for flamingo_contract::VisionInfo {
    fn from(v: &VisionConfig) -> flamingo_contract::VisionInfo {
        flamingo_contract::VisionInfo {
            image_size: v.image_size,
            patch_size: v.patch_size,
            width: v.width,
            layers: v.layers,
            heads: v.heads,
            mlp_dim: v.mlp_dim,
            activation: match v.activation {
                Activation::QuickGelu => flamingo_contract::VisionActivation::QuickGelu,
                Activation::Gelu => flamingo_contract::VisionActivation::Gelu,
            },
            num_tokens: v.num_patches(),
        }
    }
}

/// The vision tower at scope `visual`: pixels `[N,3,H,W]` -> tokens `[N,P,D]`.
pub fn vision_encoder(s: &mut Scope, cfg: &VisionConfig, pixels: Value) -> Result<Value> {
    cfg.validate()?;
    let (w, p) = (cfg.width, cfg.patch_size);
    let x = {
        let mut c = s.pp("conv1");
        let k = c.weight("weight", &[w, 3, p, p])?;
        let y = c.node(
            "Conv",
            &[pixels, k],
            vec![
                ("kernel_shape", Attr::Ints(vec![p as i64, p as i64])),
                ("strides", Attr::Ints(vec![p as i64, p as i64])),
            ],
        );
        let flat = c.reshape(y, &[0, 0, -1]);
        c.transpose(flat, &[0, 2, 1])
    };
    // [CLS; patches] + positional embedding
    let cls = s.weight("class_embedding", &[w])?;
    let cls = s.reshape(cls, &[1, 1, w as i64]);
    let shape = s.shape(x);
    let n = s.slice(shape, &[0], &[1], &[0]);
    let rest = s.const_i64(&[1, w as i64]);
    let cls_shape = s.concat(&[n, rest], 0);
    let cls = s.expand(cls, cls_shape);
    let x = s.concat(&[cls, x], 1);
    let pos = s.weight("positional_embedding", &[cfg.num_patches() + 1, w])?;
    let x = s.add(x, pos);
    let mut x = layer_norm(&mut s.pp("ln_pre"), x, w, cfg.eps, true)?;
    for i in 0..cfg.layers {
        x = resblock(&mut s.pp(format!("transformer.resblocks.{i}")), cfg, x)?;
    }
    Ok(s.slice(x, &[1], &[i64::MAX], &[1]))
}

/// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
fn resblock(s: &mut Scope, cfg: &VisionConfig, x: Value) -> Result<Value> {
    let w = cfg.width;
    let dh = w / cfg.heads;
    let h = layer_norm(&mut s.pp("ln_1"), x, w, cfg.eps, true)?;
    let a = {
        let mut a = s.pp("attn");
        let wi = a.weight_t("in_proj_weight", [3 * w, w])?;
        let bi = a.weight("in_proj_bias", &[3 * w])?;
        let qkv = a.matmul(h, wi);
        let qkv = a.add(qkv, bi);
        let parts = a.split_equal(qkv, -1, 3);
        let q = split_heads(&mut a, parts[0], 3, cfg.heads, dh);
        let k = split_heads(&mut a, parts[1], 3, cfg.heads, dh);
        let v = split_heads(&mut a, parts[2], 3, cfg.heads, dh);
        let opts = SdpaOpts {
            scale: (dh as f32).powf(-0.5),
            scale_q: true,
            bias: None,
            rank: 4,
        };
        let o = sdpa(&mut a, q, k, v, &opts);
        let o = merge_heads(&mut a, o, 3, cfg.heads, dh);
        linear(&mut a.pp("out_proj"), o, w, w, true)?
    };
    let x = s.add(x, a);
    let h = layer_norm(&mut s.pp("ln_2"), x, w, cfg.eps, true)?;
    let m = {
        let mut m = s.pp("mlp");
        let f = linear(&mut m.pp("c_fc"), h, w, cfg.mlp_dim, true)?;
        let f = match cfg.activation {
            Activation::QuickGelu => quick_gelu(&mut m, f),
            Activation::Gelu => gelu_erf(&mut m, f),
        };
        linear(&mut m.pp("c_proj"), f, cfg.mlp_dim, w, true)?
    };
    Ok(s.add(x, m))
}
