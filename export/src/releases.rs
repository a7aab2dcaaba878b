//! The five public OpenFlamingo releases (FLAMINGO.md section 9). Exporting
//! with `--release NAME` checks every shape and setting of the files given
//! against the release's known architecture (the preset of the same
//! shape) and says which file disagrees.

use std::path::Path;

use crate::error::{Error, Result};
use crate::write::{ExportOptions, Release};

/// A release and the preset that has its architecture.
pub struct Known {
    pub name: &'static str,
    pub preset: &'static str,
    pub about: &'static str,
}

pub const RELEASES: &[Known] = &[
    Known {
        name: "openflamingo-3b-vitl-mpt1b",
        preset: "of-3b",
        about: "OpenFlamingo-3B-vitl-mpt1b: ViT-L-14 (openai) + anas-awadalla/mpt-1b-redpajama-200b",
    },
    Known {
        name: "openflamingo-3b-vitl-mpt1b-langinstruct",
        preset: "of-3b",
        about: "OpenFlamingo-3B-vitl-mpt1b-langinstruct: ViT-L-14 (openai) + anas-awadalla/mpt-1b-redpajama-200b-dolly",
    },
    Known {
        name: "openflamingo-4b-vitl-rpj3b",
        preset: "of-4b",
        about: "OpenFlamingo-4B-vitl-rpj3b: ViT-L-14 (openai) + togethercomputer/RedPajama-INCITE-Base-3B-v1",
    },
    Known {
        name: "openflamingo-4b-vitl-rpj3b-langinstruct",
        preset: "of-4b",
        about: "OpenFlamingo-4B-vitl-rpj3b-langinstruct: ViT-L-14 (openai) + togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
    },
    Known {
        name: "openflamingo-9b-vitl-mpt7b",
        preset: "of-9b",
        about: "OpenFlamingo-9B-vitl-mpt7b: ViT-L-14 (openai) + anas-awadalla/mpt-7b",
    },
];

/// The release called `name`.
pub fn known(name: &str) -> Result<&'static Known> {
    RELEASES
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::Config {
            path: "--release".into(),
            message: format!(
                "unknown release `{name}` (known: {})",
                RELEASES
                    .iter()
                    .map(|r| r.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Checks an opened release against the release `name`.
pub fn check(name: &str, r: &Release, opts: &ExportOptions) -> Result<()> {
    let k = known(name)?;
    let p = crate::presets::preset(k.preset)?;
    let (v, pv) = (&r.vision, &p.vision);
    let (d, pd) = (&r.decoder, &p.decoder);
    let (s, ps) = (&r.resampler, &p.resampler);
    let clip = opts.clip.as_path();
    let lm = Path::new(&r.lm.path);
    let ckpt = opts.checkpoint.as_path();
    let rows: Vec<(&str, String, String, &Path)> = vec![
        (
            "vision image size",
            pv.image_size.to_string(),
            v.image_size.to_string(),
            clip,
        ),
        (
            "vision patch size",
            pv.patch_size.to_string(),
            v.patch_size.to_string(),
            clip,
        ),
        (
            "vision width",
            pv.width.to_string(),
            v.width.to_string(),
            clip,
        ),
        (
            "vision layers",
            pv.layers.to_string(),
            v.layers.to_string(),
            clip,
        ),
        (
            "vision heads",
            pv.heads.to_string(),
            v.heads.to_string(),
            clip,
        ),
        (
            "vision activation",
            format!("{:?}", pv.activation),
            format!("{:?}", v.activation),
            clip,
        ),
        (
            "LM family",
            p.lm.model_type.clone(),
            r.lm.model_type.clone(),
            lm,
        ),
        (
            "LM hidden size",
            pd.hidden.to_string(),
            d.hidden.to_string(),
            lm,
        ),
        (
            "LM layers",
            pd.num_layers.to_string(),
            d.num_layers.to_string(),
            lm,
        ),
        ("LM heads", pd.heads.to_string(), d.heads.to_string(), lm),
        (
            "LM MLP width",
            pd.intermediate.to_string(),
            d.intermediate.to_string(),
            lm,
        ),
        (
            "LM positions",
            format!("{:?}", pd.position),
            format!("{:?}", d.position),
            lm,
        ),
        (
            "LM residual",
            format!("{:?}", pd.residual),
            format!("{:?}", d.residual),
            lm,
        ),
        (
            "LM norm",
            format!("{:?}", pd.norm),
            format!("{:?}", d.norm),
            lm,
        ),
        (
            "LM attention options",
            format!("{:?}", pd.attn),
            format!("{:?}", d.attn),
            lm,
        ),
        (
            "vocabulary (embedding rows)",
            pd.vocab.to_string(),
            d.vocab.to_string(),
            ckpt,
        ),
        (
            "cross_attn_every_n_layers",
            pd.xattn.every_n.to_string(),
            d.xattn.every_n.to_string(),
            ckpt,
        ),
        (
            "cross-attention heads",
            pd.xattn.heads.to_string(),
            d.xattn.heads.to_string(),
            ckpt,
        ),
        (
            "resampler depth",
            ps.depth.to_string(),
            s.depth.to_string(),
            ckpt,
        ),
        (
            "resampler latents",
            ps.num_latents.to_string(),
            s.num_latents.to_string(),
            ckpt,
        ),
        (
            "resampler width",
            ps.dim.to_string(),
            s.dim.to_string(),
            ckpt,
        ),
    ];
    for (what, want, got, file) in rows {
        if want != got {
            return Err(Error::Config {
                path: file.display().to_string(),
                message: format!("{what} is {got}, but {name} has {want}"),
            });
        }
    }
    Ok(())
}
