#!/usr/bin/env node
// Run a recsys_export bundle's ONNX graphs from Node.js (onnxruntime-node) and print JSON.
//
//   node examples/node/recommend.js BUNDLE_DIR INPUTS.txt
//
// The graphs are found through manifest.json (formats.onnx.graphs.{score,score_all,
// recommend}). INPUTS.txt has the same format as the C++ example's (examples/cpp/main.cpp):
// one "name v1 v2 ..." line per input (score_users, score_items, users, k, exclude_rows,
// exclude_items), integers are user/item *indices*; blank and '#' lines are ignored.
//
// Output: {"score": {"scores": [...]}, "score_all": {"scores": [[...]]},
//          "recommend": {"scores": [[...]], "items": [[...]]}}
// Non-finite scores (the -inf of unfillable recommend slots) come out as null, as
// JSON.stringify writes them; int64 outputs (BigInt64Array) are converted to Number.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const ort = require('onnxruntime-node');

const REQUIRED = ['score_users', 'score_items', 'users', 'k', 'exclude_rows', 'exclude_items'];

function readInputs(file) {
  const inputs = {};
  for (const raw of fs.readFileSync(file, 'utf8').split(/\r?\n/)) {
    const fields = raw.trim().split(/\s+/).filter((f) => f.length > 0);
    if (fields.length === 0 || fields[0].startsWith('#')) continue;
    const [name, ...values] = fields;
    inputs[name] = values.map((v) => {
      if (!/^-?\d+$/.test(v)) throw new Error(`not an integer: ${v}`);
      return BigInt(v);
    });
  }
  for (const name of REQUIRED) {
    if (!(name in inputs)) throw new Error(`missing input line: ${name}`);
  }
  if (inputs.k.length !== 1) throw new Error('k takes exactly one value');
  return inputs;
}

// int64 tensor; dims [] makes a 0-d scalar (the ONNX recommend graph's k).
function int64(values, dims = [values.length]) {
  return new ort.Tensor('int64', BigInt64Array.from(values), dims);
}

// An ORT output tensor as (nested) JS arrays of Numbers.
function toNested(tensor) {
  const flat = Array.from(tensor.data, (x) => Number(x));
  if (tensor.dims.length <= 1) return flat;
  const cols = tensor.dims[1];
  const rows = [];
  for (let r = 0; r < tensor.dims[0]; r++) rows.push(flat.slice(r * cols, (r + 1) * cols));
  return rows;
}

async function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write('usage: node recommend.js BUNDLE_DIR INPUTS.txt\n');
    return 2;
  }
  const [bundle, inputsFile] = argv;
  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, 'manifest.json'), 'utf8'));
  const graphs = manifest.formats && manifest.formats.onnx && manifest.formats.onnx.graphs;
  if (!graphs) throw new Error('manifest.json has no formats.onnx.graphs; export with onnx');
  const inputs = readInputs(inputsFile);

  const sessions = {};
  for (const entry of ['score', 'score_all', 'recommend']) {
    sessions[entry] = await ort.InferenceSession.create(path.join(bundle, graphs[entry]));
  }

  const score = await sessions.score.run({
    users: int64(inputs.score_users),
    items: int64(inputs.score_items),
  });
  const scoreAll = await sessions.score_all.run({ users: int64(inputs.users) });
  const rec = await sessions.recommend.run({
    users: int64(inputs.users),
    k: int64(inputs.k, []),
    exclude_rows: int64(inputs.exclude_rows),
    exclude_items: int64(inputs.exclude_items),
  });

  const out = {
    score: { scores: toNested(score.scores) },
    score_all: { scores: toNested(scoreAll.scores) },
    recommend: { scores: toNested(rec.scores), items: toNested(rec.items) },
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`recommend.js: ${err && err.message ? err.message : err}\n`);
    process.exitCode = 1;
  },
);
