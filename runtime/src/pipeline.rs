//! The full pipeline: prompt + media -> preprocess -> vision encoder ->
//! resampler -> media K/V -> decoder prefill -> decode loop, with the caches
//! reused. Media are cached across requests by content hash (few-shot
//! support images are encoded once), within a memory bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{concatenate, Array2, ArrayD, Axis, IxDyn};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backend::BackendKind;
use crate::decoder::{position_ids, MediaKv, Step};
use crate::model::{Media, Model};
use crate::preprocess::{decode_image, preprocess};
use crate::search::{self, argmax, BeamHyps, GenerateOptions, Rng};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One generation request: a prompt with `<image>` markers and its media, in order.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: String,
    pub media: Vec<Media>,
    pub options: GenerateOptions,
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

/// Caches vision tokens per image and latents per media item, by content hash.
struct MediaCache {
    entries: HashMap<[u8; 32], (ArrayD<f32>, u64)>,
    bytes: usize,
    budget: usize,
    clock: u64,
}

impl MediaCache {
    fn get(&mut self, k: &[u8; 32]) -> Option<ArrayD<f32>> {
        self.clock += 1;
        let c = self.clock;
        self.entries.get_mut(k).map(|e| {
            e.1 = c;
            e.0.clone()
        })
    }
    fn put(&mut self, k: [u8; 32], v: ArrayD<f32>) {
        let size = v.len() * 4;
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|e| (e.1).1).map(|e| *e.0) else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.len() * 4;
            }
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.insert(k, (v, self.clock)) {
            self.bytes -= old.len() * 4;
        }
        self.bytes += size;
    }
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
        let model = Model::load_with_gpu(dir, backend, gpu)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer"))?;
        Ok(Pipeline {
            model,
            tokenizer,
            cache: MediaCache {
                entries: HashMap::new(),
                bytes: 0,
                budget: DEFAULT_MEDIA_CACHE_BYTES,
                clock: 0,
            },
        })
    }

    /// Bounds the media cache (0 disables it).
    pub fn set_media_cache_bytes(&mut self, bytes: usize) {
        self.cache.budget = bytes;
        self.cache.entries.clear();
        self.cache.bytes = 0;
    }

    /// Token ids of a prompt, checked against the media given.
    pub fn prompt_ids(&self, prompt: &str, n_media: usize) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        let media_token = self.model.manifest.special_tokens.media;
        let markers = ids.iter().filter(|&&t| t == media_token).count();
        if markers != n_media {
            return Err(Error::Input(format!(
                "the prompt has {markers} <image> marker(s) but {n_media} media item(s) were given"
            )));
        }
        Ok(ids)
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

    /// Vision tokens `[P, D]` of one image file, from the cache or computed.
    fn frame_tokens(&mut self, path: &Path) -> Result<ArrayD<f32>> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let key: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(t) = self.cache.get(&key) {
            return Ok(t);
        }
        let img = decode_image(&bytes).map_err(|message| Error::BadImage {
            path: path.display().to_string(),
            message,
        })?;
        let px = preprocess(&img, &self.model.manifest.preprocess).insert_axis(Axis(0));
        let t = self
            .model
            .vision_tokens(px.into_dyn())?
            .index_axis_move(Axis(0), 0);
        self.cache.put(key, t.clone());
        Ok(t)
    }

    /// Latents `[1, T, n, D]` of a prompt's media.
    pub fn latents(&mut self, media: &[Media]) -> Result<ArrayD<f32>> {
        let mut per_item: Vec<(Vec<ArrayD<f32>>, [u8; 32])> = Vec::new();
        for m in media {
            if m.frames().is_empty() {
                return Err(Error::Input("a video with no frames".into()));
            }
            let mut h = Sha256::new();
            let mut frames = Vec::new();
            for f in m.frames() {
                let t = self.frame_tokens(f)?;
                h.update(f.as_os_str().as_encoded_bytes());
                for v in t.iter().take(16) {
                    h.update(v.to_le_bytes());
                }
                frames.push(t);
            }
            per_item.push((frames, h.finalize().into()));
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

    /// Media K/V `[1, H, T*n, Dh]` for a prompt (one all-zero media when none).
    fn media_kv(&mut self, media: &[Media]) -> Result<MediaKv> {
        let latents = if media.is_empty() {
            let r = &self.model.manifest.model.resampler;
            ArrayD::zeros(IxDyn(&[1, 1, r.num_latents, r.dim]))
        } else {
            self.latents(media)?
        };
        self.model.media_kv(latents)
    }

    fn prepare(&mut self, req: &Request) -> Result<Prepared> {
        req.options.validate().map_err(Error::Input)?;
        let ids = self.prompt_ids(&req.prompt, req.media.len())?;
        self.check_context(ids.len() + req.options.max_new_tokens)?;
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
        if p.opts.num_beams > 1 {
            let g = self.beam_search(&p)?;
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
            return Ok(g);
        }
        Ok(self.run_batch(&[p], on_token)?.remove(0))
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
                Ok(p) if p.opts.num_beams > 1 => results[i] = Some(self.beam_search(&p)),
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

    /// Greedy / sampling over a left-padded batch.
    fn run_batch(
        &mut self,
        preps: &[Prepared],
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Vec<Generation>> {
        let b = preps.len();
        let rows: Vec<&[u32]> = preps.iter().map(|p| p.ids.as_slice()).collect();
        let kvs: Vec<&MediaKv> = preps.iter().map(|p| &p.kv).collect();
        let Padded { step, kv } = self.pad_rows(&rows, &kvs)?;
        let mut mask = step.attention_mask.clone();
        let mut seqs: Vec<Vec<u32>> = step
            .input_ids
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        let mut cache = self.model.empty_cache(b);
        let most_new = preps.iter().map(|p| p.opts.max_new_tokens).max();
        cache.reserve(step.input_ids.ncols() + most_new.unwrap_or(0));
        let mut logits = self.model.decode(&step, &kv, &mut cache)?;
        let mut rngs: Vec<Rng> = preps.iter().map(|p| Rng::new(p.opts.seed)).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut finished = vec![false; b];
        let max_new = preps
            .iter()
            .map(|p| p.opts.max_new_tokens)
            .max()
            .unwrap_or(0);
        let fill = self
            .model
            .manifest
            .model
            .lm
            .pad_token_id
            .unwrap_or(preps[0].stop[0]);
        let mut stopped_by_caller = false;
        for t in 0..max_new {
            let mut next = vec![fill; b];
            for i in 0..b {
                if finished[i] {
                    continue;
                }
                let p = &preps[i];
                let mut scores: Vec<f32> = logits.index_axis(Axis(0), i).iter().copied().collect();
                search::process(&mut scores, &seqs[i], &p.opts);
                next[i] = if p.opts.is_greedy() {
                    argmax(&scores)
                } else {
                    search::warp(&mut scores, &p.opts);
                    search::sample(&scores, &mut rngs[i])
                };
                generated[i].push(next[i]);
                let text = self.tokenizer.decode(&[next[i]])?;
                if !on_token(TokenEvent {
                    request: i,
                    token: next[i],
                    text: &text,
                }) {
                    stopped_by_caller = true;
                }
                if p.stop.contains(&next[i]) || generated[i].len() >= p.opts.max_new_tokens {
                    finished[i] = true;
                }
            }
            for i in 0..b {
                seqs[i].push(next[i]);
            }
            if stopped_by_caller || finished.iter().all(|&f| f) || t + 1 == max_new {
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
                    media_time: Array2::from_shape_fn((b, 1), |(i, _)| preps[i].n_media),
                    keep: 1,
                },
                &kv,
                &mut cache,
            )?;
        }
        preps
            .iter()
            .zip(generated)
            .map(|(p, g)| {
                Ok(Generation {
                    prompt_ids: p.ids.clone(),
                    sequences: vec![Sequence {
                        text: self.tokenizer.decode(&g)?,
                        generated_ids: g,
                        score: None,
                    }],
                })
            })
            .collect()
    }

    /// Beam search for one request (transformers' `BeamSearchScorer`).
    fn beam_search(&mut self, p: &Prepared) -> Result<Generation> {
        let o = &p.opts;
        let k = o.num_beams;
        let s = p.ids.len();
        let max_len = s + o.max_new_tokens;
        let kv = p.kv.select(&vec![0; k]);
        let row: Vec<i64> = p.ids.iter().map(|&t| t as i64).collect();
        let mt = crate::decoder::media_time(&row, self.model.manifest.special_tokens.media as i64);
        let pos: Vec<i64> = (0..s as i64).collect();
        let rep = |v: &[i64]| Array2::from_shape_fn((k, v.len()), |(_, j)| v[j]);
        let mut cache = self.model.empty_cache(k);
        cache.reserve(max_len);
        let mut logits = self.model.decode(
            &Step {
                input_ids: rep(&row),
                attention_mask: Array2::ones((k, s)),
                position_ids: rep(&pos),
                media_time: rep(&mt),
                keep: 1,
            },
            &kv,
            &mut cache,
        )?;
        let mut beam_scores: Vec<f32> = (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
        let mut seqs: Vec<Vec<u32>> = vec![p.ids.clone(); k];
        let mut hyps = BeamHyps::new(k, o.length_penalty, o.early_stopping);
        let mut cur_len = s;
        let mut done = false;
        while cur_len < max_len {
            let v = logits.shape()[2];
            let mut cand: Vec<(f32, usize)> = Vec::with_capacity(k * v);
            for (bi, seq) in seqs.iter().enumerate() {
                let raw: Vec<f32> = logits.index_axis(Axis(0), bi).iter().copied().collect();
                let mut lp = search::log_softmax(&raw);
                search::process(&mut lp, seq, o);
                for (t, x) in lp.into_iter().enumerate() {
                    cand.push((x + beam_scores[bi], bi * v + t));
                }
            }
            cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            cand.truncate(2 * k);
            let mut next: Vec<(f32, u32, usize)> = Vec::with_capacity(k);
            for (rank, &(score, flat)) in cand.iter().enumerate() {
                let (bi, tok) = (flat / v, (flat % v) as u32);
                if p.stop.contains(&tok) {
                    if rank >= k {
                        continue;
                    }
                    hyps.add(seqs[bi].clone(), score, cur_len + 1 - s);
                } else {
                    next.push((score, tok, bi));
                }
                if next.len() == k {
                    break;
                }
            }
            if next.len() < k {
                return Err(Error::Input("beam search ran out of candidates".into()));
            }
            done = hyps.is_done(cand[0].0, cur_len + 1 - s);
            let order: Vec<usize> = next.iter().map(|n| n.2).collect();
            seqs = next
                .iter()
                .map(|&(_, tok, bi)| {
                    let mut q = seqs[bi].clone();
                    q.push(tok);
                    q
                })
                .collect();
            beam_scores = next.iter().map(|n| n.0).collect();
            cache = cache.select(&order)?;
            cur_len += 1;
            if done || cur_len >= max_len {
                break;
            }
            let step = Step {
                input_ids: Array2::from_shape_fn((k, 1), |(i, _)| seqs[i][cur_len - 1] as i64),
                attention_mask: Array2::ones((k, cur_len)),
                position_ids: Array2::from_elem((k, 1), cur_len as i64 - 1),
                media_time: Array2::from_elem((k, 1), p.n_media),
                keep: 1,
            };
            logits = self.model.decode(&step, &kv, &mut cache)?;
        }
        if !done {
            for (bi, seq) in seqs.iter().enumerate() {
                hyps.add(seq.clone(), beam_scores[bi], seq.len() - s);
            }
        }
        let mut sequences = Vec::new();
        for (score, mut hyp) in hyps.best().into_iter().take(o.num_return_sequences) {
            if hyp.len() < max_len {
                hyp.push(p.stop[0]);
            }
            let g = hyp[s..].to_vec();
            sequences.push(Sequence {
                text: self.tokenizer.decode(&g)?,
                generated_ids: g,
                score: Some(score),
            });
        }
        Ok(Generation {
            prompt_ids: p.ids.clone(),
            sequences,
        })
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
        if candidates.is_empty() {
            return Err(Error::Input("no candidates to score".into()));
        }
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
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let kvs: Vec<&MediaKv> = rows.iter().map(|_| &kv).collect();
        let Padded { mut step, kv: kvb } = self.pad_rows(&refs, &kvs)?;
        let l = step.input_ids.ncols();
        step.keep = l;
        let mut cache = self.model.empty_cache(rows.len());
        let logits = self.model.decode(&step, &kvb, &mut cache)?;
        let mut out = Vec::new();
        for (i, (row, c)) in rows.iter().zip(candidates).enumerate() {
            let off = l - row.len();
            let mut sum = 0.0f32;
            for (j, &tok) in row.iter().enumerate().skip(prefix.len()) {
                let lg: Vec<f32> = logits
                    .index_axis(Axis(0), i)
                    .index_axis(Axis(0), off + j - 1)
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
        Ok(out)
    }
}

/// Stacks per-row media K/V (each `[1, H, T_i*n, Dh]`) into a batch,
/// zero-padding rows with fewer media (those latents are never attended).
fn stack_media(rows: &[&MediaKv]) -> Result<MediaKv> {
    let first = rows
        .first()
        .ok_or_else(|| Error::Input("empty batch".into()))?;
    let mut tensors = Vec::new();
    for (ti, (name, _)) in first.tensors.iter().enumerate() {
        let max_len = rows
            .iter()
            .map(|r| r.tensors[ti].1.shape()[2])
            .max()
            .unwrap_or(0);
        let mut parts = Vec::new();
        for r in rows {
            let t = &r.tensors[ti].1;
            let mut shape = t.shape().to_vec();
            let have = shape[2];
            let padded = if have < max_len {
                shape[2] = max_len - have;
                concatenate(Axis(2), &[t.view(), ArrayD::zeros(IxDyn(&shape)).view()])
                    .map_err(|e| Error::Input(e.to_string()))?
            } else {
                t.clone()
            };
            parts.push(padded);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        tensors.push((
            name.clone(),
            concatenate(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))?,
        ));
    }
    Ok(MediaKv::new(tensors))
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
