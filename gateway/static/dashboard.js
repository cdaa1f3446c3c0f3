// objstore dashboard: polls api/status and draws nodes, object health, repair and gateway traffic.
// Plain DOM and <canvas>; no library, nothing fetched from outside this gateway.
"use strict";

const POLL_MS = 1000;
const STALE_AFTER_MS = 5000;
const STATES = ["up", "suspect", "down"];

let lastOk = 0;
let lastStatus = null;

function $(id) { return document.getElementById(id); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // never innerHTML: names come from the cluster map
  return e;
}

function fmtCount(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return String(Math.round(n * 10) / 10);
  const units = ["k", "M", "G", "T"];
  let i = -1;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (n >= 100 ? n.toFixed(0) : n.toFixed(1)) + units[i];
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  const text = i === 0 || n >= 100 ? n.toFixed(0) : n.toFixed(1);
  return text.replace(/\.0$/, "") + " " + units[i];
}

// Every label of a byte axis in the unit of its top, so the ticks read 0, 0.5, 1, 1.5 MiB/s.
function fmtByteAxis(v, axisMax) {
  const unit = byteUnit(axisMax);
  const names = { 1: "B", 1024: "KiB", 1048576: "MiB", 1073741824: "GiB", 1099511627776: "TiB" };
  const scaled = v / unit;
  return (Number.isInteger(scaled) ? scaled : scaled.toFixed(1)) + " " + (names[unit] || "B") + "/s";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s";
  return (ms >= 10 || Number.isInteger(ms) ? ms.toFixed(0) : ms.toFixed(1)) + " ms";
}

