// The console's pages: login, worklist (live), study, system, users, audit trail
// (upload, connectivity test and outbox are in operations.js).
// Plain DOM building (never innerHTML with data), hash routes, one fetch helper that sends
// the CSRF token on state-changing requests and goes back to the login page on 401.
"use strict";

// `generation` counts sign-ins, sign-outs and page changes: an answer that arrives after
// one of them is for a page no longer shown (perhaps another user's) and is dropped.
const state = { user: null, role: null, csrf: null, events: null, reloadTimer: null, sessionTimer: null, generation: 0 };
// How often a signed-in page asks whether its session still lives (automatic logoff).
const SESSION_CHECK_MS = 15000;
const app = document.getElementById("app");

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

function say(text) {
  document.getElementById("status").textContent = text || "";
}

function csrfFromCookie() {
  const m = document.cookie.match(/(?:^|;\s*)__Host-duli_csrf=([0-9a-f]+)/);
  return m ? m[1] : null;
}

class Unauthenticated extends Error {}
// An answer for a page no longer shown: ignored wherever a signed-out request is.
class Superseded extends Unauthenticated {}

// Whether the browser's session is no longer this page's: another tab logged in (as
// someone else, on a shared PC) or out. The CSRF cookie is issued per session.
function sessionReplaced() {
  return state.csrf !== null && csrfFromCookie() !== state.csrf;
}

