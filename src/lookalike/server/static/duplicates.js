// lookalike's duplicates review: groups of copies found by the server, a suggested keep in each,
// and the reviewer's decisions (keep this one, not duplicates) sent back. app.js owns the page
// and switches to this view; this module draws it and handles its controls and keys.

import {
  $, session, apiJson, showError, clearError, formatMs, formatBytes, plural,
  splitPath, releaseThumbs, thumbnail, openWithKey, showNoticeIn,
} from "./common.js";

// This view's own elements; the error box and the key form are common.js's.
const els = {
  dupView: $("dup-view"), dupHeading: $("dup-heading"),
  dupTier: $("dup-tier"), dupPreset: $("dup-preset"), dupThreshold: $("dup-threshold"),
  dupThresholdLabel: $("dup-threshold-label"), dupStatus: $("dup-status"),
  dupNotice: $("dup-notice"), dupEmpty: $("dup-empty"), dupGroups: $("dup-groups"),
  dupPager: $("dup-pager"), dupPrev: $("dup-prev"), dupNext: $("dup-next"), dupPage: $("dup-page"),
};

// -- duplicates -----------------------------------------------------------------------------

const TIERS = ["exact", "near", "similar"];
const PRESETS = ["strict", "normal", "loose"];
const PER_PAGE = 20;
const TIER_WORDS = { exact: "exact copies", near: "near copies", similar: "similar images" };

const dup = {
  params: { tier: "near", preset: "normal", threshold: null, page: 1, perPage: PER_PAGE },
  body: null, // the page of groups shown
  seq: 0, // bumps on every load; a response for an older one is dropped
  controller: null,
  thumbs: { urls: [], observer: null },
};

export function isDuplicatesHash() {
  return /^#duplicates(\?|$)/.test(location.hash);
}

// The review is linkable: #duplicates?tier=exact&preset=strict&page=2 (defaults left out).
export function readDupParams() {
  const query = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const p = dup.params;
  p.tier = TIERS.includes(query.get("tier")) ? query.get("tier") : "near";
  const threshold = Number.parseFloat(query.get("threshold"));
  p.threshold = threshold > 0 && threshold <= 1 ? threshold : null;
  p.preset = p.threshold != null ? "custom"
    : PRESETS.includes(query.get("preset")) ? query.get("preset") : "normal";
  p.page = Math.max(1, Number.parseInt(query.get("page"), 10) || 1);
  p.perPage = Math.min(500, Math.max(1, Number.parseInt(query.get("per_page"), 10) || PER_PAGE));
  els.dupTier.value = p.tier;
  els.dupPreset.value = p.preset;
  els.dupThresholdLabel.hidden = p.threshold == null;
  if (p.threshold != null) els.dupThreshold.value = String(p.threshold);
}

export function dupHash() {
  const p = dup.params;
  const query = new URLSearchParams();
  if (p.tier !== "near") query.set("tier", p.tier);
  if (p.threshold != null) query.set("threshold", String(p.threshold));
  else if (p.preset !== "normal") query.set("preset", p.preset);
  if (p.page > 1) query.set("page", String(p.page));
  if (p.perPage !== PER_PAGE) query.set("per_page", String(p.perPage));
  const text = query.toString();
  return text ? `#duplicates?${text}` : "#duplicates";
}

function dupApiPath() {
  const p = dup.params;
  const query = new URLSearchParams({ tier: p.tier, page: String(p.page),
    per_page: String(p.perPage) });
  if (p.threshold != null) query.set("threshold", String(p.threshold));
  else query.set("preset", p.preset);
  return `duplicates?${query}`;
}

function changeDupParams(changes) {
  Object.assign(dup.params, { page: 1 }, changes);
  history.replaceState(null, "", dupHash());
  loadDuplicates();
}

