//! Continuous batching: a decoder batch that requests join and leave
//! between decode steps. Each row has its own past length: the rows are
//! right-aligned, shorter ones left-padded (mask 0) in the KV cache, as a
//! left-padded batch is; a joining request is prefilled alone (its prompt
//! prefix from the [`PrefixCache`] when it has been seen), then its cache
//! is padded to the batch's length (or the batch's to its) and stacked.
//! Leaving rows are dropped and the columns no row attends any more are
//! trimmed, so memory follows the rows that remain. Between such changes
//! the cache stays with the backend (each step's `present` is the next
//! one's past, no host copy); the rows that join between two steps are
//! stacked in one go.

use std::collections::VecDeque;

use ndarray::{concatenate, s, Array2, ArrayD, Axis};
use sha2::{Digest, Sha256};

use super::{stack_media, Generation, Padded, Pipeline, Request};
use crate::decoder::{KvCache, MediaKv, Step};
use crate::search::{self, Search};
use crate::{Error, Result};

/// A host KV cache: per layer, K and V `[batch, H, L, Dh]`.
type Layers = Vec<(ArrayD<f32>, ArrayD<f32>)>;

/// A request in the batch.
struct Row {
    id: u64,
    search: Box<dyn Search>,
    prompt_ids: Vec<u32>,
    n_media: i64,
    kv: MediaKv,
    /// Report each token's log-probability and this many alternatives.
    logprobs: Option<usize>,
}

/// A token's log-probability under the model (its raw logits'
/// log-softmax) and the most likely tokens with theirs, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// Token `t`'s entry in the log-probabilities `lp`, with the `k` most
    /// likely tokens (ties: the lower id first).
    pub fn of(lp: &[f32], t: u32, k: usize) -> TokenLogprob {
        let mut top: Vec<u32> = (0..lp.len() as u32).collect();
        let k = k.min(top.len());
        let order = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
        if k > 0 && k < top.len() {
            top.select_nth_unstable_by(k - 1, order);
        }
        top.truncate(k);
        top.sort_by(order);
        TokenLogprob {
            logprob: lp.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY),
            top: top.iter().map(|&i| (i, lp[i as usize])).collect(),
        }
    }
}

/// Prompt positions scored per decoder call by [`Pipeline::logprobs_of`].
const ECHO_CHUNK: usize = 64;

impl Pipeline {
    /// Each token's log-probability given the tokens before it (the first
    /// has none), with the `top` most likely alternatives: what OpenAI's
    /// `echo` + `logprobs` report for a prompt. `ids` are a prompt's
    /// tokens (its `<image>` markers matching `media`) and any
    /// continuation; they run through the decoder in chunks over the KV
    /// cache, so the logits held stay small however long the prompt.
    pub fn logprobs_of(
        &mut self,
        ids: &[u32],
        media: &[crate::model::Media],
        top: usize,
    ) -> Result<Vec<Option<TokenLogprob>>> {
        if ids.is_empty() {
            return Err(Error::Input("no tokens to score".into()));
        }
        let media_token = self.model.manifest.special_tokens.media;
        let markers = ids.iter().filter(|&&t| t == media_token).count();
        if markers != media.len() {
            return Err(Error::Input(format!(
                "the prompt has {markers} <image> marker(s) but {} media item(s) were given",
                media.len()
            )));
        }
        self.check_context(ids.len())?;
        let kv = self.media_kv(media)?;
        let Padded { step, kv } = self.pad_rows(&[ids], &[&kv])?;
        let mut cache = self.model.empty_cache(1);
        let mut out = vec![None];
        let n = ids.len();
        for s0 in (0..n).step_by(ECHO_CHUNK) {
            let s1 = (s0 + ECHO_CHUNK).min(n);
            let chunk = Step {
                input_ids: step.input_ids.slice(s![.., s0..s1]).to_owned(),
                attention_mask: step.attention_mask.slice(s![.., ..s1]).to_owned(),
                position_ids: step.position_ids.slice(s![.., s0..s1]).to_owned(),
                media_time: step.media_time.slice(s![.., s0..s1]).to_owned(),
                keep: s1 - s0,
            };
            let logits = self.model.decode(&chunk, &kv, &mut cache)?;
            for j in s0..s1 {
                // position j predicts token j + 1
                let Some(&next) = ids.get(j + 1) else { break };
                let row: Vec<f32> = logits
                    .index_axis(Axis(0), 0)
                    .index_axis(Axis(0), j - s0)
                    .iter()
                    .copied()
                    .collect();
                out.push(Some(TokenLogprob::of(
                    &search::log_softmax(&row),
                    next,
                    top,
                )));
            }
        }
        Ok(out)
    }
}

