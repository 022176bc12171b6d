// The search view's filter: a `where` expression (the server's language, see the README's
// Filters), facets (a few fields' most common values, with how many images passing the filter
// have each: a click adds or removes `key = value`), at most N results per value of a field, and
// whether copies fold into the best match. The filter is kept in the address after the view's
// route (#similar/12?where=…&max_per=album%3D2&collapse=0); app.js owns the route, asks this
// module what to send and what to write there, and is told when the filter changes.

import { $, apiJson, plural, splitPath } from "./common.js";

const els = {
  form: $("where-form"), where: $("where"), clear: $("where-clear"), error: $("where-error"),
  collapse: $("collapse"), maxPerN: $("max-per-n"), maxPerKey: $("max-per-key"),
  facets: $("facets"),
};

// Fields read from files that make useful facets; metadata keys are offered before them. The
// other automatic fields (path, name, sizes, times, GPS) are nearly unique to each image.
const FILE_FACETS = ["folder", "format", "make", "model"];
const AUTOMATIC = new Set([...FILE_FACETS, "path", "name", "width", "height", "size",
  "modified", "added", "taken", "lat", "lon"]);
const MAX_CANDIDATES = 20; // what GET /facets takes in one request
const MAX_FACETS = 5;
const TOP = 8; // values shown per field

// The expression language's bare names and keywords (src/lookalike/where/tree.py; ASCII names are enough here).
const NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
const KEYWORDS = new Set(["and", "or", "not", "in", "between", "like", "exists", "true",
  "false"]);

const filter = { where: "", maxPer: "", collapse: true };
const facets = {
  keys: null, // the fields shown, chosen once from the whole collection
  shownFor: null, // the `where` the counts on the page are for
  canonical: "", // and that filter as the server writes it (`album = "trip"` for album=trip)
  seq: 0, // bumps on every load; a response for an older one is dropped
};
let changed = () => {};

// -- what app.js sends and keeps in the address ---------------------------------------------

// The search request's parameters; copies fold unless the box is cleared.
export function filterQuery() {
  const query = new URLSearchParams();
  if (filter.where) query.set("where", filter.where);
  if (filter.maxPer) query.set("max_per", filter.maxPer);
  query.set("collapse", String(filter.collapse));
  return query.toString();
}

// The address's part for the filter, defaults left out ("" for none).
export function filterHash() {
  const query = new URLSearchParams();
  if (filter.where) query.set("where", filter.where);
  if (filter.maxPer) query.set("max_per", filter.maxPer);
  if (!filter.collapse) query.set("collapse", "0");
  return query.toString();
}

export function activeWhere() {
  return filter.where;
}

// Take the filter from the address (after a "?" in the hash); says whether it changed.
export function readFilterHash() {
  const hash = location.hash;
  const cut = hash.indexOf("?");
  const query = new URLSearchParams(cut < 0 ? "" : hash.slice(cut + 1));
  const next = {
    where: (query.get("where") ?? "").trim(),
    maxPer: query.get("max_per") ?? "",
    collapse: !["0", "false"].includes(query.get("collapse")),
  };
  const differs = Object.keys(next).some((name) => next[name] !== filter[name]);
  Object.assign(filter, next);
  showFilter();
  if (differs) clearFilterError();
  refreshFacets();
  return differs;
}

// -- the form -------------------------------------------------------------------------------

function showFilter() {
  els.where.value = filter.where;
  els.clear.hidden = !filter.where;
  els.collapse.checked = filter.collapse;
  const cut = filter.maxPer.lastIndexOf("=");
  const key = cut < 0 ? "" : filter.maxPer.slice(0, cut);
  if (key) addKeyOption(key);
  els.maxPerKey.value = key;
  els.maxPerN.value = cut < 0 ? "" : filter.maxPer.slice(cut + 1);
}

