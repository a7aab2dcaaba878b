//! The exporter: determinism, and a clear error (naming the file and the
//! problem) for every kind of bad input, with no partial output left behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flamingo_export::safetensors::{write_f32, Named};
use flamingo_export::{export, ExportOptions, NoProgress, TensorStore};
use flamingo_tests::*;

fn options_in(dir: &Path, out: &Path) -> Result<ExportOptions> {
    let mut o = export_options("tiny-mpt", out)?;
    o.clip = dir.join("clip/open_clip_pytorch_model.bin");
    o.lm = dir.join("lm");
    o.checkpoint = dir.join("checkpoint.pt");
    o.tokenizer = Some(dir.join("tokenizer"));
    Ok(o)
}

/// Exports and expects an error containing every one of `needles`; checks
/// that nothing was left at the output path or beside it.
fn expect_failure(opts: &ExportOptions, needles: &[&str]) -> Result<String> {
    let err = export(opts, &mut NoProgress)
        .expect_err("the export should fail")
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error `{err}` does not mention `{n}`");
    }
    assert!(
        !opts.out.exists(),
        "a failed export left {}",
        opts.out.display()
    );
    let parent = opts.out.parent().unwrap_or(Path::new("."));
    for e in std::fs::read_dir(parent)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".partial-"), "a failed export left {name}");
    }
    Ok(err)
}

#[test]
fn exporting_twice_gives_byte_identical_files() -> Result<()> {
    for fx in ["tiny-mpt", "tiny-llama-video"] {
        let a = scratch().join(format!("det-a-{fx}"));
        let b = scratch().join(format!("det-b-{fx}"));
        export(&export_options(fx, &a)?, &mut NoProgress)?;
        export(&export_options(fx, &b)?, &mut NoProgress)?;
        let files = flamingo_contract::Manifest::load(&a)?.files;
        assert!(files.len() >= 4, "{files:?}");
        for f in files.keys().map(String::as_str).chain(["manifest.json"]) {
            let (x, y) = (std::fs::read(a.join(f))?, std::fs::read(b.join(f))?);
            assert!(x == y, "{fx}: {f} differs between two exports");
        }
    }
    Ok(())
}

#[test]
fn the_manifest_records_hashes_that_match_the_files() -> Result<()> {
    let dir = exported("tiny-neox")?;
    let m = flamingo_contract::Manifest::load(&dir)?;
    for (f, h) in &m.files {
        assert_eq!(&flamingo_export::sha256_file(&dir.join(f))?, h, "{f}");
    }
    let g = m.graph(flamingo_contract::GraphRole::VisionEncoder)?;
    assert_eq!(g.inputs[0].name, "pixel_values");
    assert_eq!(
        g.outputs[0].shape,
        vec![serde_json::json!("num_images"), 16.into(), 48.into()]
    );
    assert_eq!(m.special_tokens.media, 401);
    assert_eq!(m.special_tokens.end_of_chunk, 400);
    Ok(())
}

#[test]
fn an_existing_output_is_refused_without_force() -> Result<()> {
    let out = scratch().join("exists");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("keep.txt"), "mine")?;
    let mut opts = export_options("tiny-mpt", &out)?;
    let err = export(&opts, &mut NoProgress)
        .expect_err("must refuse")
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert!(
        out.join("keep.txt").exists(),
        "refusing must not touch the dir"
    );
    // --force replaces only an export of ours: not this directory of files
    opts.force = true;
    let err = export(&opts, &mut NoProgress)
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("not an export written by flamingo"), "{err}");
    assert!(
        out.join("keep.txt").exists(),
        "refusing must not touch the dir"
    );
    std::fs::remove_dir_all(&out)?;
    export(&opts, &mut NoProgress)?;
    // an export of ours is replaced
    std::fs::write(out.join("stale.txt"), "old")?;
    export(&opts, &mut NoProgress)?;
    assert!(out.join("manifest.json").exists() && !out.join("stale.txt").exists());
    Ok(())
}

#[test]
fn a_truncated_checkpoint_is_a_clear_error() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "trunc")?;
    let ckpt = dir.join("checkpoint.pt");
    let bytes = std::fs::read(&ckpt)?;
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2])?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["checkpoint.pt", "corrupt or truncated"],
    )?;
    Ok(())
}

#[test]
fn a_zip_entry_pointing_outside_the_archive_is_rejected() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "zipout")?;
    let ckpt = dir.join("checkpoint.pt");
    let mut bytes = std::fs::read(&ckpt)?;
    // patch the local-header offset of the first central-directory entry
    let cd = bytes
        .windows(4)
        .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .expect("a central directory");
    bytes[cd + 42..cd + 46].copy_from_slice(&0xfff0_0000u32.to_le_bytes());
    std::fs::write(&ckpt, &bytes)?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["checkpoint.pt", "zip archive"],
    )?;
    Ok(())
}

