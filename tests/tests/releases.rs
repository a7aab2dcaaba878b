//! The public releases' formats (FLAMINGO.md section 9), on `tiny-mosaic`
//! (which ships in them) and on rewrites of it: OpenAI's TorchScript CLIP,
//! MosaicGPT in `pytorch_model.bin`, the LM repo's own tokenizer (OpenFlamingo's
//! tokens added), the cross-attention interval read from `checkpoint.pt`,
//! shard indexes, skipped buffers, `--release` checks, and a clear error
//! (naming the file, leaving nothing behind) for each kind of bad input.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flamingo_export::safetensors::{write_f32, Named};
use flamingo_export::{export, ExportOptions, NoProgress, TensorStore};
use flamingo_tests::*;

const FX: &str = "tiny-mosaic";

/// Exports and expects an error containing every one of `needles`, with
/// nothing left at the output path or beside it.
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

/// A private copy of tiny-mosaic and export options over it, into `out`.
fn copy(tag: &str) -> Result<(PathBuf, ExportOptions)> {
    let dir = copy_fixture(FX, tag)?;
    let mut o = export_options(FX, &dir.join("out"))?;
    o.clip = dir.join("clip/model.pt");
    o.lm = dir.join("lm");
    o.checkpoint = dir.join("checkpoint.pt");
    Ok((dir, o))
}

/// Rewrites the zip at `path` entry by entry (stored), letting `edit`
/// replace or drop each entry's bytes.
fn rewrite_zip(path: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Result<()> {
    let src = std::fs::read(path)?;
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src))?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i)?;
        let name = f.name()?.to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        if let Some(b) = edit(&name, bytes) {
            out.start_file(name, opts)?;
            out.write_all(&b)?;
        }
    }
    std::fs::write(path, out.finish()?.into_inner())?;
    Ok(())
}

/// The fixture's logits for the `fewshot2` case, through the pipeline.
fn fewshot_ids(dir: &Path) -> Result<Vec<u32>> {
    let p = flamingo_runtime::Pipeline::load(dir, flamingo_runtime::BackendKind::Tract)?;
    let case = named_case(FX, "fewshot2")?;
    Ok(p.prompt_ids(
        case["prompt"].as_str().context("prompt")?,
        indices(&case["images"]).len(),
    )?)
}

#[test]
fn tiny_mosaic_exports_from_its_files_as_shipped() -> Result<()> {
    let dir = exported(FX)?;
    let m = flamingo_contract::Manifest::load(&dir)?;
    assert_eq!(m.model.family, "mosaic_gpt");
    // the interval from checkpoint.pt, the vocabulary from its embeddings
    // (the LM config says 416), the tokens added as open_flamingo adds them
    assert_eq!(m.model.cross_attn_every_n_layers, 1);
    assert_eq!(m.model.decoder.vocab_size, 403);
    let j = flamingo_json(FX)?;
    assert_eq!(
        m.special_tokens.media as u64,
        j["media_token_id"].as_u64().context("media")?
    );
    assert_eq!(
        m.special_tokens.end_of_chunk as u64,
        j["eoc_token_id"].as_u64().context("eoc")?
    );
    assert_eq!(m.special_tokens.pad, Some(402));
    // OpenAI's TorchScript tower, read from its shapes: QuickGELU
    assert_eq!(
        m.model.vision.activation,
        flamingo_contract::VisionActivation::QuickGelu
    );
    // the augmented tokenizer tokenizes the prompts as the reference did
    let case = named_case(FX, "fewshot2")?;
    let want: Vec<u32> = case["input_ids"]
        .as_array()
        .context("ids")?
        .iter()
        .filter_map(|v| v.as_u64().map(|v| v as u32))
        .collect();
    assert_eq!(fewshot_ids(&dir)?, want);
    let map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("tokenizer/special_tokens_map.json"),
    )?)?;
    assert_eq!(map["pad_token"], "<PAD>");
    assert_eq!(map["additional_special_tokens"][1], "<image>");
    Ok(())
}

#[test]
fn given_settings_are_checked_against_the_files() -> Result<()> {
    // an interval given that the checkpoint does not have
    let (_, mut o) = copy("interval")?;
    o.cross_attn_every_n_layers = Some(2);
    expect_failure(
        &o,
        &["--cross-attn-every-n-layers", "gated_cross_attn_layer"],
    )?;
    // a vision preset whose shapes the TorchScript tower does not have
    let (_, mut o) = copy("preset")?;
    o.vision_preset = Some("ViT-B-16".into());
    expect_failure(&o, &["visual.conv1.weight", "[768, 3, 16, 16]"])?;
    // a release the tiny model is not
    let (_, mut o) = copy("release")?;
    o.release = Some("openflamingo-3b-vitl-mpt1b".into());
    expect_failure(
        &o,
        &[
            "model.pt",
            "vision image size",
            "openflamingo-3b-vitl-mpt1b has 224",
        ],
    )?;
    let (_, mut o) = copy("release-unknown")?;
    o.release = Some("openflamingo-80b".into());
    expect_failure(&o, &["openflamingo-80b", "openflamingo-9b-vitl-mpt7b"])?;
    Ok(())
}

