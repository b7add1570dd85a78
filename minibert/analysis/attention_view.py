"""What each head attends to: the data as JSON, and a self-contained HTML page to look at it.

JSON format ("minibert-attention/1"), one text or text pair:
    format        "minibert-attention/1"
    model         the model's source directory
    text, pair    the input texts (pair is null for a single text)
    tokens        T token strings, [CLS]/[SEP] (or <s>/</s>) included
    segments      T ints: 0 first text, 1 second text, -1 special token
    cls, sep      positions of the first special token and of the other special tokens
    layers, heads L and NH
    attention     [L][NH][T][T] floats rounded to 5 decimals: attention[l][h][i][j] is how much query token
                  i attends to key token j in head h of layer l + 1 (the layer producing hidden_states[l + 1];
                  heads count from 0); each row sums to 1
    entropy       [L][NH] mean over query tokens of -sum_j p_ij ln p_ij, in nats (0: each token looks at one
                  token; ln T: spread evenly over all T)
    to_cls, to_sep [L][NH] mean over query tokens of the attention paid to [CLS], and to all [SEP]s
    truncated     true when the input was cut to the model's max_length

The page embeds the same JSON and draws it with inline JavaScript: no network access is needed to view it.
Every "<", ">" and "&" in the embedded JSON is written as a JSON \\u escape, so no text can end the data's script
element or open a comment or script inside it. A page larger than PAGE_WARN_BYTES (20 MB: the attention
grows as layers x heads x tokens^2) and a truncated text each get a warning.
URL hash parameters choose what is shown (e.g. page.html#layer=2&head=5&view=lines: layers counted from 1
as on the page, heads from 0), so the view can be
linked to, and driven by a headless browser.
"""

import json

import numpy as np

from ..errors import InputError, warn_caller

FORMAT = "minibert-attention/1"
PAGE_WARN_BYTES = 20_000_000       # browsers grow slow to open and draw pages much larger than this


def head_summaries(probs, cls, sep):
    """probs [L, NH, T, T] -> entropy, to_cls, to_sep, each [L, NH], averaged over query tokens."""
    p = np.asarray(probs, dtype=np.float64)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1).mean(axis=-1)      # [L, NH]
    to_cls = p[..., cls].mean(axis=-1) if cls is not None else np.zeros(p.shape[:2])  # [L, NH]
    to_sep = p[..., sep].sum(axis=-1).mean(axis=-1) if sep else np.zeros(p.shape[:2])
    return entropy, to_cls, to_sep


def attention_data(model, text, pair=None, *, max_length=None):
    """Run one text (or pair) with output_attentions and gather the JSON-ready dict described above."""
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        raise InputError("attention takes one text (and optionally one pair text) as strings")
    batch = model.tokenize([text], None if pair is None else [pair], max_length=max_length)
    out = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True)
    probs = np.stack([a[0] for a in out.attentions])                                # [L, NH, T, T]
    segments = batch.sequence_ids[0]
    special = [int(i) for i in np.flatnonzero(segments < 0)]
    cls = special[0] if special and special[0] == 0 else None
    sep = [i for i in special if i != cls]
    entropy, to_cls, to_sep = head_summaries(probs, cls, sep)
    data = {"format": FORMAT, "model": model.source, "text": text, "pair": pair,
            "tokens": batch.tokens[0], "segments": segments.tolist(), "cls": cls, "sep": sep,
            "layers": int(probs.shape[0]), "heads": int(probs.shape[1]),
            "attention": np.round(probs.astype(np.float64), 5).tolist(),
            "entropy": np.round(entropy, 5).tolist(), "to_cls": np.round(to_cls, 5).tolist(),
            "to_sep": np.round(to_sep, 5).tolist(), "truncated": bool(batch.truncated[0])}
    if data["truncated"]:
        warn_caller(f"minibert: the {'text pair' if pair is not None else 'text'} was cut to "
                    f"{len(data['tokens'])} tokens (max_length); the attention shown covers only its start")
    return data


