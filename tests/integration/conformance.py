#!/usr/bin/python3
"""Tensor marshalling conformance of keeld's Open Inference Protocol API
against ONNX's own node tests (Debian's libonnx-testdata).

  conformance.py prepare LIST OUTDIR   one keel package source per test:
                                       OUTDIR/NAME/{keel.json,model.onnx};
                                       prints "NAME DIR" per line
  conformance.py run LIST URL          POSTs every test_data_set to
                                       /v2/models/NAME/infer twice (JSON
                                       tensors, binary tensor data) and
                                       compares each output with output_*.pb

LIST: one test directory name per line, '#' comments; flags after the name:
  dyn   declare every input and output dimension -1 in the manifest
  edge  add synthetic data sets of the dtype's extreme values (Max, Min,
        integer Mod: expected from numpy; StringNormalizer without stop
        words or case change: expected = input), compared exactly
  locale=L  set the StringNormalizer's locale attribute to L in the packaged
        model (ONNX Runtime's default, en_US.UTF-8, is missing on many hosts)

Needs numpy and onnx (Debian: python3-numpy, python3-onnx). Exit status 0
only when every test passes both ways.
"""
import glob
import http.client
import json
import os
import re
import shutil
import struct
import sys
import time
import urllib.parse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TESTDATA = os.environ.get("ONNX_TESTDATA", "/usr/share/libonnx-testdata/data/node")

# ONNX elem type -> (keel manifest dtype, KServe datatype, numpy dtype)
TYPES = {
    TensorProto.FLOAT: ("float32", "FP32", np.float32),
    TensorProto.FLOAT16: ("float16", "FP16", np.float16),
    TensorProto.DOUBLE: ("float64", "FP64", np.float64),
    TensorProto.INT8: ("int8", "INT8", np.int8),
    TensorProto.INT16: ("int16", "INT16", np.int16),
    TensorProto.INT32: ("int32", "INT32", np.int32),
    TensorProto.INT64: ("int64", "INT64", np.int64),
    TensorProto.UINT8: ("uint8", "UINT8", np.uint8),
    TensorProto.UINT16: ("uint16", "UINT16", np.uint16),
    TensorProto.UINT32: ("uint32", "UINT32", np.uint32),
    TensorProto.UINT64: ("uint64", "UINT64", np.uint64),
    TensorProto.BOOL: ("bool", "BOOL", np.bool_),
    TensorProto.STRING: ("string", "BYTES", object),
}
KSERVE_NP = {v[1]: v[2] for v in TYPES.values()}
TOL = {"FP32": (1e-5, 1e-6), "FP64": (1e-5, 1e-6), "FP16": (1e-3, 1e-3)}


def read_list(path):
    tests = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if line:
                tests.append((line[0], set(line[1:])))
    return tests


def pkg_name(test):
    n = "conf-" + re.sub(r"[^a-z0-9]+", "-", test[len("test_"):].lower()).strip("-")
    return n[:127]


