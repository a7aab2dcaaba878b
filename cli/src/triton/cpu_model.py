"""Triton python-backend model of `flamingo export-triton --kind cpu`: the
whole pipeline through the `flamingo` Python package (its graphs on the
backend named by the `backend` parameter), one Pipeline per instance.

Non-decoupled (the model `flamingo`): the requests Triton batches into one
execute() run as one left-padded batch (Pipeline.generate_batch); each gets
`text` and `token_ids`. Decoupled (`flamingo_stream`): one response per
token (`text` piece, `token_ids` of that token), then an empty final one.
A request that fails gets a Triton error with the runtime's message.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import flamingo

# optional inputs -> generate() keyword (and how to read the value)
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


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        here = args["model_repository"]
        model_dir = _param(config, "model_dir", "1/export")
        if not os.path.isabs(model_dir):
            model_dir = os.path.normpath(os.path.join(here, model_dir))
        options = json.loads(_param(config, "pipeline_options", "{}"))
        self.max_tokens = int(_param(config, "max_tokens_cap", "512"))
        self.defaults = json.loads(_param(config, "generate_defaults", "{}"))
        self.pipeline = flamingo.Pipeline(
            model_dir, backend=_param(config, "backend", "tract"), **options
        )

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
        if batch:
            for i, g in zip(at, self.pipeline.generate_batch(batch, return_exceptions=True)):
                if isinstance(g, Exception):
                    out[i] = self._error(g)
                else:
                    out[i] = self._response(g.text, g.generated_ids)
        return out

    def _stream(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            prompt, images, kwargs = self._request(request)
            with self.pipeline.generate_stream(prompt, images, **kwargs) as stream:
                for tok in stream:
                    if request.is_cancelled():
                        break
                    sender.send(self._response(tok.text, [tok.id]))
            sender.send(flags=final)
        except Exception as e:
            sender.send(self._error(e), flags=final)

    def finalize(self):
        self.pipeline = None
