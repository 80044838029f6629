// The gateway's web client: plain ES modules, no build step, no network beyond this gateway.
import { api, blobUrl, initKeyField, refusalMessage, withKey } from "./auth.js";
import { openEventStream } from "./sse.js";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { mode: "classify", file: null, job: null, events: null, curve: [] };
const ENDPOINTS = { classify: "/predict", explain: "/explain", detect: "/detect" };

// -- errors and busy state ------------------------------------------------------------------------------
function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy) {
  $("#busy").hidden = !busy;
  $("#panel-analyze").setAttribute("aria-busy", String(busy));
}

// -- choices: the gateway's OpenAPI schema lists every option set (from vision.choices); the page has none --
const LABELS = { cam: "CAM", gradcam: "Grad-CAM", gradcampp: "Grad-CAM++" };

function formField(spec, path, field) {
  let schema = spec.paths[path].post.requestBody.content["multipart/form-data"].schema;
  if (schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema.properties[field];
}

function fillSelect(select, property) {
  if (!property || !property.enum) return;
  const current = select.value || property.default;
  select.replaceChildren(...property.enum.map((value) => new Option(LABELS[value] || value, value)));
  select.value = property.enum.includes(current) ? current : property.enum[0];
}

async function loadChoices() {
  try {
    const spec = await api("/openapi.json");
    fillSelect($("#method"), formField(spec, "/explain", "method"));
    fillSelect($("#colormap"), formField(spec, "/explain", "colormap"));
    fillSelect($("#train-arch"), formField(spec, "/train", "arch"));
  } catch (err) {
    showError(`The options could not be loaded: ${err.message}`);
  }
}

// -- models and health ------------------------------------------------------------------------------------
async function loadModels(selected = "") {
  const task = state.mode === "detect" ? "detection" : "classification";
  const select = $("#model");
  try {
    const body = await api(`/models?task=${task}`);
    const names = [...new Set(body.models.map((m) => m.name))];
    // The catalog's default_model is the classifier's; detection has its own default.
    const fallback = task === "classification" && body.default_model ? ` (${body.default_model})` : "";
    select.replaceChildren(new Option(`default${fallback}`, ""));
    for (const name of names) select.add(new Option(name, name));
    select.value = names.includes(selected) ? selected : "";
  } catch {
    select.replaceChildren(new Option("default", ""));
  }
}

async function checkHealth() {
  const el = $("#health");
  try {
    const response = await fetch("/health", withKey());
    const body = await response.json();
    const down = Object.entries(body.services).filter(([, s]) => s !== "SERVING").map(([n]) => n);
    el.textContent = down.length ? `unavailable: ${down.join(", ")}` : "all services up";
    el.dataset.ok = String(!down.length);
  } catch {
    el.textContent = "gateway unreachable";
    el.dataset.ok = "false";
  }
}

// -- modes ----------------------------------------------------------------------------------------------
function setMode(mode) {
  state.mode = mode;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  const training = mode === "train";
  $("#panel-analyze").hidden = training;
  $("#panel-train").hidden = !training;
  $("#panel-analyze").setAttribute("aria-labelledby", `tab-${mode}`);
  document.querySelectorAll(".explain-only").forEach((el) => (el.hidden = mode !== "explain"));
  document.querySelectorAll(".detect-only").forEach((el) => (el.hidden = mode !== "detect"));
  showError("");
  if (!training) {
    loadModels($("#model").value);
    if (state.file) analyze();
  }
}

// -- image input: drop, choose, paste ---------------------------------------------------------------
function wireDropZone(zone, input, onFiles) {
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
  input.addEventListener("change", () => onFiles([...input.files]));
}

function takeImage(files) {
  const file = files.find((f) => f.type.startsWith("image/")) || files[0];
  if (!file) return;
  state.file = file;
  const original = $("#original");
  if (original.src) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(file);
  analyze();
}

// -- analysis ---------------------------------------------------------------------------------------------
function analysisForm() {
  const form = new FormData();
  form.append("file", state.file, state.file.name || "pasted.png");
  const model = $("#model").value;
  if (model) form.append("model", model);
  if (state.mode === "explain") {
    for (const id of ["method", "colormap", "alpha"]) form.append(id, $(`#${id}`).value);
    for (const [id, field] of [["target", "target_class"], ["layer", "layer"]]) {
      if ($(`#${id}`).value.trim()) form.append(field, $(`#${id}`).value.trim());
    }
  } else if (state.mode === "detect") {
    form.append("conf", $("#conf").value);
    form.append("iou", $("#iou").value);
    form.append("annotate", "false"); // boxes are drawn here, over the original
    if ($("#classes").value.trim()) form.append("classes", $("#classes").value.trim());
  }
  return form;
}

async function analyze() {
  if (!state.file || state.mode === "train") return;
  showError("");
  setBusy(true);
  const mode = state.mode;
  try {
    const body = await api(ENDPOINTS[mode], { method: "POST", body: analysisForm() });
    if (mode === state.mode) render(mode, body);
  } catch (err) {
    $("#result").hidden = true;
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

function render(mode, body) {
  $("#result").hidden = false;
  $("#overlay-figure").hidden = mode !== "explain";
  $("#chart").hidden = mode === "detect";
  $("#objects").hidden = mode !== "detect";
  $("#boxes").replaceChildren();
  if (mode === "detect") return renderDetections(body);
  const p = body.prediction;
  $("#prediction").textContent = `${p.class} — ${p.confidence_percent.toFixed(1)}% (${body.model.name} v${body.model.version})`;
  renderChart(body.top5);
  if (mode === "explain") {
    $("#overlay").src = body.overlay_image;
    $("#overlay-caption").textContent =
      `${body.method} at ${body.layer} for “${body.target_class.class}”`;
  }
}

function renderChart(top) {
  $("#chart").replaceChildren(
    ...top.map((entry) => {
      const li = document.createElement("li");
      const pct = (entry.confidence * 100).toFixed(1);
      li.innerHTML = `<span class="label"></span><span class="bar"><span style="width:${pct}%"></span></span><span class="pct">${pct}%</span>`;
      $(".label", li).textContent = entry.class;
      li.setAttribute("aria-label", `${entry.class}: ${pct}%`);
      return li;
    }),
  );
}

function renderDetections(body) {
  const { width, height } = body.image;
  const svg = $("#boxes");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const ns = "http://www.w3.org/2000/svg";
  const cards = body.detections.map((d, i) => {
    const rect = document.createElementNS(ns, "rect");
    const b = d.bbox;
    Object.entries({ x: b.x1, y: b.y1, width: b.width, height: b.height }).forEach(([k, v]) => rect.setAttribute(k, v));
    rect.setAttribute("class", `box c${d.class_id % 8}`);
    svg.append(rect);
    const li = document.createElement("li");
    li.className = `card c${d.class_id % 8}`;
    li.innerHTML = `<strong></strong> <span>${(d.confidence * 100).toFixed(1)}%</span>
      <small>box ${[b.x1, b.y1, b.x2, b.y2].map(Math.round).join(", ")} (${Math.round(b.width)}×${Math.round(b.height)})</small>`;
    $("strong", li).textContent = `${i + 1}. ${d.class}`;
    return li;
  });
  $("#objects").replaceChildren(...cards);
  $("#prediction").textContent = `${body.num_objects} object${body.num_objects === 1 ? "" : "s"} (${body.model.name} v${body.model.version})`;
}

// -- training -------------------------------------------------------------------------------------------
function addClassCard(name = "") {
  const card = $("#class-template").content.firstElementChild.cloneNode(true);
  card.files = [];
  const index = $("#train-classes").children.length + 1;
  $("legend", card).textContent = `Class ${index}`;
  $(".class-name", card).value = name;
  $(".class-name", card).setAttribute("aria-label", `Name of class ${index}`);
  wireDropZone($(".drop", card), $("input[type=file]", card), (files) => {
    card.files.push(...files.filter((f) => f.type.startsWith("image/") || f.type === ""));
    $(".count", card).textContent = `${card.files.length} image${card.files.length === 1 ? "" : "s"}`;
  });
  $(".remove", card).addEventListener("click", () => card.remove());
  $("#train-classes").append(card);
}

async function startTraining(event) {
  event.preventDefault();
  showError("");
  const cards = [...$("#train-classes").children];
  const form = new FormData();
  const fields = { model_name: "#train-name", arch: "#train-arch", epochs: "#train-epochs", img_size: "#train-img-size" };
  for (const [field, sel] of Object.entries(fields)) form.append(field, $(sel).value);
  form.append("pretrained", String($("#train-pretrained").checked));
  form.append("freeze_backbone", String($("#train-freeze").checked));
  cards.forEach((card, i) => form.append(`label${i + 1}`, $(".class-name", card).value.trim()));
  cards.forEach((card, i) => card.files.forEach((f) => form.append(`files${i + 1}`, f, f.name)));
  $("#start-training").disabled = true;
  try {
    const body = await api("/train", { method: "POST", body: form });
    watchJob(body.job_id, body.events_url);
  } catch (err) {
    showError(err.message);
  } finally {
    $("#start-training").disabled = false;
  }
}

function watchJob(jobId, eventsUrl) {
  state.job = jobId;
  state.curve = [];
  if (state.events) state.events.close();
  $("#job").hidden = false;
  $("#job-result").hidden = true;
  $("#cancel-job").hidden = false;
  $("#job-title").textContent = `Training job ${jobId}`;
  drawCurves();
  const progress = (e) => {
    const d = JSON.parse(e.data);
    $("#job-progress").value = d.fraction;
    const acc = d.val_accuracy == null ? "" : `, validation accuracy ${(d.val_accuracy * 100).toFixed(1)}%`;
    $("#job-status").textContent = `Epoch ${d.epoch}/${d.total_epochs}: loss ${d.train_loss.toFixed(3)}${acc}, ${d.images_per_second} images/s, about ${Math.round(d.eta_seconds)} s left`;
    if (e.type === "epoch") {
      state.curve.push(d);
      drawCurves();
    }
  };
  const handlers = {
    progress,
    epoch: progress,
    state: (e) => {
      const d = JSON.parse(e.data);
      $("#job-status").textContent = `Job ${d.status}${d.message ? `: ${d.message}` : ""}`;
      if (["succeeded", "failed", "cancelled"].includes(d.status)) finishJob(jobId);
    },
  };
  state.events = openEventStream(eventsUrl, {
    headers: () => withKey().headers || {},
    onEvent: (e) => handlers[e.type] && handlers[e.type](e),
    onDone: () => finishJob(jobId),
    onRefused: async (response, sent) => {
      const body = await response.json().catch(() => null);
      showError(`The job's progress cannot be followed: ${refusalMessage(response, body, sent.has("X-API-Key"))}`);
    },
  });
}

async function finishJob(jobId) {
  if (state.events) state.events.close();
  state.events = null;
  $("#cancel-job").hidden = true;
  try {
    const job = await api(`/jobs/${jobId}`);
    $("#job-status").textContent = job.error ? `Job ${job.status}: ${job.error}` : `Job ${job.status}`;
    if (job.status !== "succeeded") return;
    $("#job-progress").value = 1;
    const rows = job.metrics.per_class.map((c) => {
      const tr = document.createElement("tr");
      for (const v of [c.class, c.precision.toFixed(3), c.recall.toFixed(3), c.f1.toFixed(3), c.support]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      return tr;
    });
    $("#per-class tbody").replaceChildren(...rows);
    $("#per-class caption").textContent = `Validation accuracy ${(job.metrics.accuracy * 100).toFixed(1)}% — ${job.model.name} v${job.model.version}`;
    showConfusion(job.confusion_matrix_url);
    $("#job-result").hidden = false;
    $("#use-model").onclick = async () => {
      setMode("classify");
      await loadModels(job.model.name);
      if (state.file) analyze();
    };
  } catch (err) {
    showError(err.message);
  }
}

async function showConfusion(url) {
  const img = $("#confusion");
  try {
    const src = await blobUrl(url); // the image is behind the key: an <img src> cannot send it
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = src;
  } catch (err) {
    showError(`The confusion matrix could not be loaded: ${err.message}`);
  }
}

function drawCurves() {
  const svg = $("#curves");
  const points = state.curve;
  const n = Math.max(points.length, 2);
  const maxLoss = Math.max(1e-6, ...points.map((p) => p.train_loss), ...points.map((p) => p.val_loss || 0));
  const x = (i) => 30 + (i * 360) / (n - 1);
  const line = (key, scale) => points.map((p, i) => `${x(i)},${150 - (140 * (p[key] || 0)) / scale}`).join(" ");
  svg.innerHTML = `<line x1="30" y1="150" x2="390" y2="150" class="axis"/><line x1="30" y1="10" x2="30" y2="150" class="axis"/>
    <polyline class="loss" points="${line("train_loss", maxLoss)}"/><polyline class="val-loss" points="${line("val_loss", maxLoss)}"/>
    <polyline class="acc" points="${line("val_accuracy", 1)}"/>
    <text x="36" y="20" class="legend acc">validation accuracy</text><text x="200" y="20" class="legend loss">loss (train, validation)</text>`;
}

// -- start ------------------------------------------------------------------------------------------------
function init() {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => setMode(tab.dataset.mode));
  $(".tabs").addEventListener("keydown", (e) => {
    const tabs = [...document.querySelectorAll("[role=tab]")];
    const i = tabs.findIndex((t) => t.dataset.mode === state.mode);
    const next = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : null;
    if (next === null) return;
    const tab = tabs[(next + tabs.length) % tabs.length];
    tab.focus();
    setMode(tab.dataset.mode);
  });
  wireDropZone($("#drop"), $("#file"), takeImage);
  document.addEventListener("paste", (e) => {
    if (state.mode === "train") return;
    const files = [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
    if (files.length) takeImage(files);
  });
  for (const id of ["alpha", "conf", "iou"]) {
    $(`#${id}`).addEventListener("input", () => ($(`#${id}-out`).textContent = $(`#${id}`).value));
  }
  $("#analyze-form").addEventListener("change", () => analyze());
  $("#add-class").addEventListener("click", () => addClassCard());
  $("#train-form").addEventListener("submit", startTraining);
  $("#cancel-job").addEventListener("click", () => state.job && api(`/jobs/${state.job}/cancel`, { method: "POST" }).catch((e) => showError(e.message)));
  initKeyField(() => {
    showError("");
    loadChoices();
    if (state.mode !== "train") loadModels($("#model").value).then(() => state.file && analyze());
  });
  addClassCard();
  addClassCard();
  loadChoices();
  loadModels();
  checkHealth();
  setInterval(checkHealth, 15000);
}

init();