// `background`: the page makes this request on its own (not the user), so it must not
// keep the session alive: the server then leaves the idle timer running (automatic logoff).
async function api(method, path, body, { background = false } = {}) {
  if (state.user && sessionReplaced()) {
    signedOut();
    throw new Unauthenticated("this page's session ended");
  }
  const generation = state.generation;
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = state.csrf || csrfFromCookie() || "";
  }
  if (background) opts.headers["X-Background"] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401 && path !== "/api/v1/login") {
    signedOut();
    throw new Unauthenticated("login required");
  }
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.arrayBuffer();
  if (state.generation !== generation) throw new Superseded("answer for a page no longer shown");
  if (!r.ok) {
    const msg = (data && data.message) || `${r.status}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

// Asks again, a few seconds apart, while the server answers busy (503: other previews are
// being rendered; 429: this user's own are): a preview not cached yet waits its turn.
async function busyRetried(call, attempts = 4) {
  for (let i = 1; ; i++) {
    try {
      return await call();
    } catch (e) {
      if (i >= attempts || (e.status !== 503 && e.status !== 429)) throw e;
      await new Promise((r) => setTimeout(r, 2000 * i));
    }
  }
}

function fmtTime(secs) {
  if (!secs) return "";
  return new Date(secs * 1000).toLocaleString();
}

// DICOM person name FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX as "FAMILY, GIVEN MIDDLE".
function personName(pn) {
  if (!pn) return "(no name)";
  const [family, given, middle] = pn.split("=")[0].split("^");
  const rest = [given, middle].filter(Boolean).join(" ");
  return rest ? `${family}, ${rest}` : family;
}

function pct(p) {
  return typeof p === "number" ? `${(p * 100).toFixed(1)}%` : "";
}

// Clears every view (patient names, images, searches) and goes to the login page: at
// logout, and when the server ended the session (idle or absolute expiry, account change).
function signedOut() {
  state.generation++;
  state.user = state.role = state.csrf = null;
  if (state.events) { state.events.close(); state.events = null; }
  clearTimeout(state.reloadTimer);
  clearInterval(state.sessionTimer);
  state.reloadTimer = state.sessionTimer = null;
  worklistFilter.q = worklistFilter.state = "";
  worklistFilter.urgent = false;
  window.duliViewer = null;
  app.replaceChildren();
  say("");
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  if (location.hash !== "#/login") location.hash = "#/login";
  else route();
}

function signedIn(me) {
  state.generation++;
  state.user = me.user;
  state.role = me.role;
  state.csrf = me.csrf;
  const nav = document.getElementById("nav");
  nav.hidden = false;
  for (const a of nav.querySelectorAll("a")) {
    a.hidden = !a.dataset.role.split(" ").includes(me.role);
  }
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `${me.user} (${me.role})`;
  clearInterval(state.sessionTimer);
  state.sessionTimer = setInterval(checkSession, SESSION_CHECK_MS);
}

// Automatic logoff: the server ends an idle session, and then the page must not keep
// showing patient data on a shared reading-room PC. Asks whether the session lives
// (without counting as activity) and signs out on 401, or at once when the browser's
// session is another's (a login in another tab); a network error changes nothing.
async function checkSession() {
  if (!state.user) return;
  if (sessionReplaced()) return signedOut();
  let r;
  try {
    r = await fetch("/api/v1/session", { credentials: "same-origin" });
  } catch (e) {
    return;
  }
  if (r.status === 401 && state.user) signedOut();
}

function home() {
  return state.role === "radiologist" ? "#/worklist" : state.role === "admin" ? "#/users" : "#/system";
}

// ---- login ---------------------------------------------------------------

function loginPage() {
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const msg = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card login", id: "login-form" },
    h("h2", {}, "Log in"),
    h("label", { for: "username" }, "User name"), user,
    h("label", { for: "password" }, "Password"), pass,
    h("button", { type: "submit", class: "primary" }, "Log in"),
    msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      const me = await api("POST", "/api/v1/login", { username: user.value, password: pass.value });
      signedIn(me);
      location.hash = home();
    } catch (err) {
      msg.textContent = err.status === 429 ? err.message : "Wrong user name or password.";
    }
  });
  app.replaceChildren(form);
  user.focus();
  if (window.duliSetup) window.duliSetup();
}

// ---- worklist ------------------------------------------------------------

const worklistFilter = { q: "", state: "", urgent: false };

function worklistPage() {
  const search = h("input", { id: "search", type: "search", placeholder: "Patient, ID, accession", value: worklistFilter.q });
  const stateSel = h("select", { id: "state-filter" },
    ["", "receiving", "complete", "queued", "inferring", "done", "error"].map((s) =>
      h("option", { value: s, selected: s === worklistFilter.state }, s || "any state")));
  const urgent = h("input", { id: "urgent-only", type: "checkbox", checked: worklistFilter.urgent });
  const live = h("span", { class: "live", id: "live" }, "connecting…");
  const tbody = h("tbody", { id: "worklist-body" });
  const count = h("p", { id: "worklist-count", class: "muted" });
  const table = h("table", { class: "worklist" },
    h("caption", { class: "sr-only" }, "Studies, urgent first then newest"),
    h("thead", {}, h("tr", {},
      ["", "Patient", "Patient ID", "Accession", "Received", "State", "Top finding"].map((t) => h("th", { scope: "col" }, t)))),
    tbody);
  app.replaceChildren(
    h("section", { class: "toolbar", "aria-label": "Search and filters" },
      h("label", { for: "search" }, "Search"), search,
      h("label", { for: "state-filter" }, "State"), stateSel,
      h("label", { class: "check" }, urgent, " urgent only"),
      live),
    count, table);

  // `background`: a reload after a live event, not the user's doing.
  const load = async (background = false) => {
    const q = new URLSearchParams();
    if (worklistFilter.q) q.set("q", worklistFilter.q);
    if (worklistFilter.state) q.set("state", worklistFilter.state);
    if (worklistFilter.urgent) q.set("urgent", "1");
    try {
      const data = await api("GET", `/api/v1/studies?${q}`, undefined, { background });
      tbody.replaceChildren(...data.studies.map(worklistRow));
      count.textContent = `${data.total} stud${data.total === 1 ? "y" : "ies"}`;
    } catch (e) {
      if (!(e instanceof Unauthenticated)) say(`Worklist: ${e.message}`);
    }
  };
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { worklistFilter.q = search.value.trim(); load(); }, 300);
  });
  stateSel.addEventListener("change", () => { worklistFilter.state = stateSel.value; load(); });
  urgent.addEventListener("change", () => { worklistFilter.urgent = urgent.checked; load(); });
  load();
  followEvents(() => load(true), live);
}

function worklistRow(s) {
  const link = `#/study/${encodeURIComponent(s.study_uid)}`;
  const top = s.top_finding ? `${s.top_finding.label} ${pct(s.top_finding.probability)}` : "";
  return h("tr", { class: s.triage ? "urgent" : "", "data-study": s.study_uid },
    h("td", {}, s.triage ? h("span", { class: "badge urgent", title: "Urgent" }, "URGENT") : ""),
    h("td", {}, h("a", { href: link }, personName(s.patient_name))),
    h("td", {}, s.patient_id),
    h("td", {}, s.accession),
    h("td", {}, fmtTime(s.received)),
    h("td", {}, h("span", { class: `state ${s.state}` }, s.state)),
    h("td", {}, applicabilityCell(s) || top));
}

