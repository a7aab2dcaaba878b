"""Checks of `flamingo export-triton --kind gpu`'s repository without a GPU.

  triton_gpu_repo.py check REPO EXPORT   every config.pbtxt parses as Triton's
      ModelConfig (the model_config proto of the tritonclient package; an
      unknown field is an error), and every graph model's inputs, outputs and
      KV-cache states match the export's manifest
  triton_gpu_repo.py emulate REPO OUT    a copy of REPO whose onnxruntime-backend
      models are python-backend stand-ins running the same ONNX files with
      onnxruntime from PyPI on the CPU (the decoder keeps its KV cache by
      correlation id, as Triton's implicit state would), so that the
      orchestrator runs end to end on a machine without a GPU or Triton's
      onnxruntime backend
"""

import json
import os
import shutil
import sys

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

GRAPHS = ["vision_encoder", "resampler", "media_kv", "decoder"]
ORCHESTRATORS = ["flamingo", "flamingo_stream"]
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def load(repo, name):
    c = mc.ModelConfig()
    text_format.Parse(open(os.path.join(repo, name, "config.pbtxt")).read(), c)
    return c


def fail(msg):
    sys.exit(f"triton_gpu_repo: {msg}")


def dims(shape):
    return [d if isinstance(d, int) else -1 for d in shape]


def is_state(name):
    return name.startswith("past_key_values.") or name.startswith("present.")


def check(repo, export):
    m = json.load(open(os.path.join(export, "manifest.json")))
    found = sorted(d for d in os.listdir(repo) if os.path.isdir(os.path.join(repo, d)))
    if found != sorted(GRAPHS + ORCHESTRATORS):
        fail(f"models {found}")
    checked = 0
    for name in GRAPHS:
        c, g = load(repo, name), m["graphs"][name]
        dt = mc.DataType.Name
        if c.backend != "onnxruntime" or c.default_model_filename != g["file"]:
            fail(f"{name}: backend {c.backend!r}, file {c.default_model_filename!r}")
        for f in [g["file"]] + ([g["data_file"]] if g.get("data_file") else []):
            if not os.path.isfile(os.path.join(repo, name, "1", f)):
                fail(f"{name}: no 1/{f}")
        batched = c.max_batch_size > 0
        for kind, want, got in (("input", g["inputs"], c.input), ("output", g["outputs"], c.output)):
            want = [t for t in want if not is_state(t["name"])]
            if [t["name"] for t in want] != [t.name for t in got]:
                fail(f"{name}: {kind}s {[t.name for t in got]}, manifest {[t['name'] for t in want]}")
            for w, t in zip(want, got):
                d = dims(w["shape"])[1:] if batched else dims(w["shape"])
                if dt(t.data_type) != TYPES[w["dtype"]] or list(t.dims) != d:
                    fail(f"{name}.{t.name}: {dt(t.data_type)} {list(t.dims)}, manifest {w['dtype']} {d}")
                checked += 1
        if any(t.kind != mc.ModelInstanceGroup.KIND_GPU for t in c.instance_group):
            fail(f"{name}: not on GPU instances")
        if name == "decoder":
            states = {s.input_name: s for s in c.sequence_batching.state}
            past = [t for t in g["inputs"] if t["name"].startswith("past_key_values.")]
            if len(states) != len(past) or len(past) != 2 * m["model"]["decoder"]["num_layers"]:
                fail(f"decoder: {len(states)} states for {len(past)} past inputs")
            for t in past:
                s = states.get(t["name"])
                present = "present." + t["name"][len("past_key_values."):]
                if s is None or s.output_name != present:
                    fail(f"decoder: no state {t['name']} -> {present}")
                if not any(o["name"] == present for o in g["outputs"]):
                    fail(f"decoder: the manifest has no {present}")
                want = [1] + dims(t["shape"])[1:]
                empty = [max(0, d) for d in want]
                if list(s.dims) != want or list(s.initial_state[0].dims) != empty:
                    fail(f"decoder state {t['name']}: {list(s.dims)} / {list(s.initial_state[0].dims)}")
                if not s.initial_state[0].zero_data:
                    fail("decoder: the initial state is not zeros")
                checked += 1
            if c.max_batch_size != 0 or not c.sequence_batching.HasField("direct"):
                fail("decoder: not one sequence per execution")
        elif not (batched and c.HasField("dynamic_batching")):
            fail(f"{name}: no dynamic batching")
    for name in ORCHESTRATORS:
        c = load(repo, name)
        if c.backend != "python" or not os.path.isfile(os.path.join(repo, name, "1", "model.py")):
            fail(f"{name}: not a python-backend model")
        if c.model_transaction_policy.decoupled != (name == "flamingo_stream"):
            fail(f"{name}: decoupled is {c.model_transaction_policy.decoupled}")
        ins = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in c.input}
        outs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in c.output}
        if ins.get("prompt") != ("TYPE_STRING", [1]) or ins.get("images") != ("TYPE_STRING", [-1]):
            fail(f"{name}: inputs {ins}")
        if ins.get("max_tokens") != ("TYPE_INT32", [1]):
            fail(f"{name}: max_tokens {ins.get('max_tokens')}")
        if outs != {"text": ("TYPE_STRING", [1]), "token_ids": ("TYPE_INT32", [-1])}:
            fail(f"{name}: outputs {outs}")
    export_in_repo = os.path.join(repo, "flamingo", "1", "export", "manifest.json")
    if json.load(open(export_in_repo)) != m:
        fail("the orchestrator's manifest is not the export's")
    print(f"triton_gpu_repo: {len(GRAPHS) + len(ORCHESTRATORS)} configs parse as ModelConfig; "
          f"{checked} graph inputs, outputs and states match the manifest")


