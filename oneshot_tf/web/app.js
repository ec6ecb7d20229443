// The page: draw up to five examples, send them to TF Serving's REST predict API
// (`sample` and `log_prob` signatures of an exported oneshot_tf model), show the results.
"use strict";

const IMAGE = 28;             // The model's image side.
const SCALE = 5;              // Canvas pixels per model pixel.
const CANVAS = IMAGE * SCALE;
const LINE_WIDTH = 8;         // Canvas pixels: about Omniglot's stroke after downscaling.
const SLOTS = 5;
const NATS_TO_BITS_PER_DIM = 1 / (IMAGE * IMAGE * Math.LN2);

const $ = (id) => document.getElementById(id);
const slots = [];
const undoStack = [];         // Slot indices, one per stroke, newest last.
let activeSlot = 0;
let seed = 1;

function makeSlot(index) {
  const box = document.createElement("div");
  box.className = "slot";
  box.dataset.index = index;
  const draw = document.createElement("canvas");
  draw.className = "draw";
  draw.width = draw.height = CANVAS;
  const small = document.createElement("div");
  small.className = "small";
  const preview = document.createElement("canvas");
  preview.className = "preview";
  preview.width = preview.height = IMAGE;
  preview.style.width = preview.style.height = "56px";
  const clear = document.createElement("button");
  clear.type = "button";
  clear.textContent = "clear";
  small.append(preview, `#${index + 1}`, clear);
  box.append(draw, small);
  $("support").append(box);
  const slot = { box, draw, preview, strokes: [], base: null };
  clear.addEventListener("click", () => { slot.strokes = []; slot.base = null; render(slot); });
  let stroke = null;
  draw.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    setActive(index);
    draw.setPointerCapture(event.pointerId);
    stroke = [point(draw, event)];
    slot.strokes.push(stroke);
    undoStack.push(index);
    render(slot);
  });
  draw.addEventListener("pointermove", (event) => {
    if (!stroke) return;
    stroke.push(point(draw, event));
    render(slot);
  });
  const end = () => { stroke = null; };
  draw.addEventListener("pointerup", end);
  draw.addEventListener("pointercancel", end);
  return slot;
}

function point(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * CANVAS / rect.width, (event.clientY - rect.top) * CANVAS / rect.height];
}

function setActive(index) {
  activeSlot = index;
  slots.forEach((s, i) => s.box.classList.toggle("active", i === index));
}

// Redraws a slot's big canvas from its base image and strokes, then its 28x28 preview.
function render(slot) {
  const ctx = slot.draw.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, CANVAS, CANVAS);
  if (slot.base) {
    ctx.fillStyle = "black";
    slot.base.forEach((row, y) => row.forEach((ink, x) => { if (ink) ctx.fillRect(x * SCALE, y * SCALE, SCALE, SCALE); }));
  }
  ctx.strokeStyle = "black";
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of slot.strokes) {
    ctx.beginPath();
    ctx.moveTo(...stroke[0]);
    if (stroke.length === 1) ctx.lineTo(stroke[0][0] + 0.1, stroke[0][1]);
    stroke.slice(1).forEach((p) => ctx.lineTo(...p));
    ctx.stroke();
  }
  drawImage(slot.preview, toArray(slot));
}

// What the model gets: area-average SCALE x SCALE blocks of ink, ink = 1 where >= 0.5.
function toArray(slot) {
  const pixels = slot.draw.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, CANVAS, CANVAS).data;
  const image = [];
  for (let y = 0; y < IMAGE; y++) {
    const row = [];
    for (let x = 0; x < IMAGE; x++) {
      let ink = 0;
      for (let dy = 0; dy < SCALE; dy++) {
        for (let dx = 0; dx < SCALE; dx++) {
          const i = 4 * ((y * SCALE + dy) * CANVAS + x * SCALE + dx);
          ink += 1 - (pixels[i] + pixels[i + 1] + pixels[i + 2]) / (3 * 255);
        }
      }
      row.push(ink / (SCALE * SCALE) >= 0.5 ? 1 : 0);
    }
    image.push(row);
  }
  return image;
}

// Draws a [28][28] array of ink values in [0, 1] as dark ink on white.
function drawImage(canvas, image) {
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(IMAGE, IMAGE);
  image.forEach((row, y) => row.forEach((ink, x) => {
    const v = Math.round(255 * (1 - ink)), i = 4 * (y * IMAGE + x);
    data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
    data.data[i + 3] = 255;
  }));
  ctx.putImageData(data, 0, 0);
}

