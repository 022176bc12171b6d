// What both views of lookalike's web page share: talking to the server with the API key, the
// error box, formatting, and images fetched with the key. app.js and duplicates.js import this
// module and it imports neither, so the modules load in one direction, without cycles.

export const $ = (id) => document.getElementById(id);

// The parts of the page both views use; each view module spreads these into its own table.
export const els = {
  error: $("error"), errorMessage: $("error-message"), errorDismiss: $("error-dismiss"),
  keyForm: $("api-key-form"), keyInput: $("api-key"), keyForget: $("api-key-forget"),
  keyChange: $("api-key-change"),
};

export const STORAGE = { key: "lookalike.apiKey", k: "lookalike.k", scores: "lookalike.scores" };

// What both views read and change: the key sent with every request, and the request a 401 or
// 403 stopped, run again once a key is given.
export const session = {
  apiKey: storageGet(STORAGE.key),
  retry: null, // what to run again once an API key is given
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storageGet(name) {
  try { return localStorage.getItem(name); } catch { return null; }
}

export function storageSet(name, value) {
  try {
    if (value == null) localStorage.removeItem(name); else localStorage.setItem(name, value);
  } catch { /* private mode: the setting lasts for this page only */ }
}

// -- talking to the server ------------------------------------------------------------------

// Paths without a leading slash resolve against the page, so the app also works behind a prefix.
export async function api(path, { method = "GET", body, signal, headers: extra } = {}) {
  const headers = { ...extra };
  if (session.apiKey) headers["X-API-Key"] = session.apiKey;
  let response;
  try {
    response = await fetch(path, { method, body, headers, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network",
      "Could not reach the lookalike server. Check that it is still running, then try again.");
  }
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}`.trim() + ".";
  try {
    const payload = await response.json();
    if (payload?.error?.message) ({ code, message } = payload.error);
  } catch { /* not the JSON error shape (a proxy page, say): keep the status line */ }
  // 401: no key or a wrong one; 403: a read-only key used to change the collection.
  if (response.status === 401 || response.status === 403) {
    askForKey();
    message += " Enter the key in the “API key” box at the top of the page.";
  }
  throw new ApiError(response.status, code, message);
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// -- messages -------------------------------------------------------------------------------

export function showError(message) {
  els.errorMessage.textContent = message;
  els.error.hidden = false;
}

// A status line with an optional action button (e.g. Undo) after its text.
export function showNoticeIn(element, text, action) {
  element.replaceChildren(document.createTextNode(text));
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = action.label;
    button.addEventListener("click", action.run);
    element.append(" ", button);
  }
  element.hidden = false;
}

export function clearError() {
  els.error.hidden = true;
  els.errorMessage.textContent = "";
}

// -- formatting -----------------------------------------------------------------------------

export function formatMs(ms) {
  if (ms == null || Number.isNaN(ms)) return "";
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 10000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

export function splitPath(uri) {
  const cut = Math.max(uri.lastIndexOf("/"), uri.lastIndexOf("\\"));
  return cut < 0 ? ["", uri] : [uri.slice(0, cut + 1), uri.slice(cut + 1) || uri];
}

// -- API key --------------------------------------------------------------------------------

// A refused request opens the key form wherever it came from; app.js saves or forgets the key.
export function askForKey() {
  els.keyChange.hidden = true;
  els.keyForm.hidden = false;
  els.keyForget.hidden = !session.apiKey;
  if (document.activeElement !== els.keyInput) els.keyInput.focus({ preventScroll: true });
}

// -- images fetched with the API key --------------------------------------------------------

export function releaseThumbs(pool) {
  for (const url of pool.urls) URL.revokeObjectURL(url);
  pool.urls = [];
  pool.observer?.disconnect();
  pool.observer = null;
}

// Without a key a plain <img src> does the work (lazy, cached by the browser). With one, an <img>
// cannot send the header, so the image is fetched with it and shown from a blob URL, kept in
// ``pool`` until that list is rendered again. A pool marked ``single`` holds one image (the
// query preview): its blob URL is revoked when the next one replaces it.
export function setImage(img, url, { lazy, pool }) {
  if (!session.apiKey || url.startsWith("blob:")) {
    delete img.dataset.src; // a keyed fetch still under way must not replace this image
    if (lazy) img.loading = "lazy";
    if (lazy) img.srcset = `${withSize(url, 256)} 1x, ${withSize(url, 512)} 2x`;
    img.src = url;
    return;
  }
  img.dataset.src = lazy && window.devicePixelRatio > 1 ? withSize(url, 512) : url;
  if (!lazy || !("IntersectionObserver" in window)) {
    loadWithKey(img, pool);
    return;
  }
  pool.observer ??= new IntersectionObserver((entries, observer) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      loadWithKey(entry.target, pool);
    }
  }, { rootMargin: "400px" });
  pool.observer.observe(img);
}

// A lazily loaded thumbnail of ``image`` (a search hit or a group member: width, height,
// thumbnail_url) in ``holder``, which is marked "missing" if it fails to load.
export function thumbnail(holder, image, pool) {
  const img = document.createElement("img");
  img.alt = "";
  img.decoding = "async";
  if (image.width && image.height) {
    img.width = image.width;
    img.height = image.height;
  }
  img.addEventListener("error", () => holder.classList.add("missing"), { once: true });
  setImage(img, image.thumbnail_url, { lazy: true, pool });
  return img;
}

// Thumbnails come in a few sizes; sharp ones for high-density screens.
function withSize(url, size) {
  const full = new URL(url, document.baseURI);
  full.searchParams.set("size", String(size));
  return full.pathname + full.search;
}

async function loadWithKey(img, pool) {
  const url = img.dataset.src;
  try {
    const blob = await (await api(url)).blob();
    if (img.dataset.src !== url) return;
    const objectUrl = URL.createObjectURL(blob);
    if (pool.single) for (const old of pool.urls.splice(0)) URL.revokeObjectURL(old);
    pool.urls.push(objectUrl);
    img.src = objectUrl;
  } catch {
    img.dispatchEvent(new Event("error"));
  }
}

export async function openWithKey(event, url) {
  if (!session.apiKey) return;
  event.preventDefault();
  const tab = window.open("", "_blank"); // opened now, while the click still allows pop-ups
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    if (tab) tab.location.href = objectUrl; else window.location.href = objectUrl;
  } catch (error) {
    tab?.close();
    showError(`Could not open the original: ${error.message}`);
  }
}
