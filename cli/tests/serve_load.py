"""Load on `flamingo serve` with the official `openai` client.

    python serve_load.py singles|load|burst BASE_URL MODEL IMAGE...

singles: every distinct request once, one at a time (streamed), their texts;
load: 200 streamed requests from 32 threads (the distinct ones in turn),
each text or error; burst: 16 requests at once, each status and seconds.
Prints one JSON object; every call has a timeout.
"""

import base64
import concurrent.futures
import json
import sys
import time

import openai

mode, base_url, model = sys.argv[1:4]
images = sys.argv[4:]
client = openai.OpenAI(base_url=base_url, api_key="none", timeout=60, max_retries=0)


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


URLS = [data_url(p) for p in images]
SUPPORTS = [
    [(0, "an apple on a table."), (1, "two dogs.")],
    [(2, "a red car.")],
    [],
]
QUERIES = ["a photo of", "a", "there is a small boat and", "two", "the picture shows a busy street with"]


def distinct():
    out = []
    for s, sup in enumerate(SUPPORTS):
        for q, query in enumerate(QUERIES):
            msgs = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": URLS[i % len(URLS)]}},
                {"type": "text", "text": t}]} for i, t in sup]
            msgs.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": URLS[(s + q) % len(URLS)]}},
                {"type": "text", "text": query}]})
            out.append((msgs, 2 + (3 * s + 5 * q) % 11))
    return out


def streamed(req):
    msgs, max_tokens = req
    text = []
    for c in client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens,
                                            temperature=0, stream=True):
        if c.choices and c.choices[0].delta.content:
            text.append(c.choices[0].delta.content)
    return "".join(text)


reqs = distinct()
if mode == "singles":
    print(json.dumps({"texts": [streamed(r) for r in reqs]}))
elif mode == "load":
    def one(i):
        try:
            return [streamed(reqs[i % len(reqs)]), None]
        except openai.APIStatusError as e:
            return [None, e.status_code]
        except Exception as e:  # noqa: BLE001
            return [None, repr(e)]
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(one, range(200)))
    print(json.dumps({"results": results, "count": len(reqs), "seconds": time.time() - t0}))
elif mode == "burst":
    def one(i):
        t0 = time.time()
        try:
            client.chat.completions.create(model=model, messages=reqs[0][0], max_tokens=60, temperature=0)
            return [200, time.time() - t0]
        except openai.APIStatusError as e:
            return [e.status_code, time.time() - t0]
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        print(json.dumps({"results": list(ex.map(one, range(16)))}))
