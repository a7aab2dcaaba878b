//! The full pipeline: prompt + media -> preprocess -> vision encoder ->
//! resampler -> media K/V -> decoder prefill -> decode loop, with the caches
//! reused. Media are cached across requests by content hash
//! ([`crate::media_cache`]: few-shot support images are encoded once). The
//! token choices are the searches' ([`crate::search`]); this file pads the
//! rows, runs the decoder and feeds the searches' tokens back.

use std::path::{Path, PathBuf};

use ndarray::{concatenate, Array2, ArrayD, Axis, IxDyn};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backend::BackendKind;
use crate::decoder::{position_ids, MediaKv, Step};
use crate::media_cache::MediaCache;
use crate::model::{Media, Model};
use crate::preprocess::{decode_image_within, preprocess};
use crate::search::{self, GenerateOptions, Search};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub mod continuous;
pub mod jsonl;

/// One generation request: a prompt with `<image>` markers and its media, in order.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: String,
    pub media: Vec<Media>,
    pub options: GenerateOptions,
}

impl Request {
    /// A request from one line of the `generate --batch` JSONL format:
    /// `{"prompt", "media": ["a.png", ["f1.png", "f2.png"]], ...options}`, a
    /// string an image, a list a video's frames, relative paths resolved
    /// against `base`; options override `defaults` (an unknown one is an error).
    pub fn from_json_line(
        line: &str,
        base: &Path,
        defaults: &GenerateOptions,
    ) -> std::result::Result<Request, String> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("a request must be a JSON object")?;
        let prompt = obj
            .get("prompt")
            .and_then(|p| p.as_str())
            .ok_or("missing \"prompt\" (a string)")?
            .to_string();
        let mut media = Vec::new();
        let items = match obj.get("media") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err("\"media\" must be a list".into()),
        };
        for (i, m) in items.iter().enumerate() {
            match m {
                Value::String(s) => media.push(Media::Image(resolve(base, s))),
                Value::Array(frames) => {
                    let fr: Option<Vec<PathBuf>> = frames
                        .iter()
                        .map(|f| f.as_str().map(|s| resolve(base, s)))
                        .collect();
                    media.push(Media::Video(
                        fr.ok_or(format!("media[{i}]: video frames must be strings"))?,
                    ));
                }
                _ => {
                    return Err(format!(
                        "media[{i}] must be a path or a list of frame paths"
                    ))
                }
            }
        }
        // per-request options override the defaults
        let mut opts = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
        for (k, val) in obj {
            if k != "prompt" && k != "media" {
                if opts.get(k).is_none() {
                    return Err(format!("unknown field \"{k}\""));
                }
                opts[k] = val.clone();
            }
        }
        let options: GenerateOptions =
            serde_json::from_value(opts).map_err(|e| format!("bad option: {e}"))?;
        Ok(Request {
            prompt,
            media,
            options,
        })
    }
}

/// One returned sequence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sequence {
    /// New tokens only (the stop token included when one was produced).
    pub generated_ids: Vec<u32>,
    /// The new tokens as text, special tokens skipped.
    pub text: String,
    /// Beam score (length-penalised sum of log-probabilities), for beam search.
    pub score: Option<f32>,
}

/// What [`Pipeline::generate`] returns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub sequences: Vec<Sequence>,
}

/// A candidate's score for close-ended tasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidateScore {
    pub text: String,
    pub logprob_sum: f32,
    pub num_tokens: usize,
}

/// A token as it is produced: request index in the batch, token, its text.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent<'a> {
    pub request: usize,
    pub token: u32,
    pub text: &'a str,
}

/// Left-padded rows: the prefill step and the batched media K/V.
struct Padded {
    step: Step,
    kv: MediaKv,
}

/// A prompt ready to decode.
struct Prepared {
    ids: Vec<u32>,
    kv: MediaKv,
    n_media: i64,
    opts: GenerateOptions,
    stop: Vec<u32>,
}

/// Model + tokenizer + media cache: what an application drives.
pub struct Pipeline {
    pub model: Model,
    pub tokenizer: Tokenizer,
    cache: MediaCache,
}

/// Candidates scored per decoder call.
const SCORE_CHUNK: usize = 8;

