"""The explorer page template: HTML, CSS and vanilla JavaScript (no library, nothing loaded).

:func:`render` inlines the data of :func:`depass_tl.viz.explorer_data` as JSON in a
``<script type="application/json">`` element; the script reads it, draws the token strip and head
grid as HTML and the charts as inline SVG, and redraws on every click. Every number shown is the
data's number for the chosen answer minus the chosen contrast (logit attributions are linear in the
unembedding column), printed with :data:`DECIMALS` digits; the elements carry ``data-*`` attributes
so a browser test can find them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["DECIMALS", "render"]

DECIMALS = {"chip": 2, "cell": 2, "detail": 4, "attention": 3, "summary": 4}
"""Digits printed: token chips and head cells (2), details tables and the summary (4), attention (3)."""

_CSS = r"""
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --panel: #f6f8fa; --pick: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1rem clamp(0.75rem, 3vw, 2rem); font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 1.35rem; margin: 0 0 0.2rem; }
h2 { font-size: 1.05rem; margin: 0 0 0.3rem; }
.sub, .note { color: var(--muted); margin: 0.2rem 0 0.6rem; }
.note { font-size: 0.88rem; }
.controls { display: flex; flex-wrap: wrap; gap: 0.6rem 1.2rem; align-items: center; margin: 0.8rem 0; }
.controls select { font: inherit; padding: 0.15rem 0.3rem; max-width: 22rem; }
.rules button { font: inherit; padding: 0.15rem 0.7rem; border: 1px solid var(--line); background: var(--bg);
                cursor: pointer; }
