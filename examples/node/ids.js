#!/usr/bin/env node
// Read a recsys_export bundle's id maps exactly (no onnxruntime needed).
//
//   node examples/node/ids.js BUNDLE_DIR users|items     # prints the raw ids as JSON strings
//   const { readIdMap } = require('./ids.js');            # ids in index order
//
// The files are named by manifest.json (id_maps.users, id_maps.items). Integer ids come
// back as BigInt, string ids as strings. Integer ids above 2^53 - 1 are stored as decimal
// strings ("encoding": "decimal-strings"): as JSON numbers, JSON.parse would read them as
// float64 and merge neighbours (9007199254740993 becomes 9007199254740992).
'use strict';

const fs = require('node:fs');
const path = require('node:path');

function readIdMap(bundle, name) {
  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, 'manifest.json'), 'utf8'));
  const rel = manifest.id_maps && manifest.id_maps[name];
  if (typeof rel !== 'string') throw new Error(`manifest.json has no id_maps.${name}`);
  const map = JSON.parse(fs.readFileSync(path.join(bundle, rel), 'utf8'));
  if (map.kind === 'str') return map.ids.map(String);
  if (map.kind !== 'int') throw new Error(`${rel}: unknown kind ${map.kind}`);
  if (map.encoding === 'decimal-strings') return map.ids.map((v) => BigInt(v));
  if (map.encoding !== undefined) throw new Error(`${rel}: unknown encoding ${map.encoding}`);
  return map.ids.map((v) => {
    if (!Number.isSafeInteger(v)) throw new Error(`${rel}: id ${v} is not exact`);
    return BigInt(v);
  });
}

module.exports = { readIdMap };

if (require.main === module) {
  const [bundle, name] = process.argv.slice(2);
  if (!bundle || !['users', 'items'].includes(name)) {
    process.stderr.write('usage: node ids.js BUNDLE_DIR users|items\n');
    process.exit(2);
  }
  process.stdout.write(`${JSON.stringify(readIdMap(bundle, name).map(String))}\n`);
}
