// posterlens page: send a poster to /api/predict and /api/explain, show what comes back.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { overlays: {}, genre: null, posterUrl: null };

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function post(path, form) {
  const response = await fetch(path, { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function showBars(result) {
  const predicted = new Set(result.genres);
  const rows = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  $("bars").replaceChildren(...rows.map(([genre, p]) => {
    const fill = el("div", { className: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    const threshold = el("div", { className: "threshold", title: "threshold" });
    threshold.style.left = `${(100 * result.thresholds[genre]).toFixed(1)}%`;
    const name = el("span", { className: "name", textContent: genre });
    if (predicted.has(genre)) name.prepend(el("span", { className: "mark", textContent: "\u2605 " }));
    return el("li", { className: predicted.has(genre) ? "genre predicted" : "genre" }, [
      name, el("div", { className: "bar" }, [fill, threshold]),
      el("span", { className: "p", textContent: `${(100 * p).toFixed(1)}%` }),
    ]);
  }));
  $("score").textContent = result.score === null ? "n/a" : `${result.score.toFixed(1)} / 10`;
  showTrust(result);
}

function showTrust(result) {
  $("domain-warning").hidden = result.in_domain !== false;
  $("score-interval").textContent = result.score_low === null ? ""
    : `likely between ${result.score_low.toFixed(1)} and ${result.score_high.toFixed(1)} (${(100 * result.interval).toFixed(0)}% interval)`;
  $("confidence").textContent = result.genre_confidence === null ? ""
    : `confidence ${(100 * result.genre_confidence).toFixed(0)}% (expected F1)`;
}

function showSimilar(movies) {
  $("similar").replaceChildren(...movies.map((m) => el("li", { className: "movie" }, [
    el("img", {
      src: m.has_poster ? `/api/poster/${encodeURIComponent(m.id)}` : "/static/placeholder.svg",
      alt: m.title, loading: "lazy",
    }),
    el("div", { className: "title", textContent: m.title }),
    el("div", { className: "meta", textContent: `${m.genres.join(", ")}${m.score === null ? "" : ` \u00b7 ${m.score}`}` }),
  ])));
  $("similar-box").hidden = movies.length === 0;
}

function showPoster() {
  const on = $("heat-toggle").checked && state.genre in state.overlays;
  $("poster").src = on ? state.overlays[state.genre] : state.posterUrl;
  $("poster").classList.toggle("heat", on);
  for (const button of $("heat-genres").children) button.classList.toggle("active", button.dataset.genre === state.genre);
}

function showHeat(result) {
  state.overlays = result.overlays;
  state.genre = result.genres[0] || null;
  $("heat-genres").replaceChildren(...result.genres.map((genre) => el("button", {
    type: "button", textContent: genre, onclick: () => { state.genre = genre; showPoster(); },
  }, [])));
  for (const button of $("heat-genres").children) button.dataset.genre = button.textContent;
  $("heat-controls").hidden = result.genres.length === 0;
  showPoster();
}

async function analyse(form, posterUrl) {
  state.overlays = {};
  state.posterUrl = posterUrl;
  $("heat-controls").hidden = true;
  setStatus("Reading the poster\u2026");
  try {
    const result = await post("/api/predict", form);
    if (posterUrl) { $("poster").src = posterUrl; }
    showBars(result);
    showSimilar(result.similar);
    $("result").hidden = false;
    if (result.kind === "score only") { setStatus("This model predicts the score only: no genres, no heat maps."); return; }
    setStatus("Computing heat maps\u2026");
    const heat = await post("/api/explain", form);
    if (!posterUrl) { state.posterUrl = heat.poster || ""; }
    showHeat(heat);
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function analyseFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  analyse(form, URL.createObjectURL(file));
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => analyseFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    analyseFile(e.dataTransfer.files[0]);
  });
  $("heat-toggle").addEventListener("change", showPoster);
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData();
    form.append("url", $("url").value);
    analyse(form, null);
  });
  fetch("/api/health").then((r) => r.json()).then((health) => { $("url-form").hidden = !health.allow_url_fetch; });
}

document.addEventListener("DOMContentLoaded", init);