function fmtDuration(s) {
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function setCardLevel(id, level) {
  const card = $(id);
  card.classList.remove("good", "warn", "bad");
  if (level) card.classList.add(level);
}

// -- summary cards --------------------------------------------------------------------------------

function renderSummary(st) {
  const nodes = st.nodes || [];
  const up = nodes.filter((n) => n.state === "up").length;
  const down = nodes.filter((n) => n.state === "down").length;
  const suspect = nodes.length - up - down;
  $("nodes-up").textContent = nodes.length ? up + " / " + nodes.length : "–";
  const parts = [];
  if (down) parts.push(down + " down");
  if (suspect) parts.push(suspect + " suspect");
  $("nodes-sub").textContent = parts.length ? parts.join(", ") : "all nodes up";
  setCardLevel("card-nodes", down ? "bad" : suspect ? "warn" : "good");

  $("objects-total").textContent = fmtCount(st.objects_total);
  $("objects-sub").textContent = st.k !== undefined ? "erasure code " + st.k + "+" + st.m : "";
  $("objects-degraded").textContent = fmtCount(st.objects_degraded);
  setCardLevel("card-degraded", st.objects_degraded ? "warn" : "good");
  $("objects-unreadable").textContent = fmtCount(st.objects_unreadable);
  setCardLevel("card-unreadable", st.objects_unreadable ? "bad" : "good");

  const corrupt = nodes.reduce((sum, n) => sum + (n.corrupt_found || 0), 0);
  const scrubbed = st.scrub ? st.scrub.corrupt_found || 0 : 0;
  $("corrupt").textContent = fmtCount(Math.max(corrupt, scrubbed));
  setCardLevel("card-corrupt", Math.max(corrupt, scrubbed) ? "warn" : null);

  const r = st.repair || {};
  const state = $("repair-state");
  const paused = nodes.filter((n) => n.paused_for > 0);
  state.textContent = paused.length ? "paused" : r.running ? "running" : "idle";
  state.classList.toggle("running", !paused.length && !!r.running);
  state.classList.toggle("paused", paused.length > 0);
  state.title = paused.length ? "repair and scrub held on " + paused.map((n) => n.id).join(", ") + " for up to " +
    fmtDuration(Math.max(...paused.map((n) => n.paused_for))) + " more (objstore resume lifts it)" : "";
  const todo = (r.objects_rebuilt || 0) + (r.objects_remaining || 0);
  const done = todo ? (r.objects_rebuilt || 0) / todo : 1;
  const bar = $("repair-bar");
  bar.style.width = (done * 100).toFixed(1) + "%";
  bar.classList.toggle("complete", !r.running && !r.objects_remaining);
  $("repair-sub").textContent = "rebuilt " + fmtCount(r.objects_rebuilt || 0) + " objects (" +
    fmtBytes(r.bytes_rebuilt || 0) + "), " + fmtCount(r.objects_remaining || 0) + " remaining (" +
    fmtBytes(r.bytes_remaining || 0) + ")";
  $("repair-sub2").textContent = "partitions scanned " + fmtCount(r.partitions_scanned || 0) +
    " · shards rebuilt " + fmtCount(r.shards_rebuilt || 0) + " · failures " + fmtCount(r.failures || 0);
}

// -- nodes by zone --------------------------------------------------------------------------------

function seenText(node) {
  const tally = {};
  let observers = 0;
  for (const [observer, state] of Object.entries(node.seen_by || {})) {
    if (observer === node.id) continue;
    observers++;
    tally[state] = (tally[state] || 0) + 1;
  }
  if (!observers) return "no peer answered";
  const prefix = node.reachable === false ? "no answer to the gateway; " : "";
  const seen = STATES.concat(["?"]).filter((s) => tally[s]);
  const word = (s) => (s === "?" ? "unknown" : s);
  if (seen.length === 1) return prefix + tally[seen[0]] + " of " + observers + " peers see it " + word(seen[0]);
  return prefix + "peers see it " + seen.map((s) => word(s) + " " + tally[s]).join(", ");
}

function meter(fraction, cls) {
  const m = el("div", "meter");
  const f = el("div", "meter-fill" + (cls ? " " + cls : ""));
  f.style.width = (Math.max(0, Math.min(1, fraction)) * 100).toFixed(1) + "%";
  m.appendChild(f);
  return m;
}

function kv(label, value) {
  const row = el("div", "kv");
  row.appendChild(el("span", null, label));
  row.appendChild(el("span", null, value));
  return row;
}

function nodeCard(node, maxShards) {
  const card = el("div", "node");
  card.dataset.node = node.id;
  card.dataset.state = node.state;
  const head = el("div", "node-head");
  head.appendChild(el("span", "node-id", node.id));
  head.appendChild(el("span", "pill", node.state));
  card.appendChild(head);
  card.appendChild(el("div", "addr", node.address + (node.map_state !== "active" ? " · " + node.map_state : "")));

  if (node.disk_total) {
    const used = (node.disk_total - node.disk_free) / node.disk_total;
    card.appendChild(kv("disk", (used * 100).toFixed(0) + "% of " + fmtBytes(node.disk_total)));
    card.appendChild(meter(used, used > 0.95 ? "full" : used > 0.85 ? "high" : ""));
  } else {
    card.appendChild(kv("disk", "–"));
    card.appendChild(meter(0));
  }
  const shards = node.blobs;
  card.appendChild(kv("shards", shards === null || shards === undefined ? "–"
    : fmtCount(shards) + " · " + fmtBytes(node.blob_bytes)));
  card.appendChild(meter(maxShards ? (shards || 0) / maxShards : 0, "shards"));
  card.appendChild(kv("records", fmtCount(node.records)));
  card.appendChild(el("div", "seen", seenText(node)));
  return card;
}

function renderZones(st) {
  const nodes = st.nodes || [];
  const zones = new Map();
  for (const n of nodes) {
    if (!zones.has(n.zone)) zones.set(n.zone, []);
    zones.get(n.zone).push(n);
  }
  const maxShards = Math.max(0, ...nodes.map((n) => n.blobs || 0));
  const box = $("zones");
  const frag = document.createDocumentFragment();
  for (const zone of [...zones.keys()].sort()) {
    const members = zones.get(zone).sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
    const z = el("div", "zone");
    z.dataset.zone = zone;
    const head = el("div", "zone-head");
    head.appendChild(el("span", "zone-name", "zone " + zone));
    const up = members.filter((n) => n.state === "up").length;
    head.appendChild(el("span", "zone-count", up + " of " + members.length + " up"));
    z.appendChild(head);
    const list = el("div", "zone-nodes");
    for (const n of members) list.appendChild(nodeCard(n, maxShards));
    z.appendChild(list);
    frag.appendChild(z);
  }
  box.replaceChildren(frag);
}

// -- charts -----------------------------------------------------------------------------------------

// The power of 1024 whose unit (B, KiB, MiB...) a byte axis up to `max` is labelled in.
function byteUnit(max) {
  return max >= 1024 ? Math.pow(1024, Math.floor(Math.log(max) / Math.log(1024))) : 1;
}

// A round step (1, 2 or 5 times a power of ten, in units of byteUnit for bytes) that fits `max` in ~4 steps.
function niceStep(max, base) {
  if (max <= 0) return 1;
  const unit = base === 1024 ? byteUnit(max) : 1;
  const scaled = max / 4 / unit;
  const p = Math.pow(10, Math.floor(Math.log10(scaled)));
  for (const m of [1, 2, 5, 10]) if (scaled <= m * p) return m * p * unit;
  return 10 * p * unit;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// series: [{values: [number|null], color, fill}]; fmt(v, axisMax) formats a y value for the axis;
// seconds: the time the values span, one per second; opts.base 1024 for bytes, opts.integer for counts.
function drawChart(canvas, series, fmt, seconds, opts) {
  opts = opts || {};
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 62, r: 8, t: 8, b: 20 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  let step = niceStep(max, opts.base);
  if (opts.integer) step = Math.max(1, Math.round(step));
  const ticks = Math.max(1, Math.ceil(max / step));
  max = ticks * step;
  const n = Math.max(1, series[0].values.length);
  const x = (i) => pad.l + (n === 1 ? pw : (i / (n - 1)) * pw);
  const y = (v) => pad.t + ph - (v / max) * ph;

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = cssVar("--muted");
  ctx.strokeStyle = cssVar("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= ticks; i++) {
    const v = step * i;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, yy);
    ctx.lineTo(pad.l + pw, yy);
    ctx.stroke();
    ctx.fillText(fmt(v, max), pad.l - 6, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const every = seconds > 150 ? 60 : seconds > 75 ? 30 : 15;
  for (let ago = Math.floor((n - 1) / every) * every; ago >= 0; ago -= every) {
    const label = ago === 0 ? "now" : every === 60 ? "-" + ago / 60 + "m" : "-" + ago + "s";
    ctx.fillText(label, Math.min(x(n - 1 - ago), pad.l + pw - 12), pad.t + ph + 5);
  }

  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      drawing = true;
    });
    ctx.stroke();
    // a second with requests between idle ones would be a line of no length: mark it with a dot
    ctx.fillStyle = s.color;
    s.values.forEach((v, i) => {
      const lone = v !== null && (i === 0 || s.values[i - 1] === null) && (i === n - 1 || s.values[i + 1] === null);
      if (lone) { ctx.beginPath(); ctx.arc(x(i), y(v), 2, 0, 2 * Math.PI); ctx.fill(); }
    });
    if (s.fill) {
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = s.color;
      ctx.beginPath();
      ctx.moveTo(x(0), y(0));
      s.values.forEach((v, i) => ctx.lineTo(x(i), y(v || 0)));
      ctx.lineTo(x(n - 1), y(0));
      ctx.closePath();
      ctx.fill();
      ctx.globalAlpha = 1;
    }
  }
}

