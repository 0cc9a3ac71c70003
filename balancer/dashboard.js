/* dashboard.js: the operator page's script (balancer/dashboard.html), served
   as its own resource so the page's CSP can forbid inline script. */
"use strict";
const HEALTH_MS = 1000, FETCH_TIMEOUT_MS = 2500;
const STATES = ["healthy", "suspect", "down", "draining", "joining", "flapping", "ejected"];
/* Lookups keyed by text from the network (states, node ids) never reach
   Object.prototype: a node called "constructor" or "toString" is a node.
   Constant tables have no prototype; tables of nodes are Maps. */
const table = o => Object.freeze(Object.assign(Object.create(null), o));
const LETTER = table({h: "healthy", s: "suspect", d: "down", r: "draining", j: "joining",
                f: "flapping", e: "ejected"});
const COLOR = table({healthy: "#0a7551", suspect: "#8a5700", down: "#b3261e",
               draining: "#1f5fa8", joining: "#56606b", flapping: "#8e3a8e",
               ejected: "#9c2f5e"});
/* The table shows at most this many nodes; the counts cover all of them. */
const TABLE_LIMIT = 1000;
const SVGNS = "http://www.w3.org/2000/svg";
let lastGood = 0, prevPicks = null, history = new Map(), historyPeriod = 2000, historySamples = 120,
    lastHistory = 0;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k of Object.keys(attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k of Object.keys(attrs)) e.setAttribute(k, attrs[k]);
  return e;
}
function dur(ms) {
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " m " + Math.floor(s % 60) + " s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + (m % 60) + " m";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}
async function getJSON(path) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const r = await fetch(path, {cache: "no-store", signal: ctl.signal});
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return await r.json();
  } finally { clearTimeout(t); }
}

function tile(value, key, id) {
  const d = el("div", {class: "tile"});
  const v = el("div", {class: "v"}, value);
  if (id) v.id = id;
  d.append(v, el("div", {class: "k"}, key));
  return d;
}

function renderSummary(h, picksPerSec) {
  const s = document.getElementById("summary");
  const tiles = [];
  for (const st of STATES) {
    const t = tile(String(h.counts[st] || 0), st, "count-" + st);
    t.style.borderTop = "4px solid " + COLOR[st];
    tiles.push(t);
  }
  tiles.push(tile(picksPerSec === null ? "–" : picksPerSec.toFixed(1), "picks/s", "picks-rate"));
  tiles.push(tile(dur(h.uptime_ms), "balancer uptime"));
  tiles.push(tile(String(h.epoch), "membership epoch"));
  s.replaceChildren(...tiles);
  document.getElementById("meta").textContent =
    "version " + h.version + " · policy " + h.policy + " · heartbeat " + h.interval_ms +
    " ms, fall " + h.fall + ", rise " + h.rise + " · admin " + (h.admin ? "on" : "off");
}

/* Load (sessions / capacity) over the history, shaded where the node was
   out of rotation. */
function spark(id) {
  const hs = history.get(id);
  const W = 140, H = 32;
  const g = svg("svg", {class: "spark", viewBox: "0 0 " + W + " " + H,
                        preserveAspectRatio: "none", role: "img"});
  if (!hs || hs.sessions.length === 0) {
    g.setAttribute("aria-label", "no history yet");
    return g;
  }
  /* right-aligned on the full window, so a young history is short */
  const n = hs.sessions.length, N = Math.max(n, historySamples, 2), cap = hs.capacity || 1;
  const loads = hs.sessions.map(v => v / cap);
  const top = Math.max(0.05, ...loads) * 1.1;
  const x = i => (W - 1) * (i + (N - n)) / (N - 1), dx = (W - 1) / (N - 1);
  for (let i = 0; i < n; i++) {
    const st = LETTER[hs.states[i]] || "joining";
    if (st !== "healthy")
      g.append(svg("rect", {x: Math.max(0, x(i) - dx / 2), y: 0, width: dx + 0.5, height: H,
                            fill: COLOR[st], "fill-opacity": "0.25"}));
  }
  let d = "";
  for (let i = 0; i < n; i++)
    d += (i ? "L" : "M") + x(i).toFixed(1) + " " + (H - 2 - (H - 4) * loads[i] / top).toFixed(1);
  g.append(svg("path", {d: d, fill: "none", stroke: "#24292f", "stroke-width": "1.5"}));
  const last = loads[n - 1] * 100;
  const label = "load " + last.toFixed(1) + "% now, peak " + (Math.max(...loads) * 100).toFixed(1) +
                "% over the last " + dur(n * historyPeriod);
  g.setAttribute("aria-label", label);
  const t = svg("title", {});
  t.textContent = label;
  g.append(t);
  return g;
}

