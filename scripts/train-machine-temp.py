#!/usr/bin/python3
"""Train the examples/machine-temp anomaly detector and write its package files.

Data: NAB realKnownCause/machine_temperature_system_failure.csv (22,695
readings of an industrial machine's internal temperature at 5-minute steps)
with NAB's four labelled anomaly windows (labels/combined_windows.json),
from ../shared/data/nab (numenta/NAB, MIT).

A sample is a window of the last 32 raw readings (2 h 40 min); its label is
whether the newest reading lies in an NAB anomaly window. The model is a
scikit-learn MLP (one hidden layer of 16 ReLU units, logistic output) on the
readings z-normalised with the training split's mean and std. The ONNX graph
is written by hand with onnx.helper (no skl2onnx here), normalisation
included, so the package input is the raw readings:

    window f32[N,32] -> (x - mean) * (1/std) -> Gemm -> Relu -> Gemm -> Sigmoid -> score f32[N,1]

Evaluation, both on data the model never saw:
  * chronological hold-out: train on the first 80 % of windows, test on the
    last 20 % (which holds the fourth anomaly window); the shipped model is
    this one, and the validation CSV is drawn from this held-out part;
  * leave-one-anomaly-out: four folds, each holding out the stretch of the
    series around one anomaly window (a harder test: with only four
    anomalies, each fold's anomaly is a kind the model has not seen).

Writes, under examples/machine-temp/:
  model/machine_temp_mlp.onnx, rules.json (abs z-score of the newest reading
  against the training mean/std, > 3 -> anomaly), validation/machine-temp.csv
  (32 value columns v00..v31, oldest first, then label).

Deterministic (fixed seeds). Usage: scripts/train-machine-temp.py [SHARED_DIR [OUT_DIR]]
"""
import csv
import json
import os
import sys
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import precision_score, recall_score
from sklearn.neural_network import MLPClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "examples", "machine-temp")
SERIES = "realKnownCause/machine_temperature_system_failure.csv"
W = 32  # readings per window
THRESHOLD = 0.5  # score >= THRESHOLD -> anomaly (the package's postprocess)
Z_LIMIT = 3.0  # the rules tier


def load():
    with open(os.path.join(SHARED, "data", "nab", "data", SERIES)) as f:
        rows = list(csv.reader(f))[1:]
    ts = np.array([np.datetime64(r[0]) for r in rows])
    v = np.array([float(r[1]) for r in rows])
    with open(os.path.join(SHARED, "data", "nab", "labels", "combined_windows.json")) as f:
        windows = json.load(f)[SERIES]
    lab = np.zeros(len(v), bool)
    spans = []
    for a, b in windows:
        m = (ts >= np.datetime64(a[:19])) & (ts <= np.datetime64(b[:19]))
        lab |= m
        idx = np.flatnonzero(m)
        spans.append((int(idx[0]), int(idx[-1])))
    return v, lab, spans


def mlp():
    return MLPClassifier((16,), alpha=0.1, max_iter=500, random_state=0)


def fit(X, y):
    mean, std = float(X.mean()), float(X.std())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = mlp().fit((X - mean) / std, y)
    return m, mean, std


def forward(m, mean, std, X):
    """The ONNX graph's arithmetic in numpy (checks the export)."""
    h = np.maximum(((X - mean) * (1.0 / std)) @ m.coefs_[0] + m.intercepts_[0], 0)
    return 1.0 / (1.0 + np.exp(-(h @ m.coefs_[1] + m.intercepts_[1])))


def pr(y, p):
    return precision_score(y, p, zero_division=0), recall_score(y, p, zero_division=0)


