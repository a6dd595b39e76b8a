// A small upres client for Node 20+ with no dependencies: built-in fetch, FormData, Blob and
// node:crypto.
//
//   UPRES_URL=http://127.0.0.1:8080 node examples/js/client.mjs IMAGE [IMAGE...]
//
// upscale() and batchUpscale() call the REST API; signPath() builds imgproxy-style signed
// transform paths. Run as a script it uploads the images singly and as a batch, fetches the
// stored result, requests a (signed, when UPRES_KEY/UPRES_SALT are set) transform URL for SOURCE
// (default shop/cat.png), and prints one JSON summary on stdout.
import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";

/** `/<signature><path>`: base64url(HMAC-SHA256(key, salt || path)) without padding. */
export function signPath(path, keyHex, saltHex) {
  const mac = createHmac("sha256", Buffer.from(keyHex, "hex"));
  mac.update(Buffer.concat([Buffer.from(saltHex, "hex"), Buffer.from(path)]));
  return "/" + mac.digest("base64url") + path;
}

function form(images, fields) {
  const f = new FormData();
  images.forEach((bytes, i) => f.append("image", new Blob([bytes]), `${i}`));
  for (const [name, value] of Object.entries(fields)) f.append(name, String(value));
  return f;
}

/** One image → { status, headers, body (ArrayBuffer: the image or a JSON error) }. */
export async function upscale(base, image, fields = {}) {
  const r = await fetch(`${base}/api/v1/upscale`, { method: "POST", body: form([image], fields) });
  return { status: r.status, headers: r.headers, body: await r.arrayBuffer() };
}

/** Several images; `params` is an array aligned with them (objects or null). */
export async function batchUpscale(base, images, params, fields = {}) {
  const all = params ? { ...fields, params: JSON.stringify(params) } : fields;
  const r = await fetch(`${base}/api/v1/batch-upscale`, { method: "POST", body: form(images, all) });
  return { status: r.status, json: await r.json() };
}

async function main() {
  const base = (process.env.UPRES_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
  const paths = process.argv.slice(2);
  const images = await Promise.all((paths.length ? paths : ["samples/shop/cat.png"]).map((p) => readFile(p)));
  const summary = {};

  const info = await fetch(`${base}/api/v1/model-info`);
  summary.models = info.ok ? (await info.json()).models.map((m) => m.id) : info.status;

  const up = await upscale(base, images[0], { scale: 4, format: "png" });
  const location = up.headers.get("location");
  summary.upscale = {
    status: up.status, bytes: up.body.byteLength, etag: up.headers.get("etag"),
    model: up.headers.get("x-upres-model"), location,
  };
  if (up.status === 200) {
    const stored = await fetch(base + location);
    const bytes = Buffer.from(await stored.arrayBuffer());
    summary.stored = { status: stored.status, same: bytes.equals(Buffer.from(up.body)) };
  }

  const batch = await batchUpscale(base, images, [{ scale: 2 }], { format: "webp" });
  summary.batch = { status: batch.status, results: batch.json.results ?? batch.json };

  const path = "/x2/format=png/" + (process.env.SOURCE ?? "shop/cat.png");
  const { UPRES_KEY: key, UPRES_SALT: salt } = process.env;
  const url = key && salt ? signPath(path, key, salt) : path;
  const t = await fetch(base + url);
  summary.transform = { url, status: t.status, bytes: (await t.arrayBuffer()).byteLength };
  console.log(JSON.stringify(summary));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
}
