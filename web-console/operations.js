// Operations pages: manual upload (radiologists, technicians), and the system page's
// connectivity test and outbox (technicians; admins see the outbox without retry buttons).
// Uses h(), api(), say(), state and Unauthenticated from console.js.
"use strict";

const MAX_UPLOAD = 64 * 1024 * 1024;

// ---- upload ----------------------------------------------------------------

function uploadPage() {
  const input = h("input", { id: "upload-file", type: "file", accept: ".dcm,.dicom,.png,.jpg,.jpeg,application/dicom,image/png,image/jpeg" });
  const zone = h("label", { class: "dropzone", id: "drop-zone", for: "upload-file" },
    h("strong", {}, "Drop a chest radiograph here"),
    h("span", { class: "muted" }, "DICOM, PNG or JPEG, at most 64 MB — or choose a file:"), input);
  const progress = h("progress", { id: "upload-progress", max: "100", value: "0", hidden: true });
  const msg = h("p", { id: "upload-msg", role: "status" });
  const result = h("p", { id: "upload-result" });
  const start = (file) => { if (file) sendUpload(file, progress, msg, result); };
  input.addEventListener("change", () => start(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    start(e.dataTransfer.files[0]);
  });
  app.replaceChildren(h("h2", {}, "Upload an image"),
    h("p", { class: "muted" }, "An upload is analysed like a received study but is never a patient record: it gets a patient ID UPLOAD-… and its results are not sent to the RIS, the cloud or a PACS."),
    zone, progress, msg, result);
}

function sendUpload(file, progress, msg, result) {
  result.replaceChildren();
  if (file.size > MAX_UPLOAD) {
    msg.textContent = `${file.name} is larger than 64 MB.`;
    return;
  }
  const x = new XMLHttpRequest();
  x.open("POST", `/api/v1/uploads?name=${encodeURIComponent(file.name)}`);
  x.setRequestHeader("X-CSRF-Token", state.csrf || csrfFromCookie() || "");
  x.setRequestHeader("Content-Type", file.type || "application/octet-stream");
  x.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
  });
  x.addEventListener("load", () => {
    if (x.status === 401) return signedOut();
    let data = {};
    try { data = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
    if (x.status !== 201) {
      progress.hidden = true;
      msg.textContent = `Not uploaded: ${data.message || `HTTP ${x.status}`}`;
      return;
    }
    progress.value = 100;
    msg.textContent = `Uploaded ${file.name} as patient ${data.patient_id}; it is analysed like a received study.`;
    if (state.role === "radiologist") {
      result.replaceChildren(h("a", { href: data.study_url, id: "upload-study-link" }, "Open the study"));
    } else {
      result.textContent = `Study ${data.study_uid}`;
    }
  });
  x.addEventListener("error", () => { msg.textContent = "Not uploaded: the connection failed."; });
  progress.hidden = false;
  progress.value = 0;
  msg.textContent = `Uploading ${file.name}…`;
  x.send(file);
}

// ---- connectivity test -----------------------------------------------------------

function echoSection() {
  const body = h("tbody", { id: "echo-body" });
  const msg = h("p", { id: "echo-msg", role: "status", class: "muted" });
  const run = h("button", { type: "button", id: "echo-run", class: "primary" }, "Test DICOM connectivity (C-ECHO)");
  run.addEventListener("click", async () => {
    run.disabled = true;
    msg.textContent = "Testing…";
    try {
      const data = await api("POST", "/api/v1/system/echo", {});
      body.replaceChildren(...data.results.map((r) => h("tr", { class: r.status === "success" ? "" : "failed", "data-peer": r.name },
        h("td", {}, r.name), h("td", {}, r.ae_title), h("td", {}, `${r.host}:${r.port}`),
        h("td", {}, h("span", { class: r.status === "success" ? "ok" : "error" }, r.status)),
        h("td", {}, r.rtt_ms === null ? "" : `${r.rtt_ms.toFixed(1)} ms`),
        h("td", {}, r.error || ""))));
      const bad = data.results.filter((r) => r.status !== "success").length;
      const n = data.results.length;
      msg.textContent = bad ? `${bad} of ${n} peer${n === 1 ? "" : "s"} failed.` : n === 1 ? "The peer answered." : `All ${n} peers answered.`;
    } catch (e) {
      if (!(e instanceof Unauthenticated)) msg.textContent = `Test failed: ${e.message}`;
    } finally {
      run.disabled = false;
    }
  });
  return h("section", { "aria-labelledby": "echo-title" },
    h("h2", { id: "echo-title" }, "DICOM connectivity"), run, msg,
    h("table", { class: "echo" },
      h("thead", {}, h("tr", {}, ["Peer", "AE title", "Address", "Result", "Round trip", "Error"].map((t) => h("th", { scope: "col" }, t)))),
      body));
}

