"""Drives `flamingo serve` with the official `openai` client (PyPI).

    python openai_client.py BASE_URL MODEL IMAGE_A IMAGE_B

Prints one JSON object: the model list; a chat with two base64 images,
non-streamed, streamed (each chunk's text) and with logprobs; a completion with the same
prompt; a seeded sampled chat twice; four chats at once with different
budgets; and the errors of bad requests. Every call has a timeout.
"""

import base64
import concurrent.futures
import json
import sys

import openai

base_url, model, image_a, image_b = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key="none", timeout=60, max_retries=0)


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def messages(text="a photo of"):
    return [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image_a)}},
            {"type": "text", "text": "an apple on a table."},
        ]},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image_b)}},
            {"type": "text", "text": text},
        ]},
    ]


out = {"models": [m.id for m in client.models.list().data]}
r = client.chat.completions.create(model=model, messages=messages(), max_tokens=8, temperature=0)
out["chat"] = {"text": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
               "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}
chunks = []
for c in client.chat.completions.create(model=model, messages=messages(), max_tokens=8,
                                        temperature=0, stream=True):
    if c.choices and c.choices[0].delta.content:
        chunks.append(c.choices[0].delta.content)
    if c.choices and c.choices[0].finish_reason:
        out["stream_finish_reason"] = c.choices[0].finish_reason
out["stream"] = chunks
r = client.chat.completions.create(model=model, messages=messages(), max_tokens=8, temperature=0,
                                   logprobs=True, top_logprobs=2)
out["logprobs"] = {"text": r.choices[0].message.content, "completion_tokens": r.usage.completion_tokens,
                   "tokens": [[t.token, t.logprob, [a.logprob for a in t.top_logprobs]]
                              for t in r.choices[0].logprobs.content]}
c = client.completions.create(
    model=model, max_tokens=8, temperature=0,
    prompt="<image>an apple on a table.<|endofchunk|><image>a photo of",
    extra_body={"images": [data_url(image_a), data_url(image_b)]})
out["completion"] = c.choices[0].text
# close-ended scoring: echo the prompt with its tokens' logprobs, nothing new
c = client.completions.create(
    model=model, max_tokens=0, echo=True, logprobs=1,
    prompt="<image>an apple on a table.<|endofchunk|><image>a photo of two dogs.",
    extra_body={"images": [data_url(image_a), data_url(image_b)]})
lp = c.choices[0].logprobs
out["echo"] = {"text": c.choices[0].text, "tokens": lp.tokens, "token_logprobs": lp.token_logprobs,
               "top": [list(t.values()) if t else [] for t in lp.top_logprobs]}
sampled = [client.chat.completions.create(model=model, messages=messages(), max_tokens=8,
                                          temperature=0.8, seed=5, n=2)
           for _ in range(2)]
out["sampled"] = [[ch.message.content for ch in s.choices] for s in sampled]


def one(k):
    r = client.chat.completions.create(model=model, messages=messages(["a photo of", "a", "two", "the"][k]),
                                       max_tokens=[12, 2, 7, 4][k], temperature=0)
    return r.choices[0].message.content


with concurrent.futures.ThreadPoolExecutor(4) as ex:
    out["concurrent"] = list(ex.map(one, range(4)))
out["sequential"] = [one(k) for k in range(4)]
errors = {}
for name, kw in {
    "remote_url": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
    "bad_base64": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
    "not_an_image": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello").decode()}}]}]},
    "marker_mismatch": {"messages": [{"role": "user", "content": "<image> no image given"}]},
    "too_many_tokens": {"messages": messages(), "max_tokens": 100000},
    "unknown_part_type": {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
    "truncated_image": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(
            open(image_a, "rb").read()[:200]).decode()}}]}]},
    "too_many_images": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image_a)}}] * 3}]},
    "context_too_long": {"messages": messages("a photo of " * 60), "max_tokens": 10},
    "too_many_choices": {"messages": messages(), "n": 100},
    "huge_body": {"messages": messages("x" * (3 << 20))},
}.items():
    # a body over the limit is answered before it is read through: the
    # connection may close under a client still sending, so try it again
    for attempt in range(5 if name == "huge_body" else 1):
        try:
            client.chat.completions.create(model=model, **kw)
            errors[name] = None
        except openai.APIStatusError as e:
            errors[name] = [e.status_code, json.dumps(e.body)]
        except openai.APIConnectionError as e:
            errors[name] = [None, repr(e)]
            continue
        break
try:
    client.chat.completions.create(model="other", messages=messages())
    errors["unknown_model"] = None
except openai.APIStatusError as e:
    errors["unknown_model"] = [e.status_code, None]
out["errors"] = errors
# and it keeps serving
r = client.chat.completions.create(model=model, messages=messages(), max_tokens=8, temperature=0)
out["after_errors"] = r.choices[0].message.content
print(json.dumps(out))
