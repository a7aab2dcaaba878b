#!/usr/bin/env python3
"""Seeds the fuzz corpora (fuzz/corpus/<target>/) from the bundled fixtures
and small files made here: torch-style zips with a fake `torch` module (the
pickles name torch's globals, nothing of torch is needed), safetensors,
shard indexes, configs, tokenizers, images, JSONL lines.
Usage: fuzz/seeds.py [EXPORT_DIR]  (an export of a tiny fixture, for ONNX
graphs and a manifest)."""
import collections, io, json, os, pickle, struct, sys, types, zipfile

root = os.path.dirname(os.path.abspath(__file__))
fx = os.path.join(root, "..", "tests", "fixtures")
corpus = os.path.join(root, "corpus")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# a fake torch whose globals pickle names as torch's own
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*a):
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    pass


class HalfStorage:
    pass


class BoolStorage:
    pass


for c in (FloatStorage, HalfStorage, BoolStorage):
    c.__module__ = "torch"
    setattr(torch, c.__name__, c)
torch._utils = utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, cls, key, n):
        self.cls, self.key, self.n = cls, key, n


class Tensor:
    def __init__(self, storage, shape, offset=0):
        self.s, self.shape, self.offset = storage, shape, offset

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2, (self.s, self.offset, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class P(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.n)
        return None


def torch_zip(tensors, prefix="archive", compression=zipfile.ZIP_STORED):
    """tensors: name -> (storage class, element size, shape)"""
    sd, blobs = collections.OrderedDict(), {}
    for i, (name, (cls, es, shape)) in enumerate(tensors.items()):
        n = 1
        for d in shape:
            n *= d
        sd[name] = Tensor(Storage(cls, str(i), n), shape)
        blobs[str(i)] = bytes(range(256)) * (n * es // 256) + bytes(n * es % 256)
    buf = io.BytesIO()
    P(buf, protocol=2).dump(sd)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        z.writestr(f"{prefix}/byteorder", "little")
        for k, b in blobs.items():
            z.writestr(f"{prefix}/data/{k}", b)
        z.writestr(f"{prefix}/version", "3\n")
    return out.getvalue(), buf.getvalue()


small = {"perceiver.latents": (FloatStorage, 4, [4, 8]), "w": (HalfStorage, 2, [3, 2]), "mask": (BoolStorage, 1, [2, 2])}
z, pk = torch_zip(small)
put("checkpoint", "small.pt", z)
put("pickle", "small.pkl", pk)
z, _ = torch_zip({"x": (FloatStorage, 4, [0])})
put("checkpoint", "empty-tensor.pt", z)
z, _ = torch_zip(small, prefix="deflated", compression=zipfile.ZIP_DEFLATED)
put("checkpoint", "deflated.pt", z)
# the TorchScript pickle of tiny-mosaic's CLIP (objects, BUILD, NEWOBJ)
with zipfile.ZipFile(os.path.join(fx, "tiny-mosaic", "clip", "model.pt")) as zz:
    put("pickle", "torchscript.pkl", zz.read("model/data.pkl"))
for f in ("tiny-mpt", "tiny-neox"):
    with zipfile.ZipFile(os.path.join(fx, f, "checkpoint.pt")) as zz:
        name = [n for n in zz.namelist() if n.endswith("data.pkl")][0]
        put("pickle", f"{f}-checkpoint.pkl", zz.read(name))


def safetensors(tensors):
    header, data, off = {}, b"", 0
    for name, (dtype, shape, es) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n * es]}
        data += bytes(n * es)
        off += n * es
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "small.safetensors", safetensors({"a": ("F32", [2, 3], 4), "b": ("BF16", [4], 2), "c": ("BOOL", [2], 1)}))
put("safetensors", "meta.safetensors", safetensors({"__metadata__": ("F32", [0], 4), "z": ("F16", [1], 2)}))
put("shard_index", "index.json", json.dumps({"metadata": {"total_size": 1}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
for f in ("tiny-mpt", "tiny-neox", "tiny-llama", "tiny-mosaic"):
    put("configs", f"{f}-config.json", open(os.path.join(fx, f, "lm", "config.json"), "rb").read())
for f in ("tiny-mpt", "tiny-mosaic"):
    tok = os.path.join(fx, f, "tokenizer" if f == "tiny-mpt" else "lm", "tokenizer.json")
    put("tokenizer", f"{f}-tokenizer.json", open(tok, "rb").read())
for i in range(4):
    put("image", f"img{i}.png", open(os.path.join(fx, "tiny-mpt", "images", f"img{i}.png"), "rb").read())
put("jsonl", "line.json", '{"prompt": "<image>a", "media": ["a.png", ["f1.png", "f2.png"]], "max_new_tokens": 3, "num_beams": 2}')
put("jsonl", "opts.json", '{"prompt": "x", "do_sample": true, "temperature": 0.7, "top_k": 5, "stop_tokens": [1, 2]}')
if len(sys.argv) > 1:
    e = sys.argv[1]
    put("configs", "manifest.json", open(os.path.join(e, "manifest.json"), "rb").read())
    for g in ("vision_encoder", "resampler", "media_kv", "decoder"):
        put("onnx", f"{g}.onnx", open(os.path.join(e, f"{g}.onnx"), "rb").read())
print("seeded", corpus)