function onPresetChange() {
  const preset = els.dupPreset.value;
  if (preset !== "custom") {
    els.dupThresholdLabel.hidden = true;
    changeDupParams({ preset, threshold: null });
    return;
  }
  els.dupThresholdLabel.hidden = false;
  // Start from the cosine in use, so "custom" first shows what the preset showed; a preset that
  // also checks pixels has a low cosine floor, which alone would group far too much.
  const start = dup.body?.verified ? 0.95 : dup.body?.near_threshold ?? 0.9;
  els.dupThreshold.value = String(Math.round(start * 1000) / 1000);
  els.dupThreshold.focus();
  changeDupParams({ preset: "custom", threshold: Number(els.dupThreshold.value) });
}

function onThresholdChange() {
  const value = Number.parseFloat(els.dupThreshold.value);
  if (!(value > 0 && value <= 1)) {
    showError("A cosine threshold is a number above 0 and at most 1, such as 0.9.");
    return;
  }
  changeDupParams({ preset: "custom", threshold: value });
}

function setDupStatus(text, title = "") {
  els.dupStatus.textContent = text;
  els.dupStatus.title = title;
}

function dupSummary(body) {
  const what = TIER_WORDS[body.tier] ?? body.tier;
  const preset = body.preset ? `${body.preset} preset` : "your threshold";
  const cosine = (x) => (x == null ? "?" : x.toFixed(3));
  const checked = body.verified ? " and pixels that align" : "";
  const rule = body.tier === "exact" ? "same bytes or same pixels"
    : body.tier === "near" ? `near: cosine ≥ ${cosine(body.near_threshold)}${checked} (${preset})`
      : `near ≥ ${cosine(body.near_threshold)}${checked}, similar ≥ ` +
        `${cosine(body.similar_threshold)} (${preset})`;
  return `${plural(body.total_groups, "group")} of ${what} among ` +
    `${plural(body.images, "image")} · ${rule} · ${formatMs(body.seconds * 1000)}`;
}

export async function loadDuplicates({ quiet = false, focus = null } = {}) {
  const seq = ++dup.seq;
  dup.controller?.abort();
  const controller = (dup.controller = new AbortController());
  if (!quiet) {
    clearError();
    setDupStatus("Looking for duplicates…");
  }
  setDupBusy(true);
  try {
    const body = await apiJson(dupApiPath(), { signal: controller.signal });
    if (seq !== dup.seq) return;
    const pages = Math.max(1, Math.ceil(body.total_groups / body.per_page));
    if (body.groups.length === 0 && dup.params.page > pages) {
      // Decisions emptied this page (or the link named one past the end): show the last one.
      dup.params.page = pages;
      history.replaceState(null, "", dupHash());
      loadDuplicates({ quiet, focus });
      return;
    }
    dup.body = body;
    renderDuplicates(body, focus);
    setDupStatus(dupSummary(body), `${plural(body.pairs, "pair")} of ${TIER_WORDS[body.tier]}` +
      " or closer");
  } catch (error) {
    if (error.name === "AbortError" || seq !== dup.seq) return;
    if (error.status === 401 || error.status === 403) session.retry = () => loadDuplicates();
    dup.body = null;
    renderDuplicates(null);
    setDupStatus("");
    let message = error.message;
    if (error.status === 422 && /calibrat/i.test(message) && dup.params.threshold == null) {
      message += " Here: set Preset to “custom cosine…” and give one.";
    }
    showError(`Could not look for duplicates: ${message}`);
  } finally {
    if (seq === dup.seq) setDupBusy(false);
  }
}

function setDupBusy(busy) {
  els.dupView.classList.toggle("busy", busy);
  els.dupGroups.setAttribute("aria-busy", String(busy));
}