def write_json(data, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def render_html(data):
    """The page: the data in a <script type="application/json"> block, the viewer in inline JS and CSS."""
    # Inside a script element "</script" ends it and "<!--" then "<script" changes how the browser finds its
    # end: with every "<" (and ">", "&") written as a JSON \u escape, no text can do either. JSON has these
    # characters only inside strings, where the escapes read back as the same characters.
    payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = PAGE.replace("__DATA__", payload)
    size = len(page.encode("utf-8"))
    if size > PAGE_WARN_BYTES:
        warn_caller(f"minibert: the attention page is {size:,} bytes ({data['layers']} layers x {data['heads']} "
                    f"heads x {len(data['tokens'])}^2 tokens), more than {PAGE_WARN_BYTES:,}: browsers "
                    "may be slow to open it; a shorter text (max_length) makes it smaller")
    return page


def write_html(data, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(data))


def summary_table(data):
    """Text summary: per layer, the head that attends most to [CLS], most to [SEP], and the flattest head."""
    lines = [f"{len(data['tokens'])} tokens, {data['layers']} layers x {data['heads']} heads",
             f"{'layer':<7}{'most to [CLS]':>20}{'most to [SEP]':>20}{'broadest (entropy)':>24}"]
    for layer in range(data["layers"]):
        c, s, e = (np.asarray(data[k][layer]) for k in ("to_cls", "to_sep", "entropy"))
        lines.append(f"{layer + 1:<7}{f'head {c.argmax()}: {c.max():.2f}':>20}{f'head {s.argmax()}: {s.max():.2f}':>20}"
                     f"{f'head {e.argmax()}: {e.max():.2f} nats':>24}")
    return "\n".join(lines)


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>minibert attention</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
#texts { color: #555; margin-bottom: 10px; }
.controls { display: flex; gap: 14px; align-items: center; margin-bottom: 12px; flex-wrap: wrap; }
.row { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; }
table.heat { border-collapse: collapse; font-size: 11px; }
table.heat td { width: 18px; height: 18px; padding: 0; border: 1px solid #fff; }
table.heat th { font-weight: normal; padding: 0 4px; white-space: nowrap; }
table.heat thead th { writing-mode: vertical-rl; transform: rotate(180deg); height: 70px; text-align: left; }
table.heat tbody th { text-align: right; }
table.heads { border-collapse: collapse; font-size: 11px; }
table.heads td { width: 34px; height: 22px; text-align: center; border: 1px solid #fff; cursor: pointer; }
table.heads td.chosen { outline: 2px solid #d33; }
table.heads th { font-weight: normal; padding: 0 4px; }
svg text { font: 12px system-ui, sans-serif; }
.note { color: #666; font-size: 12px; max-width: 520px; }
</style>
</head>
<body>
<h1>minibert attention</h1>
<div id="texts"></div>
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label>view <select id="view"><option value="heatmap">heatmap</option>""" \
    r"""<option value="lines">lines</option></select></label>
  <span id="status"></span>
</div>
<div class="row">
  <div id="main"></div>
  <div>
    <div><b>Every head</b>: colour = <select id="metric">
      <option value="entropy">entropy (nats)</option><option value="to_cls">attention to [CLS]</option>
      <option value="to_sep">attention to [SEP]</option></select> (click a cell to show that head)</div>
    <div id="heads"></div>
    <p class="note" id="headinfo"></p>
    <p class="note">Rows are query tokens, columns the tokens they attend to; each row sums to 1.
      Entropy is averaged over query tokens: 0 means every token looks at a single token,
      ln(T) that attention is spread evenly.</p>
  </div>
</div>
<script type="application/json" id="minibert-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("minibert-data").textContent);
const $ = (id) => document.getElementById(id);
const state = { layer: 0, head: 0, view: "heatmap", metric: "entropy" };

function esc(s) {   // also quotes: tokens are written inside title="..." attributes
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
function blue(v) { const c = Math.round(255 * (1 - v)); return `rgb(${c},${c},255)`; }
function fmt(v) { return v.toFixed(3); }

function options(select, n, label) {
  select.innerHTML = "";
  for (let i = 0; i < n; i++) select.add(new Option(label(i), String(i)));
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const int = (k, n) => { const v = parseInt(p.get(k), 10); return Number.isInteger(v) && v >= 0 && v < n ? v : null; };
  const layer = int("layer", D.layers + 1), head = int("head", D.heads);   // layers count from 1, as shown
  if (layer !== null && layer >= 1) state.layer = layer - 1;
  if (head !== null) state.head = head;
  if (p.get("view") === "lines" || p.get("view") === "heatmap") state.view = p.get("view");
  if (["entropy", "to_cls", "to_sep"].includes(p.get("metric"))) state.metric = p.get("metric");
}

function heatmap(A) {
  let h = '<table class="heat" id="heatmap"><thead><tr><th></th>';
  D.tokens.forEach((t) => { h += `<th>${esc(t)}</th>`; });
  h += "</tr></thead><tbody>";
  A.forEach((row, i) => {
    h += `<tr><th>${esc(D.tokens[i])}</th>`;
    row.forEach((v, j) => {
      h += `<td data-i="${i}" data-j="${j}" data-w="${v}" style="background:${blue(v)}" ` +
           `title="${esc(D.tokens[i])} -> ${esc(D.tokens[j])}: ${fmt(v)}"></td>`;
    });
    h += "</tr>";
  });
  return h + "</tbody></table>";
}

function lines(A) {
  const T = D.tokens.length, dy = 22, w = 420, left = 110, right = w - 110;
  let s = `<svg id="lines" width="${w}" height="${T * dy + 20}" xmlns="http://www.w3.org/2000/svg">`;
  A.forEach((row, i) => row.forEach((v, j) => {
    if (v < 0.01) return;
    s += `<line data-i="${i}" data-j="${j}" data-w="${v}" x1="${left + 4}" y1="${i * dy + 16}" x2="${right - 4}" ` +
         `y2="${j * dy + 16}" stroke="rgb(40,80,220)" stroke-opacity="${v}" stroke-width="${1 + 3 * v}"/>`;
  }));
  D.tokens.forEach((t, i) => {
    s += `<text x="${left}" y="${i * dy + 20}" text-anchor="end">${esc(t)}</text>`;
    s += `<text x="${right}" y="${i * dy + 20}">${esc(t)}</text>`;
  });
  return s + "</svg>";
}

function headGrid() {
  const M = D[state.metric];
  let max = 0;
  M.forEach((r) => r.forEach((v) => { max = Math.max(max, v); }));
  let h = '<table class="heads" id="headgrid"><tr><th></th>';
  for (let k = 0; k < D.heads; k++) h += `<th>h${k}</th>`;
  h += "</tr>";
  M.forEach((r, l) => {
    h += `<tr><th>layer ${l + 1}</th>`;
    r.forEach((v, k) => {
      const chosen = l === state.layer && k === state.head ? ' class="chosen"' : "";
      const shade = max ? v / max : 0;
      h += `<td${chosen} data-layer="${l}" data-head="${k}" style="background:${blue(shade)};` +
           `color:${shade > 0.6 ? "#fff" : "#222"}" ` +
           `title="layer ${l + 1} head ${k}: ${fmt(v)}">${v.toFixed(2)}</td>`;
    });
    h += "</tr>";
  });
  return h + "</table>";
}

function render() {
  const A = D.attention[state.layer][state.head];
  $("layer").value = String(state.layer);
  $("head").value = String(state.head);
  $("view").value = state.view;
  $("metric").value = state.metric;
  $("main").innerHTML = state.view === "lines" ? lines(A) : heatmap(A);
  $("heads").innerHTML = headGrid();
  const l = state.layer, k = state.head;
  $("status").textContent = `layer ${l + 1} / ${D.layers}, head ${k} / ${D.heads - 1}`;
  $("status").dataset.layer = l;
  $("status").dataset.head = k;
  $("status").dataset.view = state.view;
  $("headinfo").textContent = `layer ${l + 1} head ${k}: entropy ${fmt(D.entropy[l][k])} nats, ` +
    `to [CLS] ${fmt(D.to_cls[l][k])}, to [SEP] ${fmt(D.to_sep[l][k])}`;
  document.querySelectorAll("#headgrid td").forEach((td) => {
    td.onclick = () => { state.layer = +td.dataset.layer; state.head = +td.dataset.head; update(); };
  });
}

function update() {   // keep the URL in step, so a view can be shared; render through hashchange
  const hash = `#layer=${state.layer + 1}&head=${state.head}&view=${state.view}&metric=${state.metric}`;
  if (location.hash !== hash) location.hash = hash; else render();
}

$("texts").textContent = D.pair === null ? D.text : `${D.text}  |  ${D.pair}`;
options($("layer"), D.layers, (i) => `layer ${i + 1}`);
options($("head"), D.heads, (i) => `head ${i}`);
$("layer").onchange = (e) => { state.layer = +e.target.value; update(); };
$("head").onchange = (e) => { state.head = +e.target.value; update(); };
$("view").onchange = (e) => { state.view = e.target.value; update(); };
$("metric").onchange = (e) => { state.metric = e.target.value; update(); };
window.addEventListener("hashchange", () => { readHash(); render(); });
readHash();
render();
</script>
</body>
</html>
"""
