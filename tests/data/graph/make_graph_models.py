#!/usr/bin/python3
"""Writes the pipeline-tier fixtures of tests/unit/test_graph.c.

  double.onnx   x f32[-1,4] -> y f32[-1,4]:  y = 2 * x
  rowsum.onnx   a f32[-1,4] -> s f32[-1,1]:  s = ReduceSum(a, axis 1, keepdims)

Usage: make_graph_models.py OUTDIR. Needs python3-onnx; nothing is downloaded.
Deterministic: the same bytes every run.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 7


def save(graph, path):
    m = helper.make_model(graph, producer_name="keel-tests",
                          opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    onnx.save(m, path)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    save(helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [two]),
        os.path.join(out, "double.onnx"))
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    save(helper.make_graph(
        [helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=1)], "rowsum",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 1])], [axes]),
        os.path.join(out, "rowsum.onnx"))


if __name__ == "__main__":
    main()