/// What one [`Pipeline::batch_step`] produced for a row.
#[derive(Clone, Debug, PartialEq)]
pub enum RowEvent {
    /// A new token and its text (and its log-probability, when the row
    /// asked for it: [`Batch::want_logprobs`]).
    Token {
        id: u64,
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The row finished (stop token, its token budget, or cancelled).
    Done { id: u64, generation: Generation },
}

/// Rows decoding together; see the module docs.
#[derive(Default)]
pub struct Batch {
    rows: Vec<Row>,
    /// `[rows, L]`: which cache positions each row attends.
    mask: Array2<i64>,
    /// KV cache `[rows, H, L, Dh]` per layer, held by the backend between
    /// steps while the rows do not change.
    cache: KvCache,
    /// The next-token logits of each row, `[rows, vocab]`.
    logits: Array2<f32>,
    /// Rows to drop at the next step (cancelled by their client).
    cancelled: Vec<u64>,
    /// The rows' media K/V stacked, until the rows change.
    kv: Option<MediaKv>,
    /// Rows prefilled since the last step, stacked under the batch at the
    /// next one.
    joining: Vec<Joining>,
    /// The tokens the rows picked, waiting for their decoder step.
    next: Option<Vec<u32>>,
}

/// Prefilled rows waiting to be stacked under the batch.
struct Joining {
    rows: Vec<Row>,
    layers: Layers,
    mask: Array2<i64>,
    logits: Array2<f32>,
}

/// A request about to join: its row, its prompt as one step, its media
/// K/V, and the KV cache of its first `from` tokens (its prefix).
struct Prefilled {
    row: Row,
    step: Step,
    kv: MediaKv,
    past: Layers,
    from: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.rows.len() + self.joining.iter().map(|j| j.rows.len()).sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The cache positions the batch holds (its longest row).
    pub fn positions(&self) -> usize {
        self.joining
            .iter()
            .map(|j| j.mask.ncols())
            .fold(self.mask.ncols(), usize::max)
    }
    pub fn ids(&self) -> Vec<u64> {
        let joining = self.joining.iter().flat_map(|j| &j.rows);
        self.rows.iter().chain(joining).map(|r| r.id).collect()
    }
    /// Row `id` reports each token's log-probability and its `top` most
    /// likely alternatives.
    pub fn want_logprobs(&mut self, id: u64, top: usize) {
        let joining = self.joining.iter_mut().flat_map(|j| &mut j.rows);
        if let Some(r) = self.rows.iter_mut().chain(joining).find(|r| r.id == id) {
            r.logprobs = Some(top);
        }
    }