const isEmpty = (image) => image.every((row) => row.every((v) => v === 0));
const withChannel = (image) => image.map((row) => row.map((v) => [v]));

// The drawings the model conditions on: [shots][28][28], empty boxes left out.
function supportImages() {
  return slots.map(toArray).filter((image) => !isEmpty(image));
}

function modelName() {
  return $("model").hidden ? $("model-name").value.trim() : $("model").value;
}

async function predict(signature, inputs) {
  const response = await fetch(`v1/models/${encodeURIComponent(modelName())}:predict`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ signature_name: signature, inputs }),
  });
  let body;
  try { body = await response.json(); } catch (e) { body = {}; }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body.outputs;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function run() {
  showError("");
  const images = supportImages();
  const draws = Math.max(1, Math.min(64, parseInt($("num-draws").value, 10) || 1));
  const numSamples = parseInt($("num-samples").value, 10);
  const support = images.map(withChannel);
  const request = { support, seed: [seed, 0], numSamples };
  window.oneshot.last = request;
  $("status").textContent = "drawing...";
  $("draw").disabled = $("more").disabled = true;
  try {
    const outputs = await predict("sample", { support: Array(draws).fill(support), seed: request.seed });
    showSamples(outputs.probs);
    $("seed-label").textContent = `(seed ${seed}, ${images.length} shot${images.length === 1 ? "" : "s"})`;
    await showScores(support, numSamples, request.seed);
    $("status").textContent = "";
  } catch (error) {
    showError(error.message);
    $("status").textContent = "";
  } finally {
    $("draw").disabled = $("more").disabled = false;
  }
}

function showSamples(probs) {
  const box = $("samples");
  box.replaceChildren();
  for (const image of probs) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = IMAGE;
    drawImage(canvas, image.map((row) => row.map((p) => p[0])));
    const img = document.createElement("img");
    img.src = canvas.toDataURL();
    img.width = img.height = 56;
    img.alt = "new drawing";
    box.append(img);
  }
}

// log p(x_i | the other drawings) for each drawing i, in one batched call.
async function showScores(support, numSamples, requestSeed) {
  const body = $("scores").querySelector("tbody");
  body.replaceChildren();
  if (support.length === 0) return;
  const others = support.map((_, i) => support.filter((_, j) => j !== i));
  const scores = await predict("log_prob", { support: others, query: support, num_samples: numSamples, seed: requestSeed });
  window.oneshot.scores = scores;
  scores.forEach((nats, i) => {
    const row = document.createElement("tr");
    const cells = [`#${i + 1}`, `${support.length - 1} other${support.length === 2 ? "" : "s"}`,
      nats.toFixed(2), (-nats * NATS_TO_BITS_PER_DIM).toFixed(4)];
    cells.forEach((text) => { const td = document.createElement("td"); td.textContent = text; row.append(td); });
    row.dataset.nats = String(nats);
    body.append(row);
  });
}

async function loadModels() {
  try {
    const response = await fetch("v1/models");
    if (!response.ok) throw new Error(String(response.status));
    const { models } = await response.json();
    $("model").replaceChildren(...models.map(({ name, version }) => new Option(`${name} (v${version})`, name)));
  } catch (error) {
    // A real tensorflow_model_server has no model list: type the model's name instead.
    $("model").hidden = true;
    $("model-name").hidden = false;
    $("model-name").value = new URLSearchParams(location.search).get("model") || "";
  }
}

async function randomCharacter() {
  showError("");
  try {
    const response = await fetch(`v1/examples?seed=${Math.floor(Math.random() * 1e9)}`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || String(response.status));
    slots.forEach((slot, i) => { slot.strokes = []; slot.base = body.images[i] || null; render(slot); });
    $("status").textContent = `test character ${body.character}`;
  } catch (error) {
    showError(`no random character: ${error.message}`);
  }
}

function init() {
  for (let i = 0; i < SLOTS; i++) slots.push(makeSlot(i));
  slots.forEach(render);
  setActive(0);
  $("undo").addEventListener("click", () => {
    const index = undoStack.pop();
    if (index === undefined) return;
    slots[index].strokes.pop();
    render(slots[index]);
  });
  $("clear").addEventListener("click", () => {
    slots.forEach((slot) => { slot.strokes = []; slot.base = null; render(slot); });
    undoStack.length = 0;
  });
  $("draw").addEventListener("click", run);
  $("more").addEventListener("click", () => { seed += 1; run(); });
  $("random").addEventListener("click", randomCharacter);
  window.oneshot = { supportImages, last: null, scores: null };
  loadModels();
}

init();