function renderDuplicates(body, focus = null) {
  releaseThumbs(dup.thumbs);
  const groups = body?.groups ?? [];
  const offset = body ? (body.page - 1) * body.per_page : 0;
  els.dupGroups.replaceChildren(...groups.map((group, i) => groupCard(group, offset + i)));
  const cards = dupCards();
  cards[0]?.setAttribute("tabindex", "0");

  els.dupEmpty.hidden = !body || groups.length > 0;
  if (body && groups.length === 0) {
    const looser = body.tier === "similar" ? "" : " Try the “loose” preset, or similar images.";
    els.dupEmpty.textContent = body.images < 2
      ? "The collection needs at least two images to have duplicates."
      : `No ${TIER_WORDS[body.tier] ?? "duplicates"} among these ${plural(body.images, "image")}` +
        ` with these settings.${looser}`;
  }
  const pages = body ? Math.max(1, Math.ceil(body.total_groups / body.per_page)) : 1;
  els.dupPager.hidden = pages <= 1;
  els.dupPage.textContent = `Page ${body?.page ?? 1} of ${pages}`;
  els.dupPrev.disabled = !body || body.page <= 1;
  els.dupNext.disabled = !body || body.page >= pages;

  // After a decision: focus the same group again (it holds the image kept), or the one that
  // took the place of a group that went away.
  if (focus && cards.length) {
    const card = cards.find((c) => focus.imageId != null &&
      groupIds(c).includes(focus.imageId)) ?? cards[Math.min(focus.index, cards.length - 1)];
    focusCard(card, { scroll: false });
  }
}

function dupCards() {
  return Array.from(els.dupGroups.querySelectorAll(".dup-group"));
}

function groupIds(card) {
  return card.dataset.ids.split(",").map(Number);
}

function describeTier(image) {
  if (image.tier === "exact") return image.how ? `exact — ${image.how}` : "exact copy";
  if (image.tier === "near") return "near copy";
  return image.tier ?? "";
}

function groupCard(group, index) {
  const images = [group.keep, ...group.members];
  const li = document.createElement("li");
  li.className = "dup-group";
  li.tabIndex = -1;
  li.dataset.ids = images.map((image) => image.id).join(",");
  li.dataset.keepId = String(group.keep.id);
  li.dataset.tier = group.tier;
  const headingId = `dup-group-${group.keep.id}`;
  li.setAttribute("aria-labelledby", headingId);
  li.setAttribute("aria-describedby", "dup-keys");

  const head = document.createElement("div");
  head.className = "dup-group-head";
  const heading = document.createElement("h3");
  heading.id = headingId;
  heading.textContent = `Group ${index + 1}`;
  const meta = document.createElement("p");
  meta.className = "dup-group-meta";
  meta.textContent = `${plural(images.length, "image")} · ${TIER_WORDS[group.tier] ?? group.tier}`;
  const weakest = document.createElement("span");
  weakest.className = "dup-weakest";
  weakest.title = "The lowest cosine between the suggested keep and a copy in this group";
  weakest.textContent = ` · weakest link ${group.weakest.toFixed(3)}`;
  meta.append(weakest);
  const distinct = document.createElement("button");
  distinct.type = "button";
  distinct.className = "btn btn-small dup-distinct";
  distinct.textContent = "Not duplicates";
  // Files with the same bytes are the same content: there is no pair to decide on.
  const sameBytes = group.members.every((m) => m.tier === "exact" && m.how === "same bytes");
  distinct.disabled = sameBytes;
  distinct.title = sameBytes ? "These files have the same bytes: they are always duplicates"
    : "These images are different: never group them again (N)";
  distinct.addEventListener("click", () => decideGroup(li, "distinct"));
  head.append(heading, meta, distinct);

  const list = document.createElement("ol");
  list.className = "dup-images";
  list.setAttribute("aria-label", `Images in group ${index + 1}, the suggested keep first`);
  list.append(...images.map((image, n) => imageTile(image, n, group, li)));
  li.append(head, list);
  li.addEventListener("focusin", () => setCurrentCard(li));
  return li;
}

