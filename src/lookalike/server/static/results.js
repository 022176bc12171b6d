// A search result on lookalike's web page: what it is to the query first (the calibrated match
// label), the score behind it only on demand, and the copies folded into it. app.js lays the
// results out and decides what a click does.

import { splitPath, thumbnail, openWithKey } from "./common.js";

// What a hit is to its query, by the model's calibrated thresholds (the API's ``match``).
const MATCHES = {
  exact: ["Exact", "exact copy", "The same bytes as the query"],
  copy: ["Copy", "edited copy", "An edited copy of the query: resized, re-encoded, cropped, " +
    "recoloured…"],
  similar: ["Similar", "similar", "The same scene or a look-alike"],
};
const NO_MATCH = ["—", "no close match",
  "Not close enough to the query to be called similar by this model's calibration"];

// The label first: a badge whose title says what it means; ``dataset.words`` reads it aloud.
export function matchBadge(match) {
  const [text, words, meaning] = MATCHES[match] ?? NO_MATCH;
  const badge = document.createElement("span");
  badge.className = `match match-${MATCHES[match] ? match : "none"}`;
  badge.textContent = text;
  badge.title = meaning;
  badge.dataset.words = words;
  return badge;
}

// The score is (1 + cosine) / 2: never a probability, so never shown as a percentage.
export function scoreText(score) {
  return `score ${score.toFixed(3)} · cosine ${(2 * score - 1).toFixed(3)}`;
}

// A result: its match label first (the score behind it on demand), name and folder; a click
// calls ``open(hit)``. ``rank`` is its place ("3"), or a folded copy's under it ("3.1");
// ``pool`` keeps the thumbnails fetched with the API key (see common.js's setImage).
export function resultCard(hit, rank, { pool, open: onOpen, copyOf = null }) {
  const [dir, name] = splitPath(hit.uri);
  const li = document.createElement("li");
  li.className = copyOf ? "card copy-card" : "card";

  const button = document.createElement("button");
  button.type = "button";
  button.className = "result";
  button.dataset.imageId = String(hit.image_id);
  button.dataset.uri = hit.uri;
  button.dataset.rank = rank;
  const badge = matchBadge(hit.match);
  button.title = `${hit.uri}\n${badge.title}\n${scoreText(hit.score)} · click for its look-alikes`;
  const folded = copyOf ? `, a copy of result ${copyOf}` : "";
  const copies = hit.copies?.length ? `, with ${copiesText(hit.copies.length)}` : "";
  button.setAttribute("aria-label", `${rank}. ${name}${folded}: ${badge.dataset.words}` +
    `${copies}. Show its look-alikes.`);
  button.addEventListener("click", () => onOpen(hit));

  const thumb = document.createElement("span");
  thumb.className = "thumb";
  const img = thumbnail(thumb, hit, pool);
  const place = document.createElement("span");
  place.className = "rank";
  place.textContent = rank;
  thumb.append(img, place);

  const meta = document.createElement("span");
  meta.className = "meta";
  meta.innerHTML = '<span class="label-row"><span class="score"></span></span>' +
    '<span class="name"></span><span class="path"><span></span></span>';
  meta.querySelector(".label-row").prepend(badge);
  meta.querySelector(".score").textContent = scoreText(hit.score);
  meta.querySelector(".name").textContent = name;
  // The directory is clipped from the left, so the part nearest the file stays visible.
  const size = hit.width ? ` · ${hit.width}×${hit.height}` : "";
  meta.querySelector(".path span").textContent = `\u200E${dir}${size}\u200E`;
  button.append(thumb, meta);

  const open = document.createElement("a");
  open.className = "open";
  open.href = hit.file_url;
  open.target = "_blank";
  open.rel = "noopener";
  open.title = "Open the original file";
  open.setAttribute("aria-label", `Open the original of ${name}`);
  open.innerHTML = '<svg viewBox="0 0 20 20" aria-hidden="true">' +
    '<path d="M11 3h6v6M17 3l-8 8M8 4H4v12h12v-4" fill="none" stroke="currentColor"' +
    ' stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>';
  open.addEventListener("click", (event) => openWithKey(event, hit.file_url));

  li.append(button, open);
  if (!copyOf && hit.copies?.length) {
    li.append(copiesToggle(li, hit, rank, { pool, open: onOpen }));
  }
  return li;
}

function copiesText(n) {
  return n === 1 ? "1 copy" : `${n.toLocaleString()} copies`;
}

// "+3 copies": the copies folded into a result, shown as cards right after it, or hidden again.
function copiesToggle(li, hit, rank, options) {
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "copies-toggle";
  toggle.textContent = `+${copiesText(hit.copies.length)}`;
  toggle.title = "Copies of this image, folded into it: show them";
  toggle.setAttribute("aria-expanded", "false");
  li.classList.add("has-copies");
  let shown = [];
  toggle.addEventListener("click", () => {
    const open = shown.length === 0;
    for (const card of shown) card.remove();
    shown = open ? hit.copies.map((copy, i) =>
      resultCard(copy, `${rank}.${i + 1}`, { ...options, copyOf: rank })) : [];
    li.after(...shown);
    toggle.setAttribute("aria-expanded", String(open));
    toggle.title = `Copies of this image, folded into it: ${open ? "hide" : "show"} them`;
  });
  return toggle;
}