#[test]
fn a_torchscript_global_outside_the_allowlist_is_refused_and_never_run() -> Result<()> {
    for (tag, module, name) in [("eval", "builtins", "eval"), ("system", "os", "system")] {
        let (dir, o) = copy(tag)?;
        rewrite_zip(&dir.join("clip/model.pt"), |n, b| {
            Some(if n.ends_with("data.pkl") {
                // the root class becomes the forbidden global
                let from = b"c__torch__.clip.model\nCLIP\n";
                let at = b.windows(from.len()).position(|w| w == from)?;
                let mut out = b[..at].to_vec();
                out.extend(format!("c{module}\n{name}\n").as_bytes());
                out.extend(&b[at + from.len()..]);
                out
            } else {
                b
            })
        })?;
        expect_failure(
            &o,
            &["model.pt", &format!("{module}.{name}"), "not allowed"],
        )?;
    }
    Ok(())
}

#[test]
fn a_storage_missing_from_the_archive_is_named() -> Result<()> {
    let (dir, o) = copy("storage")?;
    rewrite_zip(&dir.join("clip/model.pt"), |n, b| {
        (!n.ends_with("/data/3")).then_some(b)
    })?;
    expect_failure(&o, &["model.pt", "storage `3`", "missing from the archive"])?;
    Ok(())
}

#[test]
fn deflated_archive_entries_are_read() -> Result<()> {
    let (dir, o) = copy("deflate")?;
    let path = dir.join("lm/pytorch_model.bin");
    let src = std::fs::read(&path)?;
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src))?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i)?;
        let name = f.name()?.to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        out.start_file(name, opts)?;
        out.write_all(&bytes)?;
    }
    std::fs::write(&path, out.finish()?.into_inner())?;
    export(&o, &mut NoProgress)?;
    let a = flamingo_contract::Manifest::load(&o.out)?;
    let b = flamingo_contract::Manifest::load(&exported(FX)?)?;
    assert_eq!(a.files, b.files, "the same graphs from deflated entries");
    Ok(())
}

/// A tensor as `(name, shape, values)`.
type Values = (String, Vec<usize>, Vec<f32>);

/// The LM's tensors.
fn lm_tensors() -> Result<Vec<Values>> {
    let mut store = TensorStore::new();
    store.add_file(&fixture(FX).join("lm/pytorch_model.bin"), "", |_| true)?;
    let mut out = Vec::new();
    for name in store.names().map(String::from).collect::<Vec<_>>() {
        let shape = store.shape(&name).unwrap_or(&[]).to_vec();
        out.push((name.clone(), shape, store.to_f32(&name)?));
    }
    Ok(out)
}

/// Writes the LM's tensors as safetensors shards with an index.
fn write_shards(lm: &Path, shards: usize) -> Result<Vec<(String, String)>> {
    let tensors = lm_tensors()?;
    let mut map = Vec::new();
    let per = tensors.len().div_ceil(shards);
    for (k, part) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        let named: Vec<Named> = part
            .iter()
            .map(|(n, s, v)| Named {
                name: n,
                shape: s,
                data: v,
            })
            .collect();
        write_f32(&lm.join(&file), &named)?;
        map.extend(part.iter().map(|(n, _, _)| (n.clone(), file.clone())));
    }
    std::fs::remove_file(lm.join("pytorch_model.bin"))?;
    Ok(map)
}

fn write_index(lm: &Path, name: &str, map: &[(String, String)]) -> Result<()> {
    let weight_map: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, f)| (t.clone(), serde_json::Value::from(f.as_str())))
        .collect();
    let j = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(lm.join(name), serde_json::to_string_pretty(&j)?)?;
    Ok(())
}

#[test]
fn sharded_lm_weights_export_as_the_single_file_does() -> Result<()> {
    let want = flamingo_contract::Manifest::load(&exported(FX)?)?.files;
    // safetensors shards with model.safetensors.index.json
    let (dir, o) = copy("shards")?;
    let map = write_shards(&dir.join("lm"), 3)?;
    write_index(&dir.join("lm"), "model.safetensors.index.json", &map)?;
    export(&o, &mut NoProgress)?;
    assert_eq!(flamingo_contract::Manifest::load(&o.out)?.files, want);
    // torch shards with pytorch_model.bin.index.json (one shard)
    let (dir, o) = copy("bin-shards")?;
    let lm = dir.join("lm");
    let shard = "pytorch_model-00001-of-00001.bin";
    std::fs::rename(lm.join("pytorch_model.bin"), lm.join(shard))?;
    let map: Vec<(String, String)> = lm_tensors()?
        .into_iter()
        .map(|(n, _, _)| (n, shard.to_string()))
        .collect();
    write_index(&lm, "pytorch_model.bin.index.json", &map)?;
    export(&o, &mut NoProgress)?;
    assert_eq!(flamingo_contract::Manifest::load(&o.out)?.files, want);
    Ok(())
}

