// lookalike's web page: drop, choose or paste a photo, see its look-alikes, click one to go on.
// Talks to the same-origin JSON API; no build step, no dependencies. This module is the search
// view and the page around it (header, API key, the two views and the address); the search's
// results are drawn by results.js, its filter and facets are filters.js, the duplicates review is
// duplicates.js, and what they share is common.js.

import {
  $, els as shared, STORAGE, session, storageGet, storageSet, apiJson, showError, clearError,
  formatMs, formatBytes, plural, splitPath, askForKey, releaseThumbs, setImage,
  showNoticeIn,
} from "./common.js";
import {
  isDuplicatesHash, dupHash, readDupParams, loadDuplicates, initDuplicates,
} from "./duplicates.js";
import {
  initFilters, readFilterHash, filterQuery, filterHash, activeWhere, refreshFacets,
  showFilterError,
} from "./filters.js";
import { resultCard } from "./results.js";

const els = {
  ...shared,
  dropzone: $("dropzone"), fileInput: $("file-input"), queryImage: $("query-image"),
  queryInfo: $("query-info"), queryKind: $("query-kind"), queryName: $("query-name"),
  queryDetail: $("query-detail"), k: $("k"), addButton: $("add-button"), notice: $("notice"),
  status: $("status"), empty: $("empty"), results: $("results"),
  resultsHeading: $("results-heading"), backButton: $("back-button"),
  imageCount: $("image-count"), modelName: $("model-name"),
  searchView: $("main"), resultsHead: $("results-head"),
  skipLink: document.querySelector(".skip-link"),
  tabSearch: $("tab-search"), tabDuplicates: $("tab-duplicates"),
  dupView: $("dup-view"), dupHead: $("dup-head"), dupHeading: $("dup-heading"),
  showScores: $("show-scores"),
};

const EMPTY_TEXT = els.empty.textContent;

const state = {
  query: null, // {kind: "file", file, previewUrl, addedId} or {kind: "similar", id, uri}
  lastFile: null, // the last file query, so Back from a similar search can return to it
  seq: 0, // bumps on every search; a response for an older one is dropped
  controller: null,
  // Thumbnails fetched with the API key (blob URLs, revoked on the next render) and the observer
  // that fetches them as they scroll into view: one pool for each view's list.
  thumbs: { urls: [], observer: null },
  // The query preview fetched with the API key, revoked when replaced.
  queryPreview: { urls: [], observer: null, single: true },
};

// -- messages -------------------------------------------------------------------------------

function showNotice(text, action) {
  showNoticeIn(els.notice, text, action);
}

function clearNotice() {
  els.notice.hidden = true;
  els.notice.replaceChildren();
  delete els.notice.dataset.imageId;
}

function setStatus(text, title = "") {
  els.status.textContent = text;
  els.status.title = title;
}

// -- API key --------------------------------------------------------------------------------

// With a key saved the form folds into a small button; a refused key opens it again.
function foldKeyForm() {
  els.keyForm.hidden = true;
  els.keyChange.hidden = false;
}

function saveKey(event) {
  event.preventDefault();
  const key = els.keyInput.value.trim();
  if (!key) return;
  session.apiKey = key;
  storageSet(STORAGE.key, key);
  els.keyInput.value = "";
  foldKeyForm();
  els.keyChange.focus();
  clearError();
  refreshStats();
  refreshFacets({ force: true });
  const retry = session.retry;
  session.retry = null;
  if (retry) retry();
}

function forgetKey() {
  session.apiKey = null;
  storageSet(STORAGE.key, null);
  els.keyForget.hidden = true;
  els.keyInput.focus();
}

// -- header ---------------------------------------------------------------------------------