// Outside the model's intended use, or analysed with a caveat (e.g. age unknown).
function applicabilityCell(s) {
  if (s.not_applicable) {
    return h("span", { class: "badge not-applicable", title: s.not_applicable },
      `Not applicable: ${s.not_applicable}`);
  }
  if (s.caveat) {
    const top = s.top_finding ? `${s.top_finding.label} ${pct(s.top_finding.probability)} ` : "";
    return h("span", {}, top, h("span", { class: "badge caveat", title: s.caveat }, "caveat"));
  }
  return null;
}

// The live event stream and `reload` after its events are the page's own doing: neither
// keeps the session alive (the server does not count the stream as activity).
function followEvents(reload, indicator) {
  if (state.events) state.events.close();
  const es = new EventSource("/api/v1/events");
  state.events = es;
  const schedule = () => {
    clearTimeout(state.reloadTimer);
    state.reloadTimer = setTimeout(reload, 250);
  };
  es.addEventListener("ready", () => { indicator.textContent = "live"; indicator.classList.add("on"); });
  es.addEventListener("study", schedule);
  es.addEventListener("reload", schedule);
  es.onerror = () => {
    indicator.textContent = "reconnecting…";
    indicator.classList.remove("on");
    // The server ends the stream when the session ends; then the page signs out.
    checkSession();
  };
}

// ---- study ---------------------------------------------------------------

