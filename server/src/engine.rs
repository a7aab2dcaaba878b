//! The engine thread: it owns the [`Pipeline`] and runs the scheduler.
//! Handlers send it [`Job`]s over a bounded channel (full: the request is
//! refused at once); each job carries its own channel for what it
//! produces. Between decode steps the scheduler admits waiting jobs (their
//! prefill runs, then they join the batch) and retires finished or
//! cancelled rows, so a long generation never holds a short one back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use flamingo_runtime::pipeline::continuous::{Batch, PrefixCache, RowEvent};
use flamingo_runtime::{Error, Pipeline, Request};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What a job produces, in order: deltas of each choice, then each
/// choice's end; or one error.
#[derive(Debug)]
pub enum Out {
    Delta {
        index: usize,
        text: String,
        /// With logprobs asked for: the token's entry (OpenAI's chat
        /// format, `{"token", "logprob", "bytes", "top_logprobs"}`).
        logprob: Option<Value>,
    },
    Done {
        index: usize,
        text: String,
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error {
        message: String,
        /// The request was at fault (400), not the server (500).
        bad_request: bool,
    },
}

/// A request for the engine: `n` choices (sampling seeds `seed + k`).
pub struct Job {
    pub request: Request,
    pub n: usize,
    /// Stop strings: generation ends before the first of them.
    pub stop: Vec<String>,
    /// Each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// The prompt comes back before the completion (its tokens' logprobs
    /// with them, the first without): close-ended scoring.
    pub echo: bool,
    pub tx: mpsc::UnboundedSender<Out>,
    /// Media written for this request, removed when it ends.
    pub files: Vec<PathBuf>,
    pub arrived: Instant,
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_batch: usize,
    pub prefix_cache_bytes: usize,
}

/// A job's shared state across its choices.
struct Shared {
    tx: mpsc::UnboundedSender<Out>,
    files: Vec<PathBuf>,
    open: usize,
    arrived: Instant,
    stop: Vec<String>,
    failed: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A row of the batch: one choice of a job.
struct Live {
    job: Arc<std::sync::Mutex<Shared>>,
    index: usize,
    ids: Vec<u32>,
    text: String,
    stopped: bool,
    last: Option<Instant>,
    prompt_tokens: usize,
}

/// Errors of what the request gave (its prompt, its media), not of the
/// server.
fn is_request_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Input(_) | Error::BadImage { .. } | Error::Io { .. }
    )
}

fn send(job: &std::sync::Mutex<Shared>, out: Out) -> bool {
    job.lock().map(|j| j.tx.send(out).is_ok()).unwrap_or(false)
}