class Spec:
    """A test: its model's free inputs and outputs, and its data sets."""

    def __init__(self, test, flags):
        self.test, self.flags, self.name = test, flags, pkg_name(test)
        self.dir = os.path.join(TESTDATA, test)
        self.model = onnx.load(os.path.join(self.dir, "model.onnx"))
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        self.inputs = [self.decl(v) for v in g.input if v.name not in inits]
        self.outputs = [self.decl(v) for v in g.output]

    def decl(self, v):
        if not v.type.HasField("tensor_type"):
            raise ValueError(f"{self.test}: {v.name} is not a tensor")
        t = v.type.tensor_type
        if t.elem_type not in TYPES:
            raise ValueError(f"{self.test}: {v.name} has ONNX type {t.elem_type}")
        d = {"name": v.name, "dtype": TYPES[t.elem_type][0]}
        if t.HasField("shape"):
            d["shape"] = [x.dim_value if x.HasField("dim_value") and "dyn" not in self.flags
                          else -1 for x in t.shape.dim]
        return d

    def size(self, name):
        """Elements of a graph input of fixed shape (whatever the dyn flag)."""
        v = next(v for v in self.model.graph.input if v.name == name)
        return int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))

    def manifest(self):
        return {"format": 1, "name": self.name, "version": "1.0.0", "task": "conformance",
                "description": f"ONNX node test {self.test}",
                "inputs": self.inputs, "outputs": self.outputs,
                "tiers": [{"name": "primary", "backend": "onnx", "model": "model.onnx"}]}

    def datasets(self):
        """[(label, [(name, array)] inputs, [(name, array)] outputs)]"""
        sets = []
        for d in sorted(glob.glob(os.path.join(self.dir, "test_data_set_*"))):
            ins = [load_pb(p) for p in sorted_pbs(d, "input")]
            outs = [load_pb(p) for p in sorted_pbs(d, "output")]
            # names: the .pb's own, else the graph's, by position
            ins = [(n or self.inputs[i]["name"], a) for i, (n, a) in enumerate(ins)]
            outs = [(n or self.outputs[i]["name"], a) for i, (n, a) in enumerate(outs)]
            sets.append((os.path.basename(d), ins, outs))
        if "edge" in self.flags:
            sets += [(f"edge{i}", ins, outs) for i, (ins, outs) in enumerate(self.edge())]
        return sets

    def edge(self):
        """[(inputs, outputs)] of extreme values, for a few simple operators."""
        node = self.model.graph.node[0]
        fmod = any(a.name == "fmod" and a.i for a in node.attribute)
        if node.op_type in ("Max", "Min", "Mod") and len(self.inputs) == 2 and not fmod:
            dt = TYPES_BY_KEEL[self.inputs[0]["dtype"]]
            n = self.size(self.inputs[0]["name"])
            a, b = (np.resize(x, n) for x in extremes(dt))
            f = {"Max": np.maximum, "Min": np.minimum, "Mod": np.mod}[node.op_type]
            if node.op_type == "Mod":  # integer Mod: the sign of the divisor, as Python's %
                if dt not in INTS:
                    raise ValueError(f"{self.test}: edge Mod needs an integer type")
                a, b = np.where(a == 0, dt(1), a), np.where(b == 0, dt(1), b)
            x, y, z = self.inputs[0]["name"], self.inputs[1]["name"], self.outputs[0]["name"]
            return [([(x, a), (y, b)], [(z, f(a, b))]), ([(x, b), (y, a)], [(z, f(b, a))])]
        if node.op_type == "StringNormalizer" and not any(
                at.name in ("stopwords", "case_change_action") for at in node.attribute):
            n = self.size(self.inputs[0]["name"])
            pool = ["", "h\u00e9llo w\u00f6rld \u2713 \U0001f600", 'quote " back \\ slash',
                    "tab\there\nnewline\r\x01\x1f", "x" * 5000, "/v2/models?a=b&c"]
            sets = []
            for i in range(0, len(pool), n):
                a = np.array((pool[i:] + pool)[:n], dtype=object)
                sets.append(([(self.inputs[0]["name"], a)], [(self.outputs[0]["name"], a.copy())]))
            return sets
        raise ValueError(f"{self.test}: no edge data set for {node.op_type}")


INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
TYPES_BY_KEEL = {v[0]: v[2] for v in TYPES.values()}


def extremes(dt):
    """Two 3-element arrays of a dtype's extreme values."""
    if dt in (np.float16, np.float32, np.float64):
        fi = np.finfo(dt)
        tiny_sub = np.nextafter(dt(0), dt(1))  # smallest subnormal
        a = np.array([fi.max, tiny_sub, -0.0], dtype=dt)
        b = np.array([fi.min, dt(0.1), -tiny_sub], dtype=dt)
    else:
        ii = np.iinfo(dt)
        mid = min(ii.max, 2**53 + 1)  # not a double: exact only without a float detour
        a = np.array([ii.min, ii.max, mid], dtype=dt)
        b = np.array([ii.max, ii.min, mid - 1 if ii.min < mid else mid], dtype=dt)
    return a, b