#[test]
fn bad_shard_indexes_are_named() -> Result<()> {
    // a shard the index names that does not exist
    let (dir, o) = copy("index-missing")?;
    let mut map = write_shards(&dir.join("lm"), 2)?;
    map[0].1 = "model-00009-of-00009.safetensors".into();
    write_index(&dir.join("lm"), "model.safetensors.index.json", &map)?;
    expect_failure(
        &o,
        &[
            "model.safetensors.index.json",
            "model-00009-of-00009",
            "does not exist",
        ],
    )?;
    // a path outside the directory
    let (dir, o) = copy("index-outside")?;
    let mut map = write_shards(&dir.join("lm"), 2)?;
    map[0].1 = "../checkpoint.pt".into();
    write_index(&dir.join("lm"), "model.safetensors.index.json", &map)?;
    expect_failure(
        &o,
        &[
            "model.safetensors.index.json",
            "../checkpoint.pt",
            "not a file beside",
        ],
    )?;
    // a tensor the index lists for a shard that lacks it
    let (dir, o) = copy("index-absent")?;
    let mut map = write_shards(&dir.join("lm"), 2)?;
    map.push(("transformer.blocks.0.attn.ghost".into(), map[0].1.clone()));
    write_index(&dir.join("lm"), "model.safetensors.index.json", &map)?;
    expect_failure(
        &o,
        &[
            "model.safetensors.index.json",
            "transformer.blocks.0.attn.ghost",
            "does not hold it",
        ],
    )?;
    // a tensor two shards both hold
    let (dir, o) = copy("index-twice")?;
    let lm = dir.join("lm");
    let map = write_shards(&lm, 2)?;
    let (first, second) = (map[0].clone(), map.last().cloned().unwrap());
    let tensors = lm_tensors()?;
    let mut part: Vec<Named> = tensors
        .iter()
        .filter(|(n, _, _)| map.iter().any(|(t, f)| t == n && *f == second.1))
        .map(|(n, s, v)| Named {
            name: n,
            shape: s,
            data: v,
        })
        .collect();
    let (_, s0, v0) = tensors.iter().find(|(n, _, _)| *n == first.0).unwrap();
    part.push(Named {
        name: &first.0,
        shape: s0,
        data: v0,
    });
    write_f32(&lm.join(&second.1), &part)?;
    write_index(&lm, "model.safetensors.index.json", &map)?;
    expect_failure(
        &o,
        &[first.0.as_str(), "is in two shards", &first.1, &second.1],
    )?;
    Ok(())
}

#[test]
fn buffers_of_other_dtypes_are_skipped_and_named_if_needed() -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let (dir, o) = copy("buffers")?;
    let lm = dir.join("lm");
    let map = write_shards(&lm, 1)?;
    // a bool causal mask and an int64 buffer beside the weights, as old
    // GPT-NeoX checkpoints carry them
    let mask = vec![1u8; 16];
    let ids: Vec<u8> = (0..4i64).flat_map(|v| v.to_le_bytes()).collect();
    let extra = [
        (
            "transformer.blocks.0.attn.bias",
            TensorView::new(Dtype::BOOL, vec![1, 1, 4, 4], &mask)?,
        ),
        (
            "transformer.blocks.0.attn.positions",
            TensorView::new(Dtype::I32, vec![2, 2], &ids[..16])?,
        ),
    ];
    safetensors::serialize_to_file(extra, None, &lm.join("model-extra.safetensors"))?;
    let mut map = map;
    map.push((
        "transformer.blocks.0.attn.bias".into(),
        "model-extra.safetensors".into(),
    ));
    map.push((
        "transformer.blocks.0.attn.positions".into(),
        "model-extra.safetensors".into(),
    ));
    write_index(&lm, "model.safetensors.index.json", &map)?;
    export(&o, &mut NoProgress)?;
    assert_eq!(
        flamingo_contract::Manifest::load(&o.out)?.files,
        flamingo_contract::Manifest::load(&exported(FX)?)?.files
    );
    // a graph that did ask for one would be told its dtype
    let mut store = TensorStore::new();
    store.add_file(&lm.join("model-extra.safetensors"), "", |_| true)?;
    let err = flamingo_graphs::WeightSource::get(&store, "transformer.blocks.0.attn.bias")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("BOOL") && err.contains("model-extra.safetensors"),
        "{err}"
    );
    Ok(())
}