function imageTile(image, n, group, card) {
  const keeper = n === 0;
  const [dir, name] = splitPath(image.uri);
  const item = document.createElement("li");
  item.className = keeper ? "dup-image keeper" : "dup-image";
  item.dataset.imageId = String(image.id);
  item.dataset.tier = image.tier ?? "keep";
  const cosine = keeper ? "" : `cosine ${image.cosine.toFixed(4)} with the suggested keep`;

  const link = document.createElement("a");
  link.className = "thumb";
  link.href = image.file_url;
  link.target = "_blank";
  link.rel = "noopener";
  link.title = [image.uri, cosine].filter(Boolean).join("\n");
  link.setAttribute("aria-label", `Open the original of ${name}`);
  link.addEventListener("click", (event) => openWithKey(event, image.file_url));
  const img = thumbnail(link, image, dup.thumbs);
  const number = document.createElement("span");
  number.className = "rank";
  number.textContent = String(n + 1);
  number.title = `Press ${n + 1} to keep this one`;
  link.append(img, number);

  const info = document.createElement("div");
  info.className = "dup-info";
  const label = document.createElement("p");
  if (keeper) {
    label.className = "dup-label dup-label-keep";
    label.textContent = group.reason === "chosen by you" ? "Keep" : "Suggested keep";
    const reason = document.createElement("p");
    reason.className = "dup-reason";
    reason.textContent = group.reason;
    info.append(label, reason);
  } else {
    label.className = `dup-label dup-tier-${image.tier}`;
    label.textContent = describeTier(image);
    label.title = cosine;
    const hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    hidden.textContent = `, ${cosine}`;
    label.append(hidden);
    info.append(label);
  }
  const nameLine = document.createElement("p");
  nameLine.className = "name";
  nameLine.textContent = name;
  nameLine.title = image.uri;
  const path = document.createElement("p");
  path.className = "path";
  path.textContent = `\u200E${dir}\u200E`;
  const facts = document.createElement("p");
  facts.className = "dup-facts";
  facts.textContent = [image.width ? `${image.width} × ${image.height}` : "",
    image.size != null ? formatBytes(image.size) : ""].filter(Boolean).join(" · ");
  info.append(nameLine, path, facts);

  const keep = document.createElement("button");
  keep.type = "button";
  keep.className = "btn btn-small dup-keep";
  const chosen = keeper && group.reason === "chosen by you";
  keep.textContent = chosen ? "Kept ✓" : "Keep this one";
  keep.disabled = chosen;
  keep.dataset.imageId = String(image.id);
  keep.setAttribute("aria-label", `Keep ${name} (${n + 1})` +
    (keeper ? ", the suggested keep" : `, ${describeTier(image)}`));
  keep.title = keeper ? `Keep this copy (${n + 1})` : `Keep this copy instead (${n + 1})`;
  keep.addEventListener("click", () => decideGroup(card, "duplicate", image.id));
  info.append(keep);

  item.append(link, info);
  return item;
}

// Roving focus: the current group is the one Tab reaches; J/K and the arrows move it.
function setCurrentCard(card) {
  for (const other of dupCards()) other.tabIndex = other === card ? 0 : -1;
}

function focusCard(card, { scroll = true } = {}) {
  if (!card) return;
  setCurrentCard(card);
  card.focus({ preventScroll: true });
  if (scroll) {
    const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
    card.scrollIntoView({ block: "nearest", behavior: still ? "auto" : "smooth" });
  }
}