function renderCharts(st) {
  const gw = st.gateway || {};
  const samples = gw.samples || [];
  if (!samples.length) return;
  // a young gateway has no history to show: draw the time since it started (at least a minute)
  const seconds = Math.min(samples.length, Math.max(60, Math.ceil(gw.uptime || 0)));
  const shown = samples.slice(-seconds);
  $("window-hint").textContent = "last " + (seconds >= 120 ? Math.round(seconds / 60) + " minutes"
    : seconds + " seconds") + ", per second";
  const pick = (f) => shown.map(f);
  // errors first: where both are zero the requests line is the one on top
  drawChart($("chart-requests"), [
    { values: pick((s) => s.errors), color: cssVar("--c-err") },
    { values: pick((s) => s.requests), color: cssVar("--c-req"), fill: true },
  ], fmtCount, seconds, { integer: true });
  drawChart($("chart-bytes"), [
    { values: pick((s) => s.bytes_in), color: cssVar("--c-in"), fill: true },
    { values: pick((s) => s.bytes_out), color: cssVar("--c-out"), fill: true },
  ], fmtByteAxis, seconds, { base: 1024 });
  drawChart($("chart-latency"), [
    { values: pick((s) => s.p50_ms), color: cssVar("--c-p50") },
    { values: pick((s) => s.p99_ms), color: cssVar("--c-p99") },
  ], fmtMs, seconds);
}

// -- polling ----------------------------------------------------------------------------------------

function renderMeta(st) {
  const gw = st.gateway || {};
  const when = new Date((st.generated || Date.now() / 1000) * 1000);
  $("meta").textContent = "map epoch " + st.epoch + " · " + (st.nodes || []).length + " nodes · erasure code " +
    st.k + "+" + st.m + " · gateway up " + fmtDuration(gw.uptime || 0) + " · updated " +
    when.toLocaleTimeString();
}

function setLive(state, text) {
  $("live").dataset.live = state;
  $("live-text").textContent = text;
}

function showError(text) {
  const e = $("error");
  e.hidden = !text;
  e.textContent = text || "";
}

async function poll() {
  try {
    const resp = await fetch("api/status", { cache: "no-store", credentials: "same-origin" });
    if (resp.status === 401 || resp.status === 403) {
      showError("The gateway refused the admin credentials (" + resp.status + "): reload the page to sign in again.");
      setLive("stale", "signed out");
      return;
    }
    if (!resp.ok) throw new Error("status " + resp.status);
    const st = await resp.json();
    lastStatus = st;
    lastOk = Date.now();
    showError(st.error ? "Cluster status incomplete: " + st.error : "");
    renderMeta(st);
    renderSummary(st);
    renderZones(st);
    renderCharts(st);
    setLive("ok", "live");
  } catch (err) {
    if (Date.now() - lastOk > STALE_AFTER_MS) {
      setLive("stale", "gateway unreachable");
      showError("No answer from the gateway since " + (lastOk ? new Date(lastOk).toLocaleTimeString() : "the page loaded") +
        ": " + err.message);
    }
  }
  setTimeout(poll, POLL_MS);
}

window.addEventListener("resize", () => { if (lastStatus) renderCharts(lastStatus); });
poll();
