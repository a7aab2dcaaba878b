"""OpenFlamingo from its PyTorch checkpoints to compiled ONNX inference.

The `flamingo` CLI's runtime, exporter and quantiser from Python::

    import flamingo

    flamingo.export(preset="of-mini", random_weights=True, out="of-mini")
    p = flamingo.Pipeline("of-mini", backend="ort-cpu")
    g = p.generate("<image>A photo of", images=["cat.png"], max_new_tokens=8)
    print(g.text, g.generated_ids)
    for tok in p.generate_stream("<image>A photo of", images=[pil_image]):
        print(tok.text, end="", flush=True)
    s = p.score("<image>Is this a cat? Answer:", ["cat.png"], [" yes", " no"])
    print(s.candidates[s.best].text)

Images are paths, encoded image files as ``bytes``, PIL images or numpy
arrays (HWC uint8, RGB); a list or tuple of them is a video's frames.
Results are dataclasses with the CLI's ``--json`` fields and ``to_dict()``.
Errors are :class:`FlamingoError` with the runtime's message. The graphs run
with the GIL released, so threads holding other pipelines run in parallel.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence as Seq, Union

from . import _flamingo
from ._flamingo import BACKENDS, FlamingoError, Frontend, __version__

__all__ = [
    "BACKENDS",
    "CandidateScore",
    "FlamingoError",
    "Frontend",
    "Generation",
    "Pipeline",
    "Score",
    "Sequence",
    "Stream",
    "Token",
    "convert",
    "export",
    "inspect",
    "quantize",
    "__version__",
]

#: What an image may be: a path, an encoded file's bytes, a PIL image, or a
#: numpy array (HWC uint8).
Image = Any
#: An image, or a video as its frames.
MediaItem = Union[Image, Seq[Image]]


class _Result:
    def to_dict(self) -> Dict[str, Any]:
        """The CLI's ``--json`` object."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Sequence(_Result):
    """One returned sequence: new tokens only (the stop token included when
    one was produced), their text (special tokens skipped), and the beam
    score for beam search."""

    generated_ids: List[int]
    text: str
    score: Optional[float] = None


@dataclass(frozen=True)
class Generation(_Result):
    """What :meth:`Pipeline.generate` returns; ``generated_ids`` and
    ``text`` are the first sequence's."""

    prompt_ids: List[int]
    generated_ids: List[int]
    text: str
    sequences: List[Sequence] = field(default_factory=list)

    @staticmethod
    def _from_json(text: str) -> "Generation":
        d = json.loads(text)
        return Generation(
            prompt_ids=d["prompt_ids"],
            generated_ids=d["generated_ids"],
            text=d["text"],
            sequences=[Sequence(**s) for s in d["sequences"]],
        )


@dataclass(frozen=True)
class Token(_Result):
    """A token as :meth:`Pipeline.generate_stream` produces it."""

    id: int
    text: str


@dataclass(frozen=True)
class CandidateScore(_Result):
    """A candidate's summed log-probability after the prompt."""

    text: str
    logprob_sum: float
    num_tokens: int


@dataclass(frozen=True)
class Score(_Result):
    """What :meth:`Pipeline.score` returns: every candidate, and the index of
    the most likely."""

    candidates: List[CandidateScore]
    best: int


def _frame(x: Image, at: str) -> tuple:
    if isinstance(x, (str, os.PathLike)):
        return ("path", os.fspath(x))
    if isinstance(x, (bytes, bytearray, memoryview)):
        return ("file", bytes(x))
    # PIL images (not imported: the package needs no PIL)
    if callable(getattr(x, "convert", None)) and hasattr(x, "size") and hasattr(x, "mode"):
        rgb = x.convert("RGB")
        w, h = rgb.size
        return ("rgb", rgb.tobytes(), w, h, 3)
    # numpy arrays (nor numpy)
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None and callable(getattr(x, "tobytes", None)):
        if str(dtype) != "uint8":
            raise FlamingoError(f"{at}: an array image must be uint8, not {dtype}")
        if len(shape) == 2:
            h, w = shape
            c = 1
        elif len(shape) == 3 and shape[2] in (1, 3, 4):
            h, w, c = shape
        else:
            raise FlamingoError(
                f"{at}: an array image must be HxW, HxWx3 (RGB) or HxWx4 (RGBA), not {tuple(shape)}"
            )
        return ("rgb", x.tobytes(), w, h, c)  # tobytes: C order whatever the strides
    raise FlamingoError(
        f"{at}: not an image (a path, bytes, a PIL image or an HxWx3 uint8 array): "
        f"{type(x).__name__}"
    )


