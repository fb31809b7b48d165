// The unit's dashboard: polls the gateway's JSON API with the token kept in
// sessionStorage. No library, no network access beyond this gateway.
"use strict";

const TOKEN_KEY = "panoptes-token";
const SVG = "http://www.w3.org/2000/svg";
const STATES = ["sleeping", "ready", "scheduling", "slewing", "pointing", "tracking", "observing",
                "analyzing", "parking", "parked", "housekeeping"];
const $ = (id) => document.getElementById(id);

let status = null;
let fields = null;
let site = null;
let lastEventId = null;
let frameId = null;
let frameUrl = null;
const timers = [];

// ---------------------------------------------------------------- token

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    // Out of the address bar (and of the history) at once.
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function showLogin(message) {
  timers.forEach(clearInterval);
  timers.length = 0;
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
}

class Unauthorised extends Error {}

async function api(path, options) {
  const opts = Object.assign({headers: {}}, options || {});
  opts.headers["Authorization"] = "Bearer " + token();
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Unauthorised("the token was refused");
  }
  return resp;
}

async function apiJson(path, options) {
  const resp = await api(path, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = {error: "not JSON"}; }
  if (!resp.ok) {
    const err = new Error(body && body.error ? body.error : resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function connection(ok, text) {
  const c = $("connection");
  c.textContent = text;
  c.className = "connection" + (ok ? "" : " down");
}

async function guarded(fn) {
  try {
    await fn();
  } catch (e) {
    if (e instanceof Unauthorised) showLogin("The token was refused; enter it again.");
    else connection(false, e.message || String(e));
  }
}

// ---------------------------------------------------------------- helpers

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function unixOf(iso) {
  if (!iso) return null;
  const t = Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
  return isNaN(t) ? null : t / 1000;
}

function short(iso) { return iso ? iso.slice(0, 19).replace("T", " ") : "?"; }

function duration(s) {
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
}

function hms(ra) {
  const h = ((ra % 360) + 360) % 360 / 15;
  const hh = Math.floor(h), mm = Math.floor((h - hh) * 60), ss = ((h - hh) * 60 - mm) * 60;
  return `${String(hh).padStart(2, "0")}h${String(mm).padStart(2, "0")}m${ss.toFixed(0).padStart(2, "0")}s`;
}

function dms(dec) {
  const s = dec < 0 ? "-" : "+", d = Math.abs(dec);
  const dd = Math.floor(d), mm = Math.floor((d - dd) * 60);
  return `${s}${String(dd).padStart(2, "0")}°${String(mm).padStart(2, "0")}'`;
}

function stateClass(state) { return "st-" + (STATES.includes(state) ? state : "other"); }

// ------------------------------------------------------------- astronomy

// Local sidereal time in degrees for a Unix time and an east longitude.
function lstDeg(unix, lonDeg) {
  const jd = unix / 86400 + 2440587.5;
  const gmst = 280.46061837 + 360.98564736629 * (jd - 2451545.0);
  return (((gmst + lonDeg) % 360) + 360) % 360;
}

// Altitude and azimuth (north through east), degrees.
function altAz(raDeg, decDeg, latDeg, lstDegrees) {
  const r = Math.PI / 180;
  const ha = (lstDegrees - raDeg) * r, dec = decDeg * r, lat = latDeg * r;
  const sinAlt = Math.sin(lat) * Math.sin(dec) + Math.cos(lat) * Math.cos(dec) * Math.cos(ha);
  const alt = Math.asin(Math.max(-1, Math.min(1, sinAlt)));
  const az = Math.atan2(-Math.cos(dec) * Math.sin(ha),
                        Math.cos(lat) * Math.sin(dec) - Math.sin(lat) * Math.cos(dec) * Math.cos(ha));
  return [alt / r, ((az / r) + 360) % 360];
}

// Polar plot: zenith at the centre, horizon at radius 100, north up, east left.
function skyXY(alt, az) {
  const rad = (90 - alt) / 90 * 100, a = az * Math.PI / 180;
  return [-rad * Math.sin(a), -rad * Math.cos(a)];
}

// ---------------------------------------------------------------- status

function renderStatus(s) {
  status = s;
  $("unit-name").textContent = s.unit || "PANOPTES unit";
  document.title = `${s.state} · ${s.unit || "PANOPTES unit"}`;
  const st = $("state");
  st.textContent = s.state;
  st.className = "state " + stateClass(s.state);
  const since = unixOf(s.since), now = unixOf(s.time);
  $("since").textContent = since && now ? `since ${short(s.since).slice(11)} (${duration(now - since)})` : "";
  $("clock").textContent = `${short(s.time)} UTC` + (s.speed && s.speed !== 1 ? ` · x${s.speed}` : "");
  $("target").textContent = s.target || "none";
  const ob = s.observation;
  $("observation").textContent = ob ? `${ob.frames} of ${ob.min_nexp} rounds, set ${ob.set} (${ob.id})` : "—";
  const m = s.mount || {};
  const pos = typeof m.ra_deg === "number" ? ` · RA ${hms(m.ra_deg)} Dec ${dms(m.dec_deg)}` : "";
  $("mount").textContent = `${m.state || "?"}${pos}` + (m.parked ? " · parked" : m.tracking ? " · tracking" : "");
  renderCameras(s);
  $("hold").textContent = s.hold ? s.hold + (s.requested_field ? ` · requested ${s.requested_field}` : "")
                                 : (s.requested_field ? `requested ${s.requested_field}` : "none");
  $("decision").textContent = s.last_decision ? s.last_decision.reason : "—";
  renderSafety(s.safety);
  renderActors(s.actors || []);
  renderSky();
}

function renderCameras(s) {
  const box = $("cameras");
  box.replaceChildren();
  const cams = (s.actors || []).filter((a) => a.role === "camera");
  if (!cams.length) { box.textContent = "—"; return; }
  for (const a of cams) {
    const line = el("div", {class: "camera", "data-camera": a.name});
    const health = a.failed ? "FAILED" : a.ready ? "ready" : "starting";
    line.append(el("span", {}, `${a.name} ${health} `));
    const info = s.cameras && s.cameras[a.name];
    const exp = info && (info.exposure || info);
    if (exp && exp.exptime > 0) {
      let elapsed = exp.elapsed_s;
      if (typeof elapsed !== "number" && exp.started) elapsed = unixOf(s.time) - unixOf(exp.started);
      if (typeof elapsed === "number") {
        const f = Math.max(0, Math.min(1, elapsed / exp.exptime));
        const bar = el("span", {class: "progress", title: `${Math.round(f * 100)}%`});
        const fill = el("span");
        fill.style.width = (f * 100).toFixed(0) + "%";
        bar.append(fill);
        line.append(bar, el("span", {}, ` ${Math.min(elapsed, exp.exptime).toFixed(0)}/${exp.exptime.toFixed(0)} s`));
      }
    }
    box.append(line);
  }
}

function renderSafety(v) {
  const p = $("safety"), ul = $("safety-reasons");
  ul.replaceChildren();
  if (!v) { p.textContent = "no verdict yet"; p.className = "verdict"; $("sun").textContent = ""; return; }
  p.textContent = v.safe ? "SAFE" : "UNSAFE";
  p.className = "verdict " + (v.safe ? "safe" : "unsafe");
  for (const r of v.reasons || []) ul.append(el("li", {}, r));
  $("sun").textContent = typeof v.sun_alt_deg === "number" ? `sun at ${v.sun_alt_deg.toFixed(1)}°` : "";
}

function renderActors(actors) {
  const body = document.querySelector("#actors tbody");
  body.replaceChildren();
  for (const a of actors) {
    const tr = el("tr");
    tr.append(el("td", {}, a.name), el("td", {}, a.role),
              el("td", {}, a.failed ? "FAILED" : a.ready ? "ready" : "starting"),
              el("td", {}, String(a.restarts || 0)));
    body.append(tr);
  }
}

// ---------------------------------------------------------------- sky

function renderSky() {
  const plot = $("sky");
  plot.replaceChildren();
  plot.append(svg("circle", {cx: 0, cy: 0, r: 100, class: "horizon"}));
  for (const alt of [30, 60]) plot.append(svg("circle", {cx: 0, cy: 0, r: (90 - alt) / 90 * 100, class: "ring"}));
  if (site && site.min_altitude) {
    plot.append(svg("circle", {cx: 0, cy: 0, r: (90 - site.min_altitude) / 90 * 100, class: "limit"}));
  }
  for (const [t, x, y] of [["N", 0, -108], ["S", 0, 108], ["E", -108, 0], ["W", 108, 0]]) {
    plot.append(svg("text", {x, y, class: "cardinal"}, t));
  }
  if (!status || !site || !fields) return;
  const now = unixOf(status.time) || Date.now() / 1000;
  const lst = lstDeg(now, site.longitude);
  let shown = 0;
  for (const f of fields) {
    const [alt, az] = altAz(f.ra_deg, f.dec_deg, site.latitude, lst);
    if (alt < 0) continue;
    const [x, y] = skyXY(alt, az);
    const current = f.name === status.target;
    const cls = "field" + (current ? " current" : alt < (site.min_altitude || 0) ? " below" : "");
    const dot = svg("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: current ? 3.2 : 1.8, class: cls,
                               "data-field": f.name});
    dot.append(svg("title", {}, `${f.name}: altitude ${alt.toFixed(0)}°, azimuth ${az.toFixed(0)}°`));
    plot.append(dot);
    if (current || f.priority >= 150) {
      plot.append(svg("text", {x: (x + 4).toFixed(1), y: (y + 2).toFixed(1),
                               class: "label" + (current ? " current" : "")}, f.name));
    }
    shown += 1;
  }
  const m = status.mount || {};
  if (typeof m.ra_deg === "number" && !m.parked) {
    const [alt, az] = altAz(m.ra_deg, m.dec_deg, site.latitude, lst);
    if (alt > -5) {
      const [x, y] = skyXY(Math.max(alt, 0), az);
      plot.append(svg("path", {d: `M${x - 5},${y} h10 M${x},${y - 5} v10`, class: "mount"}));
    }
  }
  $("sky-caption").textContent = `${shown} fields above the horizon at ${short(status.time).slice(11, 16)} UTC` +
    (status.target ? `; observing ${status.target}` : "") + "; cross: where the mount points";
}

// ---------------------------------------------------------------- frame

async function refreshFrame() {
  let meta;
  try {
    meta = await apiJson("/api/frame/latest");
  } catch (e) {
    if (e.status === 404) { $("frame-caption").textContent = "no frame yet"; return; }
    throw e;
  }
  if (meta.id === frameId) return;
  const resp = await api("/api/frame/latest.png");
  if (!resp.ok) return;
  const blob = await resp.blob();
  const img = $("frame");
  const old = frameUrl;
  frameUrl = URL.createObjectURL(blob);
  img.onload = () => { img.dataset.loaded = "1"; img.dataset.frameId = meta.id; if (old) URL.revokeObjectURL(old); };
  img.src = frameUrl;
  frameId = meta.id;
  const quality = meta.n_stars != null ? ` · ${meta.n_stars} stars` : "";
  $("frame-caption").textContent =
    `${meta.field || "no field"} · ${meta.camera} · ${meta.image_type} ${meta.exptime} s · ${short(meta.start_time)}${quality}`;
}

// ---------------------------------------------------------------- timeline

async function refreshTimeline() {
  const t = await apiJson("/api/timeline");
  const plot = $("timeline");
  plot.replaceChildren();
  const span = t.end_unix - t.start_unix;
  if (!(span > 0)) return;
  const x = (u) => Math.max(0, Math.min(1000, (u - t.start_unix) / span * 1000));
  if (t.dark_start_unix && t.dark_end_unix) {
    plot.append(svg("rect", {x: x(t.dark_start_unix), y: 0, width: x(t.dark_end_unix) - x(t.dark_start_unix),
                             height: 64, class: "dark"}));
  }
  const seen = new Set();
  for (const s of t.segments) {
    const rect = svg("rect", {x: x(s.start_unix).toFixed(2), y: 14,
                              width: Math.max(0.5, x(s.end_unix) - x(s.start_unix)).toFixed(2), height: 36,
                              class: stateClass(s.state), "data-state": s.state});
    rect.append(svg("title", {}, `${s.state}${s.target ? " [" + s.target + "]" : ""}: ` +
                                 `${new Date(s.start_unix * 1000).toISOString().slice(11, 19)} - ` +
                                 `${new Date(s.end_unix * 1000).toISOString().slice(11, 19)} UTC`));
    plot.append(rect);
    seen.add(s.state);
  }
  if (t.now_unix >= t.start_unix && t.now_unix <= t.end_unix) {
    plot.append(svg("line", {x1: x(t.now_unix), x2: x(t.now_unix), y1: 0, y2: 64, class: "now"}));
  }
  const axis = $("timeline-axis");
  axis.replaceChildren();
  const firstHour = Math.ceil(t.start_unix / 3600) * 3600;
  const step = span > 12 * 3600 ? 7200 : 3600;
  for (let h = firstHour; h <= t.end_unix; h += step) {
    const label = el("span", {}, new Date(h * 1000).toISOString().slice(11, 16));
    label.style.left = (x(h) / 10) + "%";
    axis.append(label);
  }
  const legend = $("timeline-legend");
  legend.replaceChildren();
  for (const st of STATES.filter((s) => seen.has(s))) {
    const item = el("span");
    item.append(el("i", {class: stateClass(st)}), document.createTextNode(st));
    legend.append(item);
  }
}

// ---------------------------------------------------------------- events

async function refreshEvents() {
  const q = lastEventId === null ? "?limit=50" : `?since=${lastEventId}&limit=200`;
  const r = await apiJson("/api/events" + q);
  const body = document.querySelector("#events tbody");
  for (const e of r.events) {
    const tr = el("tr", {"data-kind": e.kind});
    tr.append(el("td", {}, String(e.id)), el("td", {}, short(e.time).slice(5)), el("td", {}, e.kind),
              el("td", {}, e.message));
    body.prepend(tr);
  }
  while (body.children.length > 200) body.lastChild.remove();
  lastEventId = r.last_id;
}

// ---------------------------------------------------------------- commands

async function command(name, args) {
  const out = $("command-result");
  try {
    const r = await apiJson("/api/command", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify({command: name, args: args || {}})});
    out.textContent = `${name}: ok ` + JSON.stringify(r.result);
    out.className = "muted";
  } catch (e) {
    if (e instanceof Unauthorised) { showLogin("The token was refused; enter it again."); return; }
    out.textContent = `${name}: ${e.message}`;
    out.className = "error";
  }
  guarded(refreshStatus);
}

// ---------------------------------------------------------------- polling

async function refreshStatus() {
  renderStatus(await apiJson("/api/status"));
  connection(true, "connected");
}

async function loadFields() {
  const r = await apiJson("/api/fields");
  fields = r.fields;
  site = r.site;
  const select = $("observe-field");
  select.replaceChildren(...fields.map((f) => el("option", {value: f.name}, f.name)));
  renderSky();
}

function every(ms, fn) {
  guarded(fn);
  timers.push(setInterval(() => guarded(fn), ms));
}

function start() {
  timers.forEach(clearInterval);
  timers.length = 0;
  if (!token()) { showLogin(""); return; }
  showDashboard();
  guarded(loadFields);
  every(2000, refreshStatus);
  every(3000, refreshEvents);
  every(5000, refreshFrame);
  every(15000, refreshTimeline);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    start();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(""); });
  for (const b of document.querySelectorAll("button[data-command]")) {
    b.addEventListener("click", () => {
      const name = b.dataset.command;
      if (confirm(`${name} the unit?`)) command(name);
    });
  }
  $("observe-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = $("observe-field").value;
    if (f && confirm(`Observe ${f} next?`)) command("observe", {field: f});
  });
  window.addEventListener("hashchange", () => { takeTokenFromFragment(); start(); });
  start();
});
