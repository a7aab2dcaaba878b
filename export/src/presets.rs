//! The official OpenFlamingo shapes, exportable with random weights so that
//! anyone can benchmark without downloading a release. Each preset is a
//! typed LM config (as its release's `config.json` says) mapped to the
//! decoder by the same family function as a release.

use std::sync::Arc;

use flamingo_contract::{PreprocessConfig, SpecialTokens};
use flamingo_graphs::blocks::decoder::DecoderConfig;
use flamingo_graphs::blocks::{Activation, ResamplerConfig, VisionConfig};
use flamingo_graphs::{DType, Tensor, TensorData, WeightSource};

use crate::error::{Error, Result};
use crate::family::gpt_neox::GptNeoxConfig;
use crate::family::mosaic_gpt::MosaicGptConfig;
use crate::family::mpt::MptConfig;
use crate::family::{decoder_config, FamilyConfig};
use crate::lm::LmConfig;

/// A named model shape.
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub vision: VisionConfig,
    pub resampler: ResamplerConfig,
    pub lm: LmConfig,
    pub decoder: DecoderConfig,
    pub special: SpecialTokens,
}

pub const PRESETS: &[&str] = &["of-mini", "of-3b", "of-4b", "of-9b"];

fn vit(image: usize, patch: usize, width: usize, layers: usize) -> VisionConfig {
    VisionConfig {
        image_size: image,
        patch_size: patch,
        width,
        layers,
        heads: width / 64,
        mlp_dim: width * 4,
        activation: Activation::QuickGelu,
        eps: 1e-5,
    }
}

fn mpt(
    d_model: usize,
    n_layers: usize,
    n_heads: usize,
    vocab_size: usize,
) -> Box<dyn FamilyConfig> {
    Box::new(MptConfig {
        d_model,
        n_heads,
        n_layers,
        vocab_size,
        max_seq_len: Some(2048),
        ..Default::default()
    })
}

fn resampler(dim: usize) -> ResamplerConfig {
    ResamplerConfig {
        dim,
        depth: 6,
        heads: 8,
        dim_head: 64,
        num_latents: 64,
        ff_mult: 4,
        eps: 1e-5,
        max_num_frames: None,
        max_num_media: None,
    }
}

/// The preset `name`.
pub fn preset(name: &str) -> Result<Preset> {
    let special = |vocab: u32| SpecialTokens {
        media: vocab - 2,
        end_of_chunk: vocab - 3,
        pad: Some(vocab - 1),
        eos: Some(0),
        bos: None,
    };
    // the releases' embeddings are resized to OpenFlamingo's tokenizer:
    // gpt-neox-20b's 50277 tokens + <|endofchunk|>, <image>, <PAD>
    const OF_VOCAB: usize = 50280;
    let (about, vision, config, every_n) = match name {
        "of-mini" => (
            "ViT-B/16 at 224 px + an MPT with d 1024, 16 layers, 16 heads, cross-attention every 2nd layer",
            vit(224, 16, 768, 12),
            mpt(1024, 16, 16, 50280),
            2,
        ),
        "of-3b" => (
            "OpenFlamingo-3B: ViT-L/14 at 224 px + MPT-1B (MosaicGPT, d 2048, 24 layers, 16 heads, qk LayerNorm), cross-attention every layer",
            vit(224, 14, 1024, 24),
            Box::new(MosaicGptConfig {
                vocab_size: OF_VOCAB,
                ..MosaicGptConfig::mpt_1b_redpajama()
            }) as Box<dyn FamilyConfig>,
            1,
        ),
        "of-4b" => (
            "OpenFlamingo-4B: ViT-L/14 + RedPajama-INCITE-3B (GPT-NeoX, d 2560, 32 layers, 32 heads), every 2nd layer",
            vit(224, 14, 1024, 24),
            // RedPajama-INCITE-Base-3B-v1's config.json
            Box::new(GptNeoxConfig {
                vocab_size: OF_VOCAB,
                ..GptNeoxConfig::redpajama_3b()
            }) as Box<dyn FamilyConfig>,
            2,
        ),
        "of-9b" => (
            "OpenFlamingo-9B: ViT-L/14 + MPT-7B (d 4096, 32 layers, 32 heads), every 4th layer",
            vit(224, 14, 1024, 24),
            Box::new(MptConfig {
                vocab_size: OF_VOCAB,
                ..MptConfig::mpt_7b()
            }) as Box<dyn FamilyConfig>,
            4,
        ),
        other => {
            return Err(Error::Config {
                path: "--preset".into(),
                message: format!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
            })
        }
    };
    let resampler = resampler(vision.width);
    let lm = LmConfig::from_config(config);
    let decoder = decoder_config(&lm, None, &resampler, every_n)?;
    let vocab = decoder.vocab as u32;
    Ok(Preset {
        name: PRESETS
            .iter()
            .find(|p| **p == name)
            .copied()
            .unwrap_or("preset"),
        about,
        resampler,
        vision,
        lm,
        decoder,
        special: special(vocab),
    })
}