#[test]
fn a_lying_storage_size_is_rejected_before_allocation() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "lying")?;
    let ckpt = dir.join("checkpoint.pt");
    let mut bytes = std::fs::read(&ckpt)?;
    // The first storage persistent id of perceiver.latents ends with
    // BININT2 3072 (`M\x00\x0c`) then TUPLE; claim 0xffff elements instead.
    let at = bytes
        .windows(4)
        .position(|w| w == [b'M', 0x00, 0x0c, b't'])
        .expect("the numel of the first storage");
    bytes[at + 1] = 0xff;
    bytes[at + 2] = 0xff;
    // keep the CRC-32 right (in the local header and the central
    // directory), so that it is the storage size the reader refuses
    let (old, range) = {
        let mut z = zip::ZipArchive::new(std::fs::File::open(&ckpt)?)?;
        let e = z.by_name("checkpoint/data.pkl")?;
        let start = e.data_start().expect("a stored entry") as usize;
        (e.crc32(), start..start + e.compressed_size() as usize)
    };
    let new = crc32fast::hash(&bytes[range]).to_le_bytes();
    let old = old.to_le_bytes();
    let mut patched = 0;
    for i in 0..bytes.len() - 4 {
        if bytes[i..i + 4] == old {
            bytes[i..i + 4].copy_from_slice(&new);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "the CRC-32 of data.pkl, twice");
    std::fs::write(&ckpt, &bytes)?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["checkpoint.pt", "perceiver.latents", "storage"],
    )?;
    Ok(())
}

#[test]
fn a_corrupt_safetensors_header_is_a_clear_error() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "badst")?;
    let st = dir.join("lm/model.safetensors");
    let mut bytes = std::fs::read(&st)?;
    bytes[8..16].copy_from_slice(b"{garbage");
    std::fs::write(&st, &bytes)?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["model.safetensors", "JSON"],
    )?;
    // and a truncated one
    let full = std::fs::read(fixture("tiny-mpt").join("lm/model.safetensors"))?;
    std::fs::write(&st, &full[..full.len() - 100])?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["model.safetensors", "truncated"],
    )?;
    Ok(())
}

/// Rewrites the CLIP weights as safetensors, editing one tensor.
fn clip_with(
    dir: &Path,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) -> Result<PathBuf> {
    let mut store = TensorStore::new();
    store.add_file(
        &fixture("tiny-mpt").join("clip/open_clip_pytorch_model.bin"),
        "",
        |_| true,
    )?;
    let mut kept = Vec::new();
    for name in store.names().map(String::from).collect::<Vec<_>>() {
        let shape = store.shape(&name).unwrap_or(&[]).to_vec();
        if let Some((s, v)) = edit(&name, shape, store.to_f32(&name)?) {
            kept.push((name, s, v));
        }
    }
    let named: Vec<Named> = kept
        .iter()
        .map(|(n, s, v)| Named {
            name: n,
            shape: s,
            data: v,
        })
        .collect();
    let path = dir.join("clip/open_clip_model.safetensors");
    write_f32(&path, &named)?;
    Ok(path)
}

#[test]
fn a_missing_tensor_is_named() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "missing")?;
    let mut opts = options_in(&dir, &dir.join("out"))?;
    opts.clip = clip_with(&dir, |n, s, v| {
        (n != "visual.ln_pre.weight").then_some((s, v))
    })?;
    expect_failure(
        &opts,
        &[
            "missing tensor",
            "visual.ln_pre.weight",
            "open_clip_model.safetensors",
        ],
    )?;
    Ok(())
}

#[test]
fn a_misshapen_tensor_names_both_shapes() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "shape")?;
    let mut opts = options_in(&dir, &dir.join("out"))?;
    opts.clip = clip_with(&dir, |n, s, v| {
        if n == "visual.positional_embedding" {
            // 17 x 48 -> 16 x 51
            Some((vec![16, 51], v))
        } else {
            Some((s, v))
        }
    })?;
    expect_failure(
        &opts,
        &["visual.positional_embedding", "[16, 51]", "[17, 48]"],
    )?;
    Ok(())
}

#[test]
fn a_layer_count_disagreeing_with_the_config_is_an_error() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "layers")?;
    let cfg = dir.join("clip/open_clip_config.json");
    let text = std::fs::read_to_string(&cfg)?.replace("\"layers\": 2", "\"layers\": 3");
    std::fs::write(&cfg, text)?;
    expect_failure(&options_in(&dir, &dir.join("out"))?, &["3 layers", "has 2"])?;
    Ok(())
}

#[test]
fn an_unknown_lm_family_lists_the_supported_ones() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "family")?;
    let cfg = dir.join("lm/config.json");
    let text = std::fs::read_to_string(&cfg)?
        .replace("\"model_type\": \"mpt\"", "\"model_type\": \"bloom\"");
    std::fs::write(&cfg, text)?;
    expect_failure(
        &options_in(&dir, &dir.join("out"))?,
        &["bloom", "mpt, mosaic_gpt, gpt_neox, llama"],
    )?;
    Ok(())
}

#[test]
fn a_non_checkpoint_file_is_a_clear_error() -> Result<()> {
    let dir = copy_fixture("tiny-mpt", "notpt")?;
    std::fs::write(
        dir.join("checkpoint.pt"),
        b"this is not a checkpoint at all",
    )?;
    expect_failure(&options_in(&dir, &dir.join("out"))?, &["checkpoint.pt"])?;
    Ok(())
}

