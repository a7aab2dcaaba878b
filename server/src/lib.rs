//! `flamingo serve`: an OpenAI-compatible HTTP server over the runtime.
//!
//! - `POST /v1/chat/completions`: messages with `text`, `image_url`
//!   (`data:` URLs; `file://` under `--allow-local-media`) and `video`
//!   parts, the few-shot prompt being their interleaving; streaming (SSE,
//!   `data: [DONE]`), `n`, `stop`, `seed`, `temperature`, `top_p`, and the
//!   Flamingo extension `num_beams`.
//! - `POST /v1/completions`: a raw prompt with `<image>` markers and an
//!   `images` list.
//! - `GET /v1/models`, `/health`, `/ready`, `/metrics` (Prometheus).
//!
//! One engine thread owns the [`Pipeline`] ([`engine`]); handlers reach it
//! over a bounded channel, so a full queue is refused at once (429).

pub mod api;
pub mod engine;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flamingo_runtime::{Pipeline, Request};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::engine::{EngineConfig, Job, Out};
use crate::metrics::Metrics;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The name `/v1/models` lists and requests may give as `model`.
    pub model_name: String,
    /// Rows decoding together at most.
    pub max_batch: usize,
    /// Requests waiting to join the batch at most; more are refused (429).
    pub max_waiting: usize,
    /// The most new tokens a request may ask for.
    pub max_tokens: usize,
    /// New tokens when a request does not say.
    pub default_tokens: usize,
    /// `file://` media allowed under this directory.
    pub allow_local_media: Option<PathBuf>,
    /// Images and videos per request at most (and never more than the
    /// runtime's `--max-media`).
    pub max_images: usize,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    pub prefix_cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model_name: "flamingo".into(),
            max_batch: 8,
            max_waiting: 64,
            max_tokens: 512,
            default_tokens: 64,
            allow_local_media: None,
            max_images: 16,
            max_body_bytes: 64 << 20,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

struct AppState {
    cfg: Config,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    scratch: tempfile::TempDir,
    next: AtomicU64,
    max_media: usize,
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message.into(), "type": kind, "code": code}})),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "bad_request",
        message,
    )
}

/// Serves `pipeline` on `listener` until the process ends.
pub async fn serve(
    pipeline: Pipeline,
    cfg: Config,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = router(pipeline, cfg)?;
    axum::serve(listener, app).await
}

/// The routes, with the engine thread started over `pipeline`.
pub fn router(pipeline: Pipeline, cfg: Config) -> std::io::Result<Router> {
    let (tx, rx) = mpsc::channel(cfg.max_waiting.max(1));
    let metrics = Arc::new(Metrics::default());
    let max_media = pipeline.model.limits.max_media.min(cfg.max_images.max(1));
    let engine_cfg = EngineConfig {
        max_batch: cfg.max_batch.max(1),
        prefix_cache_bytes: cfg.prefix_cache_bytes,
    };
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("flamingo-engine".into())
        .spawn(move || engine::run(pipeline, rx, engine_cfg, m))?;
    let state = Arc::new(AppState {
        max_media,
        jobs: tx,
        metrics,
        ready: AtomicBool::new(true),
        scratch: tempfile::Builder::new()
            .prefix("flamingo-serve-")
            .tempdir()?,
        next: AtomicU64::new(0),
        cfg: cfg.clone(),
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state))
}

async fn ready(State(s): State<Shared>) -> Response {
    if s.ready.load(Ordering::Relaxed) && !s.jobs.is_closed() {
        "ready".into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "not_ready",
            "the model is not loaded",
        )
    }
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": s.cfg.model_name, "object": "model", "created": now(), "owned_by": "flamingo"}
    ]}))
}

fn body_of(body: Body) -> Result<Value, Box<Response>> {
    match body {
        Ok(Json(v)) if v.is_object() => Ok(v),
        Ok(_) => Err(Box::new(bad("the body must be a JSON object"))),
        Err(e) => Err(Box::new(match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                // the rest of the body is never read: the connection ends
                // here, and says so, so that no client reuses it
                let mut r = error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "body_too_large",
                    e.body_text(),
                );
                r.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
                r
            }
            _ => bad(e.body_text()),
        })),
    }
}

fn check_model(s: &AppState, body: &Value) -> Result<(), Box<Response>> {
    match body.get("model").and_then(Value::as_str) {
        Some(m) if m != s.cfg.model_name => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "model {m:?} is not served here (this server serves {:?})",
                s.cfg.model_name
            ),
        ))),
        _ => Ok(()),
    }
}

