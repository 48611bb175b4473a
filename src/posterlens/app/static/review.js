// posterlens review queue: show /api/review/queue, send each review to POST /api/review/{id}.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { offset: 0, genres: [] };

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

const percent = (x) => (x === null ? "n/a" : `${Math.round(100 * x)}%`);

async function send(id, review) {
  const response = await fetch(`/api/review/${encodeURIComponent(id)}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(review),
  });
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function reviewedLine(review) {
  const what = review.accepted ? "accepted" : "corrected";
  const score = review.score === null ? "" : `, score ${review.score}`;
  return `\u2713 ${what} by ${review.reviewer}: ${review.genres.join(", ") || "no genres"}${score}`;
}

function card(item) {
  const shown = item.review || item;
  const chosen = new Set(shown.genres);
  const predicted = new Set(item.genres);
  const boxes = state.genres.map((genre) => {
    const box = el("input", { type: "checkbox", value: genre, checked: chosen.has(genre) });
    return el("label", { className: predicted.has(genre) ? "predicted" : "", title: `p = ${percent(item.probabilities[genre])}` },
      [box, ` ${genre}`]);
  });
  const score = el("input", {
    type: "number", min: 0, max: 10, step: 0.1, className: "score-input",
    value: shown.score === null ? "" : Number(shown.score).toFixed(1),
  });
  const interval = item.score_low === null ? "" : ` (${item.score_low.toFixed(1)} to ${item.score_high.toFixed(1)})`;
  const status = el("span", { className: item.review ? "done" : "", textContent: item.review ? reviewedLine(item.review) : "" });
  const li = el("li", { className: item.review ? "item reviewed" : "item" });
  li.dataset.id = item.id;

  async function submit(review) {
    status.className = "";
    status.textContent = "Saving\u2026";
    try {
      const stored = await send(item.id, review);
      status.className = "done";
      status.textContent = reviewedLine(stored);
      li.classList.add("reviewed");
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    }
  }

  const accept = el("button", { type: "button", className: "accept", textContent: "Accept",
    onclick: () => submit({ accepted: true }) });
  const save = el("button", { type: "button", className: "save", textContent: "Save correction",
    onclick: () => submit({
      accepted: false,
      genres: boxes.map((label) => label.firstChild).filter((box) => box.checked).map((box) => box.value),
      score: score.value === "" ? null : Number(score.value),
    }) });
  const notes = [
    el("p", { className: "meta", textContent: `${item.id} \u00b7 ${item.file} \u00b7 confidence ${percent(item.confidence)}` }),
    el("p", { className: "meta", textContent: `catalogue: ${item.catalogue.genres.join(", ") || "no genres"}`
      + (item.catalogue.score === null ? "" : `, score ${item.catalogue.score}`) }),
  ];
  if (item.in_domain === false) {  // null: the model does not say
    const domain = item.domain_score === null ? "" : ` (domain score ${percent(item.domain_score)})`;
    notes.push(el("p", { className: "warning", textContent: "Warning: this poster is unlike the posters the model was "
      + `trained on${domain}: its answer is little more than a guess.` }));
  }
  li.append(
    el("img", { src: `/review/poster/${encodeURIComponent(item.id)}`, alt: item.title, loading: "lazy" }),
    el("div", { className: "body" }, [
      el("h2", { textContent: item.title }), ...notes,
      el("fieldset", { className: "genres" }, boxes),
      el("label", { className: "score" }, ["Score ", score, ` / 10; model: ${item.score === null ? "n/a" : item.score.toFixed(1)}${interval}`]),
      el("div", { className: "actions" }, [accept, save, status]),
    ]),
  );
  return li;
}

async function load() {
  try {
    const response = await fetch(`/api/review/queue?offset=${state.offset}`);
    const queue = await response.json();
    if (!response.ok) throw new Error(queue.detail || `HTTP ${response.status}`);
    state.genres = queue.genres;
    $("summary").textContent = `${queue.total} posters, ${queue.reviewed} reviewed \u00b7 model ${queue.model} `
      + `\u00b7 reviewer ${queue.reviewer} \u00b7 database ${queue.db}`;
    $("queue").append(...queue.items.map(card));
    state.offset += queue.items.length;
    $("more").hidden = state.offset >= queue.total;
  } catch (err) {
    $("status").textContent = err.message;
    $("status").classList.add("error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("more").addEventListener("click", load);
  load();
});