/// A frame's vision tokens `[P, D]` and the hash of its file's content.
type FrameTokens = (ArrayD<f32>, [u8; 32]);

/// Images one vision-encoder call encodes at most (a prompt's uncached
/// images go together).
const VISION_BATCH: usize = 8;

/// Default bound of the media cache.
pub const DEFAULT_MEDIA_CACHE_BYTES: usize = 256 << 20;

impl Pipeline {
    /// Loads an export directory (graphs and tokenizer) on `backend`.
    pub fn load(dir: &Path, backend: BackendKind) -> Result<Pipeline> {
        Self::load_with_gpu(dir, backend, &crate::gpu::GpuOptions::default())
    }

    /// Loads with GPU provider settings (ignored by the CPU backends).
    pub fn load_with_gpu(
        dir: &Path,
        backend: BackendKind,
        gpu: &crate::gpu::GpuOptions,
    ) -> Result<Pipeline> {
        let opts = crate::model::LoadOptions {
            gpu: gpu.clone(),
            ..Default::default()
        };
        Self::load_opts(dir, backend, &opts)
    }

    /// Loads with `opts` (GPU settings, `no_verify`).
    pub fn load_opts(
        dir: &Path,
        backend: BackendKind,
        opts: &crate::model::LoadOptions,
    ) -> Result<Pipeline> {
        let model = Model::load_opts(dir, backend, opts)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer"))?;
        Ok(Pipeline {
            model,
            tokenizer,
            cache: MediaCache::new(DEFAULT_MEDIA_CACHE_BYTES),
        })
    }

    /// Hits, misses and bytes of the media cache.
    pub fn media_cache_stats(&self) -> crate::media_cache::MediaCacheStats {
        self.cache.stats()
    }

    /// Bounds the media cache (0 disables it).
    pub fn set_media_cache_bytes(&mut self, bytes: usize) {
        self.cache = MediaCache::new(bytes);
    }

    /// Token ids of a prompt, checked against the media given.
    pub fn prompt_ids(&self, prompt: &str, n_media: usize) -> Result<Vec<u32>> {
        let media_token = self.model.manifest.special_tokens.media;
        self.tokenizer.prompt_ids(prompt, media_token, n_media)
    }

    fn check_context(&self, len: usize) -> Result<()> {
        if let Some(max) = self.model.manifest.model.lm.max_position_embeddings {
            if len > max {
                return Err(Error::Input(format!(
                    "the context would be {len} tokens, longer than the model allows ({max}); shorten the prompt or lower max_new_tokens"
                )));
            }
        }
        Ok(())
    }