#[test]
fn gated_layers_that_fit_no_interval_are_an_error() -> Result<()> {
    // the checkpoint as safetensors, without layer 1's gated block: gated
    // layers {0, 2} of 3 fit no interval
    let (dir, mut o) = copy("no-interval")?;
    let mut store = TensorStore::new();
    store.add_file(&fixture(FX).join("checkpoint.pt"), "", |_| true)?;
    let mut kept = Vec::new();
    for name in store.names().map(String::from).collect::<Vec<_>>() {
        if name.contains("blocks.1.gated_cross_attn_layer") {
            continue;
        }
        let shape = store.shape(&name).unwrap_or(&[]).to_vec();
        kept.push((name.clone(), shape, store.to_f32(&name)?));
    }
    let named: Vec<Named> = kept
        .iter()
        .map(|(n, s, v)| Named {
            name: n,
            shape: s,
            data: v,
        })
        .collect();
    o.checkpoint = dir.join("checkpoint.safetensors");
    write_f32(&o.checkpoint, &named)?;
    expect_failure(&o, &["checkpoint.safetensors", "[0, 2]", "fit no interval"])?;
    Ok(())
}

#[test]
fn embedding_rows_disagreeing_with_the_tokenizer_name_both() -> Result<()> {
    let (dir, mut o) = copy("vocab")?;
    // the LM repo's tokenizer with one more token than the reference's:
    // after OpenFlamingo's three, one more than the embeddings' rows
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixture(FX).join("lm/tokenizer.json"),
    )?)?;
    let added = tok["added_tokens"].as_array_mut().context("added_tokens")?;
    added.push(
        serde_json::json!({"id": 400, "content": "<extra>", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
    );
    let tdir = dir.join("tok");
    std::fs::create_dir_all(&tdir)?;
    std::fs::write(tdir.join("tokenizer.json"), tok.to_string())?;
    std::fs::copy(
        fixture(FX).join("lm/special_tokens_map.json"),
        tdir.join("special_tokens_map.json"),
    )?;
    o.tokenizer = Some(tdir);
    expect_failure(
        &o,
        &["checkpoint.pt", "403 rows", "tokenizer.json", "404 tokens"],
    )?;
    Ok(())
}

#[test]
fn a_snapshot_directory_stands_for_its_weights_file() -> Result<()> {
    let (dir, mut o) = copy("dirs")?;
    o.clip = dir.join("clip");
    o.checkpoint = dir.clone();
    export(&o, &mut NoProgress)?;
    assert_eq!(
        flamingo_contract::Manifest::load(&o.out)?.files,
        flamingo_contract::Manifest::load(&exported(FX)?)?.files
    );
    Ok(())
}

/// Full-prompt logits of the `fewshot2` case from its PNGs.
fn case_logits(dir: &Path) -> Result<ndarray::ArrayD<f32>> {
    let mut model = flamingo_runtime::Model::load(dir, flamingo_runtime::BackendKind::Tract)?;
    let case = named_case(FX, "fewshot2")?;
    let media: Vec<_> = indices(&case["images"])
        .into_iter()
        .map(|i| flamingo_runtime::Media::Image(fixture(FX).join(format!("images/img{i}.png"))))
        .collect();
    prompt_logits(&mut model, &media, &case_ids(&case)?)
}

/// MosaicGPT's options the fixture leaves unset, each set where its
/// effect is known: `logit_scale` 0.5 halves the logits; `attn_clip_qkv`
/// far above every activation and `softmax_scale` at its default change
/// nothing.
#[test]
fn mosaic_gpt_options_take_effect() -> Result<()> {
    let base = case_logits(&exported(FX)?)?;
    for (tag, key, value, factor) in [
        ("logit-scale", "logit_scale", 0.5, 0.5f32),
        ("clip-qkv", "attn_clip_qkv", 10000.0, 1.0),
        ("softmax-scale", "softmax_scale", 0.25, 1.0),
    ] {
        let (dir, o) = copy(tag)?;
        let cfg = dir.join("lm/config.json");
        let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg)?)?;
        j[key] = serde_json::Value::from(value);
        std::fs::write(&cfg, j.to_string())?;
        export(&o, &mut NoProgress)?;
        let got = case_logits(&o.out)?;
        let want = base.mapv(|v| v * factor);
        let d = max_abs_diff(&got, &want)?;
        eprintln!("{tag}: max abs diff {d:.2e}");
        assert!(d <= tolerance::INCREMENTAL, "{tag}: {d}");
        if key == "attn_clip_qkv" {
            let (g, _) = flamingo_graphs::onnx::read(&o.out.join("decoder.onnx"))?;
            let clips = g.nodes.iter().filter(|n| n.op_type == "Clip").count();
            assert_eq!(clips, 3, "one Clip of Wqkv per layer");
        }
    }
    Ok(())
}
