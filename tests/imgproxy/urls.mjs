// Builds signed imgproxy URLs with the official Node SDK (@imgproxy/imgproxy-node, pinned in
// package-lock.json) for tests/it/imgproxy.rs, which fetches them from a live upres and checks
// the answers. Usage: node urls.mjs <endpoint> <source URL> (IMGPROXY_KEY / IMGPROXY_SALT in the
// environment, as the SDK reads them). Prints one JSON line: [{name, url}, …].
import { generateImageUrl } from "@imgproxy/imgproxy-node";

const [endpoint, source] = process.argv.slice(2);
if (!endpoint || !source) {
  console.error("usage: node urls.mjs <endpoint> <source URL>");
  process.exit(2);
}

// One case per option family; `plain` ones use the /plain/<source> form, the rest base64.
const cases = {
  resize_fill: { resize: { resizing_type: "fill", width: 60, height: 60 } },
  size: { size: { width: 60, height: 0 } },
  resizing_type_force: { resizing_type: "force", width: 50, height: 30 },
  width: { width: 60 },
  height: { height: 40 },
  no_enlarge: { width: 300 },
  enlarge: { width: 300, enlarge: 1 },
  zoom: { width: 60, zoom: 2 },
  dpr: { width: 30, dpr: 2 },
  gravity: { resizing_type: "fill", width: 40, height: 40, gravity: { type: "we" } },
  smart_crop: { resizing_type: "fill", width: 40, height: 40, gravity: { type: "sm" } },
  quality_format: { width: 60, quality: 50, format: "jpg" },
  format_webp: { format: "webp", width: 60 },
  preset: { preset: ["thumb"] },
  cachebuster: { width: 60, cachebuster: "v2" },
  attachment: { width: 60, filename: { name: "kitty" }, return_attachment: 1 },
  unsupported_crop: { crop: { width: 10, height: 10 } },
  unsupported_background: { background: { r: 255, g: 0, b: 0 }, width: 60 },
  unsupported_min_width: { min_width: 200 },
};

const out = [];
for (const [name, options] of Object.entries(cases)) {
  out.push({ name, url: generateImageUrl({ endpoint, url: source, options }) });
}
out.push({ name: "plain", url: generateImageUrl({ endpoint, url: { value: source, displayAs: "plain" }, options: { width: 60 } }) });
console.log(JSON.stringify(out));
