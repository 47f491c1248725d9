#!/usr/bin/python3
"""delta_models.py SRC.onnx OUTDIR - the model pairs bench/delta.sh measures:
  last_v1/v2.onnx    the last layer retrained: the last float initializer of at least
                     1024 weights gets new values, the rest stays equal
  slight_v1/v2.onnx  every float weight moved slightly (noise of 1% of each tensor's std)
  int8_v1/v2.onnx    the same two as int8 weights (DequantizeLinear, per-tensor scale)
Deterministic (fixed seeds). Needs Debian's python3-onnx and numpy (/usr/bin/python3)."""
import sys, copy
import numpy as np
import onnx
from onnx import numpy_helper, helper, TensorProto

src, out = sys.argv[1], sys.argv[2]
m = onnx.load(src)
floats = [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1]
rng = np.random.RandomState(11)

def save(model, name):
    onnx.save(model, f"{out}/{name}")

def with_weights(model, fn):
    m2 = copy.deepcopy(model)
    inits = [t for t in m2.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1]
    for i, t in enumerate(inits):
        a = numpy_helper.to_array(t).astype(np.float32)
        b = fn(i, len(inits), a)
        if b is not a:
            t.CopyFrom(numpy_helper.from_array(b.astype(np.float32), t.name))
    return m2

big = [i for i, t in enumerate(floats) if numpy_helper.to_array(t).size >= 1024]
last = big[-1] if big else len(floats) - 1
save(m, "last_v1.onnx")
save(with_weights(m, lambda i, n, a: (rng.randn(*a.shape) * (a.std() + 1e-6)).astype(np.float32)
                  if i == last else a), "last_v2.onnx")
slight = with_weights(m, lambda i, n, a: a + (rng.randn(*a.shape) * 0.01 * (a.std() + 1e-6)).astype(np.float32))
save(m, "slight_v1.onnx")
save(slight, "slight_v2.onnx")

def int8(model, scales=None):
    m2 = copy.deepcopy(model)
    g = m2.graph
    keep, nodes, found = [], [], {}
    for t in list(g.initializer):
        a = numpy_helper.to_array(t)
        if t.data_type != TensorProto.FLOAT or a.size < 64:
            keep.append(t)
            continue
        s = scales[t.name] if scales else float(np.abs(a).max() / 127 or 1.0)
        found[t.name] = s
        q = np.clip(np.round(a / s), -127, 127).astype(np.int8)
        keep.append(numpy_helper.from_array(q, t.name + "_q"))
        keep.append(numpy_helper.from_array(np.array(s, np.float32), t.name + "_scale"))
        nodes.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_scale"], [t.name]))
    del g.initializer[:]
    g.initializer.extend(keep)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return m2, found

q1, scales = int8(m)
q2, _ = int8(slight, scales)
save(q1, "int8_v1.onnx")
save(q2, "int8_v2.onnx")
