//! `flamingo inspect`

use std::path::PathBuf;

use anyhow::Result;
use flamingo_contract::{Manifest, TensorInfo};

#[derive(clap::Args)]
pub struct Args {
    /// Export directory (with manifest.json)
    dir: PathBuf,
    /// Print the manifest as JSON
    #[arg(long)]
    json: bool,
}

fn shape(t: &TensorInfo) -> String {
    let dims: Vec<String> = t
        .shape
        .iter()
        .map(|d| match d {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    format!("{} {} [{}]", t.name, t.dtype, dims.join(", "))
}

pub fn run(a: Args) -> Result<()> {
    let m = Manifest::load(&a.dir)?;
    if a.json {
        println!("{}", m.to_json());
        return Ok(());
    }
    let md = &m.model;
    println!(
        "{} (format {}, {})",
        a.dir.display(),
        m.format_version,
        m.producer
    );
    println!(
        "model:      {} LM, {} layers, d {}, vocab {}, cross-attention every {} layer(s)",
        md.family,
        md.lm.num_layers,
        md.lm.hidden_size,
        md.lm.vocab_size,
        md.cross_attn_every_n_layers
    );
    let v = &md.vision;
    println!(
        "vision:     ViT {}px patch {}, width {}, {} layers, {} heads, {} ({} tokens/image)",
        v.image_size, v.patch_size, v.width, v.layers, v.heads, v.activation, v.num_tokens
    );
    let r = &md.resampler;
    println!(
        "resampler:  {} layers, {} latents, {}x{} heads{}{}",
        r.depth,
        r.num_latents,
        r.heads,
        r.dim_head,
        r.max_num_frames
            .map(|f| format!(", frame embs {f}"))
            .unwrap_or_default(),
        r.max_num_media
            .map(|t| format!(", media-time embs {t}"))
            .unwrap_or_default()
    );
    let p = &m.preprocess;
    println!(
        "preprocess: {} {} {}px, mean {:?}, std {:?}",
        p.resize_mode, p.interpolation, p.image_size, p.mean, p.std
    );
    let s = &m.special_tokens;
    println!(
        "tokens:     <image> {}, <|endofchunk|> {}, pad {:?}, eos {:?}",
        s.media, s.end_of_chunk, s.pad, s.eos
    );
    for (role, g) in &m.graphs {
        println!(
            "graph {role}: {}{}",
            g.file,
            g.data_file
                .as_ref()
                .map(|d| format!(" (+ {d})"))
                .unwrap_or_default()
        );
        for i in &g.inputs {
            println!("    in   {}", shape(i));
        }
        for o in &g.outputs {
            println!("    out  {}", shape(o));
        }
    }
    println!("files:");
    for (f, h) in &m.files {
        println!("    {f}  sha256 {h}");
    }
    Ok(())
}
