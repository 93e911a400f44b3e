// Runs every case of a tests/test_compat.py manifest in onnxruntime-node and in onnxruntime-web
// (its wasm build, run by node), original and compressed, under the settings of compat_run.py
// that JavaScript offers: default and unfolded (graph optimizations off), and the lowered
// constant-folding cap.
//
//     NODE_PATH=DIR/node_modules node compat_node.cjs MANIFEST.json OUT_DIR
//
// Writes OUT_DIR/RUNTIME/NAME.SETTING/ROLE:OUTPUT.bin (raw little-endian values) with
// index.json (dtype and shape per output), and OUT_DIR/RUNTIME/results.json.
"use strict";
const fs = require("fs");
const path = require("path");

const CAP_KEY = ["optimization", "constant_folding_max_output_size_in_bytes"];
const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, float64: Float64Array, uint8: Uint8Array, bool: Uint8Array };

function feedsOf(ort, raw) {
  const feeds = {};
  for (const [name, meta] of Object.entries(raw)) {
    const bytes = fs.readFileSync(meta.file);
    const Kind = ARRAYS[meta.dtype];
    const values = new Kind(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    feeds[name] = new ort.Tensor(meta.dtype, values, meta.shape);
  }
  return feeds;
}

function sessionOptions(setting, caseInfo) {
  const options = { executionProviders: ["cpu"], logSeverityLevel: 3 };
  if (setting === "unfolded") options.graphOptimizationLevel = "disabled";
  if (setting === "cap") options.extra = { [CAP_KEY[0]]: { [CAP_KEY[1]]: String(caseInfo.cap) } };
  return options;
}

async function runCase(ort, runtime, caseInfo, setting, outDir) {
  const dir = path.join(outDir, `${caseInfo.name}.${setting}`);
  fs.mkdirSync(dir, { recursive: true });
  const index = {};
  for (const role of ["original", "compressed"]) {
    const options = sessionOptions(setting, caseInfo);
    if (runtime === "web") options.executionProviders = ["wasm"];
    let session;
    try {
      session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(caseInfo[role])), options);
      const results = await session.run(feedsOf(ort, caseInfo.feeds_raw));
      for (const [name, tensor] of Object.entries(results)) {
        const key = `${role}:${name}`;
        fs.writeFileSync(path.join(dir, `${key.replace(/[^A-Za-z0-9_.:-]/g, "_")}.bin`), Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
        index[key] = { dtype: tensor.type, shape: tensor.dims, file: `${key.replace(/[^A-Za-z0-9_.:-]/g, "_")}.bin` };
      }
    } catch (e) {
      return { status: `error: ${role}: ${String(e.message || e).split("\n")[0].slice(0, 300)}` };
    } finally {
      if (session) await session.release();
    }
  }
  fs.writeFileSync(path.join(dir, "index.json"), JSON.stringify(index));
  return { status: "ok" };
}

function older(have, needs) {
  for (let i = 0; i < needs.length; i++) {
    const h = have[i] || 0;
    if (h !== needs[i]) return h < needs[i];
  }
  return false;
}

async function main() {
  const [manifestPath, outRoot] = process.argv.slice(2);
  const manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
  for (const runtime of ["node", "web"]) {
    const ort = require(runtime === "node" ? "onnxruntime-node" : "onnxruntime-web");
    if (runtime === "web") ort.env.wasm.numThreads = 1; // no worker threads under node
    const outDir = path.join(outRoot, runtime);
    fs.mkdirSync(outDir, { recursive: true });
    const version = ort.env.versions[runtime] || ort.env.versions.common;
    const results = { onnxruntime: version, cases: {} };
    for (const caseInfo of manifest.cases) {
      results.cases[caseInfo.name] = {};
      for (const setting of ["default", "cap", "unfolded"]) {
        const tooOld = older(version.split(".").map(Number), caseInfo.min_ort || [0]);
        results.cases[caseInfo.name][setting] = tooOld ? { status: "skipped: too old" } : await runCase(ort, runtime, caseInfo, setting, outDir);
      }
    }
    fs.writeFileSync(path.join(outDir, "results.json"), JSON.stringify(results, null, 1));
  }
}

main().catch((e) => {
  console.error(String(e.stack || e));
  process.exit(1);
});