async function refreshStats() {
  try {
    const stats = await apiJson("stats");
    els.imageCount.textContent = `${plural(stats.images, "image")} indexed`;
    els.imageCount.dataset.count = String(stats.images);
    els.modelName.textContent = stats.model ? ` · ${stats.model}` : "";
    if (stats.images === 0 && !state.query) {
      els.empty.textContent = "The collection is empty: index a folder with the " +
        "“lookalike index” command, or choose a photo here and press “Add to collection”.";
    }
  } catch (error) {
    els.imageCount.textContent = error.status === 401 ? "API key needed" : "unavailable";
    els.imageCount.dataset.count = "";
    showError(error.status === 401 ? error.message
      : `Could not read the collection's statistics: ${error.message}`);
  }
}

async function waitUntilReady() {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch("readyz");
      if (response.status !== 503) break;
      setStatus("The server is loading its model and index…");
    } catch {
      setStatus("Waiting for the server…");
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt, 4000)));
  }
  if (!state.query) setStatus("");
  await refreshStats();
}

// -- the query ------------------------------------------------------------------------------

function currentK() {
  return Number.parseInt(els.k.value, 10) || 24;
}

function showQuery(src, kind, name, detail, title = "") {
  document.body.classList.add("has-query");
  els.dropzone.classList.add("has-image");
  els.queryImage.hidden = false;
  els.queryImage.alt = `Query: ${name}`;
  els.queryImage.classList.remove("broken");
  // src: a URL to show, null to clear, undefined to keep what is shown.
  if (src) setImage(els.queryImage, src, { lazy: false, pool: state.queryPreview });
  else if (src === null) els.queryImage.removeAttribute("src");
  els.queryInfo.hidden = false;
  els.queryKind.textContent = kind;
  els.queryName.textContent = name;
  els.queryName.title = title || name;
  els.queryDetail.textContent = detail;
  els.queryDetail.title = detail;
  els.backButton.hidden = !(state.query?.kind === "similar" && state.lastFile);
}

function searchFile(file, label = file.name || "Untitled image") {
  // The same file again (a new k, Back): keep its preview and whether it was added.
  let query = state.lastFile;
  if (query?.file !== file) {
    if (query) URL.revokeObjectURL(query.previewUrl);
    query = { kind: "file", file, label, previewUrl: URL.createObjectURL(file), addedId: null };
  }
  state.query = state.lastFile = query;
  const { previewUrl, label: name } = query;
  const type = file.type.replace("image/", "").toUpperCase();
  const describe = () => [query.dims, type, formatBytes(file.size)].filter(Boolean).join(" · ");
  showQuery(previewUrl, "Photo", name, describe());
  els.queryImage.onload = () => {
    const { naturalWidth: w, naturalHeight: h } = els.queryImage;
    if (state.query !== query || !w) return;
    query.dims = `${w} × ${h}`;
    els.queryDetail.textContent = describe();
  };
  setAddButton(query.addedId == null ? "ready" : "added");
  clearNotice();
  const hash = searchHash("");
  if (location.hash !== hash) {
    history.pushState(null, "", hash || location.pathname + location.search);
  }
  runSearch(`search/visual?k=${currentK()}&${filterQuery()}`, () => {
    const form = new FormData();
    form.append("file", file, file.name || "pasted-image");
    return { method: "POST", body: form };
  });
}

function searchSimilar(id, { uri, thumbnailUrl, push = true } = {}) {
  state.query = { kind: "similar", id, uri };
  const [dir, name] = splitPath(uri ?? "");
  showQuery(thumbnailUrl ?? null, `Image #${id}`, name, dir, uri);
  setAddButton("indexed");
  clearNotice();
  const hash = searchHash(`similar/${id}`);
  if (push && location.hash !== hash) history.pushState(null, "", hash);
  const path = `search/similar/${encodeURIComponent(id)}?k=${currentK()}&${filterQuery()}`;
  runSearch(path, () => ({}), (body) => {
    const query = body.query;
    if (!query || state.query?.id !== id) return;
    state.query.uri = query.uri;
    const [qdir, qname] = splitPath(query.uri ?? "");
    const src = thumbnailUrl ? undefined : query.thumbnail_url; // keep a preview already shown
    showQuery(src, `Image #${id}`, qname, qdir, query.uri);
  });
}