/// The kind of response a job's outputs become.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

type Body = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

async fn chat(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Kind::Chat).await
}

async fn completions(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Kind::Completion).await
}

async fn handle(s: Shared, body: Body, kind: Kind) -> Response {
    match body_of(body) {
        Ok(b) => run(s, b, kind).await,
        Err(r) => *r,
    }
}

async fn run(s: Shared, body: Value, kind: Kind) -> Response {
    let arrived = Instant::now();
    if let Err(r) = check_model(&s, &body) {
        s.metrics.requests_bad.fetch_add(1, Ordering::Relaxed);
        return *r;
    }
    let n = s.next.fetch_add(1, Ordering::Relaxed);
    let policy = api::MediaPolicy {
        local: s.cfg.allow_local_media.as_deref(),
        scratch: s.scratch.path(),
        stem: format!("r{n}"),
        max_media: s.max_media,
    };
    let built = (|| -> Result<(String, api::Collected, api::Sampling), String> {
        let sampling = api::sampling(&body, s.cfg.max_tokens, s.cfg.default_tokens)?;
        if sampling.echo && kind == Kind::Chat {
            return Err("`echo` is a field of /v1/completions".into());
        }
        let (prompt, media) = match kind {
            Kind::Chat => api::chat_prompt(body.get("messages").unwrap_or(&Value::Null), &policy)?,
            Kind::Completion => {
                let prompt = match body.get("prompt") {
                    Some(Value::String(p)) => p.clone(),
                    Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                        a[0].as_str().unwrap_or_default().to_string()
                    }
                    _ => return Err("`prompt` must be a string".into()),
                };
                (prompt, api::completion_media(body.get("images"), &policy)?)
            }
        };
        Ok((prompt, media, sampling))
    })();
    let (prompt, mut media, sampling) = match built {
        Ok(b) => b,
        Err(e) => {
            s.metrics.requests_bad.fetch_add(1, Ordering::Relaxed);
            return bad(e);
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let choices = sampling.n;
    let labels = std::mem::take(&mut media.labels);
    let job = Job {
        request: Request {
            prompt,
            media: std::mem::take(&mut media.media),
            options: sampling.options,
        },
        n: choices,
        stop: sampling.stop,
        logprobs: sampling.logprobs,
        echo: sampling.echo,
        tx,
        files: media.take_files(),
        arrived,
    };
    if let Err(e) = s.jobs.try_send(job) {
        s.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
        let (job, full) = match e {
            mpsc::error::TrySendError::Full(j) => (j, true),
            mpsc::error::TrySendError::Closed(j) => (j, false),
        };
        // the job's files go with it
        for f in &job.files {
            let _ = std::fs::remove_file(f);
        }
        return if full {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "server_busy",
                "queue_full",
                format!(
                    "{} requests are waiting (--max-waiting); retry later",
                    s.cfg.max_waiting
                ),
            )
        } else {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "engine_gone",
                "the engine has stopped; the server must be restarted",
            )
        };
    }
    let id = format!(
        "{}-{n}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }
    );
    if sampling.stream {
        stream(s, rx, kind, id, choices, labels).await
    } else {
        collect(s, rx, kind, id, choices, labels).await
    }
}

/// Whether the choices carry log-probabilities.
fn has_logprobs(entries: &[Vec<Value>]) -> bool {
    entries.iter().any(|e| !e.is_empty())
}

/// Chat's `logprobs`: `{"content": [{"token", "logprob", "bytes",
/// "top_logprobs"}]}`.
fn chat_logprobs(entries: Vec<Value>) -> Value {
    json!({"content": entries, "refusal": null})
}