async function studyPage(uid) {
  app.replaceChildren(h("p", {}, "Loading study…"));
  let s;
  try {
    s = await api("GET", `/api/v1/studies/${encodeURIComponent(uid)}`);
  } catch (e) {
    if (!(e instanceof Unauthenticated)) app.replaceChildren(h("p", { class: "error" }, `Study: ${e.message}`));
    return;
  }
  if (!state.user) return; // signed out meanwhile
  const result = s.result || {};
  const findings = Array.isArray(result.findings) ? result.findings : [];
  const model = result.model || {};
  const canvas = h("canvas", { id: "image", tabindex: "0", "aria-label": "Radiograph. Drag or use arrow keys to change window and level; R resets, I inverts." });
  const heat = s.heatmap ? h("img", { id: "heatmap", class: "heatmap", src: s.heatmap, alt: "AI heatmap overlay" }) : null;
  const wl = h("output", { id: "wl" });
  const heatToggle = h("input", { id: "heat-toggle", type: "checkbox", checked: true, disabled: !heat });
  const heatOpacity = h("input", { id: "heat-opacity", type: "range", min: "0", max: "100", value: "45", disabled: !heat });
  const treemap = h("div", { class: "treemap", id: "treemap" });

  const p = s.study || {};
  app.replaceChildren(
    h("p", {}, h("a", { href: "#/worklist" }, "← Worklist")),
    h("h2", {}, `${personName(p.patient_name)} `, h("span", { class: "muted" }, `${p.patient_id || ""}`)),
    h("p", { class: "meta" },
      `Accession ${p.accession_number || "-"} · ${p.study_description || ""} · received ${fmtTime(p.first_received)} · `,
      h("span", { class: `state ${s.state}` }, s.state),
      s.triage ? h("span", { class: "badge urgent" }, "URGENT") : ""),
    h("p", { class: "ai-mark", role: "note" }, "AI-generated, preliminary: not a diagnosis."),
    result.not_applicable ? h("p", { id: "not-applicable", class: "not-applicable", role: "status" },
      `Not applicable: outside the model's intended use (${result.not_applicable}). Not analysed.`) : "",
    result.caveat ? h("p", { id: "caveat", class: "caveat", role: "note" }, `Caveat: ${result.caveat}`) : "",
    h("div", { class: "study" },
      h("section", { class: "viewer", "aria-label": "Image" },
        h("div", { class: "stage" }, canvas, heat),
        h("div", { class: "controls" },
          h("button", { type: "button", id: "wl-reset" }, "Reset window"),
          h("button", { type: "button", id: "invert" }, "Invert"),
          wl,
          h("label", { class: "check" }, heatToggle, " Heatmap"),
          h("label", { for: "heat-opacity" }, "Opacity"), heatOpacity)),
      h("section", { class: "side" },
        h("h3", {}, "Findings"),
        findings.length ? findingsTable(findings) : h("p", { class: "muted" }, result.not_applicable ? "Not analysed." : s.result ? "No findings reported." : "No result yet."),
        h("div", { class: "treemap-wrap" }, treemap),
        h("p", { id: "model" }, "Model: ", model.name ? `${model.name} ${model.version || ""}` : "-"),
        h("h3", {}, "Delivery"),
        deliveryTable(s.delivery || []),
        h("h3", {}, "Feedback"),
        feedbackForm(uid),
        h("ul", { id: "feedback-list" }, (s.feedback || []).map(feedbackItem)))));

  if (heat) {
    heat.addEventListener("load", () => colorizeHeatmap(heat));
    const apply = () => {
      heat.hidden = !heatToggle.checked;
      heat.style.opacity = String(heatOpacity.value / 100);
    };
    heatToggle.addEventListener("change", apply);
    heatOpacity.addEventListener("input", apply);
    apply();
  }
  requestAnimationFrame(() => renderTreemap(treemap, findings.map((f) => ({
    label: f.label, value: Number(f.probability) || 0, positive: !!f.positive,
  }))));

  const inst = (s.instances || []).find((i) => !i.pruned);
  if (!inst) {
    canvas.replaceWith(h("p", { class: "muted" }, "No image available (pixel data removed by retention)."));
    return;
  }
  try {
    const [info, png] = await Promise.all([busyRetried(() => api("GET", inst.preview_info)), busyRetried(() => api("GET", inst.preview))]);
    const img = await Png16.decode(png);
    if (!state.user) return; // signed out meanwhile
    const viewer = new Viewer(canvas, img, info);
    viewer.onChange((c, w) => { wl.textContent = `W ${Math.round(w)} / L ${Math.round(c)}`; });
    document.getElementById("wl-reset").addEventListener("click", () => viewer.reset());
    document.getElementById("invert").addEventListener("click", () => viewer.toggleInvert());
    window.duliViewer = viewer;
  } catch (e) {
    if (!(e instanceof Unauthenticated)) say(`Image: ${e.message}`);
  }
}

// The analysis stage records heatmaps as 8-bit grey (brightest = most important). Shown
// as is they would only lighten the image; recolour them once loaded: transparent where
// low, red to yellow where high. Images that carry their own transparency stay as they are.
function colorizeHeatmap(img) {
  if (img.dataset.colored || !img.naturalWidth) return;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height);
  const p = d.data;
  for (let i = 3; i < p.length; i += 4) if (p[i] < 255) return;
  for (let i = 0; i < p.length; i += 4) {
    const v = p[i] / 255;
    p[i] = 255;
    p[i + 1] = Math.round(255 * Math.max(0, (v - 0.5) * 2));
    p[i + 2] = 0;
    p[i + 3] = Math.round(255 * Math.max(0, (v - 0.25) / 0.75));
  }
  g.putImageData(d, 0, 0);
  img.dataset.colored = "true";
  img.src = c.toDataURL("image/png");
}

