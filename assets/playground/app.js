// upres playground: builds a transform URL (or an upload), runs it with a progress stream,
// and shows what happened. Plain JavaScript, no dependencies, same-origin requests only.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { models: [], controller: null, events: null, originalUrl: '', uploadUrl: '' };

// The image types a browser's <img> would accept, so format=auto negotiates as it would there.
const IMG_ACCEPT = 'image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8';

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function setStatus(text) { $('status').textContent = text; }

function showError(text) {
  const e = $('error');
  e.textContent = text;
  e.hidden = !text;
}

async function loadModels() {
  try {
    const r = await fetch('/api/v1/model-info');
    const info = await r.json();
    const seen = new Map();
    for (const m of info.models) {
      const known = seen.get(m.name);
      if (known) known.scales.push(m.scale);
      else seen.set(m.name, { name: m.name, prompt: m.prompt_guided, scales: [m.scale], description: m.description });
    }
    state.models = [...seen.values()];
    const select = $('model');
    for (const m of state.models) {
      const o = document.createElement('option');
      o.value = m.name;
      o.textContent = `${m.name} (×${m.scales.sort().join('/×')})`;
      select.append(o);
    }
  } catch (e) {
    showError(`Could not read the loaded models: ${e}`);
  }
}

async function loadSamples() {
  const select = $('sample');
  try {
    const r = await fetch('/api/v1/samples');
    if (!r.ok) throw new Error((await r.json()).error?.message || r.status);
    const list = (await r.json()).samples;
    for (const s of list) {
      const o = document.createElement('option');
      o.value = s.key;
      o.textContent = `${s.key} (${formatBytes(s.bytes)})`;
      select.append(o);
    }
    if (!list.length) setStatus('The origin holds no images; upload one, or run scripts/fetch-samples.sh.');
    showOriginal();
  } catch (e) {
    setStatus(`No samples: ${e.message || e}`);
  }
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

function selectedModel() {
  return state.models.find((m) => m.name === $('model').value);
}

// Generation options count only for prompt-guided models (or auto with a prompt).
function usesPrompt() {
  const m = selectedModel();
  return m ? m.prompt : $('prompt').value.trim() !== '';
}

function transformPath(key) {
  const seg = [`x${$('scale').value}`];
  if ($('model').value !== 'auto') seg.push(`model=${encodeURIComponent($('model').value)}`);
  if (usesPrompt()) {
    const prompt = $('prompt').value.trim();
    const neg = $('negative').value.trim();
    if (prompt) seg.push(`prompt=${encodeURIComponent(prompt)}`);
    if (neg) seg.push(`neg=${encodeURIComponent(neg)}`);
    seg.push(`noise=${$('noise').value}`, `steps=${$('steps').value}`, `guidance=${$('guidance').value}`, `seed=${$('seed').value}`);
  }
  if ($('format').value !== 'auto') seg.push(`format=${$('format').value}`);
  if ($('quality').value) seg.push(`q=${$('quality').value}`);
  // A key whose first segment looks like an option needs the explicit end-of-options marker.
  if (/^(x\d+|-)$|=/.test(key.split('/')[0])) seg.push('-');
  return '/' + seg.join('/') + '/' + key.split('/').map(encodeURIComponent).join('/');
}

function source() { return document.querySelector('input[name=source]:checked').value; }

function showOriginal() {
  let url = '';
  if (source() === 'sample' && $('sample').value) {
    url = '/api/v1/samples/' + $('sample').value.split('/').map(encodeURIComponent).join('/');
  } else if (source() === 'upload') {
    url = state.uploadUrl;
  }
  state.originalUrl = url;
  for (const id of ['orig-nearest', 'orig-smooth', 'cmp-before']) {
    if (url) $(id).src = url; else $(id).removeAttribute('src');
  }
}

// Opens the progress stream for `id` and resolves once it is connected (or after 2 s).
function openProgress(id) {
  const events = new EventSource(`/api/v1/progress/${id}`);
  state.events = events;
  events.onmessage = (msg) => {
    const p = JSON.parse(msg.data);
    const bar = $('progress');
    if (p.state === 'running') {
      const tiles = p.tiles_total ? `tile ${Math.min(p.tiles_done + 1, p.tiles_total)} of ${p.tiles_total}` : '';
      const steps = p.steps_total ? `, step ${p.steps_done} of ${p.steps_total}` : '';
      const frac = p.tiles_total ? (p.tiles_done + (p.steps_total ? p.steps_done / p.steps_total : 0)) / p.tiles_total : 0;
      bar.max = 1;
      bar.value = Math.min(frac, 1);
      setStatus(p.tiles_done === p.tiles_total && p.tiles_total ? 'Encoding…' : `Upscaling: ${tiles}${steps}`);
    } else if (p.state === 'waiting') {
      setStatus('Fetching and decoding…');
    }
    if (p.state === 'done' || p.state === 'failed') events.close();
  };
  events.onerror = () => events.close();
  return new Promise((resolve) => {
    events.addEventListener('open', resolve, { once: true });
    setTimeout(resolve, 2000);
  });
}

function busy(on) {
  $('go').disabled = on;
  $('cancel').disabled = !on;
  $('form').setAttribute('aria-busy', on ? 'true' : 'false');
}

async function run(event) {
  event.preventDefault();
  showError('');
  if (source() === 'sample' && !$('sample').value) return showError('Pick a sample first.');
  if (source() === 'upload' && !$('file').files[0]) return showError('Choose or drop an image first.');
  busy(true);
  $('progress').removeAttribute('value');
  setStatus('Starting…');
  const id = randomId();
  state.controller = new AbortController();
  const started = performance.now();
  try {
    await openProgress(id);
    let response;
    let copyUrl;
    if (source() === 'sample') {
      const signed = await fetch('/api/v1/sign?path=' + encodeURIComponent(transformPath($('sample').value)));
      const body = await signed.json();
      if (!signed.ok) throw new Error(body.error?.message || `signing failed (${signed.status})`);
      copyUrl = new URL(body.path, location.href).href;
      response = await fetch(body.path, { headers: { 'X-Upres-Progress': id, Accept: IMG_ACCEPT }, signal: state.controller.signal });
    } else {
      const headers = { 'X-Upres-Progress': id, Accept: IMG_ACCEPT };
      if ($('apikey').value) headers.Authorization = `Bearer ${$('apikey').value}`;
      response = await fetch('/api/v1/upscale', { method: 'POST', body: uploadForm(), headers, signal: state.controller.signal });
      const location_ = response.headers.get('location');
      copyUrl = location_ ? new URL(location_, location.href).href : '';
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    const blob = await response.blob();
    await showResult(response, blob, copyUrl, performance.now() - started);
    $('progress').max = 1;
    $('progress').value = 1;
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
  } catch (e) {
    $('progress').value = 0;
    if (e.name === 'AbortError') setStatus('Cancelled. The server stops the work when nobody else waits for it.');
    else { setStatus('Failed.'); showError(e.message || String(e)); }
  } finally {
    if (state.events) state.events.close();
    state.controller = null;
    busy(false);
  }
}

function uploadForm() {
  const f = new FormData();
  f.append('image', $('file').files[0]);
  f.append('scale', $('scale').value);
  if ($('model').value !== 'auto') f.append('model', $('model').value);
  if ($('format').value !== 'auto') f.append('format', $('format').value);
  if ($('quality').value) f.append('quality', $('quality').value);
  if (usesPrompt()) {
    f.append('prompt', $('prompt').value.trim());
    if ($('negative').value.trim()) f.append('negative_prompt', $('negative').value.trim());
    f.append('noise_level', $('noise').value);
    f.append('num_inference_steps', $('steps').value);
    f.append('guidance_scale', $('guidance').value);
    f.append('seed', $('seed').value);
  }
  return f;
}

async function showResult(response, blob, copyUrl) {
  const url = URL.createObjectURL(blob);
  const out = $('out');
  out.src = url;
  await out.decode();
  // The result panes stay out of the page until there is a result to show in them.
  $('no-result').hidden = true;
  $('panes').hidden = false;
  const w = out.naturalWidth;
  const h = out.naturalHeight;
  $('cmp-after').src = url;
  for (const id of ['orig-nearest', 'orig-smooth', 'cmp-before']) {
    $(id).width = w;
    $(id).height = h;
  }
  $('f-model').textContent = response.headers.get('x-upres-model') || '–';
  $('f-cache').textContent = response.headers.get('x-upres-cache') || '–';
  $('f-timing').textContent = timings(response.headers.get('server-timing')) || '–';
  $('f-size').textContent = `${w} × ${h} px, ${formatBytes(blob.size)} (${blob.type || 'unknown type'})`;
  $('url').value = copyUrl || '';
  out.dataset.ready = 'true';
}

// "fetch;dur=1.2, decode;dur=3.4" → "fetch 1.2 ms · decode 3.4 ms"
function timings(header) {
  if (!header) return '';
  return header.split(',').map((part) => {
    const [name, ...params] = part.trim().split(';');
    const dur = params.find((p) => p.trim().startsWith('dur='));
    const desc = params.find((p) => p.trim().startsWith('desc='));
    if (dur) return `${name} ${Number(dur.split('=')[1]).toFixed(1)} ms`;
    return desc ? `${name} (${desc.split('=')[1].replace(/"/g, '')})` : name;
  }).join(' · ');
}

function setSplit(percent) {
  const p = Math.max(0, Math.min(100, percent));
  $('split').value = String(Math.round(p));
  $('cmp-before-clip').style.width = `${p}%`;
  $('cmp-line').style.left = `${p}%`;
}

function wireCompare() {
  const box = $('compare');
  const fromPointer = (e) => {
    const r = box.getBoundingClientRect();
    if (r.width) setSplit(((e.clientX - r.left) / r.width) * 100);
  };
  box.addEventListener('pointerdown', (e) => { box.setPointerCapture(e.pointerId); fromPointer(e); });
  box.addEventListener('pointermove', (e) => { if (box.hasPointerCapture(e.pointerId)) fromPointer(e); });
  $('split').addEventListener('input', (e) => setSplit(Number(e.target.value)));
  setSplit(50);
}

function wireUpload() {
  const drop = $('drop');
  const take = (file) => {
    if (!file) return;
    if (state.uploadUrl) URL.revokeObjectURL(state.uploadUrl);
    state.uploadUrl = URL.createObjectURL(file);
    drop.textContent = `${file.name} (${formatBytes(file.size)}): drop another to replace`;
    showOriginal();
  };
  $('file').addEventListener('change', () => take($('file').files[0]));
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = e.dataTransfer.files[0];
    if (!file) return;
    const list = new DataTransfer();
    list.items.add(file);
    $('file').files = list.files;
    take(file);
  });
}

function wireSource() {
  for (const radio of document.querySelectorAll('input[name=source]')) {
    radio.addEventListener('change', () => {
      $('sample-row').hidden = source() !== 'sample';
      $('upload-row').hidden = source() !== 'upload';
      showOriginal();
    });
  }
  $('sample').addEventListener('change', showOriginal);
}

document.addEventListener('DOMContentLoaded', () => {
  wireCompare();
  wireUpload();
  wireSource();
  $('form').addEventListener('submit', run);
  $('cancel').addEventListener('click', () => state.controller && state.controller.abort());
  $('copy').addEventListener('click', async () => {
    try { await navigator.clipboard.writeText($('url').value); setStatus('URL copied.'); }
    catch (_) { $('url').select(); setStatus('Press Ctrl+C to copy the selected URL.'); }
  });
  // The generation options apply only to prompt-guided models (and to auto, which may pick one).
  $('model').addEventListener('change', () => {
    const m = selectedModel();
    $('sd-options').disabled = Boolean(m && !m.prompt);
  });
  loadModels();
  loadSamples();
});