// The search view's address: its route (similar/ID for an indexed image's look-alikes, none for
// a photo from this computer) and then the filter, ?where=… ("" when both are empty).
function searchHash(route = state.query?.kind === "similar" ? `similar/${state.query.id}` : "") {
  const filter = filterHash();
  return route || filter ? `#${route}${filter ? `?${filter}` : ""}` : "";
}

function onFilterChange() {
  const hash = searchHash();
  if (location.hash !== hash) {
    history.replaceState(null, "", hash || location.pathname + location.search);
  }
  rerun();
}

function rerun() {
  const query = state.query;
  if (query?.kind === "file") searchFile(query.file);
  else if (query?.kind === "similar") searchSimilar(query.id, { uri: query.uri, push: false });
}

async function runSearch(path, makeRequest, onBody) {
  showView("search");
  const seq = ++state.seq;
  state.controller?.abort();
  const controller = (state.controller = new AbortController());
  clearError();
  setBusy(true);
  setStatus("Searching…");
  const started = performance.now();
  try {
    const body = await apiJson(path, { ...makeRequest(), signal: controller.signal });
    if (seq !== state.seq) return;
    onBody?.(body);
    renderResults(body.results ?? []);
    const n = body.results?.length ?? 0;
    const took = body.took_ms ?? {};
    const total = took.total ?? performance.now() - started;
    const breakdown = Object.entries(took).filter(([stage]) => stage !== "total")
      .map(([stage, ms]) => `${stage} ${formatMs(ms)}`).join(" · ");
    setStatus(`${plural(n, "result")} in ${formatMs(total)}`, breakdown);
  } catch (error) {
    if (error.name === "AbortError" || seq !== state.seq) return;
    if (error.status === 401 || error.status === 403) session.retry = rerun;
    // A bad filter is told where it is typed, with the server's pointer to the problem.
    if (error.code === "invalid_filter") {
      renderResults(null);
      setStatus("No results: the filter has a mistake.");
      showFilterError(error.message);
      return;
    }
    // A file the server cannot read as an image cannot be added either.
    if (state.query?.kind === "file" && [400, 413, 415, 422].includes(error.status)) {
      setAddButton("unreadable");
    }
    renderResults(null);
    setStatus("");
    showError(error.message);
  } finally {
    if (seq === state.seq) setBusy(false);
  }
}

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  els.results.setAttribute("aria-busy", String(busy));
  if (busy && !els.results.querySelector(".result")) {
    els.empty.hidden = true;
    const n = Math.min(currentK(), 12);
    els.results.replaceChildren(...Array.from({ length: n }, () => {
      const li = document.createElement("li");
      li.className = "card skeleton";
      li.setAttribute("aria-hidden", "true");
      li.innerHTML = '<div class="thumb"></div><div class="meta"><span></span><span></span></div>';
      return li;
    }));
  }
}

// -- results --------------------------------------------------------------------------------

function renderResults(results) {
  releaseThumbs(state.thumbs);
  const open = (hit) => {
    searchSimilar(hit.image_id, { uri: hit.uri, thumbnailUrl: hit.thumbnail_url });
    const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
    window.scrollTo({ top: 0, behavior: still ? "auto" : "smooth" });
    els.resultsHeading.focus({ preventScroll: true });
  };
  els.results.replaceChildren(...(results ?? []).map((hit, i) =>
    resultCard(hit, String(i + 1), { pool: state.thumbs, open })));
  if (results && results.length === 0) {
    els.empty.textContent = activeWhere() ? "No images pass the filter."
      : "No look-alikes: the collection has no other images yet.";
    els.empty.hidden = false;
  } else {
    els.empty.textContent = EMPTY_TEXT;
    els.empty.hidden = results !== null || Boolean(state.query);
  }
}

// -- adding the query to the collection -----------------------------------------------------

