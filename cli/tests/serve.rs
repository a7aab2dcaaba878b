//! `flamingo serve` end to end: the server on 127.0.0.1 (a free port),
//! driven by the official `openai` Python client (`openai_client.py`, in
//! the venv `scripts/test.sh` builds) and by raw HTTP; its answers equal
//! `flamingo generate`'s for the same prompt, streamed or not, alone or
//! among concurrent requests. The server is killed when the test ends,
//! whatever happens; every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{export, fixture, flamingo};
use serde_json::Value;

/// The server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(model: &Path, backend: &str, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .args(["serve", "--model"])
        .arg(model)
        .args(["--backend", backend, "--host", "127.0.0.1", "--port", "0"])
        .args(["--served-model-name", "tiny"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting flamingo serve");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    // the first line names the address
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server printed its address");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    (server, addr)
}

/// One HTTP/1.1 exchange; `(status, body)`.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("a response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn wait_ready(addr: &str) {
    let t0 = Instant::now();
    while http(addr, "GET", "/ready", None).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metric's value in the text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("VmRSS")
}

/// The server's RSS once its batch is empty and it has had a moment to
/// hand back free memory (it does when idle).
fn settled_rss(addr: &str, pid: u32) -> u64 {
    let t0 = Instant::now();
    loop {
        let (_, m) = http(addr, "GET", "/metrics", None);
        if metric(&m, "flamingo_batch_size") == 0.0 && metric(&m, "flamingo_queue_depth") == 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the batch never empties"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    rss_kib(pid)
}

fn load_script(mode: &str, addr: &str, images: &[PathBuf]) -> Value {
    let out = Command::new("timeout")
        .arg("120")
        .arg(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_load.py"))
        .arg(mode)
        .arg(format!("http://{addr}/v1"))
        .arg("tiny")
        .args(images)
        .output()
        .expect("running the load script");
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLAMINGO_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/python");
    assert!(
        p.exists(),
        "{}: no test venv with the `openai` package; scripts/test.sh builds it (or set FLAMINGO_TEST_PYTHON)",
        p.display()
    );
    p
}

fn generate(model: &Path, backend: &str, prompt: &str, images: &[&Path], max_new: usize) -> String {
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--backend".into(),
        backend.into(),
        "--prompt".into(),
        prompt.into(),
        "--max-new-tokens".into(),
        max_new.to_string(),
        "--json".into(),
    ];
    for i in images {
        args.push("--image".into());
        args.push(i.display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = flamingo(&refs);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.lines().next().unwrap_or("")).expect("JSON");
    v["sequences"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_openai_client_gets_what_flamingo_generate_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-mpt");
    export("tiny-mpt", &model);
    for backend in ["tract", "ort-cpu"] {
        check(&model, backend);
    }
}

fn check(model: &Path, backend: &str) {
    let model = model.to_path_buf();
    let (a, b) = (
        fixture("tiny-mpt").join("images/img1.png"),
        fixture("tiny-mpt").join("images/img0.png"),
    );
    let (server, addr) = start(
        &model,
        backend,
        &[
            "--max-batch",
            "4",
            "--max-images",
            "2",
            "--max-body-bytes",
            "2000000",
        ],
    );
    wait_ready(&addr);
    assert_eq!(http(&addr, "GET", "/health", None).0, 200);
    let out = Command::new("timeout")
        .arg("300")
        .arg(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .arg(format!("http://{addr}/v1"))
        .args(["tiny"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("running the openai client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");
    assert_eq!(r["models"], serde_json::json!(["tiny"]));
    let prompt = "<image>an apple on a table.<|endofchunk|><image>a photo of";
    let want = generate(&model, backend, prompt, &[&a, &b], 8);
    assert!(!want.is_empty());
    assert_eq!(
        r["chat"]["text"],
        want.as_str(),
        "{backend}: chat = flamingo generate"
    );
    let streamed: String = r["stream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(streamed, want, "streamed = non-streamed");
    assert!(r["stream"].as_array().unwrap().len() > 1, "several chunks");
    assert_eq!(r["stream_finish_reason"], r["chat"]["finish_reason"]);
    assert_eq!(r["completion"], want.as_str(), "/v1/completions");
    // echo: the prompt's tokens scored; the candidate's sum is `flamingo score`'s
    let ctx = "<image>an apple on a table.<|endofchunk|><image>a photo of";
    let e = &r["echo"];
    assert_eq!(e["text"], format!("{ctx} two dogs."));
    let lps = e["token_logprobs"].as_array().unwrap();
    assert!(lps[0].is_null() && lps.len() > 5);
    assert_eq!(e["tokens"].as_array().unwrap().len(), lps.len());
    let (ok, out, err) = flamingo(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        backend,
        "--prompt",
        ctx,
        "--image",
        a.to_str().unwrap(),
        "--image",
        b.to_str().unwrap(),
        "--candidate",
        " two dogs.",
        "--json",
    ]);
    assert!(ok, "{err}");
    let sc: Value = serde_json::from_str(&out).unwrap();
    let (sum, k) = (
        sc["candidates"][0]["logprob_sum"].as_f64().unwrap(),
        sc["candidates"][0]["num_tokens"].as_u64().unwrap() as usize,
    );
    let tail: f64 = lps[lps.len() - k..]
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((tail - sum).abs() < 1e-3, "echo {tail} vs score {sum}");
    for (x, top) in lps[1..].iter().zip(&e["top"].as_array().unwrap()[1..]) {
        let best = top[0].as_f64().unwrap();
        assert!(x.as_f64().unwrap() <= best + 1e-6);
    }
    // logprobs: one entry per generated token, greedy picks the top one
    let lp = &r["logprobs"];
    assert_eq!(lp["text"], want.as_str());
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len() as u64, lp["completion_tokens"].as_u64().unwrap());
    let joined: String = toks.iter().map(|t| t[0].as_str().unwrap()).collect();
    assert_eq!(joined, want);
    for t in toks {
        let (chosen, top) = (t[1].as_f64().unwrap(), t[2].as_array().unwrap());
        assert_eq!(top.len(), 2);
        let (t0, t1) = (top[0].as_f64().unwrap(), top[1].as_f64().unwrap());
        assert!(
            chosen <= 0.0 && t0 >= t1 && (chosen - t0).abs() < 1e-6,
            "{t}"
        );
    }
    let usage = r["chat"]["usage"].as_array().unwrap();
    assert!(usage[0].as_u64().unwrap() > 5 && usage[1].as_u64().unwrap() >= 1);
    // seeded sampling: the same seed, the same choices; n gives two
    assert_eq!(r["sampled"][0], r["sampled"][1]);
    assert_eq!(r["sampled"][0].as_array().unwrap().len(), 2);
    // continuous batching: concurrent requests get their sequential answers
    assert_eq!(r["concurrent"], r["sequential"]);
    for (k, text) in ["a photo of", "a", "two", "the"].iter().enumerate() {
        let p = format!("<image>an apple on a table.<|endofchunk|><image>{text}");
        let want = generate(&model, backend, &p, &[&a, &b], [12, 2, 7, 4][k]);
        assert_eq!(r["sequential"][k], want.as_str(), "request {k}");
    }
    let e = &r["errors"];
    for (name, status, needle) in [
        ("remote_url", 400, "remote URLs are refused"),
        ("bad_base64", 400, "does not decode"),
        ("not_an_image", 400, "image"),
        ("marker_mismatch", 400, "<image>"),
        ("too_many_tokens", 400, "max_tokens"),
        ("unknown_part_type", 400, "unknown content part type"),
        ("truncated_image", 400, "messages[0].content[0]"),
        ("too_many_images", 400, "--max-images"),
        ("context_too_long", 400, "longer than the model allows"),
        ("too_many_choices", 400, "`n`"),
        ("huge_body", 413, ""),
        ("unknown_model", 404, ""),
    ] {
        assert_eq!(e[name][0], status, "{name}: {}", e[name]);
        let msg = e[name][1].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    assert_eq!(r["after_errors"], want.as_str(), "it keeps serving");
    // raw HTTP: malformed JSON, a huge body, unknown fields of the API
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", Some("{not json"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, _) = http(&addr, "POST", "/v1/chat/completions", Some("[1, 2]"));
    assert_eq!(status, 400);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt": "<image>a", "images": ["file:///etc/passwd"]}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("allow-local-media"), "{body}");
    // the metrics saw it all: requests, tokens, the shared media and prefix
    let (status, m) = http(&addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let metric = |name: &str| metric(&m, name);
    assert!(metric("flamingo_requests_total{status=\"ok\"}") >= 13.0);
    assert!(metric("flamingo_requests_total{status=\"bad_request\"}") >= 5.0);
    assert!(metric("flamingo_generated_tokens_total") > 20.0);
    assert!(metric("flamingo_media_cache_hits_total") > 0.0);
    assert!(metric("flamingo_prefix_cache_hits_total") > 0.0);
    assert!(metric("flamingo_time_to_first_token_seconds_count") >= 13.0);
    drop(server);
}

/// 32 streaming clients, 200 requests over 15 distinct ones (three sets of
/// shared few-shot supports, mixed lengths): none lost, each the text it
/// gets alone, no 5xx, memory flat after warm-up; a client gone
/// mid-stream leaves the batch; a full queue answers 429 at once.
#[test]
fn load_backpressure_and_disconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-mpt");
    export("tiny-mpt", &model);
    let images: Vec<PathBuf> = (0..4)
        .map(|i| fixture("tiny-mpt").join(format!("images/img{i}.png")))
        .collect();
    let (server, addr) = start(
        &model,
        "ort-cpu",
        &["--max-batch", "8", "--max-waiting", "64"],
    );
    wait_ready(&addr);
    let pid = server.0.id();
    let singles = load_script("singles", &addr, &images);
    // warm-up: the same load once, so that ONNX Runtime's arena has grown
    // to the peak this load's interleaving reaches (it keeps what it grew
    // to; a shorter warm-up left it 2 MiB short one run in three)
    let warmup = load_script("load", &addr, &images);
    assert_eq!(warmup["results"].as_array().unwrap().len(), 200);
    let warm = settled_rss(&addr, pid);
    let t0 = Instant::now();
    let load = load_script("load", &addr, &images);
    let seconds = t0.elapsed().as_secs_f64();
    let end = settled_rss(&addr, pid);
    let texts = singles["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 15);
    let results = load["results"].as_array().unwrap();
    assert_eq!(results.len(), 200, "no request lost");
    for (i, r) in results.iter().enumerate() {
        assert!(r[1].is_null(), "request {i}: {}", r[1]);
        assert_eq!(r[0], texts[i % texts.len()], "request {i}");
    }
    eprintln!(
        "load: 200 requests from 32 clients in {seconds:.1} s; RSS {warm} KiB after warm-up, {end} KiB after"
    );
    assert!(
        (end as f64) <= 1.10 * warm as f64,
        "RSS grew from {warm} to {end} KiB"
    );
    let (_, m) = http(&addr, "GET", "/metrics", None);
    assert_eq!(metric(&m, "flamingo_requests_total{status=\"error\"}"), 0.0);
    assert!(metric(&m, "flamingo_prefix_cache_hits_total") >= 150.0);
    let before = metric(&m, "flamingo_generated_tokens_total");
    // a client that goes away mid-stream: its row leaves the batch
    let body = r#"{"prompt": "a photo of", "max_tokens": 100, "stream": true}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = s.read(&mut buf).expect("a first chunk");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let t0 = Instant::now();
    loop {
        let (_, m) = http(&addr, "GET", "/metrics", None);
        if metric(&m, "flamingo_requests_total{status=\"cancelled\"}") >= 1.0 {
            assert_eq!(metric(&m, "flamingo_batch_size"), 0.0);
            let spent = metric(&m, "flamingo_generated_tokens_total") - before;
            assert!(
                spent < 100.0,
                "{spent} tokens generated for a client that left"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the row never left:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    // a queue of one: the burst beyond it gets 429 at once
    let (server, addr) = start(&model, "tract", &["--max-batch", "1", "--max-waiting", "1"]);
    wait_ready(&addr);
    let burst = load_script("burst", &addr, &images);
    let results = burst["results"].as_array().unwrap();
    let refused: Vec<f64> = results
        .iter()
        .filter(|r| r[0] == 429)
        .map(|r| r[1].as_f64().unwrap())
        .collect();
    assert!(!refused.is_empty(), "{results:?}");
    assert!(
        results.iter().all(|r| r[0] == 429 || r[0] == 200),
        "{results:?}"
    );
    assert!(
        refused.iter().all(|&t| t < 1.0),
        "429 not at once: {refused:?}"
    );
    drop(server);
}
