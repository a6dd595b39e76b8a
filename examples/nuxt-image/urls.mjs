// Nuxt Image's imgproxy provider (`@nuxt/image`, pinned in package-lock.json) pointed at upres:
// the URLs a Nuxt site renders for `<NuxtImg provider="imgproxy" …>` with
//
//   // nuxt.config.ts
//   image: { imgproxy: { baseURL: "https://img.example.com", key: "<hex>", salt: "<hex>" } }
//
// built here without Nuxt, by the provider's own `getImage`. One URL per srcset width (plain
// resizes up to the source's size; the widest asks for `enlarge`, which upres fills with its
// super-resolution model) and a square thumbnail with imgproxy's smart gravity (`g:sm`).
//
//   npm ci   # once, in this folder
//   IMGPROXY_KEY=<hex> IMGPROXY_SALT=<hex> node urls.mjs http://127.0.0.1:8080 local:///shop/cat.png 160 320 640
//
// Prints one JSON line: [{name, url}, …]. Without IMGPROXY_KEY the URLs are unsigned (`unsafe`),
// for a server with signing off. The provider turns `fit: "contain"` with both sides into
// imgproxy's `extend`, which upres answers with 400: use `cover`, `inside`, `fill` or no `fit`.
import imgproxy from "@nuxt/image/runtime/providers/imgproxy";

const [baseURL, source, ...rest] = process.argv.slice(2);
if (!baseURL || !source) {
  console.error("usage: node urls.mjs <upres URL> <source URL> [widths…]");
  process.exit(2);
}
const widths = rest.length ? rest.map(Number) : [160, 320, 640, 1280];
const largest = Math.max(...widths);
const provider = imgproxy();
const options = { baseURL, key: process.env.IMGPROXY_KEY, salt: process.env.IMGPROXY_SALT };
const url = (modifiers) => provider.getImage(source, { ...options, modifiers }).url;

const out = widths.map((width) => ({
  name: `w${width}`,
  url: url({ width, format: "webp", ...(width === largest ? { enlarge: true } : {}) }),
}));
out.push({ name: "thumb_smart", url: url({ width: 100, height: 100, fit: "cover", gravity: "sm", format: "webp" }) });
console.log(JSON.stringify(out));