.rules button:first-of-type { border-radius: 6px 0 0 6px; }
.rules button:last-of-type { border-radius: 0 6px 6px 0; }
.rules button[aria-pressed="true"] { background: var(--pick); color: #fff; border-color: var(--pick); }
#summary { margin: 0.4rem 0 1rem; }
.panels { display: flex; flex-wrap: wrap; gap: 1rem; }
.panel { flex: 1 1 24rem; background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
         padding: 0.8rem 1rem; min-width: 0; }
.panel.wide { flex-basis: 100%; }
.tokens { display: flex; flex-wrap: wrap; gap: 4px; }
.token { display: flex; flex-direction: column; align-items: center; min-width: 2.6rem; padding: 0.2rem 0.35rem;
         border: 2px solid transparent; border-radius: 5px; cursor: pointer; }
.token .tok-text { font-weight: 600; white-space: pre; }
.token .tok-value { font-size: 0.78rem; font-variant-numeric: tabular-nums; }
.token.attributed { box-shadow: inset 0 -3px 0 var(--fg); }
.token.selected, td.head.selected { border-color: var(--pick); outline: 2px solid var(--pick); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
#heads { width: 100%; table-layout: fixed; }
#heads th { font-weight: 600; font-size: 0.85rem; color: var(--muted); padding: 0.15rem; }
#heads td { text-align: center; padding: 0.35rem 0.1rem; font-size: 0.85rem; border: 2px solid var(--panel); }
td.head { cursor: pointer; }
td.rest { color: var(--muted); background: var(--bg); }
.legend { display: flex; align-items: center; gap: 0.5rem; margin-top: 0.6rem; font-size: 0.8rem;
          color: var(--muted); flex-wrap: wrap; }
.legend .bar { width: 10rem; height: 0.7rem; border: 1px solid var(--line);
               background: linear-gradient(90deg, rgb(178,24,43), rgb(247,247,247), rgb(33,102,172)); }
#details-table { margin-top: 0.6rem; min-width: min(100%, 34rem); }
#details-table th, #details-table td { padding: 0.2rem 0.6rem; border-bottom: 1px solid var(--line);
                                       text-align: right; }
#details-table .text { text-align: left; }
#details-table tr.total td { font-weight: 600; }
svg { width: 100%; height: auto; max-height: 24rem; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
svg .axis { stroke: var(--muted); stroke-width: 1; }
svg .grid { stroke: var(--line); stroke-width: 1; }
footer { margin-top: 1.2rem; color: var(--muted); font-size: 0.85rem; }
@media print { .controls { display: none; } .panel { break-inside: avoid; } }
"""

_BODY = r"""
<header>
  <h1 id="headline"></h1>
  <p class="sub" id="subline"></p>
</header>
<section class="controls" aria-label="What to explain">
  <label>Answer <select id="target"></select></label>
  <label>compared with <select id="contrast"></select></label>
  <span class="rules" role="group" aria-label="MLP rule">MLP rule <span id="rule-buttons"></span></span>
</section>
<p id="summary"></p>
<main class="panels">
  <section class="panel" id="tokens-panel">
    <h2>Which tokens push toward the answer</h2>
    <p class="note">Each token's exact contribution to <span class="quantity"></span>; blue pushes toward
      the answer, red away. The underlined token is where the model predicts. Click a token to follow it
      through the layers.</p>
    <div id="tokens" class="tokens"></div>
    <p id="token-others" class="note"></p>
    <div class="legend" id="tokens-legend"></div>
  </section>
  <section class="panel" id="heads-panel">
    <h2>Which attention heads push toward the answer</h2>
    <p class="note">Each cell: the head's whole effect, directly and through the layers after it. Each row's
      heads plus the rest of the stream at that layer add up to the total. Click a head to see which
      tokens its contribution comes from.</p>
    <table id="heads"></table>
    <div class="legend" id="heads-legend"></div>
  </section>
  <section class="panel wide" id="details-panel" aria-live="polite">
    <h2 id="details-title"></h2>
    <p class="note" id="details-note"></p>
    <div id="details-chart"></div>
    <table id="details-table"></table>
  </section>
</main>
<footer id="footer"></footer>
"""

_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("depass-data").textContent);
  const DEC = __DECIMALS__;
  const P = D.str_tokens.length, L = D.n_layers, H = D.n_heads;
  const S = D.structure;  // mlp, norms, final_norm: the notes describe this model, not every model
  const state = { target: D.target, contrast: D.contrast, rule: D.rule, pick: null };
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (k === "cls") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids || []) e.appendChild(k);
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, d) {
    if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
    return (v < 0 ? "-" : "+") + Math.abs(v).toFixed(d);
  }
  function sub(a, b) {
    if (a === null || b === null) return null;
    if (Array.isArray(a)) return a.map((x, i) => sub(x, b[i]));
    return a - b;
  }
  // per-candidate data -> the answer minus the contrast
  function sel(perCandidate) {
    const a = perCandidate[state.target];
    return state.contrast === null ? a : sub(a, perCandidate[state.contrast]);
  }
  function flat(a) { return Array.isArray(a) ? a.flatMap(flat) : [a]; }
  function maxAbs(a) {
    const m = Math.max(0, ...flat(a).filter((v) => v !== null).map(Math.abs));
    return m > 0 ? m : 1;
  }
  function color(v, m) {
    if (v === null) return "transparent";
    const t = Math.max(-1, Math.min(1, v / m)), w = [247, 247, 247];
    const end = t >= 0 ? [33, 102, 172] : [178, 24, 43], a = Math.abs(t);
    return "rgb(" + w.map((x, i) => Math.round(x + (end[i] - x) * a)).join(",") + ")";
  }
  function ink(v, m) { return v !== null && Math.abs(v) > 0.55 * m ? "#ffffff" : "#1f2328"; }
  function show(s) { const t = s.trim(); return t.length ? t : JSON.stringify(s); }
  function quoted(s) { return "\u201c" + show(s) + "\u201d"; }
  function cand(i) { return D.candidates[i]; }
  function listing(words) {  // ["a", "b", "c"] -> "a, b and c"
    return words.length < 2 ? words.join("") : words.slice(0, -1).join(", ") + " and " + words[words.length - 1];
  }
  function R() { return D.by_rule[state.rule]; }
  function quantity() {
    const t = "logit(" + quoted(cand(state.target).text) + ")";
    return state.contrast === null ? t : t + " \u2212 logit(" + quoted(cand(state.contrast).text) + ")";
  }
  function clean() {
    const t = cand(state.target).logit;
    return state.contrast === null ? t : t - cand(state.contrast).logit;
  }

  // ------------------------------------------------------------------ controls
  function option(i) {
    const c = cand(i);
    const p = c.prob === null ? "" : c.prob < 0.001 ? ", p < 0.001" : ", p = " + c.prob.toFixed(3);
    return show(c.text) + "  (rank " + c.rank + ", logit " + c.logit.toFixed(2) + p + ")";
  }
  function buildControls() {
    const t = $("target"), c = $("contrast");
    t.replaceChildren(...D.candidates.map((_, i) => el("option", { value: String(i), text: option(i) })));
    c.replaceChildren(el("option", { value: "", text: "nothing (a single logit)" }),
      ...D.candidates.map((_, i) => el("option", { value: String(i), text: option(i) })));
    t.addEventListener("change", () => {
      state.target = Number(t.value);
      if (state.contrast === state.target) state.contrast = null;
      render();
    });
    c.addEventListener("change", () => { state.contrast = c.value === "" ? null : Number(c.value); render(); });
    $("rule-buttons").parentElement.hidden = !S.mlp;  // without MLPs every rule gives the same numbers
    $("rule-buttons").replaceChildren(...D.rules.map((r) => {
      const b = el("button", { type: "button", "data-rule": r, text: r });
      b.addEventListener("click", () => { state.rule = r; render(); });
      return b;
    }));
  }
  function syncControls() {
    $("target").value = String(state.target);
    $("contrast").value = state.contrast === null ? "" : String(state.contrast);
    for (const o of $("contrast").options) o.disabled = o.value === String(state.target);
    for (const b of document.querySelectorAll("#rule-buttons button"))
      b.setAttribute("aria-pressed", String(b.dataset.rule === state.rule));
  }

  // ------------------------------------------------------------------ header and summary
  function header() {
    const t = quoted(cand(state.target).text);
    $("headline").textContent = state.contrast === null
      ? "What makes the model predict " + t + "?"
      : "What makes the model predict " + t + " rather than " + quoted(cand(state.contrast).text) + "?";
    const bits = [];
    if (D.prompt !== null) bits.push("Prompt: " + JSON.stringify(D.prompt));
    if (D.model !== null) bits.push("model: " + D.model);
    bits.push("predicting after " + quoted(D.str_tokens[D.pos]) + " (position " + D.pos + ")");
    $("subline").textContent = bits.join(" \u00b7 ");
    for (const e of document.querySelectorAll(".quantity")) e.textContent = quantity();
    const total = sel(R().tokens).reduce((s, v) => s + (v === null ? 0 : v), 0)
      + R().token_others.reduce((s, o) => s + sel(o.values), 0);
    const s = $("summary");
    s.replaceChildren(
      document.createTextNode("The model's " + quantity() + " is "),
      el("b", { id: "clean-value", text: fmt(clean(), DEC.summary) }),
      document.createTextNode("; the token contributions below add up to "),
      el("b", { id: "sum-value", text: fmt(total, DEC.summary) }),
      document.createTextNode(state.contrast === null
        ? ". A single logit includes what every candidate shares: pick a token to compare with to see what"
          + " favours this answer over that one." : "."));
  }

  // ------------------------------------------------------------------ tokens
  function tokens() {
    const v = sel(R().tokens), m = maxAbs(v);
    $("tokens").replaceChildren(...D.str_tokens.map((s, p) => {
      const chip = el("div", {
        cls: "token" + (p === D.pos ? " attributed" : ""), "data-pos": String(p), role: "button", tabindex: "0",
        title: "position " + p + ": " + JSON.stringify(s) + "\ncontribution " + fmt(v[p], DEC.detail),
      }, [el("span", { cls: "tok-text", text: show(s) }),
          el("span", { cls: "tok-value", text: fmt(v[p], DEC.chip) })]);
      chip.style.background = color(v[p], m);
      chip.style.color = ink(v[p], m);
      clickable(chip, () => { state.pick = { kind: "token", pos: p }; render(); });
      return chip;
    }));
    const others = R().token_others.map((o) => o.name + " " + fmt(sel(o.values), DEC.detail));
    $("token-others").textContent = others.length ? "Not tied to a token: " + others.join(", ") + "." : "";
    legend($("tokens-legend"), m);
  }
  function clickable(e, f) {
    e.addEventListener("click", f);
    e.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); f(); } });
  }
  function legend(box, m) {
    box.replaceChildren(el("span", { text: fmt(-m, 2) }), el("span", { cls: "bar" }), el("span", { text: fmt(m, 2) }),
      el("span", { text: "logit contribution (red: away from the answer, blue: toward it)" }));
  }

  // ------------------------------------------------------------------ heads
  function heads() {
    const v = sel(R().heads), rest = sel(R().heads_rest), m = maxAbs(v);
    const top = el("tr", {}, [el("th", { text: "" }),
      ...Array.from({ length: H }, (_, h) => el("th", { scope: "col", text: "H" + h })),
      el("th", { scope: "col", text: "rest", title: "the rest of the stream at that layer (incl. biases)" })]);
    const rows = v.map((row, l) => el("tr", {}, [el("th", { scope: "row", text: "L" + l }),
      ...row.map((x, h) => {
        const td = el("td", { cls: "head", "data-layer": String(l), "data-head": String(h), tabindex: "0",
                              role: "button", title: "L" + l + "H" + h + ": " + fmt(x, DEC.detail),
                              text: fmt(x, DEC.cell) });
        td.style.background = color(x, m);
        td.style.color = ink(x, m);
        clickable(td, () => { state.pick = { kind: "head", layer: l, head: h }; render(); });
        return td;
      }),
      el("td", { cls: "rest", "data-layer": String(l), title: fmt(rest[l], DEC.detail),
                 text: fmt(rest[l], DEC.cell) })]));
    $("heads").replaceChildren(el("thead", {}, [top]), el("tbody", {}, rows));
    legend($("heads-legend"), m);
  }

  // ------------------------------------------------------------------ details
  function table(head, rows) {  // head: [title, is a text column]
    const t = $("details-table");
    t.replaceChildren(el("thead", {}, [el("tr", {}, head.map(([h, text]) =>
      el("th", { scope: "col", cls: text ? "text" : "", text: h })))]), el("tbody", {}, rows));
  }
  function row(key, cells, cls) {
    return el("tr", { "data-key": key, cls: cls || "" }, cells.map(([text, c]) => el("td", { cls: c || "", text })));
  }
  function tokenDetails(p) {
    const proj = sel(R().token_proj)[p], total = sel(D.clean_proj), logit = sel(R().tokens)[p];
    $("details-title").textContent = "Token " + quoted(D.str_tokens[p]) + " (position " + p + ") through the layers";
    $("details-note").textContent = "Its share of the residual stream at the predicting position, read along the"
      + " answer direction (the unembedding of the answer minus that of the compared token), after each layer's"
      + (S.mlp ? " attention and MLP." : " attention (the model has no MLPs).")
      + (S.final_norm ? " These are residual-stream units, not logits: the final norm turns the last value into"
        + " the token's logit contribution." : " The model has no final norm, so these are already logits: the"
        + " last value is the token's logit contribution.")
      + " The dashed line is the whole stream.";
    lineChart($("details-chart"), D.hook_labels, [
      { name: show(D.str_tokens[p]), values: proj, color: "#0969da" },
      { name: "whole stream", values: total, color: "#59636e", dash: true }],
      "residual stream after", "projection on the answer direction");
    const rows = proj.map((x, j) => row("hook-" + j, [[D.hook_labels[j], "text"], [fmt(x, DEC.detail), "value"],
      [j === 0 ? "" : fmt(x - proj[j - 1], DEC.detail), "change"], [fmt(total[j], DEC.detail), "whole"]]));
    rows.push(row("logit", [["logit contribution" + (S.final_norm ? " (after the final norm)" : ""), "text"],
      [fmt(logit, DEC.detail), "value"], ["", ""], [fmt(clean(), DEC.detail), "whole"]], "total"));
    table([["residual stream after", true], ["this token"], ["change"], ["whole stream"]], rows);
  }
  function headDetails(l, h) {
    const parts = sel(R().sources)[l][h], earlier = sel(R().sources_earlier)[l][h], att = D.attention[l][h];
    const sum = parts.reduce((s, v) => s + v, earlier), grid = sel(R().heads)[l][h];
    $("details-title").textContent = "Head L" + l + "H" + h + ": which tokens its contribution comes from";
    $("details-note").textContent = "Each row: what the head writes at the predicting position from reading that"
      + " position (attention weight \u00d7 the value there), followed through every later layer to " + quantity()
      + ". The last row is what it writes at the earlier positions, which reaches the answer only through later"
      + " layers' attention."
      + (!S.mlp ? " The model has no MLPs, so the parts add up exactly to the head's value in the grid."
        : (D.linear_rules || ["ratio"]).includes(state.rule)
        ? " With the " + state.rule + " rule the parts add up exactly to the head's value in the grid."
        : " With the " + state.rule + " rule each MLP's activation is shared among the parts present, so their"
          + " sum can differ from the head's value in the grid; the ratio rule makes them add up exactly.");
    barChart($("details-chart"), D.str_tokens.map((s, i) => show(s) + " (" + i + ")").concat(["earlier positions"]),
      parts.concat([earlier]), "logit contribution");
    const rows = parts.map((x, s) => row("source-" + s, [[String(s), "text"], [show(D.str_tokens[s]), "text"],
      [att[s].toFixed(DEC.attention), "attention"], [fmt(x, DEC.detail), "value"]]));
    const blank = [["", ""], ["", ""]];
    rows.push(row("earlier", [["", "text"], ["its output at earlier positions", "text"], ["", ""],
      [fmt(earlier, DEC.detail), "value"]]));
    rows.push(row("sum", [["sum of the parts", "text"], ...blank, [fmt(sum, DEC.detail), "value"]], "total"));
    rows.push(row("grid", [["the head in the grid", "text"], ...blank, [fmt(grid, DEC.detail), "value"]], "total"));
    table([["position", true], ["token", true], ["attention from the predicting position"], ["contribution"]], rows);
  }
  function details() {
    for (const e of document.querySelectorAll(".selected")) e.classList.remove("selected");
    const k = state.pick;
    if (k.kind === "token") {
      document.querySelector('.token[data-pos="' + k.pos + '"]').classList.add("selected");
      tokenDetails(k.pos);
    } else {
      const cell = 'td.head[data-layer="' + k.layer + '"][data-head="' + k.head + '"]';
      document.querySelector(cell).classList.add("selected");
      headDetails(k.layer, k.head);
    }
  }

  // ------------------------------------------------------------------ charts (inline SVG)
  function ticks(lo, hi) {
    if (lo === hi) { lo -= 1; hi += 1; }
    const raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = mag * (raw / mag >= 5 ? 10 : raw / mag >= 2 ? 5 : raw / mag >= 1 ? 2 : 1);
    const out = [];
    const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);  // ticks cover [lo, hi]
    for (let i = first; i <= last; i++) out.push(Number((i * step).toPrecision(12)));
    return out;
  }
  function lineChart(box, labels, series, xTitle, yTitle) {
    const W = 720, Hh = 300, l = 64, r = 150, t = 12, b = 90;
    const all = series.flatMap((s) => s.values).concat([0]);
    const ys = ticks(Math.min(...all), Math.max(...all)), lo = ys[0], hi = ys[ys.length - 1];
    const X = (j) => l + (labels.length === 1 ? 0 : j * (W - l - r) / (labels.length - 1));
    const Y = (v) => t + (hi - v) * (Hh - t - b) / (hi - lo || 1);
    const g = sv("svg", { viewBox: "0 0 " + W + " " + Hh, role: "img", "aria-label": yTitle });
    for (const y of ys) {
      g.appendChild(sv("line", { x1: l, x2: W - r, y1: Y(y), y2: Y(y), class: y === 0 ? "axis" : "grid" }));
      g.appendChild(sv("text", { x: l - 6, y: Y(y) + 4, "text-anchor": "end" }, String(y)));
    }
    labels.forEach((s, j) => g.appendChild(sv("text", { x: X(j), y: Hh - b + 14, "text-anchor": "end",
      transform: "rotate(-35 " + X(j) + " " + (Hh - b + 14) + ")" }, s)));
    g.appendChild(sv("text", { x: (l + W - r) / 2, y: Hh - 4, "text-anchor": "middle" }, xTitle));
    g.appendChild(sv("text", { x: 12, y: (t + Hh - b) / 2, "text-anchor": "middle",
      transform: "rotate(-90 12 " + (t + Hh - b) / 2 + ")" }, yTitle));
    series.forEach((s, i) => {
      const pts = s.values.map((v, j) => X(j) + "," + Y(v)).join(" ");
      g.appendChild(sv("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 2,
        "stroke-dasharray": s.dash ? "5 4" : "none" }));
      if (!s.dash) {
        s.values.forEach((v, j) => g.appendChild(sv("circle", { cx: X(j), cy: Y(v), r: 3.5, fill: s.color })));
      }
      g.appendChild(sv("line", { x1: W - r + 12, x2: W - r + 32, y1: t + 10 + 18 * i, y2: t + 10 + 18 * i,
        stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash ? "5 4" : "none" }));
      g.appendChild(sv("text", { x: W - r + 38, y: t + 14 + 18 * i }, s.name));
    });
    box.replaceChildren(g);
  }
  function barChart(box, labels, values, xTitle) {
    const W = 720, row = 20, l = 130, r = 20, t = 8, b = 40, Hh = t + b + row * labels.length;
    const xs = ticks(Math.min(0, ...values), Math.max(0, ...values)), lo = xs[0], hi = xs[xs.length - 1];
    const X = (v) => l + (v - lo) * (W - l - r) / (hi - lo || 1);
    const m = maxAbs(values);
    const g = sv("svg", { viewBox: "0 0 " + W + " " + Hh, role: "img", "aria-label": xTitle });
    for (const x of xs) {
      g.appendChild(sv("line", { x1: X(x), x2: X(x), y1: t, y2: Hh - b, class: x === 0 ? "axis" : "grid" }));
      g.appendChild(sv("text", { x: X(x), y: Hh - b + 14, "text-anchor": "middle" }, String(x)));
    }
    values.forEach((v, i) => {
      const y = t + i * row;
      const bar = sv("rect", { x: Math.min(X(0), X(v)), y: y + 3, width: Math.abs(X(v) - X(0)), height: row - 6,
        fill: color(v, m), stroke: "#8c959f", "stroke-width": 0.5 });
      bar.appendChild(sv("title", {}, labels[i] + ": " + fmt(v, DEC.detail)));
      g.appendChild(bar);
      g.appendChild(sv("text", { x: l - 6, y: y + row / 2 + 4, "text-anchor": "end" }, labels[i]));
    });
    g.appendChild(sv("text", { x: (l + W - r) / 2, y: Hh - 6, "text-anchor": "middle" }, xTitle));
    box.replaceChildren(g);
  }

  // ------------------------------------------------------------------ everything
  function footer() {
    const rule = { softmax: "softmax: each MLP neuron's activation is shared among the parts by a softmax"
        + " of their inputs to it (temperature " + D.temperature + ", as in DePass)",
      ratio: "ratio: each part keeps the neuron's clean output/input ratio (linear: parts add up exactly)",
      max: "max: each neuron's activation goes to the part with the largest input to it",
      taylor: "taylor: each neuron's activation is split in proportion to the parts' inputs to it (to its gate in"
        + " a gated MLP), as the official DePass code's taylor (linear: parts add up exactly)" };
    const frozen = ["Attention patterns"].concat(S.norms ? ["norm scales"] : [], S.mlp ? ["MLP activations"] : []);
    $("footer").textContent = "Every number is exact: the contributions add up to the model's own output. "
      + listing(frozen) + " are frozen at this run's values and each part of the stream is carried through the"
      + " model on its own (a decomposed forward pass). "
      + (S.mlp ? "MLP rule " + (rule[state.rule] || state.rule) + "."
        : "The model has no MLPs, so every MLP rule gives the same numbers.");
  }
  function render() {
    syncControls(); header(); tokens(); heads(); details(); footer();
  }
  buildControls();
  const v0 = sel(R().tokens);
  let best = 0;
  v0.forEach((x, p) => { if (x !== null && Math.abs(x) > Math.abs(v0[best] || 0)) best = p; });
  state.pick = { kind: "token", pos: best };
  render();
  document.body.dataset.ready = "true";
})();
"""


def render(data: Mapping[str, Any], *, title: str | None = None) -> str:
    """The whole page: the template with the data inlined (``<`` escaped so no string can end the script)."""
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    js = _JS.replace("__DECIMALS__", json.dumps(DECIMALS))
    if title is None:
        title = "depass_tl explorer" + (f": {data['prompt']}" if data.get("prompt") else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head>\n<body>{_BODY}"
        f'<script type="application/json" id="depass-data">{blob}</script>\n<script>{js}</script>\n'
        "</body></html>\n"
    )