function setAddButton(mode) {
  const button = els.addButton;
  const modes = {
    none: [true, "Add to collection", "Choose a photo first"],
    ready: [false, "Add to collection", "Index this photo so later searches can find it"],
    busy: [true, "Adding…", "Uploading and indexing"],
    added: [true, "Added ✓", "This photo is in the collection"],
    indexed: [true, "Add to collection", "This image is already in the collection"],
    unreadable: [true, "Add to collection", "The server cannot read this file as an image"],
  };
  const [disabled, text, title] = modes[mode];
  button.disabled = disabled;
  button.textContent = text;
  button.title = title;
}

async function addToCollection() {
  const query = state.query;
  if (query?.kind !== "file") return;
  setAddButton("busy");
  clearNotice();
  clearError();
  const form = new FormData();
  form.append("file", query.file, query.file.name || "pasted-image");
  try {
    const { image, created } = await apiJson("images", { method: "POST", body: form });
    if (state.query !== query) return;
    query.addedId = image.image_id;
    setAddButton("added");
    showNotice(created ? `Added to the collection as image #${image.image_id}.`
      : `Already in the collection as image #${image.image_id}.`,
    { label: "Show its look-alikes", run: () => searchSimilar(image.image_id,
      { uri: image.uri, thumbnailUrl: image.thumbnail_url }) });
    els.notice.dataset.imageId = String(image.image_id);
    refreshStats();
    refreshFacets({ force: true });
  } catch (error) {
    if (state.query !== query) return;
    if (error.status === 401 || error.status === 403) session.retry = addToCollection;
    setAddButton("ready");
    showError(`Could not add the photo: ${error.message}`);
  }
}

// -- getting an image in: picker, drop, paste -----------------------------------------------

function pickImage(files) {
  const list = Array.from(files ?? []);
  return list.find((file) => file.type.startsWith("image/")) ?? list[0] ?? null;
}

function openPicker() {
  els.fileInput.click();
}

function hasDroppable(event) {
  const types = Array.from(event.dataTransfer?.types ?? []);
  return types.includes("Files") || types.includes("text/uri-list");
}

let dragDepth = 0;

function endDrag() {
  dragDepth = 0;
  document.body.classList.remove("dragging");
}

function onDrop(event) {
  if (!hasDroppable(event)) return;
  event.preventDefault();
  endDrag();
  const file = pickImage(event.dataTransfer.files);
  if (file) {
    searchFile(file);
    return;
  }
  // A result thumbnail dragged onto the drop zone: search by that image.
  const dragged = event.dataTransfer.getData("text/uri-list");
  const match = /\/images\/(\d+)\/(?:thumbnail|file)/.exec(dragged);
  if (match) searchSimilar(Number(match[1]));
  else showError("That is not an image file. Drop a photo from your computer, or paste one.");
}

function onPaste(event) {
  const data = event.clipboardData;
  let file = pickImage(data?.files);
  if (!file) {
    const item = Array.from(data?.items ?? []).find((entry) => entry.kind === "file");
    file = item?.getAsFile() ?? null;
  }
  if (file) {
    event.preventDefault();
    searchFile(file, "Pasted image");
    return;
  }
  const target = event.target;
  const editing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
    target?.isContentEditable;
  if (!editing) {
    showError("The clipboard holds no image. Copy the image itself (not its address or file " +
      "name) and paste again.");
  }
}

function routeFromHash({ push = false } = {}) {
  if (isDuplicatesHash()) {
    showView("duplicates");
    readDupParams();
    loadDuplicates();
    return;
  }
  const fromDuplicates = !els.dupView.hidden;
  showView("search");
  const refiltered = readFilterHash();
  const match = /^#similar\/(\d+)(?:\?|$)/.exec(location.hash);
  // Back from the duplicates to the search shown before it: that search is still on the page.
  const shown = state.query?.kind === "similar" && state.query.id === Number(match?.[1]);
  if (match && !(fromDuplicates && shown && !refiltered)) {
    searchSimilar(Number(match[1]), { push });
  } else if (!match && state.query?.kind === "similar" && state.lastFile) {
    searchFile(state.lastFile.file);
  } else if (!match && refiltered && state.query?.kind === "file") {
    rerun();
  }
}