def _media(images: Optional[Seq[MediaItem]]) -> list:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, bytes)):
        raise FlamingoError("images must be a list (one item per <image> marker)")
    out = []
    for i, item in enumerate(images):
        if isinstance(item, (list, tuple)):
            out.append([_frame(f, f"images[{i}][{j}]") for j, f in enumerate(item)])
        else:
            out.append(_frame(item, f"images[{i}]"))
    return out


class Stream:
    """The tokens of one generation as they are produced; iterate it. Its
    :attr:`result` is the :class:`Generation` once the iteration ends.
    Closing it (or leaving a ``with`` block) stops the generation after its
    current step."""

    def __init__(self, native: Any):
        self._native = native
        self._result: Optional[Generation] = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Token:
        t = self._native.next_token()
        if t is None:
            raise StopIteration
        return Token(*t)

    @property
    def result(self) -> Optional[Generation]:
        if self._result is None and self._native.result is not None:
            self._result = Generation._from_json(self._native.result)
        return self._result

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Pipeline:
    """A loaded export: ``Pipeline(model_dir, backend="tract")``.

    backend: ``tract`` (pure Rust, the default), ``ort-cpu``, ``ort-cuda`` or
    ``ort-tensorrt`` (ONNX Runtime, found through ``ORT_DYLIB_PATH``).

    options (as the CLI's flags): ``no_verify``, ``no_graph_cache``, ``max_media``,
    ``max_media_bytes``, ``max_image_pixels``, ``max_beams``,
    ``max_candidates``, ``media_cache_bytes``; GPU: ``device_id``,
    ``gpu_mem_limit``, ``trt_fp16``, ``trt_int8``, ``trt_calibration``,
    ``trt_cache``.

    One pipeline runs one call at a time (calls from several threads wait
    their turn); the media cache is shared by its calls.
    """

    def __init__(self, model_dir: Union[str, os.PathLike], backend: str = "tract", **options: Any):
        opts = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
        self.model_dir = os.fspath(model_dir)
        self._native = _flamingo.NativePipeline(self.model_dir, backend, json.dumps(opts))

    @property
    def backend(self) -> str:
        return self._native.backend

    @property
    def manifest(self) -> Dict[str, Any]:
        """The export's manifest (``flamingo inspect --json``)."""
        return json.loads(self._native.manifest)

    def media_cache_stats(self) -> Dict[str, int]:
        return json.loads(self._native.media_cache_stats())

    def prompt_ids(self, prompt: str, n_images: int = 0) -> List[int]:
        """The prompt's token ids, its ``<image>`` markers checked against ``n_images``."""
        return self._native.prompt_ids(prompt, n_images)

    def generate(
        self, prompt: str, images: Optional[Seq[MediaItem]] = None, **generate_kwargs: Any
    ) -> Generation:
        """Generates after ``prompt`` (one ``<image>`` per item of ``images``).

        generate_kwargs (transformers' names and defaults): ``max_new_tokens``
        (20), ``num_beams``, ``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``repetition_penalty``, ``no_repeat_ngram_size``,
        ``length_penalty``, ``early_stopping``, ``num_return_sequences``,
        ``seed``, ``stop`` (token strings; default ``<|endofchunk|>``) or
        ``stop_tokens`` (ids).
        """
        text = self._native.generate(prompt, _media(images), json.dumps(generate_kwargs))
        return Generation._from_json(text)

    def generate_stream(
        self, prompt: str, images: Optional[Seq[MediaItem]] = None, **generate_kwargs: Any
    ) -> Stream:
        """:meth:`generate`, token by token (beam search yields its best
        sequence at the end)."""
        return Stream(
            self._native.generate_stream(prompt, _media(images), json.dumps(generate_kwargs))
        )

    def generate_batch(
        self, requests: Seq[Dict[str, Any]], return_exceptions: bool = False
    ) -> List[Union[Generation, FlamingoError]]:
        """Several requests as one left-padded batch (beam searches one by
        one). Each request is a dict: ``prompt``, ``images`` and generation
        options. The first failed request raises, or with
        ``return_exceptions=True`` its :class:`FlamingoError` takes its place.
        """
        items = []
        for i, r in enumerate(requests):
            if not isinstance(r, dict) or "prompt" not in r:
                raise FlamingoError(f"requests[{i}]: a dict with a `prompt`")
            opts = {k: v for k, v in r.items() if k not in ("prompt", "images")}
            items.append((r["prompt"], _media(r.get("images")), json.dumps(opts)))
        out: List[Union[Generation, FlamingoError]] = []
        for ok, text in self._native.generate_batch(items):
            if ok:
                out.append(Generation._from_json(text))
            elif return_exceptions:
                out.append(FlamingoError(text))
            else:
                raise FlamingoError(text)
        return out

    def score(
        self, prompt: str, images: Optional[Seq[MediaItem]], candidates: Seq[str]
    ) -> Score:
        """Close-ended scoring: each candidate's log-probability sum after the
        prompt (``flamingo score --json``)."""
        if isinstance(candidates, str):
            raise FlamingoError("candidates must be a list of strings")
        d = json.loads(self._native.score(prompt, _media(images), list(candidates)))
        return Score(
            candidates=[CandidateScore(**c) for c in d["candidates"]], best=d["best"]
        )

    def __repr__(self) -> str:
        return f"Pipeline({self.model_dir!r}, backend={self.backend!r})"


