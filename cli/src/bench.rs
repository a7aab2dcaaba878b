//! `flamingo bench`: latency and memory of an export on a backend.
//! Timings are medians of `--iters` runs after `--warmup`; nothing here is
//! asserted anywhere (benchmarks are benchmarks).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use flamingo_runtime::preprocess::{preprocess, Rgb8};
use flamingo_runtime::{BackendKind, Model, Step};
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use serde::{Deserialize, Serialize};

#[derive(clap::Args)]
pub struct Args {
    /// Export directory (e.g. from `flamingo export --preset of-mini --random-weights`)
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "ort-cpu")]
    backend: BackendKind,
    /// Batch sizes for decoding
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    batch: Vec<usize>,
    /// Few-shot counts: k shots = k+1 images, about 20 text tokens per shot
    #[arg(long, value_delimiter = ',', default_value = "0,2,4")]
    shots: Vec<usize>,
    /// Decode steps measured per run
    #[arg(long, default_value_t = 16)]
    new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Bytes streamed to measure memory bandwidth
    #[arg(long, default_value_t = 1 << 30)]
    bandwidth_bytes: usize,
    /// Also time `Pipeline::generate` end to end (what applications and the
    /// Python package call): one image, greedy, 1 and 1 + this many new
    /// tokens; the difference per token is the pipeline's decode step
    #[arg(long, default_value_t = 0)]
    generate_tokens: usize,
    /// Another export of the same model (e.g. the fp32 one, to compare a
    /// quantised export with): its decode steps are timed alternately with
    /// this export's (three rounds each, same prompts and batch sizes), so
    /// that drift on a busy machine hits both alike, and the report gives the
    /// speed-up. Its memory adds to the resident-memory figures.
    #[arg(long)]
    baseline: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Draw a PNG chart: decode latency against context length, and the
    /// per-stage breakdown
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Replace an existing --plot file
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    gpu: crate::gpu::GpuArgs,
    #[command(flatten)]
    load: crate::load::LoadArgs,
}

/// What `flamingo bench --json` prints (times in ms, sizes in bytes; fields
/// are only ever added). `--plot` draws it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub model: PathBuf,
    pub backend: String,
    pub precision: flamingo_contract::Precision,
    pub providers: Vec<Provider>,
    pub load_ms: f64,
    /// Where the load's time went: the check of the files, each graph's
    /// session (built in parallel).
    #[serde(default)]
    pub load: flamingo_runtime::LoadTimes,
    pub preprocess_ms: f64,
    pub vision_encoder_ms_per_image: f64,
    /// Three images in one call (as a prompt's uncached images go), per image.
    #[serde(default)]
    pub vision_encoder_ms_per_image_batch3: f64,
    pub media: Vec<MediaRow>,
    pub decode: Vec<DecodeRow>,
    pub media_cost_at_equal_context: Option<MediaCost>,
    pub decode_vs_context: Vec<ContextPoint>,
    pub memory_bandwidth_gb_s: f64,
    pub decoder_weight_bytes: u64,
    pub roofline_decode_ms: f64,
    pub weight_bytes: u64,
    pub load_peak_rss_bytes: u64,
    pub rss_after_load_bytes: u64,
    pub peak_rss_bytes: u64,
    pub run_peak_rss_bytes: Option<u64>,
    pub baseline: Option<Baseline>,
    /// `--generate-tokens`.
    #[serde(default)]
    pub generate: Option<GenerateTiming>,
}

/// `Pipeline::generate` end to end (`--generate-tokens`): the prompt
/// `<image>A photo of` with the bench's 640x480 image, greedy; medians.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateTiming {
    pub new_tokens: usize,
    pub one_token_ms: f64,
    pub all_tokens_ms: f64,
    /// `(all_tokens_ms - one_token_ms) / (new_tokens - 1)`.
    pub per_token_ms: f64,
}

/// The prompt `--generate-tokens` times (and `scripts/python-overhead.py`).
pub const GENERATE_PROMPT: &str = "<image>A photo of";

