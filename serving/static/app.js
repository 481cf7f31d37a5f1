// hematune serve — the upload page. Plain JavaScript, no build step, nothing loaded from elsewhere.
// Each chosen file is sent as its own POST /predict (the server batches concurrent requests), so one
// unusable file gets its own error row and the others are still classified.
"use strict";

const TOKEN_KEY = "hematune-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";

// A link like http://host:8000/#token=… hands the page its token; it is kept for this tab only.
if (location.hash.startsWith("#token=")) {
  token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem(TOKEN_KEY, token);
  history.replaceState(null, "", location.pathname);
}

const $ = (id) => document.getElementById(id);

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;  // text only: file names and messages are never HTML
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const percent = (p) => (100 * p).toFixed(1) + " %";

// The model card's sections are a little Markdown: "- " items (with indented continuation lines) and text.
function renderCardText(target, markdown) {
  target.replaceChildren();
  const clean = (s) => s.replace(/\*\*|`/g, "").trim();
  let list = null, item = null;
  for (const line of (markdown || "").split("\n")) {
    if (line.startsWith("- ")) {
      if (!list) { list = el("ul"); target.append(list); }
      item = el("li", { text: clean(line.slice(2)) });
      list.append(item);
    } else if (item && /^\s+\S/.test(line)) {
      item.textContent += " " + clean(line);
    } else if (line.trim()) {
      list = item = null;
      target.append(el("p", { text: clean(line) }));
    } else {
      list = item = null;
    }
  }
}

function showTokenForm(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message || "";
  $("token").focus();
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/model", { headers: authHeaders() });
  } catch (error) {
    $("model-loading").textContent = "server not reachable";
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    $("model-loading").textContent = "needs the access token";
    showTokenForm(token ? "that token was refused" : "");
    return;
  }
  if (!response.ok) {
    $("model-loading").textContent = body.error || "not ready (HTTP " + response.status + ")";
    setTimeout(loadModel, 2000);  // still loading: ask again
    return;
  }
  $("token-form").hidden = true;
  $("model-loading").hidden = true;
  $("model-facts").hidden = false;
  $("m-name").textContent = body.name;
  $("m-version").textContent = body.version + (body.family ? " · " + body.family : "")
    + (body.stage_title ? " · " + body.stage_title : "");
  const ci = body.test_accuracy_ci95;
  $("m-accuracy").textContent = typeof body.test_accuracy === "number"
    ? percent(body.test_accuracy) + (ci ? " [" + percent(ci[0]) + ", " + percent(ci[1]) + "] 95 % CI" : "")
      + (body.test_images ? " · " + body.test_images + " images" : "")
    : "not measured";
  $("m-date").textContent = (body.created || "").slice(0, 10);
  $("m-labels").textContent = (body.labels || []).join(", ");
  $("m-sha").textContent = (body.sha256 || "").slice(0, 16) + "…";
  $("m-sha").title = body.sha256 || "";
  renderCardText($("m-use"), body.intended_use);
  renderCardText($("m-limits"), body.limitations);
}

function addRow(file) {
  const thumb = el("img", { alt: "" });
  thumb.addEventListener("error", () => { thumb.hidden = true; });
  thumb.src = URL.createObjectURL(file);
  const row = el("tr", { class: "pending" }, [
    el("td", { class: "thumb" }, [thumb]),
    el("td", { class: "file", text: file.name }),
    el("td", { class: "label", text: "…" }),
    el("td", { class: "confidence" }),
    el("td", { class: "top3" }),
  ]);
  $("results").tBodies[0].append(row);
  $("results").hidden = false;
  return row;
}

function showPrediction(row, p) {
  row.className = "done";
  row.dataset.label = p.label;
  row.dataset.confidence = String(p.confidence);
  row.cells[2].textContent = p.label;
  row.cells[3].textContent = percent(p.confidence);
  const bars = el("div", { class: "bars" });
  for (const t of p.top3) {
    const fill = el("span");
    fill.style.width = (100 * t.confidence).toFixed(1) + "%";
    bars.append(el("span", { text: t.label }), el("div", { class: "bar" }, [fill]),
                el("span", { class: "pct", text: percent(t.confidence) }));
  }
  row.cells[4].replaceChildren(bars);
}

function showError(row, message) {
  row.className = "error";
  row.dataset.error = message;
  row.cells[2].textContent = "ERROR";
  row.cells[3].textContent = "";
  row.cells[4].replaceChildren(el("span", { class: "reason", text: message }));
  row.cells[4].className = "top3 reason";
}

async function classify(file, row) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("/predict", { method: "POST", headers: authHeaders(), body: form });
    const body = await response.json().catch(() => ({ error: "HTTP " + response.status }));
    if (response.status === 401) showTokenForm("the token was refused");
    if (response.ok) showPrediction(row, body.predictions[0]);
    else showError(row, body.error || "HTTP " + response.status);
  } catch (error) {
    showError(row, "no answer from the server (" + error.message + ")");
  }
}

async function classifyAll(files) {
  const list = Array.from(files);
  if (!list.length) return;
  $("status").textContent = "classifying " + list.length + " file(s)…";
  await Promise.all(list.map((file) => classify(file, addRow(file))));
  const rows = Array.from($("results").tBodies[0].rows);
  const failed = rows.filter((r) => r.className === "error").length;
  $("status").textContent = rows.length + " file(s): " + (rows.length - failed) + " classified"
    + (failed ? ", " + failed + " could not be read" : "");
}

function setUp() {
  const drop = $("drop");
  $("files").addEventListener("change", (event) => { classifyAll(event.target.files); event.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (event) => classifyAll(event.dataTransfer.files));
  // a file dropped beside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
