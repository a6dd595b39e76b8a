// A responsive image page for upres, built with imgproxy's official Node SDK: the same code an
// imgproxy site already has. Widths up to the source's size are plain resizes; the widest one
// asks for `enlarge`, which upres fills with its super-resolution model.
//
//   npm ci   # once, in this folder
//   IMGPROXY_KEY=<hex> IMGPROXY_SALT=<hex> node srcset.mjs http://127.0.0.1:8080 local:///shop/cat.png > page.html
//
// Without IMGPROXY_KEY the URLs are unsigned (`insecure`), for a server with signing off.
import { generateImageUrl } from "@imgproxy/imgproxy-node";

const [endpoint, source, ...rest] = process.argv.slice(2);
if (!endpoint || !source) {
  console.error("usage: node srcset.mjs <upres URL> <source URL> [widths…]");
  process.exit(2);
}
const widths = rest.length ? rest.map(Number) : [160, 320, 640, 1280];
const largest = Math.max(...widths);

const url = (width) =>
  generateImageUrl({
    endpoint,
    url: source,
    options: {
      resizing_type: "fit",
      width,
      format: "webp",
      // Only the widest candidate may be upscaled; the others never exceed the source.
      ...(width === largest ? { enlarge: 1 } : {}),
    },
  });

const srcset = widths.map((w) => `${url(w)} ${w}w`).join(",\n      ");
console.log(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>upres srcset</title></head>
<body>
  <img
    src="${url(widths[0])}"
    srcset="
      ${srcset}"
    sizes="(max-width: 700px) 100vw, 640px"
    alt="">
</body>
</html>`);