    /// Vision tokens `[P, D]` of every frame of `media` with the hash of
    /// its file's content they are cached by: from the cache, or encoded
    /// (the uncached frames of a prompt together, [`VISION_BATCH`] per call).
    fn frames_tokens(&mut self, media: &[Media]) -> Result<Vec<Vec<FrameTokens>>> {
        let limits = self.model.limits;
        let mut keys: Vec<Vec<[u8; 32]>> = Vec::new();
        let mut have: std::collections::HashMap<[u8; 32], ArrayD<f32>> = Default::default();
        let mut todo: Vec<([u8; 32], ndarray::Array3<f32>)> = Vec::new();
        for m in media {
            if m.frames().is_empty() {
                return Err(Error::Input("a video with no frames".into()));
            }
            let mut item = Vec::new();
            for path in m.frames() {
                let bytes = crate::limits::read_media(path, &limits)?;
                let key: [u8; 32] = Sha256::digest(&bytes).into();
                item.push(key);
                if have.contains_key(&key) || todo.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                if let Some(t) = self.cache.get(&key) {
                    have.insert(key, t);
                    continue;
                }
                let img =
                    decode_image_within(&bytes, limits.max_image_pixels).map_err(|message| {
                        Error::BadImage {
                            path: path.display().to_string(),
                            message,
                        }
                    })?;
                todo.push((key, preprocess(&img, &self.model.manifest.preprocess)));
            }
            keys.push(item);
        }
        for chunk in todo.chunks(VISION_BATCH) {
            let views: Vec<_> = chunk.iter().map(|(_, px)| px.view()).collect();
            let px = ndarray::stack(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))?;
            let tokens = self.model.vision_tokens(px.into_dyn())?;
            for (i, (key, _)) in chunk.iter().enumerate() {
                let t = tokens.index_axis(Axis(0), i).to_owned();
                self.cache.put(*key, t.clone());
                have.insert(*key, t);
            }
        }
        keys.into_iter()
            .map(|item| {
                item.into_iter()
                    .map(|k| {
                        have.get(&k)
                            .cloned()
                            .map(|t| (t, k))
                            .ok_or_else(|| Error::Input("vision tokens went missing".into()))
                    })
                    .collect()
            })
            .collect()
    }

    /// Latents `[1, T, n, D]` of a prompt's media.
    pub fn latents(&mut self, media: &[Media]) -> Result<ArrayD<f32>> {
        let mut per_item: Vec<(Vec<ArrayD<f32>>, [u8; 32])> = Vec::new();
        for frames in self.frames_tokens(media)? {
            // an item's latents are cached by its frames' contents (not
            // their paths: a server writes each request's images anew)
            let mut h = Sha256::new();
            h.update(b"latents");
            for (_, key) in &frames {
                h.update(key);
            }
            per_item.push((
                frames.into_iter().map(|(t, _)| t).collect(),
                h.finalize().into(),
            ));
        }
        let stack = |frames: &[ArrayD<f32>]| -> Result<ArrayD<f32>> {
            let views: Vec<_> = frames
                .iter()
                .map(|f| f.view().insert_axis(Axis(0)))
                .collect();
            concatenate(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))
        };
        let position_dependent = self.model.manifest.model.resampler.max_num_media.is_some();
        if position_dependent {
            // media-time embeddings: resample the prompt's items together
            let f = per_item[0].0.len();
            if let Some(bad) = per_item.iter().find(|p| p.0.len() != f) {
                return Err(Error::Input(format!(
                    "all media of one prompt must have the same number of frames (got {f} and {})",
                    bad.0.len()
                )));
            }
            let items: Vec<ArrayD<f32>> = per_item
                .iter()
                .map(|p| stack(&p.0))
                .collect::<Result<_>>()?;
            let x = stack(&items)?.insert_axis(Axis(0));
            return self.model.latents(x);
        }
        let mut lats = Vec::new();
        for (frames, key) in per_item {
            let lat = match self.cache.get(&key) {
                Some(l) => l,
                None => {
                    let x = stack(&frames)?.insert_axis(Axis(0)).insert_axis(Axis(0));
                    let l = self.model.latents(x)?;
                    self.cache.put(key, l.clone());
                    l
                }
            };
            lats.push(lat);
        }
        let views: Vec<_> = lats.iter().map(|l| l.view()).collect();
        concatenate(Axis(1), &views).map_err(|e| Error::Input(e.to_string()))
    }

    /// Media K/V `[1, H, T*n, Dh]` for a prompt (one all-zero media when
    /// none). Each item's K/V is a projection of its own latents alone, so
    /// it is computed per item and cached by the item's content (few-shot
    /// supports are projected once across requests); resamplers with
    /// media-time embeddings, whose latents depend on the whole prompt,
    /// project the prompt's latents together.
    pub fn media_kv(&mut self, media: &[Media]) -> Result<MediaKv> {
        if media.is_empty() {
            let r = &self.model.manifest.model.resampler;
            let latents = ArrayD::zeros(IxDyn(&[1, 1, r.num_latents, r.dim]));
            return self.model.media_kv(latents);
        }
        if self.model.manifest.model.resampler.max_num_media.is_some() {
            let latents = self.latents(media)?;
            return self.model.media_kv(latents);
        }
        let limits = self.model.limits;
        let mut items: Vec<([u8; 32], Option<ArrayD<f32>>)> = Vec::with_capacity(media.len());
        for m in media {
            let mut h = Sha256::new();
            h.update(b"media_kv");
            for path in m.frames() {
                let bytes = crate::limits::read_media(path, &limits)?;
                h.update(Sha256::digest(&bytes));
            }
            let key: [u8; 32] = h.finalize().into();
            items.push((key, self.cache.get(&key)));
        }
        for (i, m) in media.iter().enumerate() {
            if items[i].1.is_some() {
                continue;
            }
            let latents = self.latents(std::slice::from_ref(m))?;
            let kv = self.model.media_kv(latents)?;
            let views: Vec<_> = kv.tensors.iter().map(|(_, t)| t.view()).collect();
            let packed =
                ndarray::stack(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))?;
            self.cache.put(items[i].0, packed.clone());
            items[i].1 = Some(packed);
        }
        let names = self.model.media_kv_names();
        let packed: Vec<&ArrayD<f32>> = items.iter().filter_map(|(_, p)| p.as_ref()).collect();
        let mut tensors = Vec::with_capacity(names.len());
        for (j, name) in names.into_iter().enumerate() {
            let parts: Vec<_> = packed.iter().map(|p| p.index_axis(Axis(0), j)).collect();
            if parts.iter().any(|p| p.ndim() != 4) {
                return Err(Error::Input(format!(
                    "a cached media K/V `{name}` is not 4-D"
                )));
            }
            let t = concatenate(Axis(2), &parts).map_err(|e| Error::Input(e.to_string()))?;
            tensors.push((name, t));
        }
        Ok(MediaKv::new(tensors))
    }

    fn prepare(&mut self, req: &Request) -> Result<Prepared> {
        req.options.validate().map_err(Error::Input)?;
        let limits = self.model.limits;
        if req.options.num_beams > limits.max_beams {
            return Err(Error::Input(format!(
                "num_beams {} is more than --max-beams {}",
                req.options.num_beams, limits.max_beams
            )));
        }
        if req.media.len() > limits.max_media {
            return Err(Error::Input(format!(
                "{} media items, more than --max-media {}",
                req.media.len(),
                limits.max_media
            )));
        }
        let ids = self.prompt_ids(&req.prompt, req.media.len())?;
        let total = ids
            .len()
            .checked_add(req.options.max_new_tokens)
            .ok_or_else(|| {
                Error::Input(format!(
                    "max_new_tokens {} overflows the context",
                    req.options.max_new_tokens
                ))
            })?;
        self.check_context(total)?;
        let kv = self.media_kv(&req.media)?;
        let stop = if req.options.stop_tokens.is_empty() {
            vec![self.model.manifest.special_tokens.end_of_chunk]
        } else {
            req.options.stop_tokens.clone()
        };
        Ok(Prepared {
            n_media: req.media.len() as i64,
            ids,
            kv,
            opts: req.options.clone(),
            stop,
        })
    }

    /// Generates for one request.
    pub fn generate(&mut self, req: &Request) -> Result<Generation> {
        self.generate_stream(req, &mut |_| true)
    }

    /// Generates for one request, calling `on_token` for each new token
    /// (greedy and sampling; beam search reports its best sequence at the end).
    /// Returning `false` from the callback stops generation.
    pub fn generate_stream(
        &mut self,
        req: &Request,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Generation> {
        let p = self.prepare(req)?;
        let g = self.run_batch(&[p], on_token)?.remove(0);
        if req.options.num_beams > 1 {
            if let Some(s) = g.sequences.first() {
                for &t in &s.generated_ids {
                    let text = self.tokenizer.decode(&[t])?;
                    on_token(TokenEvent {
                        request: 0,
                        token: t,
                        text: &text,
                    });
                }
            }
        }
        Ok(g)
    }

    /// Generates for several requests; each gets its own result, so one bad
    /// request does not fail the others. Compatible requests (greedy or
    /// sampling) run as one left-padded batch; beam searches run one by one.
    pub fn generate_batch(&mut self, reqs: &[Request]) -> Vec<Result<Generation>> {
        let mut results: Vec<Option<Result<Generation>>> = reqs.iter().map(|_| None).collect();
        let mut batch = Vec::new();
        let mut batch_idx = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            match self.prepare(r) {
                Err(e) => results[i] = Some(Err(e)),
                Ok(p) if p.opts.num_beams > 1 => {
                    results[i] = Some(self.run_batch(&[p], &mut |_| true).map(|mut g| g.remove(0)))
                }
                Ok(p) => {
                    batch.push(p);
                    batch_idx.push(i);
                }
            }
        }
        if !batch.is_empty() {
            match self.run_batch(&batch, &mut |_| true) {
                Ok(gens) => {
                    for (i, g) in batch_idx.iter().zip(gens) {
                        results[*i] = Some(Ok(g));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in &batch_idx {
                        results[*i] = Some(Err(Error::Input(msg.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Input("request was not run".into()))))
            .collect()
    }

    /// Left-pads the rows into one batch.
    fn pad_rows(&self, rows: &[&[u32]], media_of_row: &[&MediaKv]) -> Result<Padded> {
        let b = rows.len();
        let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let st = &self.model.manifest.special_tokens;
        let pad = st.pad.unwrap_or(st.end_of_chunk) as i64;
        let media_token = st.media;
        let mut ids = Array2::from_elem((b, l), pad);
        let mut mask = Array2::zeros((b, l));
        let mut mt = Array2::zeros((b, l));
        for (i, r) in rows.iter().enumerate() {
            let off = l - r.len();
            let mut n = 0;
            for (j, &t) in r.iter().enumerate() {
                ids[[i, off + j]] = t as i64;
                mask[[i, off + j]] = 1;
                if t == media_token {
                    n += 1;
                }
                mt[[i, off + j]] = n;
            }
        }
        let mut pos = Array2::zeros((b, l));
        for i in 0..b {
            let p = position_ids(mask.row(i).as_slice().unwrap_or(&[]));
            for (j, v) in p.into_iter().enumerate() {
                pos[[i, j]] = v;
            }
        }
        Ok(Padded {
            step: Step {
                input_ids: ids,
                attention_mask: mask,
                position_ids: pos,
                media_time: mt,
                keep: 1,
            },
            kv: stack_media(media_of_row)?,
        })
    }

    /// Runs the prepared requests as one decoder batch: each request's
    /// search (greedy, sampling: one row; beam search: one row per beam,
    /// the prompt repeated) over its left-padded rows, stepped together.
    fn run_batch(
        &mut self,
        preps: &[Prepared],
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Vec<Generation>> {
        let mut rows: Vec<&[u32]> = Vec::new();
        let mut kvs: Vec<&MediaKv> = Vec::new();
        let mut n_media = Vec::new();
        for p in preps {
            for _ in 0..p.opts.num_beams.max(1) {
                rows.push(&p.ids);
                kvs.push(&p.kv);
                n_media.push(p.n_media);
            }
        }
        let Padded { step, kv } = self.pad_rows(&rows, &kvs)?;
        let mut groups: Vec<Box<dyn Search>> = Vec::with_capacity(preps.len());
        let mut r0 = 0;
        for p in preps {
            let row: Vec<u32> = step.input_ids.row(r0).iter().map(|&t| t as u32).collect();
            let g = search::search(&p.opts, &row, &p.stop);
            r0 += g.rows();
            groups.push(g);
        }
        let most_new = preps.iter().map(|p| p.opts.max_new_tokens).max();
        let fill = self
            .model
            .manifest
            .model
            .lm
            .pad_token_id
            .unwrap_or(preps[0].stop[0]);
        self.drive(
            &mut groups,
            step,
            &kv,
            &n_media,
            most_new.unwrap_or(0),
            fill,
            on_token,
        )?;
        preps
            .iter()
            .zip(groups)
            .map(|(p, g)| {
                let sequences = self.sequences(g.as_ref())?;
                Ok(Generation {
                    prompt_ids: p.ids.clone(),
                    sequences,
                })
            })
            .collect()
    }

    /// The decode loop: prefills `step`, then hands each search its rows'
    /// logits and feeds back the tokens it picks (rows of a finished search
    /// get `fill`), reordering the cache where beams move, until every
    /// search is done or a callback asks to stop. Request `i` of the events
    /// is search `i`.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &mut self,
        groups: &mut [Box<dyn Search>],
        step: Step,
        kv: &MediaKv,
        n_media: &[i64],
        most_new: usize,
        fill: u32,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<()> {
        let b = step.input_ids.nrows();
        let mut mask = step.attention_mask.clone();
        let mut cache = self.model.empty_cache(b);
        cache.reserve(step.input_ids.ncols().saturating_add(most_new));
        let mut logits = self.model.decode(&step, kv, &mut cache)?;
        let mut done: Vec<bool> = groups.iter().map(|g| g.is_done()).collect();
        while !done.iter().all(|&d| d) {
            let mut next = vec![fill; b];
            let mut order: Vec<usize> = (0..b).collect();
            let (mut moved, mut stop) = (false, false);
            let mut r0 = 0;
            for (gi, g) in groups.iter_mut().enumerate() {
                let n = g.rows();
                if !done[gi] {
                    let last: Array2<f32> = logits
                        .slice_axis(Axis(0), (r0..r0 + n).into())
                        .index_axis(Axis(1), 0)
                        .to_owned()
                        .into_dimensionality()
                        .map_err(|e| Error::Input(e.to_string()))?;
                    let mut err = None;
                    let tok = &self.tokenizer;
                    let d = g
                        .step(last.view(), &mut |t| match tok.decode(&[t]) {
                            Ok(text) => on_token(TokenEvent {
                                request: gi,
                                token: t,
                                text: &text,
                            }),
                            Err(e) => {
                                err = Some(e);
                                false
                            }
                        })
                        .map_err(Error::Input)?;
                    if let Some(e) = err {
                        return Err(e);
                    }
                    next[r0..r0 + n].copy_from_slice(&d.tokens);
                    if let Some(o) = d.reorder {
                        for (i, src) in o.into_iter().enumerate() {
                            order[r0 + i] = r0 + src;
                        }
                        moved = true;
                    }
                    done[gi] = d.done;
                    stop |= d.stop;
                }
                r0 += n;
            }
            if moved {
                cache = cache.select(&order)?;
                mask = mask.select(Axis(0), &order);
            }
            if stop || done.iter().all(|&d| d) {
                break;
            }
            mask = concatenate(Axis(1), &[mask.view(), Array2::ones((b, 1)).view()])
                .map_err(|e| Error::Input(e.to_string()))?;
            let mut step_pos = Array2::zeros((b, 1));
            for i in 0..b {
                step_pos[[i, 0]] = mask.row(i).iter().sum::<i64>() - 1;
            }
            logits = self.model.decode(
                &Step {
                    input_ids: Array2::from_shape_fn((b, 1), |(i, _)| next[i] as i64),
                    attention_mask: mask.clone(),
                    position_ids: step_pos,
                    media_time: Array2::from_shape_fn((b, 1), |(i, _)| n_media[i]),
                    keep: 1,
                },
                kv,
                &mut cache,
            )?;
        }
        Ok(())
    }

    /// Candidates to score: some, within `--max-candidates`.
    fn check_candidates(&self, candidates: &[String]) -> Result<()> {
        if candidates.is_empty() {
            return Err(Error::Input("no candidates to score".into()));
        }
        if candidates.len() > self.model.limits.max_candidates {
            return Err(Error::Input(format!(
                "{} candidates, more than --max-candidates {}",
                candidates.len(),
                self.model.limits.max_candidates
            )));
        }
        Ok(())
    }

    /// A finished search's sequences, with their text.
    fn sequences(&self, search: &dyn Search) -> Result<Vec<Sequence>> {
        search
            .finish()
            .into_iter()
            .map(|(ids, score)| {
                Ok(Sequence {
                    text: self.tokenizer.decode(&ids)?,
                    generated_ids: ids,
                    score,
                })
            })
            .collect()
    }

    /// Close-ended scoring: for each candidate, the sum of the log-probabilities
    /// of `tokenize(prompt + candidate)` after the `tokenize(prompt)` prefix,
    /// all candidates in one batch.
    pub fn score(
        &mut self,
        prompt: &str,
        media: &[Media],
        candidates: &[String],
    ) -> Result<Vec<CandidateScore>> {
        self.check_candidates(candidates)?;
        let prefix = self.prompt_ids(prompt, media.len())?;
        let kv = self.media_kv(media)?;
        let mut rows = Vec::new();
        for c in candidates {
            let full = self.tokenizer.encode(&format!("{prompt}{c}"))?;
            if full.len() <= prefix.len() {
                return Err(Error::Input(format!(
                    "candidate {c:?} adds no tokens to the prompt"
                )));
            }
            self.check_context(full.len())?;
            rows.push(full);
        }
        // a few candidates per decoder call, each keeping only the logits
        // of its candidate tokens: memory does not grow with their number
        let mut out = Vec::with_capacity(rows.len());
        for (chunk, texts) in rows.chunks(SCORE_CHUNK).zip(candidates.chunks(SCORE_CHUNK)) {
            let refs: Vec<&[u32]> = chunk.iter().map(|r| r.as_slice()).collect();
            let kvs: Vec<&MediaKv> = chunk.iter().map(|_| &kv).collect();
            let Padded { mut step, kv: kvb } = self.pad_rows(&refs, &kvs)?;
            let l = step.input_ids.ncols();
            // the first position whose logits score a candidate token
            let first = chunk
                .iter()
                .map(|r| l - r.len() + prefix.len() - 1)
                .min()
                .unwrap_or(0);
            step.keep = l - first;
            let mut cache = self.model.empty_cache(chunk.len());
            let logits = self.model.decode(&step, &kvb, &mut cache)?;
            for (i, (row, c)) in chunk.iter().zip(texts).enumerate() {
                let off = l - row.len();
                let mut sum = 0.0f32;
                for (j, &tok) in row.iter().enumerate().skip(prefix.len()) {
                    let lg: Vec<f32> = logits
                        .index_axis(Axis(0), i)
                        .index_axis(Axis(0), off + j - 1 - first)
                        .iter()
                        .copied()
                        .collect();
                    sum += search::log_softmax(&lg)[tok as usize];
                }
                out.push(CandidateScore {
                    text: c.clone(),
                    logprob_sum: sum,
                    num_tokens: row.len() - prefix.len(),
                });
            }
        }
        Ok(out)
    }
}

/// Bytes of a prefix's KV cache the rows of one [`Pipeline::score_classes`]
/// call may hold together (the prefix repeated once per row).
const CLASS_CACHE_BYTES: usize = 512 << 20;

/// Most class names scored per decoder call.
const CLASS_CHUNK: usize = 32;

impl Pipeline {
    /// Close-ended scoring as OpenFlamingo's eval ranks classes
    /// (`get_rank_classifications`): each candidate is tokenized apart from
    /// the prompt, without special tokens, and appended to the prompt's
    /// tokens; its log-probabilities are read after a prefix that runs
    /// through the decoder once, its KV cache then shared by every
    /// candidate (a chunk of candidates per decoder call, as many as fit
    /// in 512 MB of repeated cache).
    pub fn score_classes(
        &mut self,
        prompt: &str,
        media: &[Media],
        candidates: &[String],
    ) -> Result<Vec<CandidateScore>> {
        self.check_candidates(candidates)?;
        let prefix = self.prompt_ids(prompt, media.len())?;
        let mut conts = Vec::with_capacity(candidates.len());
        for c in candidates {
            let ids = self.tokenizer.encode_plain(c)?;
            if ids.is_empty() {
                return Err(Error::Input(format!("candidate {c:?} has no tokens")));
            }
            self.check_context(prefix.len() + ids.len())?;
            conts.push(ids);
        }
        let kv = self.media_kv(media)?;
        let Padded { mut step, kv } = self.pad_rows(&[&prefix], &[&kv])?;
        step.keep = 1;
        let mut cache = self.model.empty_cache(1);
        let first = self.model.decode(&step, &kv, &mut cache)?;
        let first = search::log_softmax(
            first
                .as_slice()
                .ok_or_else(|| Error::Input("the decoder's logits are not contiguous".into()))?,
        );
        let n_media = step.media_time[[0, prefix.len() - 1]];
        let d = &self.model.manifest.model.decoder;
        let row_bytes = 8 * d.num_layers * d.kv_heads * d.head_dim * prefix.len();
        let rows = (CLASS_CACHE_BYTES / row_bytes.max(1)).clamp(1, CLASS_CHUNK);
        let multi = self.model.steps_rows_over_cache();
        let mut out = Vec::with_capacity(candidates.len());
        for (chunk, texts) in conts.chunks(rows).zip(candidates.chunks(rows)) {
            let b = chunk.len();
            let l = chunk.iter().map(Vec::len).max().unwrap_or(1);
            // log-probabilities of each row's tokens: the first from the
            // prefix's logits, token j from position j - 1 of the chunk's
            let mut lp: Vec<f32> = chunk.iter().map(|r| first[r[0] as usize]).collect();
            if l > 1 {
                let mut c = cache.select(&vec![0; b])?;
                let kvb = kv.select(&vec![0; b]);
                // rows shorter than the longest are padded after their end:
                // causal attention keeps the padding out of their scores
                let ids = Array2::from_shape_fn((b, l - 1), |(i, j)| {
                    chunk[i].get(j).copied().unwrap_or(0) as i64
                });
                let width = if multi { l - 1 } else { 1 };
                for s0 in (0..l - 1).step_by(width) {
                    let past = prefix.len() + s0;
                    let step = Step {
                        input_ids: ids.slice(ndarray::s![.., s0..s0 + width]).to_owned(),
                        attention_mask: Array2::ones((b, past + width)),
                        position_ids: Array2::from_shape_fn((b, width), |(_, j)| (past + j) as i64),
                        media_time: Array2::from_elem((b, width), n_media),
                        keep: width,
                    };
                    let logits = self.model.decode(&step, &kvb, &mut c)?;
                    for (i, row) in chunk.iter().enumerate() {
                        for j in 0..width {
                            let Some(&tok) = row.get(s0 + j + 1) else {
                                break;
                            };
                            let lg: Vec<f32> = logits
                                .index_axis(Axis(0), i)
                                .index_axis(Axis(0), j)
                                .iter()
                                .copied()
                                .collect();
                            lp[i] += search::log_softmax(&lg)[tok as usize];
                        }
                    }
                }
            }
            for ((row, text), sum) in chunk.iter().zip(texts).zip(lp) {
                out.push(CandidateScore {
                    text: text.clone(),
                    logprob_sum: sum,
                    num_tokens: row.len(),
                });
            }
        }
        Ok(out)
    }
}

/// Stacks per-row media K/V (each `[1, H, T_i*n, Dh]`) into a batch,
/// zero-padding rows with fewer media (those latents are never attended).
fn stack_media(rows: &[&MediaKv]) -> Result<MediaKv> {
    let first = rows
        .first()
        .ok_or_else(|| Error::Input("empty batch".into()))?;
    let mut tensors = Vec::with_capacity(first.tensors.len());
    for (ti, (name, _)) in first.tensors.iter().enumerate() {
        let parts: Vec<_> = rows
            .iter()
            .map(|r| {
                r.tensors
                    .get(ti)
                    .map(|t| t.1.view())
                    .ok_or_else(|| Error::Input(format!("a row has no media K/V {name}")))
            })
            .collect::<Result<_>>()?;
        let len = parts.iter().map(|t| t.shape()[2]).max().unwrap_or(0);
        tensors.push((name.clone(), stack_padded(&parts, len, false)?));
    }
    Ok(MediaKv::new(tensors))
}

/// `parts` (each `[b_i, A, L_i, C]`) stacked along axis 0 into one
/// `[Σ b_i, A, len, C]`, each zero-padded along axis 2 to `len` positions on
/// the left (`left`: its last position lands on the last) or the right.
/// One copy of the data.
pub(crate) fn stack_padded(
    parts: &[ndarray::ArrayViewD<'_, f32>],
    len: usize,
    left: bool,
) -> Result<ArrayD<f32>> {
    let bad = |m: String| Error::Input(format!("cannot stack the batch's rows: {m}"));
    let first = parts.first().ok_or_else(|| bad("no rows".into()))?;
    if first.ndim() != 4 {
        return Err(bad(format!(
            "a {}-d tensor, not [b, A, L, C]",
            first.ndim()
        )));
    }
    let (a, c) = (first.shape()[1], first.shape()[3]);
    let mut rows = 0;
    for p in parts {
        let sh = p.shape();
        if sh.len() != 4 || sh[1] != a || sh[3] != c || sh[2] > len {
            return Err(bad(format!(
                "a part of shape {sh:?} does not fit [_, {a}, <= {len}, {c}]"
            )));
        }
        rows += sh[0];
    }
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[rows, a, len, c]));
    let mut r0 = 0;
    for p in parts {
        let (b, have) = (p.shape()[0], p.shape()[2]);
        let cols = if left { len - have..len } else { 0..have };
        out.slice_mut(ndarray::s![r0..r0 + b, .., cols, ..])
            .assign(p);
        r0 += b;
    }
    Ok(out)
}

/// Resolves a media path relative to `base` (batch files resolve against their directory).
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}