def sorted_pbs(d, kind):
    return sorted(glob.glob(os.path.join(d, f"{kind}_*.pb")),
                  key=lambda p: int(re.search(r"_(\d+)\.pb$", p).group(1)))


def load_pb(path):
    t = TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    a = numpy_helper.to_array(t)
    if t.data_type == TensorProto.STRING:
        a = np.array([x if isinstance(x, bytes) else str(x).encode() for x in a.flat],
                     dtype=object).reshape(a.shape)
    return t.name, a


# --- requests ---------------------------------------------------------------------------------

def kserve_type(decl_dtype):
    for v in TYPES.values():
        if v[0] == decl_dtype:
            return v[1]
    raise ValueError(decl_dtype)


def as_bytes(x):
    return x if isinstance(x, bytes) else str(x).encode()


def json_values(arr, kt):
    flat = arr.reshape(-1)
    if kt == "BYTES":
        return [as_bytes(x).decode("utf-8") for x in flat]
    if kt == "BOOL":
        return [bool(x) for x in flat]
    if kt in ("FP32", "FP16", "FP64"):
        return [float(x) for x in flat]
    return [int(x) for x in flat]


def binary_values(arr, kt):
    if kt == "BYTES":
        out = bytearray()
        for x in arr.reshape(-1):
            b = as_bytes(x)
            out += struct.pack("<I", len(b)) + b
        return bytes(out)
    dt = np.dtype(KSERVE_NP[kt]).newbyteorder("<")
    if kt == "BOOL":
        dt = np.dtype(np.uint8)
    return np.ascontiguousarray(arr.astype(dt)).tobytes()


def build_request(spec, ins, binary):
    decl = {d["name"]: d["dtype"] for d in spec.inputs}
    tensors, blobs = [], []
    for name, arr in ins:
        kt = kserve_type(decl[name])
        t = {"name": name, "shape": list(arr.shape), "datatype": kt}
        if binary:
            blob = binary_values(arr, kt)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = json_values(arr, kt)
        tensors.append(t)
    req = {"id": f"{spec.test}", "inputs": tensors}
    if binary:
        req["parameters"] = {"binary_data_output": True}
    head = json.dumps(req, ensure_ascii=False, allow_nan=False).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(len(head))}
    return head + b"".join(blobs), headers


def decode_response(body, hlen):
    """-> {name: (datatype, shape, np array | str problem)}"""
    jlen = len(body) if hlen is None else int(hlen)
    # "-0" is a valid JSON number for a float -0.0; Python would read an int 0
    doc = json.loads(body[:jlen].decode("utf-8"),
                     parse_int=lambda s: -0.0 if s == "-0" else int(s))
    off, res = jlen, {}
    for o in doc.get("outputs", []):
        kt, shape = o.get("datatype"), o.get("shape")
        n = int(np.prod(shape)) if shape is not None else 0
        bsize = (o.get("parameters") or {}).get("binary_data_size")
        if bsize is not None:
            raw = body[off:off + bsize]
            off += bsize
            if len(raw) != bsize:
                val = f"binary_data_size {bsize} runs past the body"
            elif kt == "BYTES":
                val, p = [], 0
                while p + 4 <= len(raw):
                    (ln,) = struct.unpack_from("<I", raw, p)
                    val.append(raw[p + 4:p + 4 + ln])
                    p += 4 + ln
                val = np.array(val, dtype=object) if p == len(raw) else \
                    f"BYTES binary data does not parse ({len(raw)} bytes)"
            elif kt == "BOOL":
                val = np.frombuffer(raw, dtype=np.uint8).astype(np.bool_)
            elif kt in KSERVE_NP:
                val = np.frombuffer(raw, dtype=np.dtype(KSERVE_NP[kt]).newbyteorder("<"))
            else:
                val = f"unknown datatype {kt}"
        else:
            data = o.get("data")
            if kt == "BYTES":
                val = np.array([s.encode() if isinstance(s, str) else s for s in data],
                               dtype=object)
            elif kt in KSERVE_NP:
                if kt in ("FP32", "FP64", "FP16"):
                    data = [np.nan if x is None else x for x in data]  # JSON has no NaN
                try:
                    val = np.array(data, dtype=KSERVE_NP[kt])
                except (TypeError, ValueError, OverflowError) as e:
                    val = f"data does not convert to {kt}: {e}"
                if kt != "BOOL" and not isinstance(val, str) and \
                        any(isinstance(x, bool) for x in data):
                    val = f"{kt} data holds JSON booleans"
                if kt == "BOOL" and not all(isinstance(x, bool) for x in data):
                    val = "BOOL data is not true/false"
            else:
                val = f"unknown datatype {kt}"
        if not isinstance(val, str) and shape is not None and val.size != n:
            val = f"{val.size} values for shape {shape}"
        res[o.get("name")] = (kt, shape, val)
    if off != len(body):
        res["<trailing>"] = (None, None, f"{len(body) - off} bytes after the outputs")
    return doc, res