fn with_lm_config(fx: &str, tag: &str, from: &str, to: &str) -> Result<ExportOptions> {
    let dir = copy_fixture(fx, tag)?;
    let cfg = dir.join("lm/config.json");
    let text = std::fs::read_to_string(&cfg)?;
    assert!(text.contains(from), "{fx} config has no `{from}`");
    std::fs::write(&cfg, text.replace(from, to))?;
    let mut o = export_options(fx, &dir.join("out"))?;
    o.clip = dir.join("clip/open_clip_pytorch_model.bin");
    o.lm = dir.join("lm");
    o.checkpoint = dir.join("checkpoint.pt");
    o.tokenizer = Some(dir.join("tokenizer"));
    Ok(o)
}

#[test]
fn lm_config_disagreeing_with_the_tensors_names_the_tensor_and_both_shapes() -> Result<()> {
    // key/value heads: k_proj has 2 x 16 rows, the config claims 4 heads
    let o = with_lm_config(
        "tiny-llama",
        "kvheads",
        "\"num_key_value_heads\": 2",
        "\"num_key_value_heads\": 4",
    )?;
    expect_failure(
        &o,
        &[
            "lang_encoder.model.layers.0.self_attn.k_proj.weight",
            "[64, 64]",
            "[32, 64]",
        ],
    )?;
    // hidden size
    let o = with_lm_config("tiny-mpt", "hidden", "\"d_model\": 64", "\"d_model\": 32")?;
    expect_failure(
        &o,
        &[
            "lang_encoder.transformer.wte.weight",
            "[403, 32]",
            "[403, 64]",
        ],
    )?;
    // MLP width
    let o = with_lm_config(
        "tiny-neox",
        "inter",
        "\"intermediate_size\": 256",
        "\"intermediate_size\": 128",
    )?;
    expect_failure(&o, &["mlp.dense_h_to_4h.weight", "[128, 64]", "[256, 64]"])?;
    // layer count
    let o = with_lm_config(
        "tiny-neox",
        "nlayers",
        "\"num_hidden_layers\": 4",
        "\"num_hidden_layers\": 5",
    )?;
    expect_failure(&o, &["5 layers", "have 4"])?;
    Ok(())
}

#[test]
fn a_wrong_cross_attention_interval_is_an_error() -> Result<()> {
    let mut o = export_options("tiny-neox", &scratch().join("wrong-n"))?;
    o.cross_attn_every_n_layers = Some(1);
    expect_failure(
        &o,
        &["--cross-attn-every-n-layers", "gated_cross_attn_layer"],
    )?;
    Ok(())
}

/// The manifests (holding every other file's sha256) of the fixtures'
/// exports, of their fp16 and quantised rewrites and of the of-mini preset
/// are those recorded before the exporter-runtime contract, the ONNX schema
/// and the family configs were refactored: the refactors changed no byte.
#[test]
fn exports_are_byte_identical_to_the_recorded_ones() -> Result<()> {
    use flamingo_calibration::weights::WeightBits;
    use flamingo_contract::Precision;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/export-sha256.json"),
    )?;
    let recorded: serde_json::Value = serde_json::from_str(&text)?;
    let recorded = recorded["manifests"].as_object().context("manifests")?;
    let manifest_sha = |dir: &Path| flamingo_export::sha256_file(&dir.join("manifest.json"));
    let mut checked = 0;
    for (key, want) in recorded {
        let (fx, variant) = key.split_once('/').context("fixture/variant")?;
        let dir = match variant {
            "fp32" if fx == "of-mini" => {
                let out = scratch().join("hash-of-mini");
                flamingo_export::export_preset(fx, &out, false, None, &mut NoProgress)?;
                out
            }
            "fp32" => exported(fx)?,
            "export-fp16" => {
                let out = scratch().join(format!("hash-{fx}-fp16"));
                let mut o = export_options(fx, &out)?;
                o.rewrite = Some((Precision::Fp16, flamingo_calibration::fp16::to_fp16));
                export(&o, &mut NoProgress)?;
                out
            }
            kind => {
                let bits = match kind {
                    "int8" => WeightBits::Int8,
                    "int8-ort" => WeightBits::Int8Ort { block_size: 32 },
                    "int4" => WeightBits::Int4 { block_size: 32 },
                    "int8-flamingo" => WeightBits::Int8Flamingo,
                    "int4-flamingo" => WeightBits::Int4Flamingo { block_size: 32 },
                    other => anyhow::bail!("unknown variant {other}"),
                };
                flamingo_tests::variant::quantized(fx, bits)?
            }
        };
        let got = manifest_sha(&dir)?;
        assert_eq!(
            &got,
            want.as_str().context("sha")?,
            "{key}: manifest.json differs"
        );
        if fx == "of-mini" {
            std::fs::remove_dir_all(&dir)?;
        }
        checked += 1;
    }
    assert_eq!(checked, 19);
    Ok(())
}
