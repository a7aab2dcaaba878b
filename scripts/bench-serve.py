"""Benchmark a running `flamingo serve` with the official `openai` client.

    python scripts/bench-serve.py BASE_URL MODEL IMAGE... [--clients 1,4,16]
        [--requests 32] [--max-tokens 16] [--shots 4] [--shared|--distinct]

Each client thread sends streamed chat requests one after another (a
`--shots`-shot prompt and a query); `--shared` gives every request the same
support examples (what the prefix and media caches serve), `--distinct`
rotates the supports so few requests share them. Prints one JSON line per
client count: requests/s, tokens (streamed chunks)/s, and p50/p99 of time to first token and
inter-token latency, in seconds.
"""

import argparse
import base64
import concurrent.futures
import json
import time

import openai

ap = argparse.ArgumentParser()
ap.add_argument("base_url")
ap.add_argument("model")
ap.add_argument("images", nargs="+")
ap.add_argument("--clients", default="1,4,16")
ap.add_argument("--requests", type=int, default=32)
ap.add_argument("--max-tokens", type=int, default=16)
ap.add_argument("--shots", type=int, default=4)
ap.add_argument("--distinct", action="store_true")
a = ap.parse_args()
client = openai.OpenAI(base_url=a.base_url, api_key="none", timeout=600, max_retries=0)
urls = []
for p in a.images:
    with open(p, "rb") as f:
        urls.append("data:image/png;base64," + base64.b64encode(f.read()).decode())
CAPTIONS = ["an apple on a table.", "two dogs on a beach.", "a red car in the street.",
            "a man riding a horse.", "a bowl of soup.", "a city at night."]


def messages(k):
    shift = k if a.distinct else 0
    msgs = []
    for s in range(a.shots):
        msgs.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": urls[(s + shift) % len(urls)]}},
            {"type": "text", "text": "Output:" + CAPTIONS[(s + shift) % len(CAPTIONS)]}]})
    msgs.append({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": urls[(k * 7 + 3) % len(urls)]}},
        {"type": "text", "text": "Output:"}]})
    return msgs


def one(k):
    t0 = time.perf_counter()
    first, last, gaps, n = None, None, [], 0
    # logprobs: a chunk per token even when it adds no text (a model with
    # random weights mostly yields tokens that decode to nothing)
    for c in client.chat.completions.create(model=a.model, messages=messages(k), max_tokens=a.max_tokens,
                                            temperature=0, stream=True, logprobs=True):
        if c.choices and (c.choices[0].delta.content or c.choices[0].logprobs):
            now = time.perf_counter()
            if first is None:
                first = now - t0
            else:
                gaps.append(now - last)
            last = now
            n += 1
    return first or 0.0, gaps, n


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] if v else None


one(0)  # warm-up: loads, caches
for c in [int(x) for x in a.clients.split(",")]:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(c) as ex:
        res = list(ex.map(one, range(a.requests)))
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in res]
    itl = [g for r in res for g in r[1]]
    chunks = sum(r[2] for r in res)
    print(json.dumps({"clients": c, "requests": a.requests, "shared": not a.distinct, "seconds": wall,
                      "requests_per_s": a.requests / wall, "chunks_per_s": chunks / wall,
                      "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
                      "itl_p50": pct(itl, 0.5), "itl_p99": pct(itl, 0.99)}), flush=True)
