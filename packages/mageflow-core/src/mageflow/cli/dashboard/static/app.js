// MageFlow dashboard: plain JS, no build step. Live updates come from the server's
// Server-Sent Events (the engine's event stream); the tree is re-read once per burst.
"use strict";
const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
let config = { token_required: false, actions: [] };
let source = null;

function token() { return params.get("token") || document.getElementById("token").value || localStorage.getItem("mageflow-token") || ""; }
function esc(v) { return String(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function secs(v) { return v == null ? "-" : v < 60 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min"; }
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }
function status(s) { return `<span class="status st-${esc(s)}" data-status="${esc(s)}">${esc(s)}</span>`; }
function short(v) { if (v == null) return ""; const t = JSON.stringify(v); return t.length > 80 ? t.slice(0, 77) + "..." : t; }
async function getJSON(url) { const r = await fetch(url); return r.json(); }

function progress(p, counts) {
  if (!p || !p.total) return "";
  const ended = p.ended == null ? 0 : p.ended;
  const pct = Math.round(100 * ended / p.total);
  let text = `<span class="bar"><span style="width:${pct}%"></span></span> <span class="progress-text">${ended}/${p.total}</span>`;
  if (p.rate) text += ` <span class="rate">${p.rate.toFixed(2)}/s</span>`;
  if (p.eta != null) text += ` <span class="eta">ETA ${secs(p.eta)}</span>`;
  if (counts && counts.running != null) text += ` <span class="muted">running ${counts.running}, queued ${counts.queued}, failed ${counts.failed}</span>`;
  return text;
}

// -- workflows list --------------------------------------------------------------------
async function listPage() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  main.innerHTML = `<form class="filters" id="filters">
      <select name="status"><option value="">any status</option>${["pending","active","suspended","interrupted","canceled","done","failed"].map(s => `<option ${q.get("status") === s ? "selected" : ""}>${s}</option>`).join("")}</select>
      <input name="name" placeholder="name contains" value="${esc(q.get("name") || "")}">
      <input name="id" placeholder="identifier name=value" value="${esc(q.get("id") || "")}">
      <select name="age"><option value="">any age</option>${[[300,"5 min"],[3600,"1 h"],[86400,"1 day"]].map(([v, l]) => `<option value="${v}" ${q.get("age") === String(v) ? "selected" : ""}>${l}</option>`).join("")}</select>
      <button>filter</button></form><div id="rows">loading...</div>`;
  document.getElementById("filters").onsubmit = ev => {
    ev.preventDefault();
    const f = new URLSearchParams(new FormData(ev.target));
    location.hash = "#/?" + f.toString();
  };
  const page = Number(q.get("page") || 1);
  const data = await getJSON("/api/workflows?" + q.toString());
  const rows = data.rows.map(r => `<tr data-key="${esc(r.key)}">
      <td><a href="#/wf/${encodeURIComponent(r.key)}">${esc(r.key)}</a></td><td>${esc(r.name)}</td>
      <td><span class="kind">${esc(r.kind)}</span></td><td>${status(r.status)}</td>
      <td>${progress(r.progress)}</td><td>${when(r.created)}</td><td>${secs(r.duration)}</td>
      <td class="error">${r.error ? esc(r.error.type + ": " + r.error.message) : ""}</td></tr>`).join("");
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  const link = p => { const n = new URLSearchParams(q); n.set("page", p); return "#/?" + n.toString(); };
  document.getElementById("rows").innerHTML = `<table id="workflows"><tr><th>key</th><th>name</th><th>kind</th><th>status</th><th>progress</th><th>created</th><th>duration</th><th>error</th></tr>${rows}</table>
    <p>${data.total} workflow(s), page ${page}/${pages}
    ${page > 1 ? `<a href="${link(page - 1)}">previous</a>` : ""} ${page < pages ? `<a href="${link(page + 1)}">next</a>` : ""}</p>`;
}

// -- one workflow ------------------------------------------------------------------------
function nodeHTML(n) {
  const err = n.error ? `<span class="error">${esc((n.error.type || "") + ": " + (n.error.message || ""))}</span>` : "";
  const res = n.status === "done" && n.result !== null ? `<span class="result">${esc(short(n.result))}</span>` : "";
  const kids = n.children.map(nodeHTML).join("") + (n.hidden ? `<div class="node muted">... ${n.hidden} more</div>` : "");
  const prog = n.kind === "task" ? "" : progress(n.progress, n.kind === "swarm" ? n.counts : null);
  return `<div class="node" data-key="${esc(n.key)}"><div class="line"><span class="kind">${esc(n.kind)}</span>
    <span>${esc(n.name)}</span> ${status(n.status)} <span class="muted">${secs(n.duration)}${n.attempts > 1 ? `, ${n.attempts} attempts` : ""}</span>
    ${prog} ${res} ${err}</div>${kids}</div>`;
}

async function workflowPage(key) {
  main.innerHTML = `<h2>${esc(key)}</h2><div class="actions">${config.actions.map(a => `<button data-action="${a}">${a}</button>`).join("")}
    <span id="action-result" class="muted"></span></div><div id="tree">loading...</div><h3>events</h3><table id="events"></table>`;
  main.querySelectorAll("button[data-action]").forEach(b => b.onclick = () => act(key, b.dataset.action));
  let timer = null;
  const refresh = async () => {
    timer = null;
    const tree = await getJSON("/api/workflows/" + encodeURIComponent(key));
    const box = document.getElementById("tree");
    if (box) box.innerHTML = tree.error ? `<p class="error">${esc(tree.error)}</p>` : nodeHTML(tree);
  };
  await refresh();
  if (source) source.close();
  source = new EventSource("/api/workflows/" + encodeURIComponent(key) + "/events");
  source.onmessage = msg => {
    const e = JSON.parse(msg.data);
    const table = document.getElementById("events");
    if (table) table.insertAdjacentHTML("afterbegin", `<tr><td>${when(e.at)}</td><td>${esc(e.event)}</td><td><span class="kind">${esc(e.kind)}</span></td><td>${esc(e.task_name || "")}</td><td><code>${esc(e.key)}</code></td></tr>`);
    while (table && table.rows.length > 50) table.deleteRow(-1);
    if (!timer) timer = setTimeout(refresh, 250); // one tree read per burst of events
  };
  source.addEventListener("end", () => { source.close(); refresh(); });
}

async function act(key, action) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const r = await fetch(`/api/workflows/${encodeURIComponent(key)}/${action}`, { method: "POST", headers });
  const body = await r.json();
  document.getElementById("action-result").textContent = body.error ? "error: " + body.error : `${action}: ${body.status}`;
  if (!body.error && action === "retry") workflowPage(key);
}