    /// Marks a row to leave at the next step, its generation so far
    /// returned as done.
    pub fn cancel(&mut self, id: u64) {
        self.cancelled.push(id);
    }
}

/// Prompt prefixes' KV caches, kept across requests (least recently used
/// out first, within a byte bound): a prefix is the prompt up to and
/// including its last `<|endofchunk|>`, keyed by its tokens and the
/// content hashes of the media it shows.
pub struct PrefixCache {
    max_bytes: usize,
    bytes: usize,
    entries: VecDeque<(Vec<u8>, Layers, usize)>,
    pub hits: u64,
    pub misses: u64,
}

impl PrefixCache {
    pub fn new(max_bytes: usize) -> PrefixCache {
        PrefixCache {
            max_bytes,
            bytes: 0,
            entries: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    fn get(&mut self, key: &[u8]) -> Option<Layers> {
        let i = self.entries.iter().position(|e| e.0 == key)?;
        let e = self.entries.remove(i)?;
        let layers = e.1.clone();
        self.entries.push_back(e);
        Some(layers)
    }
    fn put(&mut self, key: Vec<u8>, layers: Layers) {
        let size: usize = layers.iter().map(|(k, v)| 4 * (k.len() + v.len())).sum();
        if size > self.max_bytes || self.entries.iter().any(|e| e.0 == key) {
            return;
        }
        while self.bytes + size > self.max_bytes {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= e.2,
                None => break,
            }
        }
        self.bytes += size;
        self.entries.push_back((key, layers, size));
    }
}

fn host_layers(cache: &mut KvCache) -> Result<Layers> {
    cache.to_host()?;
    Ok(cache.host_layers().unwrap_or(&[]).to_vec())
}

/// The rows of `parts` (each a cache `[rows, H, L, Dh]` per layer) stacked
/// into one cache, each left-padded with zeros to `len` positions.
fn stack_layers(parts: &[&Layers], len: usize) -> Result<Layers> {
    let rows: Vec<(&Layers, std::ops::Range<usize>)> = parts
        .iter()
        .map(|p| (*p, 0..p.first().map_or(0, |l| l.0.shape()[0])))
        .collect();
    gather_layers(&rows, len)
}

/// The cache of the rows `rows` names (`(cache, its rows)`, in order),
/// right-aligned into `len` positions: shorter ones left-padded with zeros,
/// longer ones losing their first positions (which no row attends). One
/// copy of what stays.
fn gather_layers(rows: &[(&Layers, std::ops::Range<usize>)], len: usize) -> Result<Layers> {
    let n_layers = rows.first().map_or(0, |p| p.0.len());
    if let Some(bad) = rows.iter().find(|p| p.0.len() != n_layers) {
        return Err(err(format!(
            "a joining row's KV cache has {} layers, the batch's {n_layers}",
            bad.0.len()
        )));
    }
    let mut out = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        // 0: the keys, 1: the values
        let side = |which: usize| -> Result<ArrayD<f32>> {
            let views: Vec<_> = rows
                .iter()
                .map(|(p, r)| {
                    let t = if which == 0 { &p[l].0 } else { &p[l].1 };
                    let sh = t.shape();
                    if sh.len() != 4 || r.end > sh[0] {
                        return Err(err(format!(
                            "a KV cache of shape {sh:?} has no rows {r:?} of [b, H, L, Dh]"
                        )));
                    }
                    Ok(t.slice(s![r.clone(), .., sh[2].saturating_sub(len).., ..])
                        .into_dyn())
                })
                .collect::<Result<_>>()?;
            super::stack_padded(&views, len, true)
        };
        out.push((side(0)?, side(1)?));
    }
    Ok(out)
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Input(e.to_string())
}

impl Pipeline {
    /// Prefills `req` and adds it to `batch` as row `id`: one request of
    /// [`Self::batch_join_many`]. Returns the prompt's length in tokens.
    pub fn batch_join(
        &mut self,
        batch: &mut Batch,
        id: u64,
        req: &Request,
        prefixes: Option<&mut PrefixCache>,
    ) -> Result<usize> {
        self.batch_join_many(batch, &[(id, req)], prefixes)
            .pop()
            .unwrap_or_else(|| Err(err("the request was not joined")))
    }

