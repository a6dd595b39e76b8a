// Drives the playground in Debian's headless Chromium through playwright-core.
// Usage: node tests/browser/playground.mjs <base url> <artifact dir> <expected WxH> [slow model]
// Checks: the page loads without console errors, a sample upscales through the form to the
// expected natural size, accessibility basics (labels, keyboard slider, text contrast >= 4.5),
// cancelling a slow run from the page, /docs renders the served OpenAPI file, an AVIF result
// decodes with the PNG's colours; saves screenshots.
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, outDir, expected, slowModel] = process.argv.slice(2);
const [wantW, wantH] = expected.split('x').map(Number);
mkdirSync(outDir, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'upres-chromium-'));
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // Containers often have a small /dev/shm.
    '--disable-dev-shm-usage'],
});
try {
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) external.push(r.url()); });

  // 1. The page loads with samples and models.
  const resp = await page.goto(base + '/');
  check(resp.status() === 200, 'GET / answers 200');
  await page.waitForFunction(() => document.querySelectorAll('#sample option').length > 0 && document.querySelectorAll('#model option').length > 1);
  // Before the first run: a placeholder, and no empty result panes or broken-image icons.
  const before = await page.evaluate(() => ({
    placeholder: !document.getElementById('no-result').hidden && document.getElementById('no-result').getBoundingClientRect().height > 0,
    visibleEmptyImages: [...document.querySelectorAll('#result img')].filter((i) => i.getBoundingClientRect().height > 0 && !(i.complete && i.naturalWidth > 0)).map((i) => i.id),
  }));
  check(before.placeholder, 'before the first run the result section shows a placeholder');
  check(before.visibleEmptyImages.length === 0, `before the first run no empty image frame is visible (${before.visibleEmptyImages.join(', ') || 'none'})`);
  await page.screenshot({ path: join(outDir, 'playground-empty.png'), fullPage: true });
  await page.selectOption('#model', 'lanczos');
  await page.selectOption('#scale', '4');
  await page.selectOption('#format', 'png');

  // 2. An upscale of a sample through the form completes, at the expected size.
  await page.click('#go');
  await page.waitForSelector('#out[data-ready=true]');
  check(await page.evaluate(() => document.getElementById('no-result').hidden && !document.getElementById('panes').hidden), 'after a run the placeholder gives way to the result panes');
  const result = await page.evaluate(() => ({
    w: document.getElementById('out').naturalWidth,
    h: document.getElementById('out').naturalHeight,
    model: document.getElementById('f-model').textContent,
    cache: document.getElementById('f-cache').textContent,
    timing: document.getElementById('f-timing').textContent,
    size: document.getElementById('f-size').textContent,
    url: document.getElementById('url').value,
    status: document.getElementById('status').textContent,
  }));
  console.log(JSON.stringify(result));
  check(result.w === wantW && result.h === wantH, `result is ${wantW}x${wantH} (got ${result.w}x${result.h})`);
  check(result.model.startsWith('lanczos-x4@'), 'the model id is shown');
  check(result.cache === 'miss', 'the cache outcome is shown');
  check(/decode [\d.]+ ms/.test(result.timing), 'Server-Timing is shown');
  check(result.size.includes(`${wantW} × ${wantH} px`), 'output pixels and bytes are shown');
  check(result.url.startsWith(base + '/x4/model=lanczos/format=png/'), 'the transform URL is ready to copy');
  const fetched = await page.evaluate(async (u) => { const r = await fetch(u, { cache: 'no-store' }); return [r.status, r.headers.get('x-upres-cache')]; }, result.url);
  check(fetched[0] === 200 && fetched[1] === 'hit-memory', `the copied URL serves the same result from cache (${fetched})`);

  // 3. Accessibility basics.
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
    .map((e) => e.id || e.name || e.outerHTML.slice(0, 60)));
  check(unlabelled.length === 0, `every input has a label (${unlabelled.join(', ') || 'none missing'})`);
  await page.focus('#split');
  for (let i = 0; i < 5; i++) await page.keyboard.press('ArrowRight');
  const split = await page.evaluate(() => [document.activeElement.id, document.getElementById('split').value, document.getElementById('cmp-before-clip').style.width]);
  check(split[0] === 'split' && split[1] === '55' && split[2] === '55%', `the before/after slider moves with arrow keys (${split})`);
  await page.keyboard.press('End');
  const end = await page.evaluate(() => document.getElementById('cmp-line').style.left);
  await page.keyboard.press('Home');
  const home = await page.evaluate(() => document.getElementById('cmp-before-clip').style.width);
  check(end === '100%' && home === '0%', `End and Home move the split to the edges (${end}, ${home})`);
  await page.keyboard.press('Shift+Tab');
  check(await page.evaluate(() => document.activeElement.id === 'copy'), 'Shift+Tab moves focus back to the Copy button');
  await page.focus('#split');
  for (let i = 0; i < 50; i++) await page.keyboard.press('ArrowRight');
  const lowContrast = await page.evaluate(() => {
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => { const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const background = (e) => { for (let n = e; n; n = n.parentElement) { const c = rgb(getComputedStyle(n).backgroundColor); if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3); } return [255, 255, 255]; };
    const bad = [];
    for (const e of document.querySelectorAll('body *')) {
      const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !e.getClientRects().length || e.closest('[hidden]') || e.disabled) continue;
      const a = lum(rgb(getComputedStyle(e).color)); const b = lum(background(e));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5) bad.push(`${e.tagName.toLowerCase()}#${e.id} ${ratio.toFixed(2)}`);
    }
    return bad;
  });
  check(lowContrast.length === 0, `text contrast >= 4.5:1 (${lowContrast.join(', ') || 'all pass'})`);
  await page.screenshot({ path: join(outDir, 'playground.png'), fullPage: true });

  // 4. An upload (the file input; a drop fills the same input) goes through POST /api/v1/upscale.
  const original = await page.evaluate(async () => {
    const r = await fetch('/api/v1/samples/' + document.getElementById('sample').value);
    return Array.from(new Uint8Array(await r.arrayBuffer()));
  });
  await page.check('#src-upload');
  // Drag and drop: a synthetic drop of a file on the drop zone fills the file input.
  const dropped = await page.evaluate((bytes) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], 'dropped.png', { type: 'image/png' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
    return [document.getElementById('file').files[0]?.name, document.getElementById('orig-smooth').src.startsWith('blob:')];
  }, original);
  check(dropped[0] === 'dropped.png' && dropped[1], `a dropped file becomes the upload and the original shown (${dropped})`);
  await page.selectOption('#model', 'lanczos');
  await page.selectOption('#scale', '2');
  await page.evaluate(() => { document.getElementById('out').dataset.ready = 'false'; });
  await page.click('#go');
  await page.waitForSelector('#out[data-ready=true]');
  const upload = await page.evaluate(() => ({
    w: document.getElementById('out').naturalWidth,
    h: document.getElementById('out').naturalHeight,
    url: document.getElementById('url').value,
    model: document.getElementById('f-model').textContent,
  }));
  check(upload.w === wantW / 2 && upload.h === wantH / 2 && upload.model.startsWith('lanczos-x2@'), `an upload upscales ×2 (${upload.w}x${upload.h}, ${upload.model})`);
  check(/\/r\/[0-9a-f]{64}\.png$/.test(upload.url), `the upload's URL is its stored result (${upload.url})`);
  await page.check('#src-sample');

  // 5. Cancelling a slow run from the page (the server side checks that the work stopped).
  if (slowModel) {
    await page.selectOption('#model', slowModel);
    await page.selectOption('#scale', '2');
    await page.click('#go');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Upscaling'));
    await page.click('#cancel');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'));
    check(true, 'a slow run shows progress and cancels from the page');
  }

  // 6. /docs renders the served OpenAPI file, and an endpoint can be tried.
  const spec = (await fetch(base + '/api/v1/openapi.json')).status;
  if (spec === 200) {
    await page.goto(base + '/docs');
    await page.waitForSelector('body[data-ready=true]');
    const count = await page.locator('details.endpoint').count();
    check(count >= 2, `/docs lists the endpoints (${count})`);
    const health = page.locator('details.endpoint', { hasText: '/api/v1/health' }).first();
    await health.locator('summary').click();
    await health.locator('button[type=submit]').click();
    await health.locator('pre', { hasText: 'queue_depth' }).waitFor();
    check(true, '/docs: trying GET /api/v1/health shows its answer');
    const upscale = page.locator('details.endpoint', { hasText: 'Upscale one uploaded image' }).first();
    await upscale.locator('summary').click();
    await upscale.locator('input[type=file]').setInputFiles({ name: 'a.png', mimeType: 'image/png', buffer: Buffer.from(original) });
    await upscale.locator('input[name=model]').fill('lanczos');
    await upscale.locator('input[name=scale], select[name=scale]').first().evaluate((e) => { e.value = '2'; });
    await upscale.locator('button[type=submit]').click();
    const shown = upscale.locator('.try img');
    await shown.waitFor();
    const natural = await shown.evaluate(async (img) => { await img.decode(); return [img.naturalWidth, img.naturalHeight]; });
    check(natural[0] === wantW / 2 && natural[1] === wantH / 2, `/docs: trying POST /api/v1/upscale with a file shows the image (${natural})`);
    await page.screenshot({ path: join(outDir, 'docs.png'), fullPage: true });
  } else {
    console.log(`skip /docs: /api/v1/openapi.json answered ${spec}`);
  }

  // 7. The browser decodes upres's AVIF (10-bit 4:2:0), with the colours of the lossless PNG.
  await page.goto(base + '/');
  const compared = await page.evaluate(async (path) => {
    const pixels = async (format) => {
      const img = new Image();
      img.src = `/x2/model=lanczos/format=${format}/${path}`;
      await img.decode();
      const c = document.createElement('canvas');
      [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      return { size: [c.width, c.height], data: g.getImageData(0, 0, c.width, c.height).data };
    };
    const [avif, png] = [await pixels('avif'), await pixels('png')];
    let sum = 0;
    for (let i = 0; i < png.data.length; i++) sum += Math.abs(avif.data[i] - png.data[i]);
    return { size: avif.size, pngSize: png.size, meanDiff: sum / png.data.length };
  }, 'shop/cat.png');
  check(compared.size.join('x') === compared.pngSize.join('x') && compared.size[0] === wantW / 2,
    `an AVIF result decodes in Chromium at ${compared.size.join('x')}`);
  check(compared.meanDiff < 4, `the AVIF's pixels are within ${compared.meanDiff.toFixed(2)} (mean |Δ|, 0–255) of the PNG's`);

  check(consoleErrors.length === 0, `no console errors (${consoleErrors.join(' | ') || 'none'})`);
  check(external.length === 0, `no requests leave the server (${external.join(', ') || 'none'})`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (failures.length) {
  console.error(`${failures.length} check(s) failed`);
  process.exit(1);
}
