// upres API docs: renders the served OpenAPI 3 document as a list of endpoints, each with its
// parameters, request body, responses and a "try it" form. No dependencies.
'use strict';

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
};

// Text with `code` spans (the document's descriptions use Markdown backticks) as nodes.
function rich(text) {
  const span = document.createElement('span');
  String(text || '').split('`').forEach((part, i) => span.append(i % 2 ? el('code', { text: part }) : document.createTextNode(part)));
  return span;
}

let spec = null;
let uid = 0;

// Follows local `$ref`s (`#/components/...`).
function resolve(obj) {
  let o = obj;
  for (let i = 0; o && o.$ref && i < 10; i++) {
    o = o.$ref.replace(/^#\//, '').split('/').reduce((acc, k) => acc && acc[k.replace(/~1/g, '/').replace(/~0/g, '~')], spec);
  }
  return o || {};
}

function typeOf(schema) {
  const s = resolve(schema);
  if (!s || !Object.keys(s).length) return '';
  let t = s.type || (s.oneOf || s.anyOf ? 'one of' : '');
  if (s.format) t += ` (${s.format})`;
  if (s.enum) t += `: ${s.enum.join(' | ')}`;
  if (s.minimum !== undefined || s.maximum !== undefined) t += ` ${s.minimum ?? ''}..${s.maximum ?? ''}`;
  if (s.default !== undefined) t += `, default ${JSON.stringify(s.default)}`;
  return t;
}

function paramTable(rows) {
  const table = el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'name' }), el('th', { text: 'in' }), el('th', { text: 'type' }), el('th', { text: 'description' }))));
  const body = el('tbody');
  for (const r of rows) {
    body.append(el('tr', {}, el('td', {}, el('code', { text: r.name + (r.required ? ' *' : '') })), el('td', { text: r.in }), el('td', { text: typeOf(r.schema) }), el('td', {}, rich(r.description || resolve(r.schema).description || ''))));
  }
  table.append(body);
  return table;
}

// The body's fields: for form/JSON objects, one row per property.
function bodyFields(op) {
  const body = resolve(op.requestBody);
  const content = body.content || {};
  const mediaType = Object.keys(content)[0];
  if (!mediaType) return null;
  const schema = resolve(content[mediaType].schema);
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, s]) => ({ name, in: 'body', schema: s, required: required.has(name), description: resolve(s).description }));
  return { mediaType, schema, fields, required: body.required };
}

// A file field: OpenAPI 3.0 says `format: binary`, 3.1 says `contentMediaType`; arrays of them
// take several files.
function isFile(s) { return s.format === 'binary' || s.contentMediaType !== undefined; }

function inputFor(field, id) {
  const s = resolve(field.schema);
  if (isFile(s)) return el('input', { type: 'file', id, name: field.name, required: field.required });
  if (s.type === 'array' && isFile(resolve(s.items || {}))) return el('input', { type: 'file', id, name: field.name, required: field.required, multiple: true });
  if (s.enum) {
    const select = el('select', { id, name: field.name });
    if (!field.required) select.append(el('option', { value: '', text: '(not set)' }));
    for (const v of s.enum) select.append(el('option', { value: v, text: v, selected: s.default === v }));
    return select;
  }
  const numeric = s.type === 'integer' || s.type === 'number';
  return el('input', { type: numeric ? 'number' : 'text', id, name: field.name, required: field.required, min: s.minimum, max: s.maximum, step: s.type === 'number' ? 'any' : undefined, placeholder: s.default !== undefined ? String(s.default) : undefined });
}