// -- views: search and duplicates -----------------------------------------------------------

// One page, two views; the error box is the same element, moved into the view that is shown.
function showView(view) {
  const duplicates = view === "duplicates";
  if (duplicates === !els.dupView.hidden) return;
  clearError();
  document.body.classList.toggle("view-duplicates", duplicates);
  els.searchView.hidden = duplicates;
  els.dupView.hidden = !duplicates;
  const [shown, other] = duplicates ? [els.tabDuplicates, els.tabSearch]
    : [els.tabSearch, els.tabDuplicates];
  shown.setAttribute("aria-current", "page");
  other.removeAttribute("aria-current");
  (duplicates ? els.dupHead : els.resultsHead).after(els.error);
  els.skipLink.textContent = duplicates ? "Skip to duplicates" : "Skip to results";
  document.title = duplicates ? "lookalike — duplicates and look-alikes"
    : "lookalike — find images that look like this one";
}

function openSearchView(event) {
  event.preventDefault();
  if (els.dupView.hidden) return;
  history.pushState(null, "", searchHash() || location.pathname + location.search);
  routeFromHash();
  els.resultsHeading.focus({ preventScroll: true });
}

function openDuplicatesView(event) {
  event.preventDefault();
  if (!els.dupView.hidden) {
    els.dupHeading.focus();
    return;
  }
  history.pushState(null, "", dupHash());
  routeFromHash();
  els.dupHeading.focus({ preventScroll: true });
}

// -- wiring ---------------------------------------------------------------------------------

function init() {
  const savedK = storageGet(STORAGE.k);
  if (savedK && [...els.k.options].some((option) => option.value === savedK)) els.k.value = savedK;
  if (session.apiKey) foldKeyForm();
  els.showScores.checked = storageGet(STORAGE.scores) === "1";
  document.body.classList.toggle("show-scores", els.showScores.checked);

  els.dropzone.addEventListener("click", openPicker);
  els.dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openPicker();
    }
  });
  els.fileInput.addEventListener("change", () => {
    const file = pickImage(els.fileInput.files);
    if (file) searchFile(file);
    els.fileInput.value = ""; // choosing the same file again still fires "change"
  });
  els.queryImage.addEventListener("error", () => els.queryImage.classList.add("broken"));

  window.addEventListener("dragenter", (event) => {
    if (!hasDroppable(event)) return;
    dragDepth += 1;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth -= 1;
    if (dragDepth <= 0) endDrag();
  });
  window.addEventListener("dragover", (event) => {
    if (!hasDroppable(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", onDrop);
  document.addEventListener("paste", onPaste);

  els.k.addEventListener("change", () => {
    storageSet(STORAGE.k, els.k.value);
    rerun();
  });
  els.addButton.addEventListener("click", addToCollection);
  els.showScores.addEventListener("change", () => {
    document.body.classList.toggle("show-scores", els.showScores.checked);
    storageSet(STORAGE.scores, els.showScores.checked ? "1" : null);
  });
  initFilters(onFilterChange);
  els.errorDismiss.addEventListener("click", clearError);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !els.error.hidden) clearError();
  });
  els.backButton.addEventListener("click", () => searchFile(state.lastFile.file));
  els.keyForm.addEventListener("submit", saveKey);
  els.keyForget.addEventListener("click", forgetKey);
  els.keyChange.addEventListener("click", askForKey);
  window.addEventListener("popstate", () => routeFromHash());

  els.tabSearch.addEventListener("click", openSearchView);
  els.tabDuplicates.addEventListener("click", openDuplicatesView);
  // The skip link goes to the list of the view shown, without changing the address.
  els.skipLink.addEventListener("click", (event) => {
    event.preventDefault();
    (els.dupView.hidden ? els.resultsHeading : els.dupHeading).focus();
  });
  initDuplicates();

  setAddButton("none");
  if (isDuplicatesHash()) showView("duplicates");
  waitUntilReady().then(() => routeFromHash());
}

init();