/// Runs until every sender of `rx` is gone.
pub fn run(mut p: Pipeline, mut rx: mpsc::Receiver<Job>, cfg: EngineConfig, metrics: Arc<Metrics>) {
    let mut batch = Batch::default();
    let mut prefixes = PrefixCache::new(cfg.prefix_cache_bytes);
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut next_id = 0u64;
    let mut worked = false;
    let stop_tokens = p.model.manifest.special_tokens.end_of_chunk;
    loop {
        // admit: wait when idle, else take what is waiting, up to the batch size
        let mut jobs = Vec::new();
        if batch.is_empty() {
            if std::mem::take(&mut worked) {
                release_free_memory();
            }
            match rx.blocking_recv() {
                Some(j) => jobs.push(j),
                None => return,
            }
        }
        while batch.len() + jobs.iter().map(|j| j.n).sum::<usize>() < cfg.max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        metrics
            .queue_depth
            .store(rx.len() as u64, Ordering::Relaxed);
        // what joins the batch is prefilled together
        let joining: Vec<Joining> = jobs
            .into_iter()
            .filter_map(|job| admit(&mut p, job, &metrics))
            .collect();
        join(
            &mut p,
            &mut batch,
            &mut prefixes,
            &mut live,
            &mut next_id,
            joining,
            &metrics,
        );
        // rows whose client went away leave
        for (id, row) in &live {
            let closed = row.job.lock().map(|j| j.tx.is_closed()).unwrap_or(true);
            if closed && !row.stopped {
                batch.cancel(*id);
            }
        }
        metrics
            .batch_size
            .store(batch.len() as u64, Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        worked = true;
        // the rows' tokens go out before the decoder computes the next ones
        let events = match p.batch_pick(&mut batch) {
            Ok(e) => e,
            Err(e) => {
                fail_all(&mut live, &mut batch, &e, &metrics);
                continue;
            }
        };
        for e in events {
            match e {
                RowEvent::Token {
                    id, token, logprob, ..
                } => {
                    let Some(row) = live.get_mut(&id) else {
                        continue;
                    };
                    if row.stopped {
                        continue;
                    }
                    let now = Instant::now();
                    match row.last {
                        None => {
                            let arrived = row.job.lock().map(|j| j.arrived).unwrap_or(now);
                            metrics.time_to_first_token((now - arrived).as_secs_f64());
                        }
                        Some(t) => metrics.inter_token((now - t).as_secs_f64()),
                    }
                    row.last = Some(now);
                    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    row.ids.push(token);
                    let text = p.tokenizer.decode(&row.ids).unwrap_or_default();
                    let stops = row.job.lock().map(|j| j.stop.clone()).unwrap_or_default();
                    let (text, hit) = match stops.iter().filter_map(|s| text.find(s.as_str())).min()
                    {
                        Some(at) => (text[..at].to_string(), true),
                        None => (text, false),
                    };
                    let entry = logprob.map(|lp| {
                        let tok = |t: u32| p.tokenizer.decode(&[t]).unwrap_or_default();
                        let item = |t: u32, l: f32| {
                            let s = tok(t);
                            json!({"token": s, "logprob": l, "bytes": s.as_bytes()})
                        };
                        let mut e = item(token, lp.logprob);
                        e["top_logprobs"] = lp.top.iter().map(|&(t, l)| item(t, l)).collect();
                        e
                    });
                    if let Some(delta) = text.strip_prefix(row.text.as_str()) {
                        // with logprobs every token is reported, even one
                        // that adds no whole character yet
                        if (!delta.is_empty() || entry.is_some())
                            && !send(
                                &row.job,
                                Out::Delta {
                                    index: row.index,
                                    text: delta.to_string(),
                                    logprob: entry,
                                },
                            )
                        {
                            batch.cancel(id);
                        }
                    }
                    if text.starts_with(&row.text) {
                        row.text = text;
                    }
                    if hit {
                        row.stopped = true;
                        batch.cancel(id);
                    }
                }
                RowEvent::Done { id, generation } => {
                    let Some(row) = live.remove(&id) else {
                        continue;
                    };
                    let ids = generation
                        .sequences
                        .first()
                        .map(|s| s.generated_ids.clone())
                        .unwrap_or_default();
                    let finish_reason = if row.stopped || ids.last() == Some(&stop_tokens) {
                        "stop"
                    } else {
                        "length"
                    };
                    let done = Out::Done {
                        index: row.index,
                        text: row.text.clone(),
                        finish_reason,
                        prompt_tokens: row.prompt_tokens,
                        completion_tokens: row.ids.len(),
                    };
                    let delivered = send(&row.job, done);
                    let finished = match row.job.lock() {
                        Ok(mut j) => {
                            j.open -= 1;
                            j.open == 0 && !j.failed
                        }
                        Err(_) => false,
                    };
                    if finished {
                        let counter = if delivered {
                            &metrics.requests_ok
                        } else {
                            &metrics.requests_cancelled
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if let Err(e) = p.batch_advance(&mut batch) {
            fail_all(&mut live, &mut batch, &e, &metrics);
        }
        metrics
            .batch_size
            .store(batch.len() as u64, Ordering::Relaxed);
        prefixes_to_metrics(&prefixes, &metrics);
        media_to_metrics(&p, &metrics);
    }
}

/// The decoder failed: every live request gets the error, the batch is
/// dropped.
fn fail_all(live: &mut HashMap<u64, Live>, batch: &mut Batch, e: &Error, metrics: &Metrics) {
    let message = format!("the decoder failed: {e}");
    for (_, row) in live.drain() {
        fail(&row.job, &message, false, metrics);
    }
    *batch = Batch::default();
}

/// Idle: hands the heap's free pages back to the system, so that the
/// memory a burst of rows needed does not stay resident (glibc keeps freed
/// memory in its arenas).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's allocator up for a long-running server, unless the
/// environment tunes it (`MALLOC_*` or `GLIBC_TUNABLES`): two heap arenas,
/// blocks below 32 MiB from the heap, and the free top of a heap handed
/// back once it passes 1 MiB. By default glibc raises its trim threshold
/// after large frees (up to 64 MiB), and [`release_free_memory`] cannot
/// trim the top of the arenas other threads use, so what stayed resident
/// after the same load varied by up to 15% with the peak the load's
/// interleaving reached, though the memory in use did not change. (Mapping
/// blocks of 1 MiB or more on their own instead cost 17% of the
/// throughput.) Call it before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES"
        });
        if !tuned {
            // SAFETY: mallopt only sets allocator parameters; called before
            // the process starts its threads.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn prefixes_to_metrics(c: &PrefixCache, m: &Metrics) {
    m.prefix_cache_hits.store(c.hits, Ordering::Relaxed);
    m.prefix_cache_misses.store(c.misses, Ordering::Relaxed);
    m.prefix_cache_bytes
        .store(c.bytes() as u64, Ordering::Relaxed);
}

fn media_to_metrics(p: &Pipeline, m: &Metrics) {
    let s = p.media_cache_stats();
    m.media_cache_hits.store(s.hits, Ordering::Relaxed);
    m.media_cache_misses.store(s.misses, Ordering::Relaxed);
    m.media_cache_bytes.store(s.bytes as u64, Ordering::Relaxed);
}

fn fail(job: &std::sync::Mutex<Shared>, message: &str, bad_request: bool, m: &Metrics) {
    if let Ok(mut j) = job.lock() {
        if !j.failed {
            j.failed = true;
            let counter = if bad_request {
                &m.requests_bad
            } else {
                &m.requests_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = j.tx.send(Out::Error {
                message: message.to_string(),
                bad_request,
            });
        }
    }
}

/// An echo request: the prompt and its completion (none for 0 tokens),
/// and with `logprobs` every token's entry (the first one's logprob null).
type Echoed = (String, Vec<Value>, usize, usize, &'static str);

fn echo(
    p: &mut Pipeline,
    req: &Request,
    logprobs: Option<usize>,
) -> flamingo_runtime::Result<Echoed> {
    let prompt_ids = p.prompt_ids(&req.prompt, req.media.len())?;
    let (gen_ids, gen_text) = if req.options.max_new_tokens > 0 {
        let g = p.generate(req)?;
        let s = g.sequences.into_iter().next();
        s.map(|s| (s.generated_ids, s.text)).unwrap_or_default()
    } else {
        (Vec::new(), String::new())
    };
    let eoc = p.model.manifest.special_tokens.end_of_chunk;
    let finish = if gen_ids.len() < req.options.max_new_tokens || gen_ids.last() == Some(&eoc) {
        "stop"
    } else {
        "length"
    };
    let mut entries = Vec::new();
    if let Some(k) = logprobs {
        let ids = [prompt_ids.clone(), gen_ids.clone()].concat();
        let lps = p.logprobs_of(&ids, &req.media, k)?;
        let tok = |t: u32| p.tokenizer.decode(&[t]).unwrap_or_default();
        for (&t, lp) in ids.iter().zip(lps) {
            let s = tok(t);
            let mut e =
                json!({"token": s, "logprob": null, "bytes": s.as_bytes(), "top_logprobs": []});
            if let Some(lp) = lp {
                e["logprob"] = json!(lp.logprob);
                e["top_logprobs"] = lp
                    .top
                    .iter()
                    .map(|&(a, l)| {
                        let s = tok(a);
                        json!({"token": s, "logprob": l, "bytes": s.as_bytes()})
                    })
                    .collect();
            }
            entries.push(e);
        }
    }
    let n = gen_ids.len();
    Ok((
        format!("{}{gen_text}", req.prompt),
        entries,
        prompt_ids.len(),
        n,
        finish,
    ))
}

/// A job whose choices join the batch.
struct Joining {
    shared: Arc<std::sync::Mutex<Shared>>,
    request: Request,
    n: usize,
    logprobs: Option<usize>,
}

/// Runs a job that does not join the batch (scoring, beam search) between
/// the batch's steps; returns the others, to [`join`].
fn admit(p: &mut Pipeline, job: Job, metrics: &Metrics) -> Option<Joining> {
    let shared = Arc::new(std::sync::Mutex::new(Shared {
        tx: job.tx,
        files: job.files,
        open: job.n,
        arrived: job.arrived,
        stop: job.stop,
        failed: false,
    }));
    if job.echo {
        // scoring: run alone, between the batch's steps
        match echo(p, &job.request, job.logprobs) {
            Ok((text, entries, prompt_tokens, completion_tokens, finish_reason)) => {
                metrics
                    .prompt_tokens
                    .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                metrics
                    .generated_tokens
                    .fetch_add(completion_tokens as u64, Ordering::Relaxed);
                for e in entries {
                    send(
                        &shared,
                        Out::Delta {
                            index: 0,
                            text: String::new(),
                            logprob: Some(e),
                        },
                    );
                }
                send(
                    &shared,
                    Out::Done {
                        index: 0,
                        text,
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                    },
                );
                metrics.requests_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(&shared, &e.to_string(), is_request_error(&e), metrics),
        }
        media_to_metrics(p, metrics);
        return None;
    }
    if job.request.options.num_beams > 1 {
        // beam search runs alone, between the batch's steps
        let r = p.generate(&job.request);
        media_to_metrics(p, metrics);
        match r {
            Ok(g) => {
                let prompt_tokens = g.prompt_ids.len();
                metrics
                    .prompt_tokens
                    .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                for (index, s) in g.sequences.iter().take(job.n).enumerate() {
                    let stops = shared.lock().map(|j| j.stop.clone()).unwrap_or_default();
                    let (text, hit) =
                        match stops.iter().filter_map(|x| s.text.find(x.as_str())).min() {
                            Some(at) => (s.text[..at].to_string(), true),
                            None => (s.text.clone(), false),
                        };
                    metrics
                        .generated_tokens
                        .fetch_add(s.generated_ids.len() as u64, Ordering::Relaxed);
                    send(
                        &shared,
                        Out::Delta {
                            index,
                            text: text.clone(),
                            logprob: None,
                        },
                    );
                    let eoc = p.model.manifest.special_tokens.end_of_chunk;
                    send(
                        &shared,
                        Out::Done {
                            index,
                            text,
                            finish_reason: if hit || s.generated_ids.last() == Some(&eoc) {
                                "stop"
                            } else {
                                "length"
                            },
                            prompt_tokens,
                            completion_tokens: s.generated_ids.len(),
                        },
                    );
                }
                metrics.requests_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(&shared, &e.to_string(), is_request_error(&e), metrics),
        }
        return None;
    }
    Some(Joining {
        shared,
        request: job.request,
        n: job.n,
        logprobs: job.logprobs,
    })
}

/// Prefills the choices of `jobs` together ([`Pipeline::batch_join_many`])
/// and adds them to the batch; a job one of whose choices cannot join
/// fails, its other choices leave at the next step.
fn join(
    p: &mut Pipeline,
    batch: &mut Batch,
    prefixes: &mut PrefixCache,
    live: &mut HashMap<u64, Live>,
    next_id: &mut u64,
    jobs: Vec<Joining>,
    metrics: &Metrics,
) {
    if jobs.is_empty() {
        return;
    }
    // (job, choice index, row id, request)
    let mut choices = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for index in 0..job.n {
            let mut req = job.request.clone();
            req.options.seed = req.options.seed.wrapping_add(index as u64);
            choices.push((j, index, *next_id, req));
            *next_id += 1;
        }
    }
    let reqs: Vec<(u64, &Request)> = choices.iter().map(|(_, _, id, r)| (*id, r)).collect();
    let results = p.batch_join_many(batch, &reqs, Some(prefixes));
    let mut failed: Vec<Option<Error>> = jobs.iter().map(|_| None).collect();
    for ((j, index, id, _), r) in choices.iter().zip(results) {
        let job = &jobs[*j];
        match r {
            Ok(prompt_tokens) => {
                if let Some(k) = job.logprobs {
                    batch.want_logprobs(*id, k);
                }
                metrics
                    .prompt_tokens
                    .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                live.insert(
                    *id,
                    Live {
                        job: job.shared.clone(),
                        index: *index,
                        ids: Vec::new(),
                        text: String::new(),
                        stopped: false,
                        last: None,
                        prompt_tokens,
                    },
                );
            }
            Err(e) => {
                failed[*j].get_or_insert(e);
            }
        }
    }
    for (job, e) in jobs.iter().zip(failed) {
        let Some(e) = e else { continue };
        // the choices that joined leave with it
        for (rid, row) in live.iter() {
            if Arc::ptr_eq(&row.job, &job.shared) {
                batch.cancel(*rid);
            }
        }
        fail(&job.shared, &e.to_string(), is_request_error(&e), metrics);
    }
    media_to_metrics(p, metrics);
}