// ---- outbox ------------------------------------------------------------------

function secs(s) {
  if (typeof s !== "number") return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function outboxSection() {
  const section = h("section", { id: "outbox", "aria-labelledby": "outbox-title" });
  const msg = h("p", { id: "outbox-msg", role: "status", class: "muted" });
  const canRetry = state.role === "technician";
  const retry = async (body, what) => {
    try {
      const r = await api("POST", "/api/v1/outbox/retry", body);
      msg.textContent = `${what}: ${r.requeued} re-queued.`;
      load();
    } catch (e) {
      if (!(e instanceof Unauthenticated)) msg.textContent = `${what}: ${e.message}`;
    }
  };
  const button = (label, body, what, id) => canRetry
    ? h("button", { type: "button", id, onclick: () => retry(body, what) }, label) : "";
  // The peer's own words may name the patient: read one entry at a time, on request
  // (each read is audited).
  const peerText = (e) => {
    const out = h("span", { class: "peer-text" });
    const show = h("button", { type: "button", id: `peer-text-${e.id}`, onclick: async () => {
      try {
        const got = await api("GET", `/api/v1/outbox/${e.id}/peer-text`);
        out.replaceChildren(`: ${got.peer_text || ""}`);
      } catch (err) {
        if (!(err instanceof Unauthenticated)) out.replaceChildren(` (${err.message})`);
      }
    } }, "Show the peer's words");
    out.replaceChildren(" ", show);
    return out;
  };
  const load = async () => {
    let data;
    try {
      data = await api("GET", "/api/v1/outbox");
    } catch (e) {
      if (!(e instanceof Unauthenticated)) section.replaceChildren(h("h2", { id: "outbox-title" }, "Outbox"), h("p", { class: "muted" }, e.message));
      return;
    }
    const dests = data.destinations || [];
    const summary = h("table", { class: "outbox-summary" },
      h("thead", {}, h("tr", {}, ["Destination", "Queued", "Retrying", "Dead", "Oldest waiting", "Delivered", "Failed", "Refused", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, dests.map((d) => h("tr", { "data-dest": d.dest },
        h("td", {}, d.dest), h("td", {}, d.stats.queued), h("td", {}, d.stats.retrying),
        h("td", { class: d.stats.dead ? "error" : "" }, d.stats.dead), h("td", {}, secs(d.stats.oldest_seconds)),
        h("td", {}, d.stats.delivered_total), h("td", {}, d.stats.failed_total), h("td", {}, d.stats.rejected_total),
        h("td", {}, d.stats.dead || d.stats.retrying ? button("Retry", { destination: d.dest }, d.dest, `retry-dest-${d.dest}`) : "")))));
    const entries = dests.flatMap((d) => d.entries);
    const list = entries.length ? h("table", { class: "outbox-entries" },
      h("thead", {}, h("tr", {}, ["ID", "Destination", "Kind", "Report", "State", "Attempts", "Next attempt", "Age", "Last error", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, entries.map((e) => h("tr", { class: e.state === "dead" ? "failed" : "", "data-entry": e.id },
        h("td", {}, e.id), h("td", {}, e.dest), h("td", {}, e.kind), h("td", { class: "id" }, e.report_id),
        h("td", {}, h("span", { class: `state ${e.state}` }, e.state)), h("td", {}, e.attempts),
        h("td", {}, e.state === "dead" ? "-" : `in ${secs(e.next_attempt_in_secs)}`), h("td", {}, secs(e.age_secs)),
        h("td", {}, e.last_error || "", e.peer_text ? peerText(e) : ""),
        h("td", {}, e.state !== "queued" ? button("Retry", { id: e.id }, `entry ${e.id}`, `retry-entry-${e.id}`) : "")))))
      : h("p", { class: "muted" }, "Nothing waiting: every report was delivered.");
    section.replaceChildren(h("h2", { id: "outbox-title" }, "Outbox"),
      h("p", { class: "muted" }, `${data.fill.entries} entries of at most ${data.fill.max_entries}. `,
        button("Retry all", { all: true }, "all destinations", "retry-all"),
        " ", h("button", { type: "button", id: "outbox-refresh", onclick: load }, "Refresh")),
      msg, summary, list);
  };
  section.replaceChildren(h("h2", { id: "outbox-title" }, "Outbox"), h("p", {}, "Loading…"));
  load();
  return section;
}