function tryForm(path, method, op) {
  const params = (op.parameters || []).map(resolve);
  const body = bodyFields(op);
  const form = el('form', { class: 'try' });
  const fields = [];
  for (const p of [...params, ...(body ? body.fields : [])]) {
    const id = `f${++uid}`;
    form.append(el('label', { for: id, text: `${p.name} (${p.in})${p.required ? ' – required' : ''}` }), inputFor(p, id));
    fields.push({ p, id });
  }
  let raw = null;
  if (body && !body.fields.length) {
    const id = `f${++uid}`;
    raw = el('textarea', { id, rows: 4 });
    form.append(el('label', { for: id, text: `request body (${body.mediaType})` }), raw);
  }
  const out = el('div', { 'aria-live': 'polite' });
  form.append(el('p', {}, el('button', { type: 'submit', text: `Send ${method.toUpperCase()}` })), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    out.replaceChildren(el('p', { text: 'Sending…' }));
    let url = path;
    const query = new URLSearchParams();
    const headers = {};
    let payload;
    const multipart = body && body.mediaType.startsWith('multipart/');
    const form_ = multipart ? new FormData() : null;
    const json = {};
    for (const { p, id } of fields) {
      const input = document.getElementById(id);
      if (p.in === 'body' && input.type === 'file') { for (const f of input.files) form_.append(p.name, f); continue; }
      const v = input.value;
      if (v === '') continue;
      if (p.in === 'path') url = url.replace(`{${p.name}}`, encodeURIComponent(v).replace(/%2F/gi, '/'));
      else if (p.in === 'query') query.append(p.name, v);
      else if (p.in === 'header') headers[p.name] = v;
      else if (multipart) form_.append(p.name, v);
      else { const t = resolve(p.schema).type; json[p.name] = t === 'integer' || t === 'number' ? Number(v) : v; }
    }
    if (multipart) payload = form_;
    else if (body && body.fields.length) { payload = JSON.stringify(json); headers['Content-Type'] = body.mediaType; }
    else if (raw && raw.value) { payload = raw.value; headers['Content-Type'] = body.mediaType; }
    if ([...query].length) url += `?${query}`;
    const key = document.getElementById('apikey').value;
    if (key && !headers.Authorization) headers.Authorization = `Bearer ${key}`;
    try {
      const started = performance.now();
      const r = await fetch(url, { method: method.toUpperCase(), headers, body: payload });
      const ms = (performance.now() - started).toFixed(0);
      const head = [...r.headers].map(([k, v]) => `${k}: ${v}`).join('\n');
      const type = r.headers.get('content-type') || '';
      const parts = [el('p', { text: `${r.status} ${r.statusText} in ${ms} ms` }), el('pre', { text: head })];
      if (type.startsWith('image/')) {
        const blob = await r.blob();
        parts.push(el('img', { src: URL.createObjectURL(blob), alt: `Response image (${type}, ${blob.size} bytes)` }));
      } else {
        const text = await r.text();
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
        parts.push(el('pre', { text: shown.slice(0, 20000) }));
      }
      out.replaceChildren(...parts);
    } catch (err) {
      out.replaceChildren(el('p', { class: 'error', text: String(err) }));
    }
  });
  return form;
}

function render() {
  document.getElementById('title').textContent = `${spec.info?.title || 'API'} ${spec.info?.version || ''}`;
  document.getElementById('description').replaceChildren(rich(spec.info?.description));
  const root = document.getElementById('endpoints');
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of ['get', 'post', 'put', 'patch', 'delete', 'head']) {
      const op = item[method];
      if (!op) continue;
      const params = [...(item.parameters || []), ...(op.parameters || [])].map(resolve);
      op.parameters = params;
      const body = bodyFields(op);
      const section = el('details', { class: 'endpoint panel' },
        el('summary', {}, el('span', { class: `method ${method}`, text: method.toUpperCase() }), el('code', { text: path }), op.summary ? rich(` – ${op.summary}`) : null));
      if (op.description) section.append(el('p', {}, rich(op.description)));
      if (params.length) section.append(el('h3', { text: 'Parameters' }), paramTable(params));
      if (body) section.append(el('h3', { text: `Request body (${body.mediaType})` }), body.fields.length ? paramTable(body.fields) : el('p', { text: typeOf(body.schema) }));
      const responses = Object.entries(op.responses || {});
      if (responses.length) {
        const list = el('ul');
        for (const [code, resp] of responses) {
          const r = resolve(resp);
          list.append(el('li', {}, el('code', { text: code }), rich(` ${r.description || ''} ${Object.keys(r.content || {}).join(', ')}`)));
        }
        section.append(el('h3', { text: 'Responses' }), list);
      }
      section.append(el('h3', { text: 'Try it' }), tryForm(path, method, op));
      root.append(section);
    }
  }
}

document.addEventListener('DOMContentLoaded', async () => {
  try {
    const r = await fetch('/api/v1/openapi.json');
    if (!r.ok) throw new Error(`GET /api/v1/openapi.json answered ${r.status}`);
    spec = await r.json();
    render();
    document.body.dataset.ready = 'true';
  } catch (e) {
    const err = document.getElementById('error');
    err.textContent = `Cannot render the API docs: ${e.message || e}`;
    err.hidden = false;
  }
});
