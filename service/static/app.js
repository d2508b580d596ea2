// The demo page: sends photos to POST /v1/recognize and draws what comes back.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere. Everything the
// service sends is put on the page with textContent or as image data, never as HTML.
"use strict";

const API = {
  recognize: "/v1/recognize",
  models: "/v1/models",
};

// Readable words for the errors a user can meet; the service's own detail follows them.
const ERROR_TITLES = {
  400: "The request was refused",
  413: "That file is too large for the service",
  415: "That file is not an image format the service reads (send JPEG, PNG, WebP or BMP)",
  422: "That file could not be read as a photo",
  503: "The service is still loading its models; try again in a few seconds",
};

const page = {};
let posesPokerFaces = true; // false when the model ships no poker-face graph

function $(id) {
  return document.getElementById(id);
}

function setStatus(text) {
  page.status.textContent = text;
}

function clearError() {
  page.error.hidden = true;
  page.error.replaceChildren();
}

function showError(title, detail) {
  const strong = document.createElement("strong");
  strong.textContent = title;
  page.error.replaceChildren(strong);
  if (detail) {
    const p = document.createElement("span");
    p.textContent = detail;
    page.error.append(p);
  }
  page.error.hidden = false;
}

// An error answer (RFC 9457 problem document, or anything else) -> {title, detail}.
async function describeFailure(response, fileName) {
  let detail = "";
  try {
    const body = await response.json();
    // One photo per request: image_detail is the fault without the "image 0 (name)" the detail adds.
    detail = body.image_detail || body.detail || body.title || "";
  } catch (_) {
    detail = response.statusText || "";
  }
  const known = ERROR_TITLES[response.status] || `The service answered ${response.status}`;
  const retry = response.headers.get("Retry-After");
  const suffix = response.status === 503 && retry ? ` (retry after ${retry} s)` : "";
  return { title: `${fileName}: ${known}${suffix}`, detail };
}

function percent(p) {
  return `${(p * 100).toFixed(1)} %`;
}

// --- model card ------------------------------------------------------------------------------

function addRow(dl, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
  return dd;
}

async function loadModelCard() {
  const dl = page.modelCard;
  try {
    const response = await fetch(API.models, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`GET ${API.models} answered ${response.status}`);
    const body = await response.json();
    const emotion = body.models.find((m) => m.kind === "emotion");
    dl.replaceChildren();
    addRow(dl, "Status", body.ready ? "ready" : "loading and warming up").id = "model-status";
    if (!emotion) return;
    posesPokerFaces = "poker_face" in emotion.graphs;
    const recognition = emotion.graphs.recognition;
    const provider = recognition && recognition.providers.length ? recognition.providers[0] : "not loaded yet";
    addRow(dl, "Name", emotion.name);
    addRow(dl, "Version", emotion.version);
    addRow(dl, "Labels", emotion.labels.join(", "));
    addRow(dl, "Provider", provider);
    if (recognition && recognition.precision) addRow(dl, "Precision", recognition.precision);
    const card = emotion.card || {};
    if (card.input && card.input.size) addRow(dl, "Input", `${card.input.size.join(" × ")} px ${card.input.colour_order || ""}`);
    const metrics = (card.training && card.training.metrics) || {};
    if (typeof metrics.accuracy === "number") addRow(dl, "Accuracy", percent(metrics.accuracy));
    if (!posesPokerFaces) addRow(dl, "Poker faces", "this model ships no poker-face graph");
    if (!body.ready) setTimeout(loadModelCard, 2000);
  } catch (err) {
    dl.replaceChildren();
    addRow(dl, "Status", `unreachable (${err.message})`).id = "model-status";
  }
}

// --- results ---------------------------------------------------------------------------------

function pngSrc(b64) {
  return `data:image/png;base64,${b64}`;
}

function renderFace(face, index, labels) {
  const node = page.faceTemplate.content.firstElementChild.cloneNode(true);
  const top = face.probabilities[face.label];
  node.querySelector(".face-title").textContent = `Face ${index + 1}: ${face.label} (${percent(top)})`;
  const list = node.querySelector(".probabilities");
  for (const label of labels) {
    const p = face.probabilities[label];
    const li = document.createElement("li");
    if (label === face.label) li.className = "top";
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(p * 100).toFixed(2)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    li.append(name, track, value);
    list.append(li);
  }
  const images = [
    [".aligned-face", face.aligned_face_png, `Face ${index + 1} as the model saw it, aligned`],
    [".poker-face", face.poker_face_png, `Poker face of face ${index + 1}: the same face without its expression`],
    [".expression-map", face.expression_map_png, `Expression map of face ${index + 1}: bright where the face differs from its poker face`],
  ];
  for (const [selector, b64, alt] of images) {
    const img = node.querySelector(selector);
    if (b64) {
      img.src = pngSrc(b64);
      img.alt = alt;
    } else {
      img.closest("figure").remove();
    }
  }
  return node;
}

