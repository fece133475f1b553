"""The dashboard's one page: plain HTML and a little JavaScript that talks JSON to `adl dashboard`'s server.

Everything is inline (the shared style sheet, the script), so the page works offline with no asset to fetch.
User text only ever enters the page as textContent or a title attribute, never as markup.
"""

from __future__ import annotations

from adl_jax.report.page import page

DASHBOARD_CSS = """
.panel{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.error{background:#fde8e8;border:1px solid #e0a0a0;color:#900;padding:.5em 1em;white-space:pre-wrap}
.row{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin:.4em 0}
textarea{width:100%;font-family:monospace} input[type=range]{width:18em}
.kl{font-family:monospace;border-radius:3px;padding:1px 2px;margin:0 1px;display:inline-block;white-space:pre}
.busy{color:#666;font-style:italic}
"""

SCRIPT = r"""
const $ = id => document.getElementById(id);
let state = {runs: [], defaults: {}};

function showError(msg) { const e = $('error'); e.textContent = msg || ''; e.hidden = !msg; }

async function call(path, body) {
  showError('');
  const res = await fetch(path, body === undefined ? {} :
    {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  let data;
  try { data = await res.json(); } catch (e) { data = {error: 'the server sent no JSON (' + res.status + ')'}; }
  if (!res.ok || data.error) { showError(data.error || ('HTTP ' + res.status)); return null; }
  return data;
}

function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }

function run() { return state.runs.find(r => r.name === $('run').value); }

function fillRuns(select) {
  const sel = $('run'); sel.replaceChildren(...state.runs.map(r => { const o = el('option', r.name); o.value = r.name; return o; }));
  if (select) sel.value = select;
  showRun();
}

function tokenRow(table, label, tokens) {
  const tr = el('tr'); tr.append(el('th', label));
  const td = el('td'); tokens.forEach(t => td.append(el('span', t, 'tok'))); tr.append(td); table.append(tr);
}

function showRun() {
  const r = run(); if (!r) return;
  $('run-info').textContent = `base ${r.base}, finetuned ${r.finetuned}; layer ${r.layer}, ${r.samples} texts, ` +
    `|delta| per position ${r.delta_norms.map(x => x.toFixed(1)).join(', ')}`;
  const pos = $('position'); pos.replaceChildren(...r.delta_norms.map((_, j) => { const o = el('option', j); o.value = j; return o; }));
  pos.value = Math.min(1, r.delta_norms.length - 1);
  const lens = $('lens'); lens.replaceChildren();
  if (!r.lenses) { lens.append(el('p', 'This run has no lens tokens (lens.json).', 'note')); }
  for (const p of r.lenses || []) {
    lens.append(el('h3', `Position ${p.position}`));
    const scale = el('select'); scale.className = 'scale';
    Object.keys(p.patchscope).forEach(s => { const o = el('option', 'patchscope @ ' + s); o.value = s; scale.append(o); });
    scale.value = p.chosen_scale;
    const table = el('table'); lens.append(scale, table);
    const draw = () => { table.replaceChildren(); tokenRow(table, 'logit lens of delta', p.logit_lens);
      tokenRow(table, 'patchscope @ ' + scale.value + (scale.value === p.chosen_scale ? ' (chosen)' : ''), p.patchscope[scale.value]);
      tokenRow(table, 'baseline: base mean', p.base_mean); };
    scale.onchange = draw; draw();
  }
  const audit = $('audit-steering'); audit.replaceChildren();
  for (const s of r.steering || []) {
    audit.append(el('h3', `Position ${s.position}: alpha ${s.alpha.toFixed(2)}; search path ` +
      s.path.map(x => x.alpha.toFixed(2) + (x.passed ? '✓' : '✗')).join(' → ')));
    for (const [prompt, texts] of Object.entries(s.steered)) {
      audit.append(el('p', prompt));
      const pair = el('div', undefined, 'pair'); const a = el('div'); const b = el('div');
      a.append(el('i', 'steered')); texts.forEach(t => a.append(el('div', t, 'sample')));
      b.append(el('i', 'unsteered')); (r.unsteered[prompt] || []).forEach(t => b.append(el('div', t, 'sample')));
      pair.append(a, b); audit.append(pair);
    }
  }
}

function syncAlpha(from) { if (from === 'slider') $('alpha').value = $('alpha-slider').value;
  else $('alpha-slider').value = $('alpha').value; }

async function steer() {
  $('steered').replaceChildren(); $('unsteered').replaceChildren(); $('steer-status').textContent = 'generating…';
  const data = await call('/api/steer', {run: $('run').value, prompt: $('prompt').value, alpha: $('alpha').value,
    position: $('position').value, model: $('model').value, seed: $('seed').value, samples: $('samples').value,
    new_tokens: $('new-tokens').value, temperature: $('temperature').value});
  $('steer-status').textContent = '';
  if (!data) return;
  $('steer-status').textContent = `steered the ${data.model} model at layer ${data.layer}, alpha ${data.alpha}`;
  data.steered.forEach(t => $('steered').append(el('div', t, 'sample')));
  data.unsteered.forEach(t => $('unsteered').append(el('div', t, 'sample')));
}

async function tokens() {
  const out = $('kl-text'); out.replaceChildren(el('span', 'computing…', 'busy'));
  const data = await call('/api/tokens', {text: $('kl-input').value});
  out.replaceChildren(); if (!data) return;
  const top = Math.max(...data.tokens.map(t => t.kl), 1e-9);
  $('kl-legend').textContent = `${data.tokens.length} tokens; darkest red = KL ${top.toFixed(3)} nats; ` +
    `mean ${data.mean_kl.toFixed(4)}. Hover a token for the tokens the finetune promoted after it.`;
  for (const t of data.tokens) {
    const s = el('span', t.token, 'kl'); s.dataset.kl = t.kl;
    s.style.background = `rgba(220,40,40,${(t.kl / top).toFixed(3)})`;
    s.title = `KL ${t.kl.toFixed(4)} nats; promoted next: ` + t.promoted.slice(0, 8).map(([w, r]) => `${JSON.stringify(w)} +${r.toFixed(2)}`).join(', ');
    out.append(s);
  }
}

async function openRun() {
  const data = await call('/api/run', {path: $('run-path').value});
  if (data) { state.runs = data.runs; fillRuns(data.name); }
}

async function init() {
  const data = await call('/api/overview'); if (!data) return;
  state = data; fillRuns();
  const d = data.defaults; $('alpha').value = d.alpha; syncAlpha('number'); $('seed').value = d.seed;
  $('samples').value = d.samples; $('new-tokens').value = d.new_tokens; $('temperature').value = d.temperature;
  $('alpha-slider').max = d.slider_max; $('alpha').max = d.alpha_max;
  document.body.dataset.ready = '1';
}
window.addEventListener('DOMContentLoaded', init);
"""

