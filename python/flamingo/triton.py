"""The python-backend models of the Triton repositories that
`flamingo export-triton` writes (imported by their ``model.py``; only
importable inside Triton's python backend).

- :class:`CpuModel` (``--kind cpu``): the whole pipeline through
  :class:`flamingo.Pipeline`, one per instance.
- :class:`GpuModel` (``--kind gpu``): the orchestrator. Tokenization,
  preprocessing and the media cache here; the graphs are Triton models
  called through BLS: ``vision_encoder``, ``resampler``, ``media_kv``
  (ONNX Runtime backend, dynamic batching) and ``decoder`` (sequence
  batching, its KV cache an implicit state kept by Triton).

Both serve two models from one ``model.py``: request/response (``flamingo``:
``text`` and ``token_ids`` per request) and decoupled (``flamingo_stream``:
one response per token, then an empty final one). A request that fails gets
a Triton error with the runtime's message.
"""

import hashlib
import json
import os
import threading
from collections import OrderedDict

import numpy as np
import triton_python_backend_utils as pb_utils

import flamingo

#: optional one-value inputs -> generate() keyword, and how to read them
OPTIONS = {
    "max_tokens": ("max_new_tokens", int),
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "seed": ("seed", int),
    "num_beams": ("num_beams", int),
    "do_sample": ("do_sample", bool),
    "repetition_penalty": ("repetition_penalty", float),
}


def _param(config, key, default):
    p = config.get("parameters", {}).get(key)
    return p["string_value"] if p and p.get("string_value") else default