def compare(spec, expected, got, exact=False):
    problems = []
    decl = {d["name"]: d["dtype"] for d in spec.outputs}
    want_names = [n for n, _ in expected]
    extra = [n for n in got if n not in want_names]
    if extra:
        problems.append(f"unexpected outputs {extra}")
    for name, exp in expected:
        if name not in got:
            problems.append(f"{name}: missing")
            continue
        kt, shape, val = got[name]
        want_kt = kserve_type(decl[name])
        if kt != want_kt:
            problems.append(f"{name}: datatype {kt}, want {want_kt}")
            continue
        if shape != list(exp.shape):
            problems.append(f"{name}: shape {shape}, want {list(exp.shape)}")
            continue
        if isinstance(val, str):
            problems.append(f"{name}: {val}")
            continue
        val = val.reshape(exp.shape)
        if kt in TOL:
            rtol, atol = TOL[kt]
            e64, g64 = exp.astype(np.float64), val.astype(np.float64)
            if exact:  # synthetic extremes: the values travel unchanged
                ok = (g64 == e64) & (np.signbit(g64) == np.signbit(e64))
            else:
                ok = np.isclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True)
            if not ok.all():
                i = int(np.argmin(ok.reshape(-1)))
                problems.append(f"{name}: {int((~ok).sum())} of {ok.size} values differ; "
                                f"first at {i}: got {g64.reshape(-1)[i]!r}, "
                                f"want {e64.reshape(-1)[i]!r}")
        else:
            if kt == "BYTES":
                e, g = [as_bytes(x) for x in exp.reshape(-1)], list(val.reshape(-1))
            else:
                e, g = exp.reshape(-1).tolist(), val.reshape(-1).tolist()
            bad = [i for i, (x, y) in enumerate(zip(e, g)) if x != y]
            if bad:
                i = bad[0]
                problems.append(f"{name}: {len(bad)} of {len(e)} values differ; first at {i}: "
                                f"got {g[i]!r}, want {e[i]!r}")
    return problems


