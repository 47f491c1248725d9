'use strict';
// server.js - the peer for keel's serving-overhead benchmark: what a user
// would write instead of keeld to serve an ONNX model over the Open Inference
// Protocol (KServe v2) REST API, with Node's http module and onnxruntime-node.
//
//   PORT=8081 MODEL=/path/model.onnx node server.js
//
// Env: PORT (default 8081), HOST (default 127.0.0.1), MODEL (default the
// shared MNIST model), MODEL_NAME (default "mnist"), INTRA_THREADS (default 1,
// as keeld's ONNX Runtime sessions), WORKERS (default 1: one process, as a
// typical Node service; N > 1 forks N cluster workers sharing the port).
//
// Routes: POST /v2/models/NAME/infer, GET /v2/health/ready, GET /v2/health/live,
// GET /v2/models/NAME. Tensors are flat row-major "data" arrays (nested arrays
// are flattened too); FP32/FP64/INT32/INT64/UINT8/INT8/BOOL inputs.

const http = require('http');
const path = require('path');
const cluster = require('cluster');
const ort = require('onnxruntime-node');

const PORT = Number(process.env.PORT || 8081);
const HOST = process.env.HOST || '127.0.0.1';
const MODEL =
  process.env.MODEL ||
  path.resolve(__dirname, '../../../shared/models/onnx/mnist/mnist_ort_cxx_example.onnx');
const MODEL_NAME = process.env.MODEL_NAME || 'mnist';
const INTRA = Number(process.env.INTRA_THREADS || 1);
const WORKERS = Number(process.env.WORKERS || 1);

// KServe v2 datatype -> onnxruntime-node tensor type and typed array.
const DTYPES = {
  FP32: ['float32', Float32Array],
  FP64: ['float64', Float64Array],
  INT32: ['int32', Int32Array],
  INT64: ['int64', BigInt64Array],
  UINT8: ['uint8', Uint8Array],
  INT8: ['int8', Int8Array],
  BOOL: ['bool', Uint8Array],
};
const V2_TYPE = {
  float32: 'FP32', float64: 'FP64', int32: 'INT32', int64: 'INT64',
  uint8: 'UINT8', int8: 'INT8', bool: 'BOOL',
};

const INFER_PATH = `/v2/models/${MODEL_NAME}/infer`;
const META_PATH = `/v2/models/${MODEL_NAME}`;

function send(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

function toTensor(inp) {
  const dt = DTYPES[inp.datatype];
  if (!dt) throw new Error(`input "${inp.name}": unsupported datatype ${inp.datatype}`);
  if (!Array.isArray(inp.shape) || !Array.isArray(inp.data))
    throw new Error(`input "${inp.name}": shape and data must be arrays`);
  let data = inp.data;
  if (data.length && Array.isArray(data[0])) data = data.flat(Infinity);
  const n = inp.shape.reduce((a, b) => a * b, 1);
  if (n !== data.length)
    throw new Error(`input "${inp.name}": ${data.length} elements for shape [${inp.shape}]`);
  const arr = dt[1] === BigInt64Array ? BigInt64Array.from(data, BigInt) : dt[1].from(data);
  return new ort.Tensor(dt[0], arr, inp.shape);
}

function fromTensor(name, t) {
  const data = t.type === 'int64' ? Array.from(t.data, Number) : Array.from(t.data);
  return { name, shape: t.dims, datatype: V2_TYPE[t.type] || t.type, data };
}

async function main() {
  const session = await ort.InferenceSession.create(MODEL, {
    intraOpNumThreads: INTRA,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  });

  async function infer(req, res, raw) {
    let body;
    try {
      body = JSON.parse(raw);
      if (!body || !Array.isArray(body.inputs) || !body.inputs.length)
        throw new Error('"inputs" must be a non-empty array');
    } catch (e) {
      return send(res, 400, { error: `bad request: ${e.message}` });
    }
    const feeds = {};
    try {
      for (const inp of body.inputs) feeds[inp.name] = toTensor(inp);
    } catch (e) {
      return send(res, 400, { error: e.message });
    }
    let out;
    try {
      out = await session.run(feeds);
    } catch (e) {
      return send(res, 400, { error: e.message });
    }
    const outputs = session.outputNames.map((n) => fromTensor(n, out[n]));
    const reply = { model_name: MODEL_NAME, model_version: '1', outputs };
    if (body.id !== undefined) reply.id = body.id;
    send(res, 200, reply);
  }

  const server = http.createServer((req, res) => {
    const url = req.url.split('?', 1)[0];
    if (req.method === 'POST' && url === INFER_PATH) {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        infer(req, res, Buffer.concat(chunks).toString('utf8')).catch((e) =>
          send(res, 500, { error: String(e) }));
      });
      return;
    }
    if (req.method === 'GET' && (url === '/v2/health/ready' || url === '/v2/health/live'))
      return send(res, 200, { ready: true, live: true });
    if (req.method === 'GET' && url === META_PATH)
      return send(res, 200, {
        name: MODEL_NAME,
        platform: 'onnxruntime_onnx',
        inputs: session.inputNames.map((name) => ({ name })),
        outputs: session.outputNames.map((name) => ({ name })),
      });
    send(res, 404, { error: 'not found' });
  });
  // Keep-alive connections from the load generator must stay open for the
  // whole run (Node's default idle timeout is 5 s).
  server.keepAliveTimeout = 120000;
  server.headersTimeout = 121000;
  server.listen(PORT, HOST, () => {
    console.error(`node peer: ${MODEL_NAME} (${path.basename(MODEL)}) on http://${HOST}:${PORT}` +
      ` ort ${ort.env.versions ? ort.env.versions.common : ''} intra=${INTRA} pid=${process.pid}`);
  });
}

if (WORKERS > 1 && cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('exit', (w, code) => {
    console.error(`node peer: worker ${w.process.pid} exited (${code})`);
    process.exit(1);
  });
} else {
  main().catch((e) => {
    console.error(`node peer: ${e.stack || e}`);
    process.exit(1);
  });
}