function findingsTable(findings) {
  return h("table", { class: "findings" },
    h("thead", {}, h("tr", {}, ["Finding", "Probability", "Threshold", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, findings.map((f) => h("tr", { class: f.positive ? "positive" : "" },
      h("td", {}, f.label, f.code ? h("span", { class: "muted" }, ` ${f.code}`) : ""),
      h("td", {}, pct(f.probability)),
      h("td", {}, pct(f.threshold)),
      h("td", {}, f.positive ? "above threshold" : "")))));
}

function deliveryTable(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing queued for delivery.");
  return h("table", { class: "delivery", id: "delivery" },
    h("thead", {}, h("tr", {}, ["Destination", "Message", "State", "Attempts", "Last error"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {},
      h("td", {}, String(r.destination ?? r.dest ?? "")), h("td", {}, String(r.kind ?? "")),
      h("td", {}, h("span", { class: `state ${r.state ?? ""}` }, String(r.state ?? ""))),
      h("td", {}, r.attempts ?? ""),
      // The peer's own words too: this page is an audited view of the patient's data.
      h("td", {}, [r.last_error, r.peer_text].filter(Boolean).join(": "))))));
}

function feedbackItem(f) {
  return h("li", {}, `${new Date(f.at_ms).toLocaleString()} ${f.user}: `,
    h("strong", {}, f.agree ? "agree" : "disagree"), f.finding ? ` (${f.finding})` : "", f.comment ? ` — ${f.comment}` : "");
}

function feedbackForm(uid) {
  const comment = h("textarea", { id: "feedback-comment", rows: "2", maxlength: "2000" });
  const msg = h("p", { role: "status", id: "feedback-msg" });
  const send = async (agree) => {
    try {
      const f = await api("POST", `/api/v1/studies/${encodeURIComponent(uid)}/feedback`, { agree, comment: comment.value });
      document.getElementById("feedback-list").appendChild(feedbackItem(f));
      comment.value = "";
      msg.textContent = "Feedback recorded.";
    } catch (e) {
      if (!(e instanceof Unauthenticated)) msg.textContent = `Not recorded: ${e.message}`;
    }
  };
  return h("div", { class: "feedback" },
    h("label", { for: "feedback-comment" }, "Comment (optional)"), comment,
    h("div", { class: "buttons" },
      h("button", { type: "button", id: "agree", class: "primary", onclick: () => send(true) }, "Agree"),
      h("button", { type: "button", id: "disagree", onclick: () => send(false) }, "Disagree")),
    msg);
}

// ---- system, users, audit -------------------------------------------------

function dl(obj) {
  return h("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) => [
    h("dt", {}, k),
    h("dd", {}, v !== null && typeof v === "object" ? (Array.isArray(v) && !v.length ? "-" : dl(v)) : String(v ?? "-")),
  ]));
}

async function systemPage() {
  try {
    const [sys, models] = await Promise.all([api("GET", "/api/v1/system"), api("GET", "/api/v1/models")]);
    if (!state.user) return; // signed out meanwhile
    const modelState = (sys.model && sys.model.state) || "";
    app.replaceChildren(h("h2", {}, "System"),
      modelState.startsWith("waiting") ? h("p", { class: "error", role: "alert", id: "model-state" }, modelState) : "",
      state.role === "technician" ? echoSection() : "",
      outboxSection(),
      h("h2", {}, "Status"), dl(sys), h("h2", {}, "Model"), dl(models[0] || {}));
  } catch (e) {
    if (!(e instanceof Unauthenticated)) app.replaceChildren(h("p", { class: "error" }, e.message));
  }
}