function renderImage(file, objectUrl, image, labels, timings) {
  const node = page.imageTemplate.content.firstElementChild.cloneNode(true);
  node.querySelector(".image-title").textContent = file.name;
  const photo = node.querySelector(".photo");
  photo.src = objectUrl;
  photo.alt = `${file.name}, ${image.faces.length} face(s) boxed`;
  const frame = node.querySelector(".photo-frame");
  image.faces.forEach((face, i) => {
    const box = document.createElement("div");
    box.className = "face-box";
    box.style.left = `${(100 * face.box.x1) / image.width}%`;
    box.style.top = `${(100 * face.box.y1) / image.height}%`;
    box.style.width = `${(100 * (face.box.x2 - face.box.x1)) / image.width}%`;
    box.style.height = `${(100 * (face.box.y2 - face.box.y1)) / image.height}%`;
    const tag = document.createElement("span");
    tag.className = "face-label";
    tag.textContent = `${i + 1} ${face.label}`;
    box.append(tag);
    frame.append(box);
  });
  node.querySelector(".face-count").textContent =
    image.faces.length === 0 ? "No face found in this photo." : `${image.faces.length} face(s) found.`;
  const faces = node.querySelector(".faces");
  image.faces.forEach((face, i) => faces.append(renderFace(face, i, labels)));
  const stages = Object.entries(timings).map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`);
  node.querySelector(".timings").textContent = `Timings: ${stages.join(" · ")}`;
  return node;
}

// --- sending ---------------------------------------------------------------------------------

async function analyseOne(file) {
  const form = new FormData();
  form.append("images", file, file.name);
  const params = new URLSearchParams({ max_faces: "10", return_aligned_face: "true" });
  if (posesPokerFaces) {
    params.set("return_poker_face", "true");
    params.set("return_expression_map", "true");
  }
  const response = await fetch(`${API.recognize}?${params}`, { method: "POST", body: form, headers: { Accept: "application/json" } });
  if (!response.ok) throw await describeFailure(response, file.name);
  return response.json();
}

async function analyse(files) {
  if (!files.length) {
    showError("No photo chosen", "Choose one or more photos first, or use the webcam.");
    page.input.focus();
    return;
  }
  clearError();
  page.analyse.disabled = true;
  const failures = [];
  let done = 0;
  try {
    for (const file of files) {
      setStatus(`Analysing ${file.name} (${done + 1} of ${files.length})…`);
      try {
        const body = await analyseOne(file);
        const url = URL.createObjectURL(file);
        page.resultsEmpty.hidden = true;
        page.results.prepend(renderImage(file, url, body.images[0], body.labels, body.timings_ms));
      } catch (failure) {
        if (failure instanceof Error) failures.push({ title: `${file.name}: the service could not be reached`, detail: failure.message });
        else failures.push(failure);
      }
      done += 1;
    }
  } finally {
    page.analyse.disabled = false;
  }
  const ok = files.length - failures.length;
  setStatus(`Done: ${ok} of ${files.length} photo(s) analysed.`);
  if (failures.length === 1) showError(failures[0].title, failures[0].detail);
  else if (failures.length > 1) {
    showError(`${failures.length} photos could not be analysed`, failures.map((f) => `${f.title}: ${f.detail}`).join(" · "));
  }
  if (ok) page.resultsHeading.focus();
}

// --- webcam ----------------------------------------------------------------------------------

let cameraStream = null;

async function openCamera() {
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("No webcam here", "This browser offers no camera to the page (it needs https or localhost).");
    return;
  }
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    showError("The webcam could not be opened", err.message);
    return;
  }
  page.video.srcObject = cameraStream;
  page.camera.hidden = false;
  page.snap.focus();
}

function closeCamera() {
  if (cameraStream) cameraStream.getTracks().forEach((t) => t.stop());
  cameraStream = null;
  page.video.srcObject = null;
  page.camera.hidden = true;
  page.cameraOpen.focus();
}

function snapCamera() {
  const video = page.video;
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    analyse([new File([blob], `webcam-${stamp}.png`, { type: "image/png" })]);
  }, "image/png");
}

// --- wiring ----------------------------------------------------------------------------------

function init() {
  Object.assign(page, {
    form: $("upload-form"),
    input: $("photos"),
    analyse: $("analyse"),
    dropZone: $("drop-zone"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    resultsEmpty: $("results-empty"),
    resultsHeading: $("results-heading"),
    modelCard: $("model-card"),
    camera: $("camera"),
    video: $("camera-video"),
    cameraOpen: $("camera-open"),
    snap: $("camera-snap"),
    imageTemplate: $("image-template"),
    faceTemplate: $("face-template"),
  });
  page.form.addEventListener("submit", (event) => {
    event.preventDefault();
    analyse(Array.from(page.input.files));
  });
  page.dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    page.dropZone.classList.add("dragging");
  });
  page.dropZone.addEventListener("dragleave", () => page.dropZone.classList.remove("dragging"));
  page.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    page.dropZone.classList.remove("dragging");
    analyse(Array.from(event.dataTransfer.files));
  });
  page.cameraOpen.addEventListener("click", openCamera);
  $("camera-close").addEventListener("click", closeCamera);
  page.snap.addEventListener("click", snapCamera);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && cameraStream) closeCamera();
  });
  loadModelCard();
}

document.addEventListener("DOMContentLoaded", init);