fn generate_timing(a: &Args, img: &Rgb8) -> Result<GenerateTiming> {
    let n = a.generate_tokens.max(2);
    let mut p = a.load.pipeline(&a.model, a.backend, &a.gpu)?;
    let path = std::env::temp_dir().join(format!("flamingo-bench-{}.png", std::process::id()));
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| anyhow::anyhow!("the bench image"))?
        .save(&path)?;
    let run = |p: &mut flamingo_runtime::Pipeline, tokens: usize| -> Result<f64> {
        let req = flamingo_runtime::Request {
            prompt: GENERATE_PROMPT.into(),
            media: vec![flamingo_runtime::Media::Image(path.clone())],
            // a stop token no vocabulary has: every run makes all its tokens
            options: flamingo_runtime::GenerateOptions {
                max_new_tokens: tokens,
                stop_tokens: vec![u32::MAX],
                ..Default::default()
            },
        };
        let t = Instant::now();
        let g = p.generate(&req)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            g.sequences[0].generated_ids.len() == tokens,
            "a short generation"
        );
        Ok(ms)
    };
    let timed = (|| {
        // warm-up (and the image into the media cache)
        for _ in 0..a.warmup.max(1) {
            run(&mut p, n)?;
        }
        let (mut one, mut all) = (Vec::new(), Vec::new());
        for _ in 0..a.iters.max(1) {
            one.push(run(&mut p, 1)?);
            all.push(run(&mut p, n)?);
        }
        Ok::<_, anyhow::Error>((median(one), median(all)))
    })();
    let _ = std::fs::remove_file(&path);
    let (one, all) = timed?;
    Ok(GenerateTiming {
        new_tokens: n,
        one_token_ms: one,
        all_tokens_ms: all,
        per_token_ms: (all - one) / (n - 1) as f64,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provider {
    pub graph: flamingo_contract::GraphRole,
    pub provider: String,
}

/// The resampler and media K/V of one shot count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRow {
    pub shots: usize,
    pub images: usize,
    pub resampler_media_kv_ms: f64,
}

/// Prefill and decode of one shot count and batch size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecodeRow {
    pub shots: usize,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub prefill_ms: f64,
    pub time_to_first_token_ms: f64,
    pub decode: Percentiles,
    pub tokens_per_s: f64,
    pub roofline_ratio: f64,
}

/// One decode step (batch 1) at its context length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContextPoint {
    pub shots: usize,
    pub context: usize,
    pub ms: f64,
}

/// A decode step at equal context with 1 image and with all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaCost {
    pub context: usize,
    pub one_image_p50_ms: f64,
    pub images: usize,
    pub many_images_p50_ms: f64,
    pub ratio: f64,
}