STANDIN = '''"""A CPU stand-in for an onnxruntime-backend model (tests only): the ONNX
file through onnxruntime from PyPI; KV-cache states kept by correlation id."""
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

START = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
END = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = cfg["parameters"]
        f = os.path.join(args["model_repository"], args["model_version"], p["onnx_file"]["string_value"])
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(f, o, providers=["CPUExecutionProvider"])
        self.outputs = [t.name for t in self.sess.get_outputs()]
        self.states = json.loads(p.get("states", {}).get("string_value", "[]"))
        self.state_names = {s[0] for s in self.states}
        self.inputs = [t.name for t in self.sess.get_inputs() if t.name not in self.state_names]
        self.kv = {}

    def execute(self, requests):
        out = []
        for r in requests:
            try:
                feed = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                if self.states:
                    cid, flags = r.correlation_id(), r.flags()
                    if flags & START or cid not in self.kv:
                        self.kv[cid] = {s[0]: np.zeros(s[2], np.float32) for s in self.states}
                    feed.update(self.kv[cid])
                res = dict(zip(self.outputs, self.sess.run(None, feed)))
                if self.states:
                    if flags & END:
                        del self.kv[cid]
                    else:
                        self.kv[cid] = {s[0]: res[s[1]] for s in self.states}
                names = r.requested_output_names() or [n for n in self.outputs if n not in
                                                       {s[1] for s in self.states}]
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, res[n]) for n in names]))
            except Exception as e:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return out
'''


def emulate(repo, out):
    shutil.copytree(repo, out, copy_function=os.link)
    for name in GRAPHS:
        c = load(out, name)
        file = c.default_model_filename
        c.backend = "python"
        c.ClearField("default_model_filename")
        c.ClearField("optimization")
        for g in c.instance_group:
            g.kind = mc.ModelInstanceGroup.KIND_CPU
        if c.HasField("sequence_batching"):
            states = [[s.input_name, s.output_name, list(s.initial_state[0].dims)]
                      for s in c.sequence_batching.state]
            c.sequence_batching.ClearField("state")
            c.parameters["states"].string_value = json.dumps(states)
        c.parameters["onnx_file"].string_value = file
        path = os.path.join(out, name, "config.pbtxt")
        os.remove(path)
        open(path, "w").write(text_format.MessageToString(c))
        open(os.path.join(out, name, "1", "model.py"), "w").write(STANDIN)
    print(f"triton_gpu_repo: emulated {', '.join(GRAPHS)} on CPU in {out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "emulate":
        emulate(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