def short(b, n=600):
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
    s = s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class Client:
    """One keep-alive connection, reopened after a failure."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.conn, self.dead = u.hostname, u.port, None, None

    def post(self, path, body, headers, method="POST"):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            return r.status, r.getheader("Inference-Header-Content-Length"), r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def check(client, spec, label, ins, outs, binary):
    """One request; returns a description of what is wrong, or None."""
    try:
        body, headers = build_request(spec, ins, binary)
    except ValueError as e:  # NaN or Inf in a JSON request
        return f"cannot encode the request: {e}"
    path = f"/v2/models/{spec.name}/infer"
    req = f"\n      request: POST {path} {headers} {short(body)}"
    if client.dead:
        return f"not run: keeld stopped answering at {client.dead}"
    try:
        status, hlen, rbody = client.post(path, body, headers)
    except (OSError, http.client.HTTPException) as e:
        try:  # a dropped keep-alive connection, or keeld gone?
            client.post("/v2/health/live", None, {}, method="GET")
        except (OSError, http.client.HTTPException):
            client.dead = f"{spec.test} {label}/{'binary' if binary else 'json'}"
        return f"connection: {e!r}{req}"
    if status != 200:
        return f"HTTP {status}: {short(rbody)}{req}"
    try:
        doc, got = decode_response(rbody, hlen)
    except (ValueError, UnicodeDecodeError) as e:
        return f"undecodable response ({e}): {short(rbody)}{req}"
    probs = compare(spec, outs, got, exact=label.startswith("edge"))
    if doc.get("model_name") != spec.name:
        probs.append(f"model_name {doc.get('model_name')!r}")
    if doc.get("id") != spec.test:
        probs.append(f"id {doc.get('id')!r}, want {spec.test!r}")
    if binary and hlen is None and any((o.get("parameters") or {}).get("binary_data_size")
                                       for o in doc.get("outputs", [])):
        probs.append("binary outputs without Inference-Header-Content-Length")
    if not binary and any("parameters" in o and "binary_data_size" in o["parameters"]
                          for o in doc.get("outputs", [])):
        probs.append("binary outputs that were not asked for")
    if probs:
        return "; ".join(probs) + req + f"\n      response: {short(rbody)}"
    return None


def run(list_path, url):
    client = Client(url)
    tests = read_list(list_path)
    fails, cover, specs, t0, nreq = {}, {}, [], time.monotonic(), 0
    for test, flags in tests:
        fails[test] = []
        try:
            spec = Spec(test, flags)
            specs.append((spec, spec.datasets()))
        except (OSError, ValueError) as e:
            fails[test].append(str(e))
            continue
        for d in spec.inputs + spec.outputs:
            cover.setdefault(d["dtype"], set()).add(test)
    # the test data first, the synthetic extremes after: a keeld that dies on
    # one of those still answers for every real test first
    for edge in (False, True):
        for spec, sets in specs:
            for label, ins, outs in sets:
                if label.startswith("edge") != edge:
                    continue
                for binary in (False, True):
                    nreq += 1
                    p = check(client, spec, label, ins, outs, binary)
                    if p:
                        fails[spec.test].append(f"{label}/{'binary' if binary else 'json'}: {p}")
    failed = [t for t, _ in tests if fails[t]]
    for test, _ in tests:
        print(f"{'FAIL' if fails[test] else 'ok  '} {test}")
        for f in fails[test]:
            print("    " + f)
    print(f"\n{len(tests) - len(failed)}/{len(tests)} tests pass both ways, "
          f"{nreq} requests in {time.monotonic() - t0:.1f} s")
    print("coverage (dtype: number of tests with an input or output of it):")
    for dt in sorted(cover):
        print(f"  {dt:8} {len(cover[dt]):3}")
    if failed:
        print("failed: " + " ".join(failed))
    return 1 if failed else 0


def prepare(list_path, outdir):
    seen = {}
    for test, flags in read_list(list_path):
        spec = Spec(test, flags)
        if spec.name in seen:
            sys.exit(f"{test} and {seen[spec.name]} both map to package {spec.name}")
        seen[spec.name] = test
        d = os.path.join(outdir, spec.name)
        os.makedirs(d)
        loc = [f.split("=", 1)[1] for f in flags if f.startswith("locale=")]
        if loc:
            m = onnx.load(os.path.join(spec.dir, "model.onnx"))
            for node in m.graph.node:
                if node.op_type == "StringNormalizer":
                    keep = [a for a in node.attribute if a.name != "locale"]
                    del node.attribute[:]
                    node.attribute.extend(keep + [helper.make_attribute("locale", loc[0])])
            onnx.save(m, os.path.join(d, "model.onnx"))
        else:
            shutil.copyfile(os.path.join(spec.dir, "model.onnx"), os.path.join(d, "model.onnx"))
        with open(os.path.join(d, "keel.json"), "w") as f:
            json.dump(spec.manifest(), f)
        print(spec.name, d)
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "prepare":
        return prepare(argv[2], argv[3])
    if len(argv) == 4 and argv[1] == "run":
        return run(argv[2], argv[3])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