function maxPerText() {
  const n = Number.parseInt(els.maxPerN.value, 10);
  return els.maxPerKey.value && n >= 1 ? `${els.maxPerKey.value}=${n}` : "";
}

// Read the controls; when the filter is new (or ``force``), load its facets and tell app.js.
function apply({ force = false } = {}) {
  const next = { where: els.where.value.trim(), maxPer: maxPerText(),
    collapse: els.collapse.checked };
  const differs = Object.keys(next).some((name) => next[name] !== filter[name]);
  if (!differs && !force) return;
  Object.assign(filter, next);
  els.clear.hidden = !filter.where;
  clearFilterError();
  refreshFacets({ force });
  changed();
}

function setWhere(text) {
  els.where.value = text;
  apply();
}

// The server's message, its expression and caret lines (indented by two spaces) kept aligned.
export function showFilterError(message) {
  const parts = [];
  let code = null;
  for (const line of message.split("\n")) {
    if (line.startsWith("  ")) {
      if (code) code.append("\n"); else parts.push(code = document.createElement("pre"));
      code.append(line.slice(2));
    } else {
      code = null;
      const text = document.createElement("p");
      text.textContent = line;
      parts.push(text);
    }
  }
  els.error.replaceChildren(...parts);
  els.error.hidden = false;
  els.where.setAttribute("aria-invalid", "true");
}

function clearFilterError() {
  els.error.hidden = true;
  els.error.replaceChildren();
  els.where.removeAttribute("aria-invalid");
}

// -- clauses --------------------------------------------------------------------------------

// `key = value` as the language writes it: the value quoted (so "2021" stays text) unless it
// is a number; an unusual key in backticks.
export function clauseFor(key, value) {
  const name = NAME.test(key) && !KEYWORDS.has(key.toLowerCase()) ? key : `\`${key}\``;
  const shown = typeof value === "number" ? String(value)
    : `"${String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  return `${name} = ${shown}`;
}

// Whether ``clause`` is one of the top-level "and" parts of ``where`` as a facet wrote it.
function hasClause(where, clause) {
  return where === clause || where.startsWith(`${clause} and `) ||
    where.endsWith(` and ${clause}`) || where.includes(` and ${clause} and `);
}

function withoutClause(where, clause) {
  if (where === clause) return "";
  if (where.startsWith(`${clause} and `)) return where.slice(clause.length + 5);
  if (where.endsWith(` and ${clause}`)) return where.slice(0, -(clause.length + 5));
  return where.replace(` and ${clause} and `, " and ");
}

function toggleClause(clause) {
  const where = filter.where;
  // The server's form of the filter finds the clause however it was typed.
  const written = facets.shownFor === where ? facets.canonical : where;
  if (hasClause(written, clause)) setWhere(withoutClause(written, clause));
  else if (!where) setWhere(clause);
  // "and" binds tighter than "or": keep the whole filter as it was, then narrow it.
  else setWhere(/\bor\b/i.test(where) ? `(${where}) and ${clause}` : `${where} and ${clause}`);
}

// -- facets ---------------------------------------------------------------------------------

function addKeyOption(key) {
  if ([...els.maxPerKey.options].some((option) => option.value === key)) return;
  els.maxPerKey.append(new Option(key, key));
}

// A field is worth a facet when its values repeat. One whose commonest value is on a single
// image (a title, an id) narrows to one image a click; one value on every image narrows nothing.
// Returns the keys and, for the whole collection, their facets.
async function chooseKeys() {
  const { fields } = await apiJson("fields");
  for (const { key } of fields) addKeyOption(key);
  const images = new Map(fields.map((field) => [field.key, field.images]));
  const candidates = [
    ...fields.map((field) => field.key).filter((key) => !AUTOMATIC.has(key)),
    ...FILE_FACETS.filter((key) => images.has(key)),
  ].slice(0, MAX_CANDIDATES);
  if (!candidates.length) return [[], {}];
  const query = new URLSearchParams({ keys: candidates.join(","), top: String(TOP) });
  const found = (await apiJson(`facets?${query}`)).facets;
  const keys = candidates.filter((key) => {
    const values = found[key] ?? [];
    return values.length > 0 && values[0].images > 1 &&
      !(values.length === 1 && values[0].images === images.get(key));
  }).slice(0, MAX_FACETS);
  return [keys, found];
}

// Counts for the filter shown; a no-op when they are already on the page (unless ``force``).
export async function refreshFacets({ force = false } = {}) {
  if (!force && facets.keys && facets.shownFor === filter.where) return;
  const seq = ++facets.seq;
  const where = filter.where;
  els.facets.setAttribute("aria-busy", "true");
  try {
    let body = null;
    if (!facets.keys) {
      const [keys, found] = await chooseKeys();
      if (seq !== facets.seq) return;
      facets.keys = keys;
      if (!where) body = { facets: found, where: null };
    }
    if (!body) {
      // With no facet to show, the request still checks the filter (any field name will do).
      const keys = facets.keys.length ? facets.keys : ["format"];
      const query = new URLSearchParams({ keys: keys.join(","), top: String(TOP) });
      if (where) query.set("where", where);
      body = await apiJson(`facets?${query}`);
    }
    if (seq !== facets.seq) return;
    facets.shownFor = where;
    facets.canonical = body.where ?? "";
    renderFacets(body.facets);
  } catch (error) {
    if (seq !== facets.seq) return;
    facets.shownFor = null;
    if (error.code === "invalid_filter") {
      showFilterError(error.message);
      return;
    }
    const problem = document.createElement("p");
    problem.className = "facets-problem";
    problem.textContent = `Could not count the fields' values: ${error.message}`;
    els.facets.replaceChildren(problem);
    els.facets.hidden = false;
  } finally {
    if (seq === facets.seq) els.facets.setAttribute("aria-busy", "false");
  }
}