function renderNodes(h) {
  const rows = [];
  for (const n of h.nodes) {
    const tr = el("tr", {"data-node": n.id, "data-state": n.state});
    const cell = (label, text, cls) => {
      const td = el("td", {"data-label": label}, text);
      if (cls) td.className = cls;
      tr.append(td);
      return td;
    };
    cell("Node", n.id, "id");
    cell("Address", n.addr, "addr");
    const st = cell("State", undefined, "state");
    const b = el("span", {class: "badge s-" + n.state}, n.state);
    const wrap = el("div");
    wrap.append(b);
    if (n.reason) wrap.append(el("span", {class: "reason"}, n.reason));
    /* clients reporting it unreachable, before (or without) an ejection */
    if (n.reporters)
      wrap.append(el("span", {class: "reports"},
                     n.reporters + (n.reporters === 1 ? " client reports" : " clients report") +
                     " it unreachable"));
    st.append(wrap);
    const since = cell("Since", dur(n.state_age_ms), "num since");
    since.title = new Date(Date.now() - n.state_age_ms).toLocaleString();
    cell("Last heartbeat", dur(n.last_heartbeat_age_ms) + " ago", "num hb");
    cell("Sessions / cap.", n.sessions + " / " + n.capacity, "num load");
    cell("Msgs/s", n.msgs_per_sec.toFixed(1), "num mps");
    /* the node's forwarder into JetStream: records and age not yet in the stream */
    const fw = n.forward;
    const fc = cell("Forwarding lag", fw ? fw.lag_records + " (" + dur(fw.lag_ms) + ")" : "–",
                    "num fwd");
    if (fw) fc.title = (fw.healthy ? "JetStream takes records" : "JetStream cannot take records") +
                       "; forwarded up to seq " + fw.seq + ", " + fw.errors + " failed rounds, " +
                       fw.duplicates + " duplicates dropped";
    /* the balancers the node heartbeats to, as its last heartbeat said */
    const bc = cell("Balancers", undefined, "balancers");
    const bl = n.balancers || [];
    if (bl.length === 0) {
      bc.append(el("span", {class: "empty"}, "–"));
    } else {
      const ul = el("ul", {class: "bals"});
      for (const b of bl) {
        const li = el("li", {class: b.reached ? "ok" : "lost", title: b.endpoint +
                             (b.reached ? ": reached" : ": not reached")},
                      b.endpoint + (b.reached ? "" : " (lost)"));
        ul.append(li);
      }
      const nok = bl.filter(b => b.reached).length;
      bc.setAttribute("aria-label", nok + " of " + bl.length + " balancers reached");
      bc.append(ul);
    }
    const c = cell("Load", undefined, "chart");
    const box = el("div", {class: "chartbox"});
    box.append(spark(n.id), el("span", {class: "pct"},
               (n.capacity ? 100 * n.sessions / n.capacity : 0).toFixed(1) + "%"));
    c.append(box);
    rows.push(tr);
  }
  document.getElementById("rows").replaceChildren(...rows);
  document.getElementById("norows").hidden = rows.length > 0;
}

