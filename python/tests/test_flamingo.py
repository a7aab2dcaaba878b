"""The `flamingo` Python package against the reference outputs the Rust
golden tests use (tests/fixtures/*/cases.json: open_flamingo 2.0.1's ids and
scores), on tract and ONNX Runtime CPU."""

import io
import json
import os
import pathlib
import threading

import numpy as np
import pytest
from PIL import Image

import flamingo

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
FAMILIES = ["tiny-mpt", "tiny-neox", "tiny-llama", "tiny-mosaic"]
BACKENDS = ["tract", "ort-cpu"]
# tests/src/tolerance.rs
SCORE_ABS, SCORE_REL = 1e-3, 1e-4


def cases(fx):
    return json.loads((FIXTURES / fx / "cases.json").read_text())


def case(fx, name):
    return next(c for c in cases(fx)["cases"] if c.get("name") == name)


def image(fx, i):
    return str(FIXTURES / fx / "images" / f"img{i}.png")


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Each fixture exported once through flamingo.export, as tests/src/lib.rs does."""
    out = {}
    for fx in FAMILIES:
        f = FIXTURES / fx
        j = json.loads((f / "flamingo.json").read_text())
        dst = tmp_path_factory.mktemp("export") / fx
        if "files" in j:
            files = j["files"]
            m = flamingo.export(
                dst, clip=f / files["clip"], lm=f / files["lm"], checkpoint=f / files["checkpoint"]
            )
        else:
            m = flamingo.export(
                dst,
                clip=f / "clip" / "open_clip_pytorch_model.bin",
                lm=f / "lm",
                checkpoint=f / "checkpoint.pt",
                tokenizer=f / "tokenizer",
                cross_attn_every_n_layers=j["cross_attn_every_n_layers"],
            )
        assert m == flamingo.inspect(dst)
        out[fx] = dst
    return out


@pytest.fixture(scope="session")
def pipelines(exports):
    cache = {}

    def get(fx, backend):
        if (fx, backend) not in cache:
            cache[(fx, backend)] = flamingo.Pipeline(exports[fx], backend=backend)
        return cache[(fx, backend)]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fx", FAMILIES)
def test_greedy_and_beam_equal_the_reference(pipelines, fx, backend):
    p = pipelines(fx, backend)
    checked = 0
    for c in cases(fx)["cases"]:
        if "prompt" not in c:
            continue
        for mode in ("greedy", "beam"):
            spec = c.get(mode)
            if spec is None:
                continue
            g = p.generate(
                c["prompt"],
                images=[image(fx, i) for i in c["images"]],
                max_new_tokens=spec["max_new_tokens"],
                num_beams=spec.get("num_beams", 1),
                stop_tokens=[spec["eos_token_id"]],
            )
            assert g.prompt_ids == c["input_ids"], (fx, c["name"])
            assert g.prompt_ids + g.generated_ids == spec["output_ids"], (backend, fx, c["name"], mode)
            assert g.generated_ids == g.sequences[0].generated_ids
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fx", FAMILIES)
def test_scores_equal_the_reference(pipelines, fx, backend):
    c = case(fx, "scoring")
    s = pipelines(fx, backend).score(
        c["prompt"], [image(fx, i) for i in c["images"]], c["candidates"]
    )
    assert [x.text for x in s.candidates] == c["candidates"]
    for got, want in zip(s.candidates, c["candidate_logprob_sums"]):
        err = abs(got.logprob_sum - want)
        assert err <= SCORE_ABS or err <= SCORE_REL * abs(want), (backend, fx, got, want)
    sums = [x.logprob_sum for x in s.candidates]
    assert s.best == sums.index(max(sums))
    assert s.to_dict() == {"candidates": [x.to_dict() for x in s.candidates], "best": s.best}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fx", FAMILIES)
def test_a_left_padded_batch_equals_the_reference(pipelines, fx, backend):
    c = case(fx, "batch-left-pad")
    spec = c["greedy"]
    reqs = []
    for r, prompt in enumerate(c["prompts"]):
        # the reference passes both images to every row; a row sees as many as it marks
        n = prompt.count("<image>")
        reqs.append(
            {
                "prompt": prompt,
                "images": [image(fx, i) for i in c["images"][r][:n]],
                "max_new_tokens": spec["max_new_tokens"],
                "stop_tokens": [spec["eos_token_id"]],
            }
        )
    outs = pipelines(fx, backend).generate_batch(reqs)
    for r, g in enumerate(outs):
        mask = c["attention_mask"][r]
        want = [t for j, t in enumerate(spec["output_ids"][r]) if j >= len(mask) or mask[j] != 0]
        assert g.prompt_ids + g.generated_ids == want, (backend, fx, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_yields_the_generated_tokens(pipelines, backend):
    fx = "tiny-llama"
    c = case(fx, "fewshot2")
    imgs = [image(fx, i) for i in c["images"]]
    g = pipelines(fx, backend).generate(c["prompt"], imgs, max_new_tokens=10)
    with pipelines(fx, backend).generate_stream(c["prompt"], imgs, max_new_tokens=10) as s:
        toks = list(s)
        assert [t.id for t in toks] == g.generated_ids
        assert "".join(t.text for t in toks) == g.text
        assert s.result == g
    # closed early: the pipeline is free for the next call at once
    s = pipelines(fx, backend).generate_stream(c["prompt"], imgs, max_new_tokens=10)
    first = next(s)
    s.close()
    assert first.id == g.generated_ids[0]
    assert pipelines(fx, backend).generate(c["prompt"], imgs, max_new_tokens=10) == g
    # an unread stream does not block the pipeline's next call (it waits
    # for the stream's generation to end), and keeps its tokens
    s = pipelines(fx, backend).generate_stream(c["prompt"], imgs, max_new_tokens=10)
    assert pipelines(fx, backend).generate(c["prompt"], imgs, max_new_tokens=10) == g
    assert [t.id for t in s] == g.generated_ids and s.result == g


def test_images_as_paths_bytes_pil_and_numpy_agree(pipelines):
    fx = "tiny-neox"
    c = case(fx, "fewshot2")
    p = pipelines(fx, "tract")
    paths = [image(fx, i) for i in c["images"]]
    want = p.generate(c["prompt"], paths, max_new_tokens=6).generated_ids
    raw = [pathlib.Path(x).read_bytes() for x in paths]
    pil = [Image.open(io.BytesIO(b)) for b in raw]
    arr = [np.asarray(im.convert("RGB")) for im in pil]
    rgba = [np.asarray(im.convert("RGBA")) for im in pil]
    strided = [np.ascontiguousarray(a[:, ::-1])[:, ::-1] for a in arr]  # a non-contiguous view
    for name, imgs in [
        ("pathlib", [pathlib.Path(x) for x in paths]),
        ("bytes", raw),
        ("PIL", pil),
        ("numpy", arr),
        ("numpy RGBA", rgba),
        ("numpy strided", strided),
    ]:
        assert p.generate(c["prompt"], imgs, max_new_tokens=6).generated_ids == want, name


def test_sampling_is_seeded_and_kwargs_are_checked(pipelines):
    fx = "tiny-llama"
    c = case(fx, "caption")
    p = pipelines(fx, "tract")
    imgs = [image(fx, 0)]
    a = p.generate(c["prompt"], imgs, do_sample=True, seed=7)
    assert a == p.generate(c["prompt"], imgs, do_sample=True, seed=7)
    assert a != p.generate(c["prompt"], imgs, do_sample=True, seed=8)
    beams = p.generate(c["prompt"], imgs, num_beams=3, num_return_sequences=2, max_new_tokens=8)
    assert len(beams.sequences) == 2 and beams.sequences[0].score >= beams.sequences[1].score
    with pytest.raises(flamingo.FlamingoError, match="several seeds"):
        p.generate(c["prompt"], imgs, do_sample=True, num_return_sequences=2)
    assert set(a.to_dict()) == {"prompt_ids", "generated_ids", "text", "sequences"}
    stop = p.generate(c["prompt"], imgs, stop=["<|endofchunk|>"], max_new_tokens=10)
    assert stop == p.generate(c["prompt"], imgs, max_new_tokens=10)
    with pytest.raises(flamingo.FlamingoError, match="unknown option `max_tokens`"):
        p.generate(c["prompt"], imgs, max_tokens=3)
    with pytest.raises(flamingo.FlamingoError, match="not a single token"):
        p.generate(c["prompt"], imgs, stop=["two words"])


def test_bad_input_raises_the_runtime_message(pipelines, tmp_path):
    fx = "tiny-llama"
    p = pipelines(fx, "tract")
    with pytest.raises(flamingo.FlamingoError, match="not a readable image"):
        p.generate("<image>a photo of", [b"this is not an image"])
    with pytest.raises(flamingo.FlamingoError, match="<image>"):
        p.generate("<image>a photo of<image>", [image(fx, 0)])
    with pytest.raises(flamingo.FlamingoError, match="not an image"):
        p.generate("<image>a photo of", [3.5])
    with pytest.raises(flamingo.FlamingoError, match="uint8"):
        p.generate("<image>a photo of", [np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(flamingo.FlamingoError, match="HxWx3"):
        p.generate("<image>a photo of", [np.zeros((8, 8, 2), dtype=np.uint8)])
    png = pathlib.Path(image(fx, 0)).read_bytes()
    with pytest.raises(flamingo.FlamingoError, match="not a readable image"):
        p.generate("<image>a photo of", [png[: len(png) // 2]])
    outs = p.generate_batch(
        [
            {"prompt": "<image>a photo of", "images": [image(fx, 0)], "max_new_tokens": 3},
            {"prompt": "<image>a photo of", "images": []},
        ],
        return_exceptions=True,
    )
    assert isinstance(outs[0], flamingo.Generation)
    assert isinstance(outs[1], flamingo.FlamingoError) and "requests[1]" in str(outs[1])
    with pytest.raises(flamingo.FlamingoError, match="requests\\[1\\]"):
        p.generate_batch([{"prompt": "a", "max_new_tokens": 1}, {"prompt": "<image>"}])
    with pytest.raises(flamingo.FlamingoError, match="unknown backend"):
        flamingo.Pipeline(tmp_path, backend="gpu9000")
    with pytest.raises(flamingo.FlamingoError, match="manifest"):
        flamingo.Pipeline(tmp_path)
    with pytest.raises(flamingo.FlamingoError, match="unknown option `max_beam`"):
        flamingo.Pipeline(tmp_path, max_beam=2)
    # the pipeline still serves
    assert p.generate("<image>a photo of", [image(fx, 0)], max_new_tokens=2).generated_ids


def test_the_gil_is_released_while_the_graphs_run(pipelines):
    fx = "tiny-llama"
    p = pipelines(fx, "tract")
    done = threading.Event()

    def work():
        for _ in range(3):
            p.generate("<image>a photo of", [image(fx, 0)], max_new_tokens=30, stop_tokens=[0])
        done.set()

    t = threading.Thread(target=work)
    t.start()
    spins = 0
    while not done.is_set():
        spins += 1
    t.join()
    # the main thread ran Python all along (with the GIL held it would run
    # only at the calls' boundaries)
    assert spins > 1000


def test_quantize_and_convert_write_exports_that_run(exports, tmp_path):
    src = exports["tiny-llama"]
    m = flamingo.quantize(src, tmp_path / "int8", weights="int8")
    assert m["precision"] == "int8-weights"
    assert m == flamingo.inspect(tmp_path / "int8")
    m16 = flamingo.convert(src, tmp_path / "fp16")
    assert m16["precision"] == "fp16"
    c = case("tiny-llama", "caption")
    for d in ("int8", "fp16"):
        g = flamingo.Pipeline(tmp_path / d).generate(
            c["prompt"], [image("tiny-llama", 0)], max_new_tokens=4
        )
        assert g.prompt_ids == c["input_ids"]
        assert len(g.generated_ids) == 4
    with pytest.raises(flamingo.FlamingoError, match="already exists"):
        flamingo.quantize(src, tmp_path / "int8")
    with pytest.raises(flamingo.FlamingoError, match="start from an fp32 export"):
        flamingo.quantize(tmp_path / "int8", tmp_path / "int4", weights="int4")
    with pytest.raises(flamingo.FlamingoError, match="unknown weight format"):
        flamingo.quantize(src, tmp_path / "x", weights="int3")
    assert not (tmp_path / "x").exists()


def test_the_frontend_tokenizes_and_preprocesses_as_the_pipeline(exports, pipelines):
    fx = "tiny-mosaic"
    f = flamingo.Frontend(exports[fx])
    c = case(fx, "fewshot2")
    assert f.prompt_ids(c["prompt"], len(c["images"])) == c["input_ids"]
    assert f.prompt_ids(c["prompt"], 2) == pipelines(fx, "tract").prompt_ids(c["prompt"], 2)
    s = json.loads(f.manifest)["preprocess"]["image_size"]
    px = np.frombuffer(f.pixel_values(pathlib.Path(image(fx, 0)).read_bytes(), "img0"), np.float32)
    assert px.shape == (3 * s * s,) and np.isfinite(px).all() and px.std() > 0
    assert f.decode(c["input_ids"][1:4]) == flamingo.Frontend(exports[fx]).decode(c["input_ids"][1:4])
    assert f.token_id("<image>") == cases(fx)["media_token_id"]
    with pytest.raises(flamingo.FlamingoError, match="img9: not a readable image"):
        f.pixel_values(b"GIF89a", "img9")
    with pytest.raises(flamingo.FlamingoError, match="marker"):
        f.prompt_ids(c["prompt"], 1)
