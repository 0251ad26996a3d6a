// The captioning page: sends the chosen image to POST /caption?details=true and draws the answer.
// No framework and no build step: the service ships this file as it is.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;    // the File being shown
let answer = null;     // the service's last answer
let selected = null;   // index of the clicked word, or null
let asked = 0;         // requests sent: an answer to an older one is dropped

function show(element, visible) { element.hidden = !visible; }

function fail(message) {  // nothing was captioned: the zone asks for an image again
  $("error").textContent = message;
  show($("error"), true);
  show($("stage"), false);
  show($("drop-text"), true);
  $("status").textContent = "";
}

async function caption(file) {
  current = file;
  const request = ++asked;
  answer = null;
  selected = null;
  for (const id of ["error", "words-box", "alternatives-box"]) show($(id), false);
  $("caption").textContent = "";
  $("score").textContent = "";
  if ($("image").src.startsWith("blob:")) URL.revokeObjectURL($("image").src);  // the last image's memory
  $("image").src = URL.createObjectURL(file);
  show($("drop-text"), false);
  show($("stage"), true);
  draw(null);
  $("status").textContent = "captioning…";
  const params = new URLSearchParams({ details: "true" });
  if ($("beam").value) params.set("beam", $("beam").value);
  const started = performance.now();
  let response, body;
  try {
    response = await fetch(`/caption?${params}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    body = await response.json();
  } catch (error) {
    if (request === asked) fail(`The service did not answer: ${error.message}`);
    return;
  }
  if (request !== asked) return;
  if (!response.ok) {
    fail(`${response.status}: ${body.error || response.statusText}`);
    return;
  }
  $("status").textContent = `captioned in ${Math.round(performance.now() - started)} ms`;
  answer = body;
  render(body);
}

function render(body) {
  $("caption").textContent = body.caption || "(an empty caption)";
  $("score").textContent = `score ${body.score.toFixed(3)} (sum of log-probabilities)`;
  const words = $("words");
  words.replaceChildren(...body.words.map((word, index) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.textContent = word;
    chip.setAttribute("aria-pressed", "false");
    chip.addEventListener("mouseenter", () => draw(index));
    chip.addEventListener("mouseleave", () => draw(selected));
    chip.addEventListener("focus", () => draw(index));
    chip.addEventListener("blur", () => draw(selected));
    chip.addEventListener("click", () => select(selected === index ? null : index));
    return chip;
  }));
  show($("no-map"), !body.grid);
  show($("words-box"), body.words.length > 0);
  $("alternatives").replaceChildren(...body.alternatives.map((alternative) => {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = alternative.caption + (alternative.finished ? "" : " …");
    if (!alternative.finished) text.title = "unfinished: the search ended before this hypothesis did";
    const score = document.createElement("span");
    score.className = "alt-score";
    score.textContent = alternative.score.toFixed(3);
    item.append(text, score);
    return item;
  }));
  show($("alternatives-box"), body.alternatives.length > 0);
}

function select(index) {
  selected = index;
  document.querySelectorAll("#words .chip").forEach((chip, i) => chip.setAttribute("aria-pressed", String(i === index)));
  draw(index);
}

// A blue (little) to red (most) heat map, as the report draws it: a light blue veil where the word
// hardly looked, so what it looked at stands out.
function heat(value) {
  const channel = (centre) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - centre))));
  return [channel(3), channel(2), channel(1), Math.round(90 + 130 * value)];
}

// The attention of word `index` over the image: one pixel per region, scaled up bilinearly (the canvas
// default), which keeps each cell centre at its own weight and blends between them.
function draw(index) {
  const canvas = $("overlay"), image = $("image");
  canvas.width = Math.max(1, Math.round(image.clientWidth * devicePixelRatio));
  canvas.height = Math.max(1, Math.round(image.clientHeight * devicePixelRatio));
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (index === null || !answer || !answer.grid) return;
  const [rows, columns] = answer.grid, weights = answer.attention[index];
  const most = Math.max(...weights, 1e-8);
  const grid = document.createElement("canvas");
  grid.width = columns;
  grid.height = rows;
  const pixels = grid.getContext("2d").createImageData(columns, rows);
  weights.forEach((weight, region) => pixels.data.set(heat(weight / most), 4 * region));
  grid.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.drawImage(grid, 0, 0, canvas.width, canvas.height);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => event.target.files[0] && caption(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) caption(event.dataTransfer.files[0]);
  });
  $("beam").addEventListener("change", () => current && caption(current));
  $("image").addEventListener("load", () => draw(selected));
  window.addEventListener("resize", () => draw(selected));
}

setUp();