def _fspaths(options: Dict[str, Any]) -> str:
    return json.dumps(
        {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    )


def inspect(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """An export's manifest (``flamingo inspect --json``)."""
    return json.loads(_flamingo.inspect(os.fspath(model_dir)))


def export(out: Union[str, os.PathLike], **options: Any) -> Dict[str, Any]:
    """``flamingo export``; returns the manifest.

    A release: ``clip``, ``lm``, ``checkpoint`` (paths), optional
    ``tokenizer``, ``vision_preset``, ``cross_attn_every_n_layers``,
    ``release``, ``max_pickle_depth``, ``max_pickle_objects``. Or random
    weights of an official shape: ``preset="of-mini"`` with
    ``random_weights=True``. Both: ``precision`` (``fp32``/``fp16``), ``force``.
    """
    return json.loads(_flamingo.export(_fspaths(dict(options, out=out))))


def quantize(
    input: Union[str, os.PathLike], out: Union[str, os.PathLike], weights: str = "int8", **options: Any
) -> Dict[str, Any]:
    """``flamingo quantize``; returns the manifest.

    weights: ``int8``, ``int8-ort``, ``int4``, ``int8-flamingo``,
    ``int4-flamingo``. options: ``block_size``, ``symmetric``, ``head_bits``,
    ``plain_kv_cache``, ``include_vision``, ``data`` (calibration JSONL for
    GPTQ), ``samples``, ``backend``, ``force``.
    """
    opts = dict(options, weights=weights)
    return json.loads(_flamingo.quantize(os.fspath(input), os.fspath(out), _fspaths(opts)))


def convert(
    input: Union[str, os.PathLike], out: Union[str, os.PathLike], precision: str = "fp16", force: bool = False
) -> Dict[str, Any]:
    """``flamingo convert``: an fp32 export rewritten to fp16; returns the manifest."""
    return json.loads(_flamingo.convert(os.fspath(input), os.fspath(out), precision, force))