BODY = """
<h1>ADL dashboard</h1>
<div id="error" class="error" hidden></div>
<div class="panel"><div class="row"><label>Run <select id="run" onchange="showRun()"></select></label>
<input id="run-path" size="50" placeholder="another run directory of the same models">
<button id="open-run" onclick="openRun()">open</button></div><p id="run-info" class="note"></p></div>

<h2>Steer</h2>
<div class="panel">
<textarea id="prompt" rows="2" placeholder="a prompt"></textarea>
<div class="row">
<label>alpha <input id="alpha-slider" type="range" min="0" step="0.1" oninput="syncAlpha('slider')"></label>
<input id="alpha" type="number" min="0" step="0.1" style="width:6em" oninput="syncAlpha('number')">
<label>position <select id="position"></select></label>
<label>model <select id="model"><option value="finetuned">finetuned</option><option value="base">base</option></select></label>
<label>seed <input id="seed" type="number" style="width:5em"></label>
<label>samples <input id="samples" type="number" min="1" style="width:4em"></label>
<label>tokens <input id="new-tokens" type="number" min="1" style="width:5em"></label>
<label>temperature <input id="temperature" type="number" min="0" step="0.1" style="width:5em"></label>
<button id="steer" onclick="steer()">steer</button></div>
<p id="steer-status" class="note"></p>
<div class="pair"><div><i>steered</i><div id="steered"></div></div><div><i>unsteered</i><div id="unsteered"></div></div></div>
</div>

<h2>Per-token differences</h2>
<div class="panel">
<p class="note">Each token coloured by KL(finetuned || base) of the next-token distributions after it.</p>
<textarea id="kl-input" rows="3" placeholder="any text"></textarea>
<div class="row"><button id="show-kl" onclick="tokens()">show differences</button></div>
<p id="kl-legend" class="note"></p><div id="kl-text"></div>
</div>

<h2>The audit</h2>
<div class="panel"><h3>Tokens per position and scale</h3><div id="lens"></div>
<h3>Alpha search and samples</h3><div id="audit-steering"><p class="note">no steering stage in this run</p></div></div>
"""


def dashboard_page() -> str:
    """The whole page; its data comes from the server's /api/ endpoints."""
    return page("ADL dashboard", f"<style>{DASHBOARD_CSS}</style>{BODY}<script>{SCRIPT}</script>")