async function usersPage() {
  const list = h("tbody");
  const load = async () => {
    const users = await api("GET", "/api/v1/users");
    list.replaceChildren(...users.map((u) => h("tr", {},
      h("td", {}, u.name), h("td", {}, u.role), h("td", {}, u.disabled ? "disabled" : "active"),
      h("td", {}, new Date(u.created_ms).toLocaleDateString()),
      h("td", {}, h("button", { type: "button", onclick: async () => {
        if (!confirm(`Remove ${u.name}?`)) return;
        try { await api("DELETE", `/api/v1/users/${encodeURIComponent(u.name)}`); load(); } catch (e) { say(e.message); }
      } }, "Remove")))));
  };
  const name = h("input", { id: "new-name", required: true, autocomplete: "off" });
  const role = h("select", { id: "new-role" }, ["radiologist", "technician", "admin"].map((r) => h("option", { value: r }, r)));
  const pass = h("input", { id: "new-password", type: "password", required: true, minlength: "12", autocomplete: "new-password" });
  const form = h("form", { class: "card" }, h("h3", {}, "Add or change a user"),
    h("label", { for: "new-name" }, "User name"), name,
    h("label", { for: "new-role" }, "Role"), role,
    h("label", { for: "new-password" }, "Password (12 characters or more)"), pass,
    h("button", { type: "submit", class: "primary" }, "Save"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("PUT", `/api/v1/users/${encodeURIComponent(name.value)}`, { role: role.value, password: pass.value });
      form.reset();
      say("User saved.");
      load();
    } catch (err) { say(err.message); }
  });
  app.replaceChildren(h("h2", {}, "Users"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Role", "Status", "Created", ""].map((t) => h("th", { scope: "col" }, t)))), list),
    form);
  load().catch((e) => { if (!(e instanceof Unauthenticated)) say(e.message); });
}

// The forwarding of the trail to the site's audit record repository, when configured.
function forwardLine(f) {
  if (!f) return h("p", { id: "audit-forward", class: "muted" }, "Not forwarded to an audit record repository ([audit] syslog).");
  const to = `Forwarding to ${f.target}${f.tls ? " (TLS)" : " (plain TCP)"}`;
  const last = f.last_forwarded ?? "none yet";
  const text = f.connected
    ? `${to}: connected; last record forwarded ${last}, ${f.backlog} waiting.`
    : `${to}: NOT connected${f.last_error ? ` (${f.last_error})` : ""}; ${f.backlog} record(s) waiting, last forwarded ${last}.`;
  return h("p", { id: "audit-forward", class: f.connected ? "ok" : "error", role: "status" }, text);
}

// How full the trail on the box is against [audit] max_records; the alarm from nine tenths.
function budgetLine(b) {
  if (!b || !b.max_records) return null;
  const text = `${b.held} records on this box, at most ${b.max_records} kept ([audit] max_records)` +
    (b.alarm ? ": ALARM, nine tenths reached. Only records the audit record repository acknowledged are removed; the others stay until it takes them." : ".");
  return h("p", { id: "audit-budget", class: b.alarm ? "error" : "muted", role: "status" }, text);
}