    /// Prefills `reqs` and adds them to `batch` (request `(id, r)` as row
    /// `id`). Greedy and sampling only: a beam search runs on its own
    /// ([`Pipeline::generate_stream`]). With `prefixes`, a prompt's prefix
    /// (up to its last `<|endofchunk|>`) comes from the cache when it is
    /// there, and goes into it when not (prefilled alone). The rest of the
    /// prompts run through the decoder together, those of one length in
    /// one call over their prefixes' caches stacked (left-padded); decoders
    /// that take several new tokens over a cache one row at a time
    /// ([`crate::Model::steps_rows_over_cache`]) run them one by one.
    /// Returns, per request, its prompt's length in tokens or why it
    /// cannot join (the others join all the same).
    pub fn batch_join_many(
        &mut self,
        batch: &mut Batch,
        reqs: &[(u64, &Request)],
        mut prefixes: Option<&mut PrefixCache>,
    ) -> Vec<Result<usize>> {
        let mut out: Vec<Option<Result<usize>>> = reqs.iter().map(|_| None).collect();
        let mut ready: Vec<(usize, Prefilled)> = Vec::new();
        for (i, (id, req)) in reqs.iter().enumerate() {
            match self.prefill_prefix(*id, req, prefixes.as_deref_mut()) {
                Ok(p) => ready.push((i, p)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        // groups: the prompts whose rest has one length
        let together = self.model.steps_rows_over_cache();
        let mut groups: Vec<Vec<(usize, Prefilled)>> = Vec::new();
        for (i, p) in ready {
            let rest = p.step.input_ids.ncols() - p.from;
            match groups
                .iter_mut()
                .find(|g| together && g[0].1.step.input_ids.ncols() - g[0].1.from == rest)
            {
                Some(g) => g.push((i, p)),
                None => groups.push(vec![(i, p)]),
            }
        }
        for g in groups {
            let idx: Vec<usize> = g.iter().map(|(i, _)| *i).collect();
            let rows: Vec<Prefilled> = g.into_iter().map(|(_, p)| p).collect();
            match self.prefill_rest(rows) {
                Ok((joining, lens)) => {
                    batch.joining.push(joining);
                    for (i, n) in idx.into_iter().zip(lens) {
                        out[i] = Some(Ok(n));
                    }
                }
                Err(e) if idx.len() == 1 => out[idx[0]] = Some(Err(e)),
                Err(e) => {
                    for i in idx {
                        out[i] = Some(Err(err(&e)));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(err("the request was not joined"))))
            .collect()
    }

    /// A request prepared to join, its prompt's prefix in `cache` (from the
    /// prefix cache, or prefilled alone) when there is one.
    fn prefill_prefix(
        &mut self,
        id: u64,
        req: &Request,
        prefixes: Option<&mut PrefixCache>,
    ) -> Result<Prefilled> {
        if req.options.num_beams > 1 {
            return Err(Error::Input(
                "beam search does not join a running batch; run it alone".into(),
            ));
        }
        let p = self.prepare(req)?;
        let eoc = self.model.manifest.special_tokens.end_of_chunk;
        let media_token = self.model.manifest.special_tokens.media;
        // the prefix: through the last end-of-chunk before the prompt's end
        let cut = p.ids[..p.ids.len() - 1]
            .iter()
            .rposition(|&t| t == eoc)
            .map(|i| i + 1)
            .unwrap_or(0);
        let mut cache = self.model.empty_cache(1);
        let Padded { step, kv } = self.pad_rows(&[&p.ids], &[&p.kv])?;
        let mut from = 0;
        if let (Some(pc), true) = (prefixes, cut > 0) {
            let n_prefix_media = p.ids[..cut].iter().filter(|&&t| t == media_token).count();
            let mut h = Sha256::new();
            for t in &p.ids[..cut] {
                h.update(t.to_le_bytes());
            }
            for m in &req.media[..n_prefix_media] {
                for f in m.frames() {
                    let bytes = crate::limits::read_media(f, &self.model.limits)?;
                    h.update(Sha256::digest(&bytes));
                }
            }
            let key = h.finalize().to_vec();
            match pc.get(&key) {
                Some(layers) => {
                    pc.hits += 1;
                    cache = KvCache::new(layers);
                }
                None => {
                    pc.misses += 1;
                    let prefix = Step {
                        input_ids: step.input_ids.slice(s![.., ..cut]).to_owned(),
                        attention_mask: step.attention_mask.slice(s![.., ..cut]).to_owned(),
                        position_ids: step.position_ids.slice(s![.., ..cut]).to_owned(),
                        media_time: step.media_time.slice(s![.., ..cut]).to_owned(),
                        keep: 1,
                    };
                    self.model.decode(&prefix, &kv, &mut cache)?;
                    pc.put(key, host_layers(&mut cache)?);
                }
            }
            from = cut;
        }
        cache.to_host()?;
        let row = Row {
            id,
            search: search::search(&p.opts, &p.ids, &p.stop),
            prompt_ids: p.ids,
            n_media: p.n_media,
            kv: p.kv,
            logprobs: None,
        };
        Ok(Prefilled {
            row,
            step,
            kv,
            past: cache.into_host_layers().unwrap_or_default(),
            from,
        })
    }

    /// Runs the rest of the prompts of `rows` (all of one length) through
    /// the decoder in one call, over their pasts left-padded to the
    /// longest; returns them as one joining part and their prompts'
    /// lengths.
    fn prefill_rest(&mut self, rows: Vec<Prefilled>) -> Result<(Joining, Vec<usize>)> {
        let b = rows.len();
        let first = rows.first().ok_or_else(|| err("no rows to prefill"))?;
        let rest = first.step.input_ids.ncols() - first.from;
        let past = rows.iter().map(|r| r.from).max().unwrap_or(0);
        let mut mask = Array2::<i64>::zeros((b, past + rest));
        let mut step = Step {
            input_ids: Array2::zeros((b, rest)),
            attention_mask: Array2::zeros((0, 0)),
            position_ids: Array2::zeros((b, rest)),
            media_time: Array2::zeros((b, rest)),
            keep: 1,
        };
        for (i, r) in rows.iter().enumerate() {
            let (from, s) = (r.from, &r.step);
            mask.slice_mut(s![i, past - from..])
                .assign(&s.attention_mask.row(0));
            step.input_ids
                .row_mut(i)
                .assign(&s.input_ids.slice(s![0, from..]));
            step.media_time
                .row_mut(i)
                .assign(&s.media_time.slice(s![0, from..]));
            let pos = crate::decoder::position_ids(mask.row(i).as_slice().unwrap_or(&[]));
            for j in 0..rest {
                step.position_ids[[i, j]] = pos[past + j];
            }
        }
        step.attention_mask = mask.clone();
        let mut cache = if b == 1 {
            KvCache::new(first.past.clone())
        } else {
            let pasts: Vec<&Layers> = rows.iter().map(|r| &r.past).collect();
            KvCache::new(stack_layers(&pasts, past)?)
        };
        let kvs: Vec<&MediaKv> = rows.iter().map(|r| &r.kv).collect();
        let kv = if b == 1 {
            first.kv.clone()
        } else {
            stack_media(&kvs)?
        };
        let vocab = self.model.manifest.model.decoder.vocab_size;
        let logits = self.model.decode(&step, &kv, &mut cache)?;
        let logits = logits.into_shape_with_order((b, vocab)).map_err(err)?;
        cache.to_host()?;
        let lens = rows.iter().map(|r| r.row.prompt_ids.len()).collect();
        Ok((
            Joining {
                rows: rows.into_iter().map(|r| r.row).collect(),
                layers: cache.into_host_layers().unwrap_or_default(),
                mask,
                logits,
            },
            lens,
        ))
    }

    /// Puts the joining rows under the batch's: their rows, masks (padded
    /// to the longest) and logits. Returns the caches of the batch's rows
    /// in order (its own first, then each joining part's), for the caller
    /// to stack once it knows which rows stay; none when none joined (the
    /// batch keeps its cache).
    fn merge_joining(&mut self, batch: &mut Batch) -> Result<Vec<Layers>> {
        if batch.joining.is_empty() {
            return Ok(Vec::new());
        }
        let len = batch.positions();
        let joining = std::mem::take(&mut batch.joining);
        let mut masks = Vec::with_capacity(joining.len() + 1);
        let mut logits = Vec::with_capacity(joining.len() + 1);
        let mut parts: Vec<Layers> = Vec::with_capacity(joining.len() + 1);
        if !batch.rows.is_empty() {
            batch.cache.to_host()?;
            let cache = std::mem::take(&mut batch.cache);
            parts.push(cache.into_host_layers().unwrap_or_default());
            masks.push(std::mem::take(&mut batch.mask));
            logits.push(std::mem::take(&mut batch.logits));
        }
        for j in joining {
            batch.rows.extend(j.rows);
            parts.push(j.layers);
            masks.push(j.mask);
            logits.push(j.logits);
        }
        let padded: Vec<Array2<i64>> = masks
            .iter()
            .map(|m| {
                let z = Array2::zeros((m.nrows(), len - m.ncols()));
                concatenate(Axis(1), &[z.view(), m.view()]).map_err(err)
            })
            .collect::<Result<_>>()?;
        let views: Vec<_> = padded.iter().map(|m| m.view()).collect();
        batch.mask = concatenate(Axis(0), &views).map_err(err)?;
        let views: Vec<_> = logits.iter().map(|l| l.view()).collect();
        batch.logits = concatenate(Axis(0), &views).map_err(err)?;
        batch.kv = None;
        Ok(parts)
    }

    /// One step of the batch: [`Self::batch_pick`], then
    /// [`Self::batch_advance`]. Returns the rows' tokens and the finished
    /// rows.
    pub fn batch_step(&mut self, batch: &mut Batch) -> Result<Vec<RowEvent>> {
        let events = self.batch_pick(batch)?;
        self.batch_advance(batch)?;
        Ok(events)
    }

    /// The first half of a step: the joining rows are stacked under the
    /// batch, every row picks its next token from its logits, and finished
    /// and cancelled rows leave. Returns the tokens and the finished rows
    /// (a server streams them now, before the decoder runs). A pick whose
    /// decoder step has not run yet runs it first.
    pub fn batch_pick(&mut self, batch: &mut Batch) -> Result<Vec<RowEvent>> {
        self.batch_advance(batch)?;
        let mut parts = self.merge_joining(batch)?;
        let mut events = Vec::new();
        let mut next = Vec::with_capacity(batch.rows.len());
        let mut keep = Vec::with_capacity(batch.rows.len());
        for (i, row) in batch.rows.iter_mut().enumerate() {
            if batch.cancelled.contains(&row.id) {
                keep.push(false);
                next.push(0);
                continue;
            }
            let logits = batch.logits.slice(s![i..i + 1, ..]);
            let mut toks = Vec::new();
            let d = row
                .search
                .step(logits, &mut |t| {
                    toks.push(t);
                    true
                })
                .map_err(Error::Input)?;
            let lp = row
                .logprobs
                .map(|_| search::log_softmax(&logits.iter().copied().collect::<Vec<f32>>()));
            for t in toks {
                events.push(RowEvent::Token {
                    id: row.id,
                    token: t,
                    text: self.tokenizer.decode(&[t])?,
                    logprob: lp
                        .as_ref()
                        .zip(row.logprobs)
                        .map(|(lp, k)| TokenLogprob::of(lp, t, k)),
                });
            }
            next.push(d.tokens.first().copied().unwrap_or(0));
            keep.push(!d.done);
        }
        batch.cancelled.clear();
        // the rows that leave
        let mut stay = Vec::new();
        let rows = std::mem::take(&mut batch.rows);
        for (i, (row, k)) in rows.into_iter().zip(&keep).enumerate() {
            if *k {
                stay.push(i);
                batch.rows.push(row);
            } else {
                let sequences = self.sequences(row.search.as_ref())?;
                events.push(RowEvent::Done {
                    id: row.id,
                    generation: Generation {
                        prompt_ids: row.prompt_ids,
                        sequences,
                    },
                });
            }
        }
        if stay.is_empty() {
            *batch = Batch::default();
            return Ok(events);
        }
        if !parts.is_empty() || stay.len() < keep.len() {
            // the rows that stay, stacked from where they are in one copy,
            // without the columns none of them attends
            batch.kv = None;
            if parts.is_empty() {
                batch.cache.to_host()?;
                parts.push(
                    std::mem::take(&mut batch.cache)
                        .into_host_layers()
                        .unwrap_or_default(),
                );
            }
            let mask = batch.mask.select(Axis(0), &stay);
            let first = (0..mask.ncols())
                .find(|&c| mask.column(c).iter().any(|&m| m != 0))
                .unwrap_or(0);
            batch.mask = mask.slice(s![.., first..]).to_owned();
            // batch row i: part p's row i - (the rows of the parts before p)
            let mut at = Vec::with_capacity(keep.len());
            for (p, layers) in parts.iter().enumerate() {
                let n = layers.first().map_or(0, |l| l.0.shape()[0]);
                at.extend((0..n).map(|j| (p, j)));
            }
            if at.len() != keep.len() {
                return Err(err(format!(
                    "the batch's KV cache holds {} rows, not {}",
                    at.len(),
                    keep.len()
                )));
            }
            let rows: Vec<(&Layers, std::ops::Range<usize>)> = stay
                .iter()
                .map(|&i| (&parts[at[i].0], at[i].1..at[i].1 + 1))
                .collect();
            batch.cache = KvCache::new(gather_layers(&rows, batch.mask.ncols())?);
        }
        batch.next = Some(stay.iter().map(|&i| next[i]).collect());
        Ok(events)
    }

    /// The second half of a step: the rows that picked a token run one
    /// decoder step together, which gives their next logits. Nothing to do
    /// when no pick is waiting.
    pub fn batch_advance(&mut self, batch: &mut Batch) -> Result<()> {
        let Some(next) = batch.next.take() else {
            return Ok(());
        };
        let b = batch.rows.len();
        if next.len() != b {
            return Err(err(format!("{} tokens picked for {b} rows", next.len())));
        }
        batch.mask =
            concatenate(Axis(1), &[batch.mask.view(), Array2::ones((b, 1)).view()]).map_err(err)?;
        if batch.kv.is_none() {
            let kvs: Vec<&MediaKv> = batch.rows.iter().map(|r| &r.kv).collect();
            batch.kv = Some(stack_media(&kvs)?);
        }
        let kv = batch.kv.as_ref().ok_or_else(|| err("no media K/V"))?;
        let step = Step {
            input_ids: Array2::from_shape_fn((b, 1), |(i, _)| next[i] as i64),
            attention_mask: batch.mask.clone(),
            position_ids: Array2::from_shape_fn((b, 1), |(i, _)| {
                batch.mask.row(i).iter().sum::<i64>() - 1
            }),
            media_time: Array2::from_shape_fn((b, 1), |(i, _)| batch.rows[i].n_media),
            keep: 1,
        };
        let logits = self.model.decode(&step, kv, &mut batch.cache)?;
        let vocab = logits.shape()[2];
        batch.logits = logits.into_shape_with_order((b, vocab)).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[b, 1, l, 1]` holding `base + 10 * row + position`.
    fn cache(b: usize, l: usize, base: f32) -> ArrayD<f32> {
        ArrayD::from_shape_fn(ndarray::IxDyn(&[b, 1, l, 1]), |ix| {
            base + 10.0 * ix[0] as f32 + ix[2] as f32
        })
    }

    #[test]
    fn rows_are_gathered_right_aligned_in_one_cache() {
        // a batch of two rows over 3 positions and a joining row over 1
        let batch: Layers = vec![(cache(2, 3, 0.0), cache(2, 3, 100.0))];
        let joining: Layers = vec![(cache(1, 1, 50.0), cache(1, 1, 150.0))];
        // row 1 of the batch and the joining row stay, in 2 positions
        let got = gather_layers(&[(&batch, 1..2), (&joining, 0..1)], 2).unwrap();
        let k: Vec<f32> = got[0].0.iter().copied().collect();
        let v: Vec<f32> = got[0].1.iter().copied().collect();
        assert_eq!(got[0].0.shape(), &[2, 1, 2, 1]);
        // the batch row loses its first position; the joining one is padded
        assert_eq!(k, [11.0, 12.0, 0.0, 50.0]);
        assert_eq!(v, [111.0, 112.0, 0.0, 150.0]);
        // all of both, padded to the longest
        let got = stack_layers(&[&batch, &joining], 3).unwrap();
        let k: Vec<f32> = got[0].0.iter().copied().collect();
        assert_eq!(k, [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 0.0, 0.0, 50.0]);
    }

    #[test]
    fn caches_that_do_not_fit_are_an_error() {
        let batch: Layers = vec![(cache(2, 3, 0.0), cache(2, 3, 0.0))];
        let deeper: Layers = vec![batch[0].clone(), batch[0].clone()];
        let e = stack_layers(&[&batch, &deeper], 3).unwrap_err().to_string();
        assert!(e.contains("2 layers, the batch's 1"), "{e}");
        let e = gather_layers(&[(&batch, 1..3)], 3).unwrap_err().to_string();
        assert!(e.contains("no rows 1..3"), "{e}");
        let flat: Layers = vec![(ArrayD::zeros(ndarray::IxDyn(&[2, 3])), cache(2, 3, 0.0))];
        let e = stack_layers(&[&flat], 3).unwrap_err().to_string();
        assert!(e.contains("[2, 3]"), "{e}");
        let wide: Layers = vec![(
            ArrayD::zeros(ndarray::IxDyn(&[1, 2, 3, 1])),
            cache(1, 3, 0.0),
        )];
        let e = stack_layers(&[&batch, &wide], 3).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