function renderFacets(found) {
  els.facets.replaceChildren(...facets.keys.map((key) => facetGroup(key, found[key] ?? [])));
  els.facets.hidden = facets.keys.length === 0;
}

function facetGroup(key, values) {
  const group = document.createElement("div");
  group.className = "facet";
  group.dataset.key = key;
  const name = document.createElement("span");
  name.className = "facet-key";
  name.id = `facet-${facets.keys.indexOf(key)}`;
  name.textContent = key;
  const list = document.createElement("ul");
  list.className = "facet-values";
  list.setAttribute("aria-labelledby", name.id);
  for (const { value, images } of values) {
    const clause = clauseFor(key, value);
    const on = hasClause(facets.canonical, clause);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "facet-value";
    button.setAttribute("aria-pressed", String(on));
    button.title = on ? `Remove ${clause} from the filter`
      : `Only images with ${clause}: ${plural(images, "image")}`;
    const text = document.createElement("span");
    text.className = "facet-text";
    // A folder is known by its last part; the whole path is in the title.
    text.textContent = key === "folder" ? splitPath(String(value))[1] : String(value);
    const count = document.createElement("span");
    count.className = "facet-count";
    count.textContent = images.toLocaleString();
    button.append(text, count);
    button.addEventListener("click", () => toggleClause(clause));
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  if (!values.length) {
    const none = document.createElement("li");
    none.className = "facet-none";
    none.textContent = "none here";
    list.append(none);
  }
  group.append(name, list);
  return group;
}

// -- wiring ---------------------------------------------------------------------------------

// ``onChange``: the filter was changed on the page (app.js rewrites the address and searches).
export function initFilters(onChange) {
  changed = onChange;
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply({ force: true });
  });
  els.clear.addEventListener("click", () => {
    setWhere("");
    els.where.focus();
  });
  els.collapse.addEventListener("change", () => apply());
  els.maxPerKey.addEventListener("change", () => apply());
  els.maxPerN.addEventListener("change", () => apply());
}