// The newest page of the trail first; "Older records" pages back from the oldest shown.
// With a patient, the records naming that patient (an accounting of the accesses to their
// data), searched a bounded stretch of the trail at a time: "Search older" goes on.
async function auditPage(before = "latest", patient = null) {
  try {
    const query = patient ? `patient=${encodeURIComponent(patient)}&` : "";
    const [data, verify] = await Promise.all([api("GET", `/api/v1/audit?${query}limit=1000&before=${before}`), api("GET", "/api/v1/audit/verify")]);
    if (!state.user) return; // signed out meanwhile
    const oldest = data.records.length ? data.records[0].seq : null;
    const search = data.search;
    const shown = data.records.length ? `Records #${oldest}–#${data.records[data.records.length - 1].seq}` : "No records";
    const paging = search
      ? h("p", { id: "audit-paging" },
        `${data.records.length} record(s) naming patient ${search.patient}, read back to #${search.searched_from}` +
          (search.complete ? " (the start of the trail on this box)." : "."),
        !search.complete ? h("button", { type: "button", id: "audit-search-older", onclick: () => auditPage(String(search.searched_from), patient) }, "Search older") : null,
        h("button", { type: "button", id: "audit-newest", onclick: () => auditPage() }, "All records"))
      : h("p", { id: "audit-paging" }, shown,
        before !== "latest" ? h("button", { type: "button", id: "audit-newest", onclick: () => auditPage() }, "Newest records") : null,
        oldest ? h("button", { type: "button", id: "audit-older", onclick: () => auditPage(String(oldest)) }, "Older records") : null);
    const patientInput = h("input", { type: "text", id: "audit-patient", maxlength: "128", value: patient || "", "aria-label": "Patient ID" });
    const searchForm = h("form", { id: "audit-search", onsubmit: (e) => { e.preventDefault(); const p = patientInput.value.trim(); auditPage("latest", p || null); } },
      h("label", { for: "audit-patient" }, "Records naming patient ID "), patientInput, " ", h("button", { type: "submit" }, "Search"));
    const rows = data.records.slice().reverse().map((r) => h("tr", { class: r.success ? "" : "failed" },
      h("td", {}, r.seq), h("td", {}, new Date(r.at_ms).toLocaleString()), h("td", {}, r.actor),
      h("td", {}, r.source), h("td", {}, r.action), h("td", {}, r.object), h("td", {}, (r.patients || []).join(", ")),
      h("td", {}, r.detail)));
    app.replaceChildren(h("h2", {}, "Audit trail"),
      h("p", { class: verify.intact ? "ok" : "error", id: "audit-verify" },
        verify.intact ? `Chain intact: ${verify.records} records, head ${verify.head || "-"}` :
          `Chain BROKEN at record ${verify.first_broken.seq}: ${verify.first_broken.reason}`),
      forwardLine(data.forward),
      budgetLine(data.budget),
      h("p", {}, "Export: ", h("a", { href: "/api/v1/audit/export?format=json", download: "duli-audit.json" }, "JSON"), " · ",
        h("a", { href: "/api/v1/audit/export?format=syslog", download: "duli-audit.log" }, "syslog (RFC 5424, DICOM audit messages)")),
      searchForm,
      paging,
      h("table", { class: "audit" },
        h("thead", {}, h("tr", {}, ["#", "Time", "Who", "From", "Action", "Object", "Patients", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)));
  } catch (e) {
    if (!(e instanceof Unauthenticated)) app.replaceChildren(h("p", { class: "error" }, e.message));
  }
}

// ---- routing -------------------------------------------------------------

async function route() {
  const hash = location.hash || "#/";
  // The skip link: focus moves to the page shown, which stays.
  if (hash === "#app" && app.childElementCount) return;
  say("");
  state.generation++;
  if (hash !== "#/worklist" && state.events) { state.events.close(); state.events = null; }
  if (hash === "#/login") return loginPage();
  if (!state.user) {
    try {
      signedIn(await api("GET", "/api/v1/me"));
    } catch (e) {
      return;
    }
  }
  if (hash.startsWith("#/study/")) {
    let uid;
    try {
      uid = decodeURIComponent(hash.slice(8));
    } catch (e) {
      location.hash = home(); // not a study address
      return;
    }
    return studyPage(uid);
  }
  switch (hash) {
    case "#/worklist": return worklistPage();
    case "#/system": return systemPage();
    case "#/upload": return uploadPage();
    case "#/users": return usersPage();
    case "#/audit": return auditPage();
    default: location.hash = home();
  }
}

// The screen is cleared only once the server ended the session (or says it is gone): a
// logout that failed (network, a restarting daemon) leaves the session cookie live in the
// browser, and on a shared reading-room PC the next person would be let back in.
document.getElementById("logout").addEventListener("click", async () => {
  const attempt = async () => {
    try {
      await api("POST", "/api/v1/logout", {});
      return true;
    } catch (e) {
      if (e instanceof Unauthenticated) return null; // gone already; api() signed out
      throw e;
    }
  };
  try {
    let done;
    try {
      done = await attempt();
    } catch (e) {
      if (e.status !== 403) throw e;
      // This page's CSRF token is stale (a login in another tab): take the cookie's.
      state.csrf = csrfFromCookie();
      done = await attempt();
    }
    if (done) signedOut();
  } catch (e) {
    say(`Logout failed (${e.message}): the session is still open. Try again; if it keeps ` +
        "failing on a shared computer, close the browser.");
  }
});
window.addEventListener("hashchange", route);
route();