async function decideGroup(card, verdict, keepId = null) {
  if (card.getAttribute("aria-busy") === "true") return;
  const ids = groupIds(card);
  const index = dupCards().indexOf(card);
  const name = (id) => splitPath(card.querySelector(`.dup-image[data-image-id="${id}"] .name`)
    ?.title ?? `#${id}`)[1];
  const hadFocus = card.contains(document.activeElement);
  card.setAttribute("aria-busy", "true");
  const enabled = Array.from(card.querySelectorAll("button")).filter((b) => !b.disabled);
  for (const button of enabled) button.disabled = true;
  clearError();
  clearDupNotice();
  try {
    const body = await apiJson("duplicates/decisions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ images: ids, verdict, keep: keepId }),
    });
    const undo = { label: "Undo", run: () => undoDecision(ids) };
    if (body.pairs === 0) {
      showDupNotice("These files have the same bytes, so there is nothing to decide: " +
        "the choice is kept by content, which they share. Nothing was recorded.");
    } else if (verdict === "distinct") {
      card.remove();
      showDupNotice(`Marked ${plural(ids.length, "image")} as not duplicates; they will not ` +
        "be grouped again.", undo);
    } else {
      showDupNotice(`You chose to keep ${name(keepId)}; it will be suggested from now on. ` +
        "Nothing was deleted.", undo);
    }
    const refocus = hadFocus || document.activeElement === document.body;
    await loadDuplicates({ quiet: true, focus: refocus
      ? { imageId: verdict === "distinct" ? null : keepId, index: Math.max(0, index) } : null });
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error.status === 401 || error.status === 403) {
      session.retry = () => decideGroup(card, verdict, keepId);
    }
    card.removeAttribute("aria-busy");
    for (const button of enabled) button.disabled = false;
    showError(`Could not record your decision: ${error.message}`);
  }
}

async function undoDecision(ids) {
  clearError();
  clearDupNotice();
  try {
    await apiJson("duplicates/decisions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ images: ids, verdict: null }),
    });
    showDupNotice("Undone: the suggestion is the server's own again.");
    await loadDuplicates({ quiet: true });
  } catch (error) {
    if (error.status === 401 || error.status === 403) session.retry = () => undoDecision(ids);
    showError(`Could not undo the decision: ${error.message}`);
  }
}

function showDupNotice(text, action) {
  showNoticeIn(els.dupNotice, text, action);
}

function clearDupNotice() {
  els.dupNotice.hidden = true;
  els.dupNotice.replaceChildren();
}

function onDuplicatesKey(event) {
  if (els.dupView.hidden || event.defaultPrevented || event.ctrlKey || event.metaKey ||
      event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement ||
      target instanceof HTMLTextAreaElement || target?.isContentEditable) return;
  const cards = dupCards();
  if (!cards.length) return;
  const current = target instanceof Element ? target.closest(".dup-group") : null;
  const at = cards.indexOf(current);
  const key = event.key;
  // Arrows move between groups only from a group, so they still scroll the page elsewhere.
  if (key === "j" || key === "J" || (key === "ArrowDown" && at >= 0)) {
    focusCard(cards[Math.min(at + 1, cards.length - 1)]);
  } else if (key === "k" || key === "K" || (key === "ArrowUp" && at >= 0)) {
    focusCard(cards[Math.max(at - 1, 0)]);
  } else if (/^[1-9]$/.test(key) && current) {
    const button = current.querySelectorAll(".dup-keep")[Number(key) - 1];
    if (!button || button.disabled) return;
    button.click();
  } else if ((key === "n" || key === "N") && current) {
    const button = current.querySelector(".dup-distinct");
    if (!button || button.disabled) return;
    button.click();
  } else {
    return;
  }
  event.preventDefault();
}

// -- wiring ---------------------------------------------------------------------------------

// Called from app.js's init(), after the view tabs, so listeners run in the order they always did.
export function initDuplicates() {
  els.dupTier.addEventListener("change", () => changeDupParams({ tier: els.dupTier.value }));
  els.dupPreset.addEventListener("change", onPresetChange);
  els.dupThreshold.addEventListener("change", onThresholdChange);
  $("dup-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    onThresholdChange();
  });
  for (const [button, step] of [[els.dupPrev, -1], [els.dupNext, 1]]) {
    button.addEventListener("click", () => {
      dup.params.page += step;
      history.replaceState(null, "", dupHash());
      loadDuplicates();
      els.dupHeading.focus({ preventScroll: true });
      window.scrollTo({ top: 0 });
    });
  }
  document.addEventListener("keydown", onDuplicatesKey);
}
