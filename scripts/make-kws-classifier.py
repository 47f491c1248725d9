#!/usr/bin/python3
"""Writes examples/kws/model/classifier.onnx: a stand-in wake-word classifier.

  embeddings f32[1,16,96] -> score f32[1,1]
  score = Sigmoid(ReduceMean(embeddings, axis 1) @ W + b)

openWakeWord's real classifiers (hey_jarvis and the rest) have this shape:
16 speech embeddings in, one score out. None with a clear license is in
../shared, so this one has fixed pseudo-random weights (numpy seed 10): it
is NOT trained and detects no word; it stands where a trained classifier
goes, so the package runs the whole three-model chain. Replace the file
with a trained classifier of the same shape for real detection.

Usage: make_classifier.py [OUT]. Needs python3-onnx; deterministic.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "examples", "kws", "model", "classifier.onnx")
rng = np.random.RandomState(10)
w = numpy_helper.from_array((rng.standard_normal((96, 1)) * 0.02).astype(np.float32), "W")
b = numpy_helper.from_array(np.array([0.0], np.float32), "b")
g = helper.make_graph(
    [helper.make_node("ReduceMean", ["embeddings"], ["mean"], axes=[1], keepdims=0),
     helper.make_node("MatMul", ["mean", "W"], ["logit0"]),
     helper.make_node("Add", ["logit0", "b"], ["logit"]),
     helper.make_node("Sigmoid", ["logit"], ["score"])],
    "kws_classifier",
    [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 16, 96])],
    [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])], [w, b])
m = helper.make_model(g, producer_name="keel-examples", opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 7
onnx.checker.check_model(m)
onnx.save(m, out)