impl Preset {
    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig::clip(self.vision.image_size)
    }
}

/// Deterministic pseudo-random weights made on demand, tensor by tensor:
/// norms' weights 1, biases 0, gates 0.5, everything else uniform with std
/// 0.02 from a seed hashed from the tensor's name.
pub struct RandomWeights;

fn hash(name: &str) -> u64 {
    // FNV-1a
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str) -> flamingo_graphs::Result<Tensor> {
        Err(flamingo_graphs::Error::MissingTensor {
            name: name.to_string(),
            file: Some("random weights (no shape given)".into()),
        })
    }
    fn contains(&self, _: &str) -> bool {
        true
    }
    fn get_shaped(&self, name: &str, shape: &[usize]) -> flamingo_graphs::Result<Tensor> {
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or("");
        let is_norm = name.contains("norm")
            || name.contains("ln_")
            || name.ends_with(".ff.0.weight")
            || name.contains(".1.0.weight");
        let constant = if leaf == "attn_gate" || leaf == "ff_gate" {
            Some(0.5f32)
        } else if leaf == "bias" || leaf == "in_proj_bias" {
            Some(0.0)
        } else if is_norm && leaf == "weight" {
            Some(1.0)
        } else {
            None
        };
        let seed = hash(name);
        let load: flamingo_graphs::LoadFn = Arc::new(move || {
            let mut out = Vec::with_capacity(n * 4);
            match constant {
                Some(c) => (0..n).for_each(|_| out.extend(c.to_le_bytes())),
                None => {
                    let mut s = seed;
                    let a = 0.02f32 * 3f32.sqrt();
                    for _ in 0..n {
                        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                        let mut z = s;
                        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                        z ^= z >> 31;
                        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                        out.extend(((u * 2.0 - 1.0) * a).to_le_bytes());
                    }
                }
            }
            Ok(out)
        });
        Ok(Tensor {
            dtype: DType::F32,
            shape: shape.to_vec(),
            data: TensorData::Lazy(load),
        })
    }
}

/// GPT-2's byte -> printable character map (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}

/// A byte-level BPE `tokenizer.json` without merges (every byte one token,
/// ids 0..256) plus the special tokens at the preset's ids: enough to run
/// prompts through a random-weight preset.
pub fn tokenizer_json(s: &SpecialTokens) -> String {
    let mut vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    // special tokens keep their ids only when the model's vocab has them too
    vocab.insert("<|endofchunk|>".into(), s.end_of_chunk.into());
    vocab.insert("<image>".into(), s.media.into());
    if let Some(p) = s.pad {
        vocab.insert("<PAD>".into(), p.into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let mut added = vec![
        special(s.end_of_chunk, "<|endofchunk|>"),
        special(s.media, "<image>"),
    ];
    if let Some(p) = s.pad {
        added.push(special(p, "<PAD>"));
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}
