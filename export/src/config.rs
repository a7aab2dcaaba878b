//! Model configuration: the vision tower from `open_clip_config.json` (or a
//! named preset), the resampler read from the checkpoint's tensors, and the
//! special tokens from the tokenizer. Sizes come from tensors and are checked
//! against whatever config claims them.

use std::path::Path;

use flamingo_contract::preprocess::{CLIP_MEAN, CLIP_STD};
use flamingo_contract::PreprocessConfig;
use flamingo_graphs::blocks::{Activation, ResamplerConfig, VisionConfig};

use crate::error::{Error, Result};
use crate::store::TensorStore;

/// Named open_clip vision towers (as OpenFlamingo loads them).
pub const VISION_PRESETS: &[(&str, usize, usize, usize, usize, usize, bool)] = &[
    // name, image_size, layers, width, patch, head_width, quick_gelu
    ("ViT-L-14", 224, 24, 1024, 14, 64, true),
    ("ViT-L-14-336", 336, 24, 1024, 14, 64, true),
    ("ViT-B-16", 224, 12, 768, 16, 64, true),
    ("ViT-B-32", 224, 12, 768, 32, 64, true),
    ("ViT-H-14", 224, 32, 1280, 14, 80, false),
];

pub fn vision_preset(name: &str) -> Result<(VisionConfig, PreprocessConfig)> {
    let p = VISION_PRESETS
        .iter()
        .find(|p| p.0 == name)
        .ok_or_else(|| Error::Config {
            path: "--vision-preset".into(),
            message: format!(
                "unknown vision preset `{name}` (known: {})",
                VISION_PRESETS
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let (_, image_size, layers, width, patch_size, head_width, quick) = *p;
    Ok((
        VisionConfig {
            image_size,
            patch_size,
            width,
            layers,
            heads: width / head_width,
            mlp_dim: width * 4,
            activation: if quick {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
            eps: 1e-5,
        },
        PreprocessConfig::clip(image_size),
    ))
}

/// Parses `open_clip_config.json`.
pub fn read_open_clip_config(path: &Path) -> Result<(VisionConfig, PreprocessConfig)> {
    let text = crate::files::read_text(path)?;
    let bad = |m: String| Error::Config {
        path: path.display().to_string(),
        message: m,
    };
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let v = j
        .get("vision_cfg")
        .ok_or_else(|| bad("no `vision_cfg`".into()))?;
    let get = |k: &str, default: Option<f64>| -> Result<f64> {
        match v.get(k) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| bad(format!("`vision_cfg.{k}` is not a number"))),
            None => default.ok_or_else(|| bad(format!("`vision_cfg.{k}` is missing"))),
        }
    };
    let image_size = get("image_size", None)? as usize;
    let width = get("width", None)? as usize;
    let head_width = get("head_width", Some(64.0))? as usize;
    let mlp_ratio = get("mlp_ratio", Some(4.0))?;
    let quick = j
        .get("quick_gelu")
        .and_then(|q| q.as_bool())
        .unwrap_or(false);
    let pre = j.get("preprocess_cfg");
    let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3]> {
        match pre.and_then(|p| p.get(k)) {
            None => Ok(d),
            Some(a) => {
                let a: Vec<f32> = a
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                a.try_into()
                    .map_err(|_| bad(format!("`preprocess_cfg.{k}` is not 3 numbers")))
            }
        }
    };
    let interpolation = pre
        .and_then(|p| p.get("interpolation"))
        .and_then(|x| x.as_str())
        .unwrap_or("bicubic")
        .to_string();
    let resize_mode = pre
        .and_then(|p| p.get("resize_mode"))
        .and_then(|x| x.as_str())
        .unwrap_or("shortest")
        .to_string();
    if interpolation != "bicubic" || resize_mode != "shortest" {
        return Err(bad(format!(
            "preprocessing `{interpolation}`/`{resize_mode}` is not supported (bicubic/shortest is)"
        )));
    }
    if head_width == 0 {
        return Err(bad("`head_width` is 0".into()));
    }
    Ok((
        VisionConfig {
            image_size,
            patch_size: get("patch_size", None)? as usize,
            width,
            layers: get("layers", None)? as usize,
            heads: width / head_width,
            mlp_dim: (width as f64 * mlp_ratio) as usize,
            activation: if quick {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
            eps: 1e-5,
        },
        PreprocessConfig {
            image_size,
            mean: triple("mean", CLIP_MEAN)?,
            std: triple("std", CLIP_STD)?,
            interpolation,
            resize_mode,
        },
    ))
}

/// Number of `prefix{i}suffix` tensors present for i = 0, 1, ...
pub fn count_layers(store: &TensorStore, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| store.get_entry(&format!("{prefix}{i}{suffix}")).is_some())
        .count()
}

fn shape_of(store: &TensorStore, name: &str) -> Result<Vec<usize>> {
    store.shape(name).map(|s| s.to_vec()).ok_or_else(|| {
        Error::Graph(flamingo_graphs::Error::MissingTensor {
            name: name.to_string(),
            file: None,
        })
    })
}

/// The vision tower as its tensors say, as open_clip's
/// `build_model_from_openai_state_dict` reads OpenAI's weights: width =
/// conv1's output channels, layers = the count of `attn.in_proj_weight`,
/// patch = conv1's kernel, image = patch · √(positional rows − 1), heads =
/// width / 64, the MLP's width from `c_fc`; QuickGELU.
pub fn infer_vision(store: &TensorStore) -> Result<VisionConfig> {
    let conv = shape_of(store, "visual.conv1.weight")?;
    let [width, 3, patch, patch2] = conv[..] else {
        return Err(Error::Graph(flamingo_graphs::Error::ShapeMismatch {
            name: "visual.conv1.weight".into(),
            expected: vec![0, 3, 0, 0],
            got: conv,
        }));
    };
    let layers = count_layers(
        store,
        "visual.transformer.resblocks.",
        ".attn.in_proj_weight",
    );
    let pos = shape_of(store, "visual.positional_embedding")?;
    let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
    let mlp_dim = shape_of(store, "visual.transformer.resblocks.0.mlp.c_fc.weight")?[0];
    if patch != patch2 || grid * grid + 1 != pos[0] || width % 64 != 0 || layers == 0 {
        return Err(Error::Config {
            path: "vision tower".into(),
            message: format!(
                "the tensors do not make a ViT (conv1 {conv:?}, positional_embedding {pos:?}, {layers} layers)"
            ),
        });
    }
    Ok(VisionConfig {
        image_size: patch * grid,
        patch_size: patch,
        width,
        layers,
        heads: width / 64,
        mlp_dim,
        activation: Activation::QuickGelu,
        eps: 1e-5,
    })
}

/// Checks a configured tower (a preset, `open_clip_config.json`) against
/// the checkpoint's tensors: a disagreement names the tensor and both shapes.
pub fn check_vision(store: &TensorStore, cfg: &VisionConfig) -> Result<()> {
    let grid = cfg.grid();
    let checks = [
        (
            "visual.conv1.weight",
            vec![cfg.width, 3, cfg.patch_size, cfg.patch_size],
        ),
        (
            "visual.positional_embedding",
            vec![grid * grid + 1, cfg.width],
        ),
        (
            "visual.transformer.resblocks.0.mlp.c_fc.weight",
            vec![cfg.mlp_dim, cfg.width],
        ),
    ];
    for (name, want) in checks {
        let got = shape_of(store, name)?;
        if got != want {
            return Err(Error::Graph(flamingo_graphs::Error::ShapeMismatch {
                name: name.into(),
                expected: want,
                got,
            }));
        }
    }
    let n = count_layers(store, "visual.transformer.resblocks.", ".ln_1.weight");
    if n != cfg.layers {
        return Err(Error::Config {
            path: "vision config".into(),
            message: format!(
                "the config says {} layers but the checkpoint has {n} (`visual.transformer.resblocks.{}.*`)",
                cfg.layers,
                n.min(cfg.layers)
            ),
        });
    }
    Ok(())
}

/// The resampler's sizes, read from `perceiver.*` tensors. OpenFlamingo fixes
/// `dim_head` at 64 (heads = inner / 64).
pub fn resampler_config(store: &TensorStore) -> Result<ResamplerConfig> {
    let lat = shape_of(store, "perceiver.latents")?;
    if lat.contains(&0) {
        return Err(Error::Config {
            path: "checkpoint".into(),
            message: format!("`perceiver.latents` is {lat:?}: a resampler needs latents"),
        });
    }
    let [num_latents, dim] = lat[..] else {
        return Err(Error::Graph(flamingo_graphs::Error::ShapeMismatch {
            name: "perceiver.latents".into(),
            expected: vec![64, 0],
            got: lat,
        }));
    };
    let depth = count_layers(store, "perceiver.layers.", ".0.to_q.weight");
    if depth == 0 {
        return Err(Error::Graph(flamingo_graphs::Error::MissingTensor {
            name: "perceiver.layers.0.0.to_q.weight".into(),
            file: None,
        }));
    }
    let inner = shape_of(store, "perceiver.layers.0.0.to_q.weight")?[0];
    let dim_head = 64;
    if inner % dim_head != 0 {
        return Err(Error::Config {
            path: "checkpoint".into(),
            message: format!(
                "`perceiver.layers.0.0.to_q.weight` has {inner} rows, not a multiple of dim_head {dim_head}"
            ),
        });
    }
    let hidden = shape_of(store, "perceiver.layers.0.1.1.weight")?[0];
    let rows = |n: &str| -> Result<Option<usize>> {
        if store.get_entry(n).is_some() {
            Ok(Some(shape_of(store, n)?[0]))
        } else {
            Ok(None)
        }
    };
    Ok(ResamplerConfig {
        dim,
        depth,
        heads: inner / dim_head,
        dim_head,
        num_latents,
        ff_mult: hidden / dim.max(1),
        eps: 1e-5,
        max_num_frames: rows("perceiver.frame_embs")?,
        max_num_media: rows("perceiver.media_time_embs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::{write_f32, Named};

    #[test]
    fn zero_latents_make_no_resampler() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ck.safetensors");
        write_f32(
            &p,
            &[Named {
                name: "perceiver.latents",
                shape: &[0, 64],
                data: &[],
            }],
        )
        .unwrap();
        let mut store = TensorStore::new();
        store.add_file(&p, "", |_| true).unwrap();
        let e = resampler_config(&store).unwrap_err().to_string();
        assert!(e.contains("[0, 64]") && e.contains("needs latents"), "{e}");
    }
}