def export(m, mean, std, path):
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    init = [
        numpy_helper.from_array(f32([mean]), "mean"),
        numpy_helper.from_array(f32([1.0 / std]), "inv_std"),
        numpy_helper.from_array(f32(m.coefs_[0]), "W1"),
        numpy_helper.from_array(f32(m.intercepts_[0]), "b1"),
        numpy_helper.from_array(f32(m.coefs_[1]), "W2"),
        numpy_helper.from_array(f32(m.intercepts_[1]), "b2"),
    ]
    nodes = [
        helper.make_node("Sub", ["window", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_std"], ["z"]),
        helper.make_node("Gemm", ["z", "W1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    g = helper.make_graph(
        nodes,
        "machine_temp_mlp",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", W])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        init,
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="keel scripts/train-machine-temp.py",
        doc_string="Anomaly probability of the newest of 32 raw machine temperature readings "
        "(NAB machine_temperature_system_failure); MLP 32-16-1, normalisation in the graph.",
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def compact(obj):
    """JSON with one line per feature and per rule."""
    d = lambda o: json.dumps(o, separators=(", ", ": "))  # noqa: E731
    feats = ",\n".join(f"    {d(k)}: {d(v)}" for k, v in obj["features"].items())
    rules = ",\n".join(f"    {d(r)}" for r in obj["rules"])
    return (
        f'{{\n  "format": {obj["format"]},\n  "input": {d(obj["input"])},\n'
        f'  "features": {{\n{feats}\n  }},\n  "rules": [\n{rules}\n  ]\n}}'
    )


def main():
    v, lab, spans = load()
    X = np.lib.stride_tricks.sliding_window_view(v, W).astype(np.float64)
    y = lab[W - 1 :]
    end = np.arange(W - 1, len(v))  # index of each window's newest reading
    print(f"{len(v)} readings, {lab.sum()} in {len(spans)} anomaly windows; {len(X)} windows")

    # leave-one-anomaly-out: fold k = the stretch between the midpoints to its neighbours
    bounds = [0] + [(spans[i][1] + spans[i + 1][0]) // 2 for i in range(len(spans) - 1)] + [len(v)]
    p_loo = np.zeros(len(X))
    for k in range(len(spans)):
        lo, hi = bounds[k], bounds[k + 1]
        te = (end >= lo) & (end < hi)
        tr = (end < lo - W) | (end >= hi + W)  # no window overlaps the test stretch
        m, mean, std = fit(X[tr], y[tr])
        p_loo[te] = forward(m, mean, std, X[te])[:, 0]
    p, r = pr(y, p_loo >= THRESHOLD)
    print(f"leave-one-anomaly-out (threshold {THRESHOLD}): precision {p:.3f} recall {r:.3f}")
    for k, (s, e) in enumerate(spans):
        sel = (end >= s) & (end <= e)
        print(f"  anomaly window {k + 1}: recall {np.mean(p_loo[sel] >= THRESHOLD):.3f}")

    # chronological hold-out: the shipped model
    cut = int(len(X) * 0.8)
    tr = np.arange(len(X)) < cut - W  # a gap of W so no reading is in both
    te = np.arange(len(X)) >= cut
    m, mean, std = fit(X[tr], y[tr])
    score = forward(m, mean, std, X)[:, 0]
    p, r = pr(y[te], score[te] >= THRESHOLD)
    acc = np.mean((score[te] >= THRESHOLD) == y[te])
    print(
        f"chronological hold-out (last 20 %, {te.sum()} windows, {y[te].sum()} anomalous): "
        f"precision {p:.3f} recall {r:.3f} accuracy {acc:.3f}"
    )
    p, r = pr(y[tr], score[tr] >= THRESHOLD)
    print(f"  (training split: precision {p:.3f} recall {r:.3f})")
    z = np.abs(X[:, -1] - mean) / std
    for name, sel in (("training split", tr), ("hold-out", te)):
        p, r = pr(y[sel], z[sel] > Z_LIMIT)
        print(f"rules |z| > {Z_LIMIT} on {name}: precision {p:.3f} recall {r:.3f}")
    print(f"training mean {mean:.6f} std {std:.6f}")

    export(m, mean, std, os.path.join(OUT, "model", "machine_temp_mlp.onnx"))

    # the rules tier: how often each rule is right on the training split
    hi_z = z[tr] > Z_LIMIT
    conf_anom = float(y[tr][hi_z].mean()) if hi_z.any() else 0.5
    conf_norm = float(1.0 - y[tr][~hi_z].mean())
    rules = {
        "format": 1,
        "input": "window",
        "features": {
            "last": {"fn": "last"},
            "z": {"fn": "abs_zscore", "of": "last", "mean": round(mean, 6), "std": round(std, 6)},
        },
        "rules": [
            {
                "if": [["z", ">", Z_LIMIT]],
                "label": "anomaly",
                "confidence": round(conf_anom, 2),
                "outputs": {"score": [round(conf_anom, 2)]},
            },
            {
                "label": "normal",
                "confidence": round(conf_norm, 2),
                "outputs": {"score": [round(1.0 - conf_norm, 2)]},
            },
        ],
    }
    with open(os.path.join(OUT, "rules.json"), "w") as f:
        f.write(compact(rules) + "\n")

    # validation: 40 anomalous + 60 normal windows from the hold-out, in time order
    rng = np.random.default_rng(7)
    held = np.flatnonzero(te)
    pick = np.sort(
        np.concatenate(
            [
                rng.choice(held[y[held]], 40, replace=False),
                rng.choice(held[~y[held]], 60, replace=False),
            ]
        )
    )
    os.makedirs(os.path.join(OUT, "validation"), exist_ok=True)
    with open(os.path.join(OUT, "validation", "machine-temp.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([f"v{i:02d}" for i in range(W)] + ["label"])
        for i in pick:
            w.writerow([repr(float(x)) for x in X[i]] + ["anomaly" if y[i] else "normal"])
    vx = X[pick].astype(np.float32).astype(np.float64)
    acc = np.mean((forward(m, mean, std, vx)[:, 0] >= THRESHOLD) == y[pick])
    racc = np.mean((np.abs(vx[:, -1] - mean) / std > Z_LIMIT) == y[pick])
    print(f"validation CSV: {len(pick)} windows, model accuracy {acc:.3f}, rules accuracy {racc:.3f}")


if __name__ == "__main__":
    main()