// -- workers ---------------------------------------------------------------------------
async function workersPage() {
  const data = await getJSON("/api/workers");
  const rows = data.workers.map(w => `<tr><td><code>${esc(w.id)}</code></td><td>${esc(w.backend)}</td><td>${esc(w.host)}</td><td>${w.pid}</td>
    <td>${esc(w.queues.join(", "))}</td><td>${w.concurrency == null ? "-" : w.concurrency}</td><td>${w.tasks.length}</td><td>${when(w.last_seen)}</td></tr>`).join("");
  main.innerHTML = `<table id="workers"><tr><th>worker</th><th>backend</th><th>host</th><th>pid</th><th>queues</th><th>concurrency</th><th>tasks</th><th>last seen</th></tr>${rows}</table>
    <p>${data.workers.length} live worker(s)</p>`;
}

async function route() {
  if (source && !location.hash.startsWith("#/wf/")) { source.close(); source = null; }
  const h = location.hash || "#/";
  if (h.startsWith("#/wf/")) return workflowPage(decodeURIComponent(h.slice(5)));
  if (h.startsWith("#/workers")) return workersPage();
  return listPage();
}

(async () => {
  config = await getJSON("/api/config");
  if (config.token_required) document.getElementById("token-box").hidden = false;
  document.getElementById("token").onchange = e => localStorage.setItem("mageflow-token", e.target.value);
  window.onhashchange = route;
  route();
})();
