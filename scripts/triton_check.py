"""Drives a running Triton server that serves `flamingo export-triton --kind
cpu`'s repository, with tritonclient (HTTP and gRPC), and checks every answer
against `flamingo generate --json` (the reference file given).

usage: triton_check.py HTTP_PORT GRPC_PORT METRICS_PORT REFERENCE.json REPORT.json

REFERENCE.json: {"requests": [{"prompt", "images": [paths], "max_tokens",
"generated_ids", "text"}, ...], "bad_image": path}. Exits non-zero on the
first mismatch; writes the counters it read to REPORT.json.
"""

import json
import queue
import re
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

http_port, grpc_port, metrics_port = (int(x) for x in sys.argv[1:4])
ref = json.load(open(sys.argv[4]))
report_path = sys.argv[5]
HTTP, GRPC = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"


def inputs(mod, prompt, images, max_tokens):
    ins = [mod.InferInput("prompt", [1, 1], "BYTES")]
    ins[0].set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
    if images:
        t = mod.InferInput("images", [1, len(images)], "BYTES")
        t.set_data_from_numpy(np.array([images], dtype=np.object_))
        ins.append(t)
    t = mod.InferInput("max_tokens", [1, 1], "INT32")
    t.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    ins.append(t)
    return ins


def load(paths):
    return [open(p, "rb").read() for p in paths]


def check(what, r, ids, text):
    got_ids = r.as_numpy("token_ids").reshape(-1).tolist()
    got_text = r.as_numpy("text").reshape(-1)[0].decode()
    if got_ids != ids or got_text != text:
        sys.exit(f"{what}: got {got_ids} {got_text!r}, want {ids} {text!r}")


reqs = ref["requests"]
report = {}

# HTTP and gRPC, one request each
h = httpclient.InferenceServerClient(HTTP)
g = grpcclient.InferenceServerClient(GRPC)
for i, r in enumerate(reqs):
    ins = inputs(httpclient, r["prompt"], load(r["images"]), r["max_tokens"])
    check(f"http request {i}", h.infer("flamingo", ins), r["generated_ids"], r["text"])
    ins = inputs(grpcclient, r["prompt"], load(r["images"]), r["max_tokens"])
    check(f"grpc request {i}", g.infer("flamingo", ins), r["generated_ids"], r["text"])
print(f"HTTP and gRPC: {len(reqs)} requests each equal flamingo generate")

# a streamed request: one response per token, then the final one
for i, r in enumerate(reqs):
    got = queue.Queue()
    s = grpcclient.InferenceServerClient(GRPC)
    s.start_stream(callback=lambda result, error: got.put((result, error)))
    s.async_stream_infer(
        "flamingo_stream",
        inputs(grpcclient, r["prompt"], load(r["images"]), r["max_tokens"]),
        enable_empty_final_response=True,
    )
    ids, text, pieces = [], "", 0
    while True:
        result, error = got.get(timeout=60)
        if error is not None:
            sys.exit(f"stream {i}: {error}")
        final = result.get_response().parameters.get("triton_final_response")
        if result.as_numpy("token_ids") is not None:
            ids += result.as_numpy("token_ids").reshape(-1).tolist()
            text += result.as_numpy("text").reshape(-1)[0].decode()
            pieces += 1
        if final is not None and final.bool_param:
            break
    s.stop_stream()
    if ids != r["generated_ids"] or text != r["text"] or pieces != len(ids):
        sys.exit(f"stream {i}: got {ids} {text!r} in {pieces} responses, want {r['generated_ids']}")
print(f"gRPC stream: {len(reqs)} streamed requests equal flamingo generate, one response per token")


def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
                 "nv_inference_request_failure"):
        m = re.search(name + r'\{[^}]*model="flamingo"[^}]*\} (\d+)', text.decode())
        out[name] = int(m.group(1)) if m else 0
    return out


before = metrics()


# 16 concurrent requests, one client per thread (the HTTP client is not thread-safe)
def one(k):
    r = reqs[k % len(reqs)]
    c = httpclient.InferenceServerClient(HTTP)
    res = c.infer("flamingo", inputs(httpclient, r["prompt"], load(r["images"]), r["max_tokens"]))
    check(f"concurrent request {k}", res, r["generated_ids"], r["text"])
    return k


with ThreadPoolExecutor(16) as pool:
    done = list(pool.map(one, range(16)))
after = metrics()
inferences = after["nv_inference_count"] - before["nv_inference_count"]
executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
print(f"16 concurrent: all equal flamingo generate; {inferences} inferences in {executions} executions")
if len(done) != 16 or inferences != 16 or not executions < inferences:
    sys.exit(f"not batched: {inferences} inferences, {executions} executions")
report.update(concurrent=16, inference_count=inferences, execution_count=executions)

# bad input: a Triton error with the runtime's message, and the server keeps serving
bad = [
    ("a non-image", reqs[0]["prompt"], [b"this is not an image"] * reqs[0]["prompt"].count("<image>"),
     "not a readable image"),
    ("a wrong <image> count", reqs[0]["prompt"] + "<image>", load(reqs[0]["images"]), "<image>"),
    ("max_tokens over the cap", reqs[0]["prompt"], load(reqs[0]["images"]), "max_tokens"),
]
for what, prompt, images, want in bad:
    for mod, client in ((httpclient, h), (grpcclient, g)):
        n = 100000 if "cap" in what else 4
        try:
            client.infer("flamingo", inputs(mod, prompt, images, n))
        except InferenceServerException as e:
            if want not in str(e):
                sys.exit(f"{what}: the error does not say {want!r}: {e}")
        else:
            sys.exit(f"{what}: no error")
    print(f"bad input, {what}: a Triton error saying {want!r} (HTTP and gRPC)")
r = reqs[0]
check("after the errors", h.infer("flamingo", inputs(httpclient, r["prompt"], load(r["images"]), r["max_tokens"])),
      r["generated_ids"], r["text"])
final = metrics()
report.update(final)
json.dump(report, open(report_path, "w"), indent=1)
print("still serving after the errors; counters:", json.dumps(final))