function renderDetection(d) {
  const stats = document.getElementById("dstats");
  const chart = document.getElementById("dchart");
  const item = (k, v, id) => { const s = el("span", {}, k + " "); const b = el("b", {id: id}, v);
                               s.append(b); return s; };
  const ms = v => v.toFixed(0) + " ms";
  stats.replaceChildren(item("nodes detected:", String(d.count), "d-count"),
                        item("p50:", d.window ? ms(d.p50_ms) : "–", "d-p50"),
                        item("p99:", d.window ? ms(d.p99_ms) : "–", "d-p99"),
                        item("max:", d.window ? ms(d.max_ms) : "–", "d-max"));
  if (!d.count) {
    chart.replaceChildren(el("p", {class: "empty"}, "No node has gone down since the balancer started."));
    return;
  }
  /* Bars from the first to the last bucket that has a count, so the scale
     fits what was measured. */
  const bs = d.buckets;
  let lo = bs.findIndex(b => b.count > 0), hi = bs.length - 1;
  while (hi > lo && bs[hi].count === 0) hi--;
  lo = Math.max(0, lo - 1); hi = Math.min(bs.length - 1, hi + 1);
  const shown = bs.slice(lo, hi + 1), max = Math.max(...shown.map(b => b.count));
  const W = 640, H = 160, bw = W / shown.length;
  const g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img",
                        "aria-label": "histogram of detection latency"});
  shown.forEach((b, i) => {
    const bh = (H - 40) * b.count / max;
    const prev = lo + i > 0 ? bs[lo + i - 1].le_ms : 0;
    const lab = b.le_ms === null ? ">" + prev : "≤" + b.le_ms;
    g.append(svg("rect", {x: i * bw + 3, y: H - 22 - bh, width: bw - 6, height: bh, fill: "#1f5fa8"}));
    const c = svg("text", {x: i * bw + bw / 2, y: H - 26 - bh, "text-anchor": "middle",
                           "font-size": "12"});
    c.textContent = b.count ? String(b.count) : "";
    const t = svg("text", {x: i * bw + bw / 2, y: H - 6, "text-anchor": "middle", "font-size": "11",
                           fill: "#59636e"});
    t.textContent = lab;
    g.append(c, t);
  });
  chart.replaceChildren(g);
}

function showBanner(err) {
  const b = document.getElementById("banner");
  const since = lastGood ? " Last data " + dur(Date.now() - lastGood) + " ago (" +
                new Date(lastGood).toLocaleTimeString() + ")." : "";
  b.textContent = "The balancer is not answering (" + err + ")." + since + " Retrying…";
  b.classList.add("show");
  document.getElementById("main").classList.add("stale");
}
function renderPanic(h) {
  const p = document.getElementById("panic");
  if (h.panic && h.panic.active) {
    p.textContent = "PANIC: " + h.panic.reason + " — " + h.panic.held +
      " silent nodes kept in rotation for " + dur(h.panic.since_ms_ago) +
      ". The balancer's own network is the likelier cause.";
    p.classList.add("show");
  } else {
    p.classList.remove("show");
  }
  const part = document.getElementById("partial");
  const total = h.nodes_total === undefined ? h.nodes.length : h.nodes_total;
  part.hidden = total <= h.nodes.length;
  part.textContent = "Showing " + h.nodes.length + " of " + total + " nodes (first by id).";
}
function hideBanner() {
  document.getElementById("banner").classList.remove("show");
  document.getElementById("main").classList.remove("stale");
}

async function refreshHistory() {
  try {
    const hist = await getJSON("/v1/history");
    historyPeriod = hist.period_ms || historyPeriod;
    historySamples = hist.samples || historySamples;
    const m = new Map();
    for (const n of hist.nodes) m.set(n.id, n);
    history = m;
    lastHistory = Date.now();
  } catch (e) { /* the health poll reports an unreachable balancer */ }
}

async function tick() {
  try {
    const h = await getJSON("/v1/health?limit=" + TABLE_LIMIT);
    const now = Date.now();
    let rate = null;
    if (prevPicks && now > prevPicks.t)
      rate = Math.max(0, (h.picks - prevPicks.n) * 1000 / (now - prevPicks.t));
    prevPicks = {n: h.picks, t: now};
    lastGood = now;
    hideBanner();
    if (now - lastHistory >= historyPeriod) await refreshHistory();
    renderSummary(h, rate);
    renderPanic(h);
    renderNodes(h);
    renderDetection(h.detection);
  } catch (e) {
    showBanner(e.name === "AbortError" ? "no answer in " + FETCH_TIMEOUT_MS / 1000 + " s" : e.message);
  } finally {
    setTimeout(tick, HEALTH_MS);
  }
}
tick();