/// The completions API's `logprobs`: `{"tokens", "token_logprobs",
/// "top_logprobs": [{token: logprob}], "text_offset"}`.
fn legacy_logprobs(entries: &[Value]) -> Value {
    let mut offset = 0;
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for e in entries {
        let t = e["token"].as_str().unwrap_or_default().to_string();
        offsets.push(offset);
        offset += t.chars().count();
        tokens.push(t);
        lps.push(e["logprob"].clone());
        let mut top = serde_json::Map::new();
        for alt in e["top_logprobs"].as_array().into_iter().flatten() {
            top.insert(
                alt["token"].as_str().unwrap_or_default().to_string(),
                alt["logprob"].clone(),
            );
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn engine_error(message: &str, bad_request: bool, labels: &[(String, String)]) -> Response {
    let message = api::relabel(message, labels);
    if bad_request {
        bad(message)
    } else {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "engine_error",
            message,
        )
    }
}

async fn collect(
    s: Shared,
    mut rx: mpsc::UnboundedReceiver<Out>,
    kind: Kind,
    id: String,
    n: usize,
    labels: Vec<(String, String)>,
) -> Response {
    let mut texts = vec![String::new(); n];
    let mut reasons = vec![""; n];
    let mut entries: Vec<Vec<Value>> = vec![Vec::new(); n];
    let (mut prompt_tokens, mut completion_tokens, mut done) = (0, 0, 0);
    while let Some(out) = rx.recv().await {
        match out {
            Out::Delta {
                index,
                logprob: Some(e),
                ..
            } => entries[index].push(e),
            Out::Delta { .. } => {}
            Out::Done {
                index,
                text,
                finish_reason,
                prompt_tokens: p,
                completion_tokens: c,
            } => {
                texts[index] = text;
                reasons[index] = finish_reason;
                prompt_tokens = p;
                completion_tokens += c;
                done += 1;
                if done == n {
                    break;
                }
            }
            Out::Error {
                message,
                bad_request,
            } => return engine_error(&message, bad_request, &labels),
        }
    }
    if done < n {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "engine_gone",
            "the engine stopped",
        );
    }
    let want = has_logprobs(&entries);
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(reasons)
        .zip(entries)
        .enumerate()
        .map(|(i, ((text, reason), e))| match kind {
            Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": text},
                                 "logprobs": if want { chat_logprobs(e) } else { Value::Null },
                                 "finish_reason": reason}),
            Kind::Completion => json!({"index": i, "text": text,
                                       "logprobs": if want { legacy_logprobs(&e) } else { Value::Null },
                                       "finish_reason": reason}),
        })
        .collect();
    Json(json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": s.cfg.model_name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

async fn stream(
    s: Shared,
    mut rx: mpsc::UnboundedReceiver<Out>,
    kind: Kind,
    id: String,
    n: usize,
    labels: Vec<(String, String)>,
) -> Response {
    // the first output decides the status: an error before any token is a
    // plain error response, as OpenAI's servers answer
    let first = match rx.recv().await {
        Some(Out::Error {
            message,
            bad_request,
        }) => return engine_error(&message, bad_request, &labels),
        Some(o) => o,
        None => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "engine_gone",
                "the engine stopped",
            )
        }
    };
    let (etx, erx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    let model = s.cfg.model_name.clone();
    let created = now();
    let chunk = move |index: usize,
                      text: Option<&str>,
                      finish: Option<&str>,
                      role: bool,
                      logprob: Option<Value>|
          -> Event {
        let lp = match (kind, logprob) {
            (_, None) => Value::Null,
            (Kind::Chat, Some(e)) => chat_logprobs(vec![e]),
            (Kind::Completion, Some(e)) => legacy_logprobs(&[e]),
        };
        let v = match kind {
            Kind::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]})
            }
            Kind::Completion => {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                                       "choices": [{"index": index, "text": text.unwrap_or(""), "logprobs": lp,
                                                    "finish_reason": finish}]})
            }
        };
        Event::default().data(v.to_string())
    };
    tokio::spawn(async move {
        if kind == Kind::Chat {
            for i in 0..n {
                if etx
                    .send(Ok(chunk(i, Some(""), None, true, None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut done = 0;
        let mut next = Some(first);
        loop {
            let out = match next.take() {
                Some(o) => o,
                None => match rx.recv().await {
                    Some(o) => o,
                    None => break,
                },
            };
            let ev = match out {
                Out::Delta {
                    index,
                    text,
                    logprob,
                } => chunk(index, Some(&text), None, false, logprob),
                Out::Done { index, finish_reason, .. } => {
                    done += 1;
                    chunk(index, None, Some(finish_reason), false, None)
                }
                Out::Error { message, .. } => Event::default().data(
                    json!({"error": {"message": api::relabel(&message, &labels), "type": "server_error",
                                     "code": "engine_error"}})
                    .to_string(),
                ),
            };
            // the client is gone: dropping `rx` cancels the rows
            if etx.send(Ok(ev)).await.is_err() {
                return;
            }
            if done == n {
                break;
            }
        }
        let _ = etx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(erx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Binds `host:port` (port 0: any free port) and prints the address.
pub async fn bind(host: &str, port: u16) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
