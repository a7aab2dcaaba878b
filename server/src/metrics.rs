//! The server's Prometheus metrics, kept with atomics and written in the
//! text exposition format at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram over fixed bucket bounds (seconds).
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Everything `/metrics` reports.
pub struct Metrics {
    pub requests_ok: AtomicU64,
    pub requests_bad: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub queue_depth: AtomicU64,
    pub batch_size: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub media_cache_hits: AtomicU64,
    pub media_cache_misses: AtomicU64,
    pub media_cache_bytes: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_misses: AtomicU64,
    pub prefix_cache_bytes: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_ok: AtomicU64::new(0),
            requests_bad: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            batch_size: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            media_cache_hits: AtomicU64::new(0),
            media_cache_misses: AtomicU64::new(0),
            media_cache_bytes: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prefix_cache_misses: AtomicU64::new(0),
            prefix_cache_bytes: AtomicU64::new(0),
            ttft: Mutex::new(Histogram::new(LATENCY)),
            itl: Mutex::new(Histogram::new(LATENCY)),
            started: std::time::Instant::now(),
        }
    }
}

impl Metrics {
    pub fn time_to_first_token(&self, s: f64) {
        if let Ok(mut h) = self.ttft.lock() {
            h.observe(s);
        }
    }
    pub fn inter_token(&self, s: f64) {
        if let Ok(mut h) = self.itl.lock() {
            h.observe(s);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP flamingo_requests_total Requests by outcome.\n# TYPE flamingo_requests_total counter"
        );
        for (status, v) in [
            ("ok", &self.requests_ok),
            ("bad_request", &self.requests_bad),
            ("rejected", &self.requests_rejected),
            ("error", &self.requests_failed),
            ("cancelled", &self.requests_cancelled),
        ] {
            let _ = writeln!(
                out,
                "flamingo_requests_total{{status=\"{status}\"}} {}",
                g(v)
            );
        }
        let gauges = [
            (
                "flamingo_queue_depth",
                "Requests waiting to join the batch.",
                &self.queue_depth,
            ),
            (
                "flamingo_batch_size",
                "Rows in the running decoder batch.",
                &self.batch_size,
            ),
            (
                "flamingo_media_cache_bytes",
                "Bytes the media cache holds.",
                &self.media_cache_bytes,
            ),
            (
                "flamingo_prefix_cache_bytes",
                "Bytes the prefix cache holds.",
                &self.prefix_cache_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g(v)
            );
        }
        let counters = [
            (
                "flamingo_prompt_tokens_total",
                "Prompt tokens prefilled.",
                &self.prompt_tokens,
            ),
            (
                "flamingo_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "flamingo_media_cache_hits_total",
                "Media found encoded in the cache.",
                &self.media_cache_hits,
            ),
            (
                "flamingo_media_cache_misses_total",
                "Media encoded.",
                &self.media_cache_misses,
            ),
            (
                "flamingo_prefix_cache_hits_total",
                "Prompt prefixes whose KV came from the cache.",
                &self.prefix_cache_hits,
            ),
            (
                "flamingo_prefix_cache_misses_total",
                "Prompt prefixes prefilled.",
                &self.prefix_cache_misses,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                g(v)
            );
        }
        let up = self.started.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "# HELP flamingo_generated_tokens_per_second Tokens generated per second since start.\n# TYPE flamingo_generated_tokens_per_second gauge\nflamingo_generated_tokens_per_second {}",
            g(&self.generated_tokens) as f64 / up.max(1e-9)
        );
        if let Ok(h) = self.ttft.lock() {
            h.write(
                &mut out,
                "flamingo_time_to_first_token_seconds",
                "From arrival to the first token.",
            );
        }
        if let Ok(h) = self.itl.lock() {
            h.write(
                &mut out,
                "flamingo_inter_token_latency_seconds",
                "Between a request's tokens.",
            );
        }
        out
    }
}