/// `--baseline`: the other export's decode, timed alternately.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub model: Option<PathBuf>,
    pub precision: flamingo_contract::Precision,
    pub decode: Vec<Versus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Versus {
    pub shots: usize,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub p50_ms: f64,
    pub baseline_p50_ms: f64,
    pub speedup: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        mean_ms: v.iter().sum::<f64>() / v.len() as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ms of `f`, median over iters after warmup.
fn time(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::new();
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// A `/proc/self/status` memory figure (`VmHWM:` peak, `VmRSS:` current), bytes.
fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// Resets the peak (Linux: `5` to `/proc/self/clear_refs`), so that what
/// follows is measured apart from loading. False where that is unsupported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Streaming-read bandwidth, bytes/s: every core sums its share of a buffer
/// much larger than the caches (best of 3), as a multi-threaded decode does.
pub fn memory_bandwidth(bytes: usize) -> f64 {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let n = (bytes / 8).max(threads * 4);
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..3 {
        let s = Instant::now();
        let total: u64 = std::thread::scope(|sc| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        let mut acc = [0u64; 4];
                        for c in part.chunks_exact(4) {
                            acc[0] = acc[0].wrapping_add(c[0]);
                            acc[1] = acc[1].wrapping_add(c[1]);
                            acc[2] = acc[2].wrapping_add(c[2]);
                            acc[3] = acc[3].wrapping_add(c[3]);
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, |a, b| a.wrapping_add(b))
        });
        sink = sink.wrapping_add(total);
        best = best.min(s.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (n * 8) as f64 / best
}

fn prompt(shots: usize, media: i64, eoc: i64, vocab: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut t = 1000i64;
    let mut word = || {
        t = (t * 1103 + 12345) % (vocab - 10);
        t + 5
    };
    for _ in 0..shots {
        ids.push(media);
        ids.extend((0..18).map(|_| word()));
        ids.push(eoc);
    }
    ids.push(media);
    ids.extend((0..10).map(|_| word()));
    ids
}

/// One decode measurement: the prefill's median and every decode step.
struct DecodeRun {
    prefill_ms: f64,
    steps: Vec<f64>,
    /// (context length, ms) of each measured step of the first run
    curve: Vec<(usize, f64)>,
}

/// Prefill `ids` (batch `b`, `images` media) then `--new-tokens` greedy
/// steps, `--warmup` + `--iters` times.
fn decode_run(
    model: &mut Model,
    a: &Args,
    ids: &[i64],
    mt: &[i64],
    images: usize,
    kvb: &flamingo_runtime::MediaKv,
    b: usize,
) -> Result<DecodeRun> {
    let n = ids.len();
    let rows = |v: &[i64]| Array2::from_shape_fn((b, v.len()), |(_, j)| v[j]);
    let prefill = Step {
        input_ids: rows(ids),
        attention_mask: Array2::ones((b, n)),
        position_ids: rows(&(0..n as i64).collect::<Vec<_>>()),
        media_time: rows(mt),
        keep: 1,
    };
    let mut prefill_ms = Vec::new();
    let mut steps = Vec::new();
    let mut curve = Vec::new();
    for it in 0..a.warmup + a.iters.max(1) {
        let mut cache = model.empty_cache(b);
        cache.reserve(n + a.new_tokens);
        let s = Instant::now();
        let mut logits = model.decode(&prefill, kvb, &mut cache)?;
        let pf = s.elapsed().as_secs_f64() * 1e3;
        for j in 0..a.new_tokens {
            let next: Vec<i64> = (0..b)
                .map(|r| {
                    let row = logits.index_axis(Axis(0), r);
                    let row = row.index_axis(Axis(0), 0);
                    let mut best = 0;
                    for (i, v) in row.iter().enumerate() {
                        if *v > row[best] {
                            best = i;
                        }
                    }
                    best as i64
                })
                .collect();
            let total = n + j + 1;
            let step = Step {
                input_ids: Array2::from_shape_fn((b, 1), |(r, _)| next[r]),
                attention_mask: Array2::ones((b, total)),
                position_ids: Array2::from_elem((b, 1), total as i64 - 1),
                media_time: Array2::from_elem((b, 1), images as i64),
                keep: 1,
            };
            let s = Instant::now();
            logits = model.decode(&step, kvb, &mut cache)?;
            let ms = s.elapsed().as_secs_f64() * 1e3;
            if it >= a.warmup {
                steps.push(ms);
                if it == a.warmup {
                    curve.push((total, ms));
                }
            }
        }
        if it >= a.warmup {
            prefill_ms.push(pf);
        }
    }
    Ok(DecodeRun {
        prefill_ms: median(prefill_ms),
        steps,
        curve,
    })
}

pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.plot {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            anyhow::bail!("--plot {}: no such directory", p.display());
        }
        crate::load::check_output_file(p, a.force, "--plot")?;
    }
    // the bandwidth probe's buffer first, so that it is not counted below
    let bandwidth = memory_bandwidth(a.bandwidth_bytes);
    let before_load = if reset_peak_rss() { 0 } else { peak_rss() };
    let t0 = Instant::now();
    let mut model = a.load.model(&a.model, a.backend, &a.gpu)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (load_peak, rss_loaded) = (peak_rss().max(before_load), status_bytes("VmRSS:"));
    let mut base = match &a.baseline {
        Some(p) => {
            let b = a.load.model(p, a.backend, &a.gpu)?;
            if b.manifest.model.decoder != model.manifest.model.decoder {
                anyhow::bail!(
                    "--baseline {}: not the same model as {} (the decoders differ)",
                    p.display(),
                    a.model.display()
                );
            }
            Some(b)
        }
        None => None,
    };
    let peak_reset = reset_peak_rss();
    let m = model.manifest.clone();
    let d = &m.model.decoder;
    let data_bytes = |g: &flamingo_contract::GraphInfo| {
        g.data_file
            .as_ref()
            .and_then(|f| std::fs::metadata(a.model.join(f)).ok())
            .map(|x| x.len())
            .unwrap_or(0)
    };
    let decoder = m.graph(flamingo_contract::GraphRole::Decoder)?;
    // a table read only by lookups (a quantised export's float embedding)
    // gives one row per token, not its size
    let weight_bytes = data_bytes(decoder)
        .saturating_sub(looked_up_bytes(&a.model.join(&decoder.file)).unwrap_or(0));
    let all_weight_bytes: u64 = m.graphs.values().map(data_bytes).sum();
    let roofline_ms = weight_bytes as f64 / bandwidth * 1e3;
    // preprocessing one 640x480 photo-sized image
    let img = Rgb8 {
        width: 640,
        height: 480,
        data: (0..640 * 480 * 3).map(|i| (i * 31 % 251) as u8).collect(),
    };
    let pre_ms = time(a.warmup, a.iters, || {
        std::hint::black_box(preprocess(&img, &m.preprocess));
        Ok(())
    })?;
    let px = preprocess(&img, &m.preprocess)
        .insert_axis(Axis(0))
        .into_dyn();
    let vision_ms = time(a.warmup, a.iters, || {
        model.vision_tokens(px.clone())?;
        Ok(())
    })?;
    let px3 = ndarray::concatenate(Axis(0), &[px.view(), px.view(), px.view()])?;
    let vision3_ms = time(a.warmup, a.iters, || {
        model.vision_tokens(px3.clone())?;
        Ok(())
    })? / 3.0;
    let tokens = model.vision_tokens(px.clone())?;
    let base_tokens = match base.as_mut() {
        Some(b) => Some(b.vision_tokens(px.clone())?),
        None => None,
    };
    let mut versus = Vec::new();
    let (media, eoc) = (
        m.special_tokens.media as i64,
        m.special_tokens.end_of_chunk as i64,
    );
    let mut shots_out = Vec::new();
    let mut decode_out = Vec::new();
    let mut context_curve = Vec::new();
    let mut decode_p50_b1 = Vec::new();
    let (mut kv_one, mut many_kv) = (None, None);
    for &k in &a.shots {
        let t = k + 1;
        let (p, dd) = (tokens.shape()[1], tokens.shape()[2]);
        let stacked: ArrayD<f32> = ndarray::concatenate(Axis(0), &vec![tokens.view(); t])?
            .into_shape_with_order(IxDyn(&[1, t, 1, p, dd]))?;
        let mut kv = None;
        let media_ms = time(a.warmup, a.iters, || {
            let lat = model.latents(stacked.clone())?;
            kv = Some(model.media_kv(lat)?);
            Ok(())
        })?;
        let kv1 = kv.ok_or_else(|| anyhow::anyhow!("no media K/V"))?;
        let ids = prompt(k, media, eoc, d.vocab_size as i64);
        let n = ids.len();
        let mt = flamingo_runtime::decoder::media_time(&ids, media);
        for &b in &a.batch {
            let kvb = kv1.select(&vec![0; b]);
            let r = decode_run(&mut model, &a, &ids, &mt, t, &kvb, b)?;
            if b == 1 {
                context_curve.extend(r.curve.iter().map(|&(context, ms)| ContextPoint {
                    shots: k,
                    context,
                    ms,
                }));
            }
            if let (Some(bm), Some(bt)) = (base.as_mut(), base_tokens.as_ref()) {
                let (p, dd) = (bt.shape()[1], bt.shape()[2]);
                let stacked = ndarray::concatenate(Axis(0), &vec![bt.view(); t])?
                    .into_shape_with_order(IxDyn(&[1, t, 1, p, dd]))?;
                let lat = bm.latents(stacked)?;
                let bkv = bm.media_kv(lat)?.select(&vec![0; b]);
                let (mut mine, mut theirs) = (Vec::new(), Vec::new());
                for _ in 0..3 {
                    theirs.extend(decode_run(bm, &a, &ids, &mt, t, &bkv, b)?.steps);
                    mine.extend(decode_run(&mut model, &a, &ids, &mt, t, &kvb, b)?.steps);
                }
                let (p50, base_p50) = (median(mine), median(theirs));
                versus.push(Versus {
                    shots: k,
                    batch: b,
                    prompt_tokens: n,
                    p50_ms: p50,
                    baseline_p50_ms: base_p50,
                    speedup: base_p50 / p50,
                });
            }
            let pct = percentiles(r.steps);
            if b == 1 {
                decode_p50_b1.push((k, t, n, pct.p50_ms));
            }
            decode_out.push(DecodeRow {
                shots: k,
                batch: b,
                prompt_tokens: n,
                prefill_ms: r.prefill_ms,
                time_to_first_token_ms: r.prefill_ms + media_ms + vision_ms * t as f64,
                tokens_per_s: b as f64 / (pct.mean_ms / 1e3),
                roofline_ratio: pct.p50_ms / roofline_ms,
                decode: pct,
            });
        }
        if k == 0 {
            kv_one = Some(kv1);
        } else if Some(k) == a.shots.iter().copied().max() {
            many_kv = Some(kv1);
        }
        shots_out.push(MediaRow {
            shots: k,
            images: t,
            resampler_media_kv_ms: media_ms,
        });
    }
    // The media K/V cache pays off when a decode step costs the same with 1
    // and with many images: the longest prompt again, its other images'
    // markers replaced by text, so that only the image count differs.
    // Both are run alternately (3 rounds) so that drift on a busy machine
    // hits both alike.
    let media_cost = match (
        kv_one,
        decode_p50_b1.iter().max_by_key(|(k, ..)| *k).copied(),
        many_kv,
    ) {
        (Some(kv), Some((k, t, n, _)), Some(kv_many)) if t > 1 => {
            let many_ids = prompt(k, media, eoc, d.vocab_size as i64);
            let mut ids = many_ids.clone();
            for id in ids.iter_mut().skip(1).filter(|id| **id == media) {
                *id = 7;
            }
            let mt = flamingo_runtime::decoder::media_time(&ids, media);
            let many_mt = flamingo_runtime::decoder::media_time(&many_ids, media);
            let (mut one, mut many) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                one.extend(decode_run(&mut model, &a, &ids, &mt, 1, &kv, 1)?.steps);
                many.extend(decode_run(&mut model, &a, &many_ids, &many_mt, t, &kv_many, 1)?.steps);
            }
            let (one_ms, many_ms) = (median(one), median(many));
            Some(MediaCost {
                context: n,
                one_image_p50_ms: one_ms,
                images: t,
                many_images_p50_ms: many_ms,
                ratio: many_ms / one_ms,
            })
        }
        _ => None,
    };
    let providers = model
        .providers()
        .into_iter()
        .map(|(graph, provider)| Provider { graph, provider })
        .collect();
    let generate = match a.generate_tokens {
        0 => None,
        _ => Some(generate_timing(&a, &img)?),
    };
    let report = Report {
        model: a.model.clone(),
        backend: a.backend.as_str().into(),
        precision: m.precision,
        providers,
        load_ms,
        load: model.load_times.clone(),
        preprocess_ms: pre_ms,
        vision_encoder_ms_per_image: vision_ms,
        vision_encoder_ms_per_image_batch3: vision3_ms,
        media: shots_out,
        decode: decode_out,
        media_cost_at_equal_context: media_cost,
        decode_vs_context: context_curve,
        memory_bandwidth_gb_s: bandwidth / 1e9,
        decoder_weight_bytes: weight_bytes,
        roofline_decode_ms: roofline_ms,
        weight_bytes: all_weight_bytes,
        load_peak_rss_bytes: load_peak,
        rss_after_load_bytes: rss_loaded,
        peak_rss_bytes: load_peak.max(peak_rss()),
        run_peak_rss_bytes: peak_reset.then(peak_rss),
        baseline: base.as_ref().map(|b| Baseline {
            model: a.baseline.clone(),
            precision: b.manifest.precision,
            decode: versus,
        }),
        generate,
    };
    if let Some(p) = &a.plot {
        crate::plot::write(&report, p)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} on {} ({}), loaded in {load_ms:.0} ms",
        a.model.display(),
        a.backend,
        m.precision
    );
    let l = &report.load;
    let graphs: Vec<String> = l
        .graphs
        .iter()
        .map(|g| format!("{} {:.0} ms, cache {}", g.role, g.ms, g.cache))
        .collect();
    println!(
        "  load: files checked ({}) {:.0} ms; sessions {:.0} ms in parallel ({})",
        l.verified_by,
        l.verify_ms,
        l.sessions_ms,
        graphs.join(", ")
    );
    println!(
        "memory bandwidth {:.1} GB/s; decoder weights {:.2} GB -> roofline {roofline_ms:.1} ms/step",
        bandwidth / 1e9,
        weight_bytes as f64 / 1e9
    );
    println!(
        "preprocess {pre_ms:.2} ms/image, vision encoder {vision_ms:.1} ms/image \
         ({vision3_ms:.1} ms/image three in one call)"
    );
    for s in &report.media {
        println!(
            "{} shots ({} images): resampler + media K/V {:.1} ms",
            s.shots, s.images, s.resampler_media_kv_ms
        );
    }
    println!(
        "{:>5} {:>5} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "shots", "batch", "prompt", "TTFT ms", "p50 ms", "p90 ms", "p99 ms", "tok/s", "xroof"
    );
    for r in &report.decode {
        println!(
            "{:>5} {:>5} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>8.2}",
            r.shots,
            r.batch,
            r.prompt_tokens,
            r.time_to_first_token_ms,
            r.decode.p50_ms,
            r.decode.p90_ms,
            r.decode.p99_ms,
            r.tokens_per_s,
            r.roofline_ratio
        );
    }
    if let Some(c) = &report.media_cost_at_equal_context {
        println!(
            "decode step at {} tokens of context: {:.2} ms with 1 image, {:.2} ms with {} images ({:.2}x)",
            c.context, c.one_image_p50_ms, c.many_images_p50_ms, c.images, c.ratio
        );
    }
    if let Some(b) = &base {
        println!(
            "decode p50 against {} ({}), timed alternately:",
            a.baseline
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display(),
            b.manifest.precision
        );
        for v in report.baseline.iter().flat_map(|b| &b.decode) {
            println!(
                "  {} shots, batch {}, {} prompt tokens: {:.2} ms vs {:.2} ms ({:.2}x faster)",
                v.shots, v.batch, v.prompt_tokens, v.p50_ms, v.baseline_p50_ms, v.speedup
            );
        }
    }
    if let Some(g) = &report.generate {
        println!(
            "Pipeline::generate: 1 token {:.1} ms, {} tokens {:.1} ms: {:.2} ms per token",
            g.one_token_ms, g.new_tokens, g.all_tokens_ms, g.per_token_ms
        );
    }
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "resident memory: {:.2} GB after loading (peak {:.2} GB while loading), peak {} while running; weights {:.2} GB",
        gb(rss_loaded),
        gb(load_peak),
        if peak_reset {
            format!("{:.2} GB", gb(peak_rss()))
        } else {
            "unknown".into()
        },
        gb(all_weight_bytes)
    );
    Ok(())
}

/// Bytes of the initializers of the graph at `path` that only `Gather`s
/// read, as their data: embedding tables, of which a step reads a row.
fn looked_up_bytes(path: &std::path::Path) -> Result<u64> {
    let (g, _) = flamingo_graphs::onnx::read(path)?;
    // initializer -> (readers, of which lookups)
    let mut reads: std::collections::HashMap<&str, (usize, usize)> = g
        .initializers
        .iter()
        .map(|(n, _)| (n.as_str(), (0, 0)))
        .collect();
    for n in &g.nodes {
        for (i, input) in n.inputs.iter().enumerate() {
            if let Some((all, lookups)) = reads.get_mut(input.as_str()) {
                *all += 1;
                *lookups += usize::from(n.op_type == "Gather" && n.domain.is_empty() && i == 0);
            }
        }
    }
    Ok(g.initializers
        .iter()
        .filter(|(n, _)| matches!(reads.get(n.as_str()), Some(&(a, l)) if a > 0 && a == l))
        .map(|(_, t)| t.byte_len() as u64)
        .sum())
}