class _Model:
    """What both kinds share: the config's parameters, request parsing,
    responses, and the two transaction policies."""

    def _setup(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        model_dir = _param(config, "model_dir", "1/export")
        if not os.path.isabs(model_dir):
            model_dir = os.path.normpath(os.path.join(args["model_repository"], model_dir))
        self.model_dir = model_dir
        self.max_tokens = int(_param(config, "max_tokens_cap", "512"))
        self.defaults = json.loads(_param(config, "generate_defaults", "{}"))
        return config

    def _request(self, request):
        """(prompt, images, generate kwargs) of one request."""
        prompt = pb_utils.get_input_tensor_by_name(request, "prompt")
        if prompt is None:
            raise flamingo.FlamingoError("the input `prompt` is required")
        prompt = prompt.as_numpy().reshape(-1)
        if prompt.size != 1:
            raise flamingo.FlamingoError(f"`prompt` holds {prompt.size} strings; send one")
        prompt = prompt[0]
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        images = pb_utils.get_input_tensor_by_name(request, "images")
        images = [] if images is None else [bytes(x) for x in images.as_numpy().reshape(-1)]
        kwargs = dict(self.defaults)
        for name, (key, kind) in OPTIONS.items():
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                v = t.as_numpy().reshape(-1)
                if v.size != 1:
                    raise flamingo.FlamingoError(f"`{name}` holds {v.size} values; send one")
                kwargs[key] = kind(v[0].item())
        n = kwargs.get("max_new_tokens", 20)
        if not 0 < n <= self.max_tokens:
            raise flamingo.FlamingoError(f"max_tokens {n} is outside 1..{self.max_tokens}")
        return prompt, images, kwargs

    @staticmethod
    def _response(text, ids):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text", np.array([[text.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor("token_ids", np.array([ids], dtype=np.int32)),
            ]
        )

    @staticmethod
    def _error(e):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))

    def execute(self, requests):
        if self.decoupled:
            for r in requests:
                self._stream(r)
            return None
        out = [None] * len(requests)
        batch, at = [], []
        for i, r in enumerate(requests):
            try:
                prompt, images, kwargs = self._request(r)
                batch.append(dict(kwargs, prompt=prompt, images=images))
                at.append(i)
            except Exception as e:  # a bad request fails alone
                out[i] = self._error(e)
        for i, g in zip(at, self._batch(batch)):
            out[i] = self._error(g) if isinstance(g, Exception) else self._response(*g)
        return out

    def _stream(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            prompt, images, kwargs = self._request(request)
            for tok_id, text in self._tokens(prompt, images, kwargs, request.is_cancelled):
                sender.send(self._response(text, [tok_id]))
            sender.send(flags=final)
        except Exception as e:
            sender.send(self._error(e), flags=final)


class CpuModel(_Model):
    """``--kind cpu``: the pipeline in-process (graphs on the ``backend``
    parameter's backend); the requests of one execution run as one
    left-padded batch."""

    def initialize(self, args):
        config = self._setup(args)
        options = json.loads(_param(config, "pipeline_options", "{}"))
        backend = _param(config, "backend", "tract")
        self.pipeline = flamingo.Pipeline(self.model_dir, backend=backend, **options)

    def _batch(self, batch):
        """(text, ids) or the error of each request."""
        if not batch:
            return []
        out = []
        for g in self.pipeline.generate_batch(batch, return_exceptions=True):
            out.append(g if isinstance(g, Exception) else (g.text, g.generated_ids))
        return out

    def _tokens(self, prompt, images, kwargs, cancelled):
        with self.pipeline.generate_stream(prompt, images, **kwargs) as stream:
            for tok in stream:
                if cancelled():
                    break
                yield tok.id, tok.text

    def finalize(self):
        self.pipeline = None


class _MediaCache:
    """Vision tokens by the sha256 of their image file, LRU within a byte bound."""

    def __init__(self, max_bytes):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        v = self.items.get(key)
        if v is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(key)
        return v

    def put(self, key, value):
        if value.nbytes > self.max_bytes or key in self.items:
            return
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes


class GpuModel(_Model):
    """``--kind gpu``: the orchestrator. Each request is a sequence of the
    ``decoder`` model (its own correlation id; the KV cache is Triton's
    implicit state); the media K/V stay where the ``media_kv`` model put
    them (device memory on a GPU) and go to every decoder step as they are.
    Greedy and sampling (temperature, top-k, top-p, repetition penalty,
    seeded); beam search is the cpu kind's."""

    def initialize(self, args):
        config = self._setup(args)
        self.front = flamingo.Frontend(self.model_dir)
        m = json.loads(self.front.manifest)
        self.names = {r: _param(config, f"{r}_model", r) for r in m["graphs"]}
        dec = m["graphs"]["decoder"]
        self.decoder_inputs = {t["name"] for t in dec["inputs"]}
        self.media_kv_names = [t["name"] for t in m["graphs"]["media_kv"]["outputs"]]
        self.media_token = m["special_tokens"]["media"]
        self.stop = [m["special_tokens"]["end_of_chunk"]]
        self.vocab = m["model"]["decoder"]["vocab_size"]
        self.max_context = m["model"]["lm"].get("max_position_embeddings")
        r = m["model"]["resampler"]
        self.empty_latents = np.zeros((1, 1, r["num_latents"], r["dim"]), dtype=np.float32)
        self.image_size = m["preprocess"]["image_size"]
        self.cache = _MediaCache(int(_param(config, "media_cache_bytes", str(256 << 20))))
        self.graph_max_batch = max(1, int(_param(config, "graph_max_batch", "8")))
        self.lock = threading.Lock()
        self.sequence = 0
        # correlation ids unique across this model's instances (processes)
        self.cid_base = (os.getpid() & 0xFFFFFFFF) << 24

    def _cid(self):
        with self.lock:
            self.sequence = (self.sequence + 1) % (1 << 24)
            return self.cid_base + self.sequence + 1

    def _infer(self, model, inputs, outputs, cpu=True, correlation_id=0, flags=0):
        tensors = [v if isinstance(v, pb_utils.Tensor) else pb_utils.Tensor(k, v) for k, v in inputs]
        kw = dict(model_name=model, inputs=tensors, requested_output_names=outputs)
        if correlation_id:
            kw.update(correlation_id=correlation_id, flags=flags)
        if cpu:
            kw["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        resp = pb_utils.InferenceRequest(**kw).exec()
        if resp.has_error():
            raise flamingo.FlamingoError(f"{model}: {resp.error().message()}")
        out = {}
        for n in outputs:
            t = pb_utils.get_output_tensor_by_name(resp, n)
            if t is None:
                raise flamingo.FlamingoError(f"{model} did not return `{n}`")
            out[n] = t.as_numpy() if cpu else t
        return out

    def _media_kv(self, images):
        """The media K/V tensors of a prompt's images (one all-zero media when none)."""
        if images:
            keys = [hashlib.sha256(b).hexdigest() for b in images]
            tokens = {k: self.cache.get(k) for k in keys}
            todo = [(k, b, i) for i, (k, b) in enumerate(zip(keys, images)) if tokens[k] is None]
            todo = list({k: (k, b, i) for k, b, i in todo}.values())
            s, chunk = self.image_size, self.graph_max_batch
            for at in range(0, len(todo), chunk):
                part = todo[at : at + chunk]
                px = np.stack(
                    [
                        np.frombuffer(self.front.pixel_values(b, f"images[{i}]"), np.float32)
                        .reshape(3, s, s)
                        for _, b, i in part
                    ]
                )
                vt = self._infer(self.names["vision_encoder"], [("pixel_values", px)], ["vision_tokens"])
                for (k, _, _), t in zip(part, vt["vision_tokens"]):
                    tokens[k] = np.ascontiguousarray(t)
                    self.cache.put(k, tokens[k])
            # [1, T, 1 frame, P, D]
            x = np.stack([tokens[k] for k in keys])[None, :, None]
            latents = self._infer(self.names["resampler"], [("vision_tokens", x)], ["latents"])["latents"]
        else:
            latents = self.empty_latents
        kv = self._infer(self.names["media_kv"], [("latents", latents)], self.media_kv_names, cpu=False)
        return [kv[n] for n in self.media_kv_names]

    @staticmethod
    def _pick(logits, seen, kw, rng):
        """The next token: transformers' processors in their order, then
        argmax or a draw."""
        logits = logits.astype(np.float64)
        rp = kw.get("repetition_penalty", 1.0)
        if rp != 1.0 and seen:
            idx = np.unique(np.array(seen))
            v = logits[idx]
            logits[idx] = np.where(v < 0, v * rp, v / rp)
        t = kw.get("temperature", 1.0)
        if not kw.get("do_sample", False) or t == 0:
            return int(np.argmax(logits))
        logits = logits / t
        k = kw.get("top_k", 50)
        if 0 < k < logits.size:
            kth = np.partition(logits, -k)[-k]
            logits[logits < kth] = -np.inf
        p = kw.get("top_p", 1.0)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p < 1.0:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            drop = order[np.concatenate(([False], cum[:-1] >= p))]
            probs[drop] = 0
            probs /= probs.sum()
        return int(rng.choice(probs.size, p=probs))

    def _tokens(self, prompt, images, kw, cancelled=lambda: False):
        """(token id, text) as they come; the decoder sequence always ends."""
        if kw.get("num_beams", 1) > 1:
            raise flamingo.FlamingoError(
                "beam search is not served by the gpu repository (num_beams 1; "
                "the cpu repository's pipeline runs it)"
            )
        ids = self.front.prompt_ids(prompt, len(images))
        n = kw.get("max_new_tokens", 20)
        if self.max_context and len(ids) + n > self.max_context:
            raise flamingo.FlamingoError(
                f"the context would be {len(ids) + n} tokens, longer than the model allows "
                f"({self.max_context}); shorten the prompt or lower max_tokens"
            )
        kv = self._media_kv(images)
        rng = np.random.default_rng(kw.get("seed", 0))
        stop = kw.get("stop_tokens") or self.stop
        arr = np.array([ids], dtype=np.int64)
        step = {
            "input_ids": arr,
            "attention_mask": np.ones_like(arr),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            "media_time": np.cumsum(arr == self.media_token, axis=1).astype(np.int64),
            "num_logits_to_keep": np.array([1], dtype=np.int64),
        }
        cid = self._cid()
        start = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
        end = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
        decoder = self.names["decoder"]

        def call(step, flags):
            inputs = [(k, v) for k, v in step.items() if k in self.decoder_inputs]
            return self._infer(decoder, inputs + [(None, t) for t in kv], ["logits"],
                               correlation_id=cid, flags=flags)["logits"]

        seen, total = list(ids), len(ids)
        started = ended = False
        try:
            for k in range(n):
                last = k == n - 1
                flags = (0 if started else start) | (end if last else 0)
                started = True
                logits = call(step, flags)
                ended = last
                tok = self._pick(logits[0, -1], seen, kw, rng)
                seen.append(tok)
                yield tok, self.front.decode([tok])
                if last:
                    break
                total += 1
                step = {
                    "input_ids": np.array([[tok]], dtype=np.int64),
                    "attention_mask": np.ones((1, total), dtype=np.int64),
                    "position_ids": np.array([[total - 1]], dtype=np.int64),
                    "media_time": np.array([[len(images)]], dtype=np.int64),
                    "num_logits_to_keep": np.array([1], dtype=np.int64),
                }
                if tok in stop or cancelled():
                    break
        finally:
            if started and not ended:
                # a sequence's slot is freed by a request flagged END: one
                # more step, its logits unused
                try:
                    call(step, end)
                except Exception:
                    pass

    def _batch(self, batch):
        out = []
        for r in batch:
            try:
                kw = {k: v for k, v in r.items() if k not in ("prompt", "images")}
                ids = [t for t, _ in self._tokens(r["prompt"], r["images"], kw)]
                out.append((self.front.decode(ids), ids))
            except Exception as e:
                out.append(e)
        return out
