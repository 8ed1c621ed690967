// PutPlace web console: fills the server-rendered page shells from the JSON API.
//
// The key lives in sessionStorage (this tab, until it closes) and travels only in the
// X-API-Key header of fetch() calls: never in a URL, a cookie or the page. The API decides
// what each key may see; a page only hides what /whoami says the key cannot use.
// The DOM is built with textContent, never innerHTML: names and paths are untrusted.

const KEY = "putplace.key";
// The key's name and scopes (not secret), kept beside it: a key's scopes never change, so
// pages need not ask again; a revoked key is still noticed by the first 401.
const WHO = "putplace.who";
const PREFIX = document.body.dataset.prefix || "/ui";
const PAGE_SIZE = 50;
const LIVE_SECONDS = 5;
const PREVIEW_TEXT_BYTES = 64 * 1024;
const PREVIEW_IMAGE_BYTES = 10 * 1024 * 1024;

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function key() {
  return sessionStorage.getItem(KEY);
}

function signOut(reason) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(WHO);
  if (reason) sessionStorage.setItem("putplace.reason", reason);
  location.assign(`${PREFIX}/signin`);
}

async function request(path, { params, method = "GET", body, headers = {} } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, headers: { "X-API-Key": key() || "", ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  if (response.status === 401 && document.body.dataset.page !== "signin") {
    signOut("The key was refused (unknown, revoked or expired): sign in again.");
  }
  if (!response.ok && response.status !== 206) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const payload = await response.json();
      if (typeof payload.detail === "string") detail = payload.detail;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function getJson(path, params) {
  return (await request(path, { params })).json();
}

// -- DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

function $(selector) {
  return document.querySelector(selector);
}

function status(message, isError = false) {
  const el = $("#status");
  el.textContent = message || "";
  el.classList.toggle("error", isError);
}

function link(page, params, text) {
  const url = new URL(`${PREFIX}${page}`, location.origin);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  return h("a", { href: url.pathname + url.search, text });
}

// A name that is not UTF-8 is stored escaped (\xNN per byte, see the README's "File names"):
// the flag goes with it everywhere, or the literal text "\xe9" and the byte 0xE9 would be one file.
function fileLink(host, path, escaped, text) {
  return link("/file", escaped ? { host, path, escaped: "1" } : { host, path }, text ?? path);
}

function fileName(record) {
  return record.filepath_escaped ? `${record.filepath} (escaped: not UTF-8)` : record.filepath;
}

function td(content, className) {
  const cell = h("td", className ? { class: className } : {});
  cell.append(content ?? "");
  return cell;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function when(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function timeCell(value) {
  return h("time", { datetime: new Date(typeof value === "number" ? value * 1000 : value).toISOString(), text: when(value) });
}

function mode(m) {
  const types = { 0o040000: "d", 0o120000: "l", 0o100000: "-", 0o020000: "c", 0o060000: "b", 0o010000: "p", 0o140000: "s" };
  const kind = types[m & 0o170000] ?? "-";
  const bits = "rwxrwxrwx".split("").map((ch, i) => (m & (1 << (8 - i)) ? ch : "-"));
  return kind + bits.join("");
}

function shaCell(sha) {
  return h("code", { class: "sha", title: sha, text: `${sha.slice(0, 12)}…` });
}

function moreButton(selector, next, load) {
  const button = $(selector);
  button.hidden = !next;
  button.onclick = next ? () => load(next) : null;
}

function report(error) {
  if (error instanceof ApiError && error.status === 401) return; // already signing out
  status(error instanceof ApiError ? error.message : `The API did not answer: ${error.message}`, true);
}

// -- pages -----------------------------------------------------------------------------------

async function totals() {
  const stats = await getJson("/stats");
  const totals = $("#totals");
  const rows = [
    ["Nodes", stats.hosts.toLocaleString("en")],
    ["Files", stats.files.toLocaleString("en")],
    ["Stored", bytes(stats.stored_bytes)],
    ["Logical", bytes(stats.logical_bytes)],
    ["Dedup ratio", `${stats.dedup_ratio.toFixed(2)}×`],
  ];
  totals.replaceChildren(...rows.flatMap(([name, value]) => [h("div", {}, h("dt", { text: name }), h("dd", { text: value }))]));
}

async function overview() {
  const nodes = $("#nodes tbody");
  async function loadNodes(cursor) {
    const page = await getJson("/nodes", { cursor, limit: PAGE_SIZE });
    for (const node of page.items) {
      nodes.append(h("tr", {}, td(link("/browse", { host: node.hostname, dir: "/" }, node.hostname))));
    }
    moreButton("#nodes-more", page.next_cursor, (next) => loadNodes(next).catch(report));
  }

  const recent = $("#recent tbody");
  let newest = null; // [updated_at, id] of the newest row shown
  function recentRow(f) {
    return h("tr", { "data-id": f._id }, td(timeCell(f.updated_at)), td(f.hostname), td(fileLink(f.hostname, f.filepath, f.filepath_escaped)), td(bytes(f.file_size), "num"), td(shaCell(f.sha256)));
  }
  async function loadRecent(cursor) {
    const page = await getJson("/files/recent", { cursor, limit: PAGE_SIZE });
    if (!cursor && page.items.length) newest = [page.items[0].updated_at, page.items[0]._id];
    recent.append(...page.items.map(recentRow));
    moreButton("#recent-more", page.next_cursor, (next) => loadRecent(next).catch(report));
  }
  function isNewer(f) {
    if (!newest) return true;
    const [at, id] = newest;
    const a = Date.parse(f.updated_at);
    const b = Date.parse(at);
    return a > b || (a === b && f._id > id);
  }
  async function poll() {
    if (!$("#live").checked || document.hidden) return;
    const page = await getJson("/files/recent", { limit: PAGE_SIZE });
    const fresh = page.items.filter(isNewer);
    if (!fresh.length) return;
    newest = [fresh[0].updated_at, fresh[0]._id];
    // a file changed again moves to the top: drop its older row
    for (const f of fresh) recent.querySelector(`tr[data-id="${CSS.escape(f._id)}"]`)?.remove();
    recent.prepend(...fresh.map(recentRow));
    status(`${fresh.length} new change${fresh.length === 1 ? "" : "s"}`);
  }
  // The totals sum the whole catalogue (a scan: 0.4-0.9 s with 1,000,000 records on SQLite),
  // so they are asked for once the tables are on screen: asked together, the tables' queries
  // (their keys' lookups too) would wait behind that scan on SQLite's one thread.
  await Promise.all([loadNodes(), loadRecent()]);
  await totals();
  setInterval(() => poll().catch(report), LIVE_SECONDS * 1000);
}

function crumbs(host, dir, lastIsFile = false) {
  const nav = $("#crumbs");
  const parts = dir.split("/").filter(Boolean);
  const items = [h("li", {}, link("/browse", { host, dir: "/" }, host))];
  let path = "/";
  parts.forEach((part, i) => {
    path += i === parts.length - 1 && lastIsFile ? part : `${part}/`;
    const last = i === parts.length - 1;
    items.push(h("li", {}, last ? h("span", { "aria-current": "page", text: part }) : link("/browse", { host, dir: path }, part)));
  });
  nav.replaceChildren(h("ol", {}, ...items));
}

async function browse() {
  const params = new URLSearchParams(location.search);
  const host = params.get("host");
  const dir = params.get("dir") || "/";
  if (!host) {
    status("No node chosen: pick one on the overview.", true);
    return;
  }
  document.title = `${host}:${dir} · PutPlace`;
  $("h1").textContent = `${host}:${dir}`;
  crumbs(host, dir);
  const body = $("#tree tbody");
  async function load(cursor) {
    const page = await getJson("/files/tree", { hostname: host, dir, cursor, limit: PAGE_SIZE });
    for (const entry of page.items) {
      if (entry.kind === "dir") {
        body.append(h("tr", { class: "dir" }, td(link("/browse", { host, dir: entry.path }, `${entry.name}/`)), td(""), td(""), td(""), td(""), td("")));
      } else {
        const f = entry.file;
        body.append(
          h("tr", {}, td(fileLink(host, f.filepath, f.filepath_escaped, entry.name)), td(bytes(f.file_size), "num"), td(h("code", { text: mode(f.file_mode) })), td(`${f.file_uid}:${f.file_gid}`), td(timeCell(f.file_mtime)), td(shaCell(f.sha256))),
        );
      }
    }
    if (!cursor && !page.items.length) status("This directory holds no catalogued files.");
    moreButton("#tree-more", page.next_cursor, (next) => load(next).catch(report));
  }
  await load();
}

async function download(record) {
  const response = await request(`/content/${record.sha256}`);
  const url = URL.createObjectURL(await response.blob());
  const a = h("a", { href: url, download: record.filepath.split("/").pop() || record.sha256 });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function preview(record) {
  const area = $("#preview-area");
  const head = await request(`/content/${record.sha256}`, { headers: { Range: `bytes=0-${PREVIEW_TEXT_BYTES - 1}` } });
  const type = (head.headers.get("Content-Type") || "").split(";")[0].trim();
  if (type.startsWith("image/") && type !== "image/svg+xml") {
    if (record.file_size > PREVIEW_IMAGE_BYTES) {
      area.replaceChildren(h("p", { text: `An image of ${bytes(record.file_size)}: download it to view it.` }));
      return;
    }
    const whole = await request(`/content/${record.sha256}`);
    const url = URL.createObjectURL(await whole.blob());
    area.replaceChildren(h("img", { src: url, alt: `Preview of ${record.filepath}`, class: "preview" }));
  } else if (type.startsWith("text/") || ["application/json", "application/xml", "application/x-yaml", "image/svg+xml"].includes(type)) {
    const text = new TextDecoder("utf-8", { fatal: false }).decode(await head.arrayBuffer());
    const cut = record.file_size > PREVIEW_TEXT_BYTES ? `\n… (first ${bytes(PREVIEW_TEXT_BYTES)} of ${bytes(record.file_size)})` : "";
    area.replaceChildren(h("pre", { class: "preview", tabindex: "0", "aria-label": `Text of ${record.filepath}`, text: text + cut }));
  } else {
    area.replaceChildren(h("p", { text: `No preview for ${type || "this content type"}: download it instead.` }));
  }
}

async function file() {
  const params = new URLSearchParams(location.search);
  const host = params.get("host");
  const path = params.get("path");
  const escaped = params.get("escaped") === "1";
  if (!host || !path) {
    status("No file chosen.", true);
    return;
  }
  document.title = `${path} · PutPlace`;
  $("h1").textContent = path;
  crumbs(host, path, true);
  const name = { hostname: host, filepath: path, filepath_escaped: escaped || undefined };
  const record = await getJson("/files/current", name);
  const fields = [
    ["Node", record.hostname],
    ["Path", fileName(record)],
    ["Size", `${bytes(record.file_size)} (${record.file_size.toLocaleString("en")} bytes)`],
    ["Mode", mode(record.file_mode)],
    ["Owner", `uid ${record.file_uid}, gid ${record.file_gid}`],
    ["Modified", when(record.file_mtime)],
    ["SHA-256", record.sha256],
    ["Content", record.has_file_content ? `stored ${when(record.file_uploaded_at)}` : "not uploaded (metadata only)"],
    ["Recorded", when(record.updated_at)],
  ];
  $("#record").replaceChildren(...fields.map(([name, value]) => h("div", {}, h("dt", { text: name }), h("dd", { text: value }))));
  for (const [id, action] of [["#download", download], ["#preview", preview]]) {
    const button = $(id);
    button.disabled = !record.has_file_content;
    button.onclick = () => action(record).catch(report);
  }

  const same = $("#same tbody");
  async function loadSame(cursor) {
    const page = await getJson("/files", { sha256: record.sha256, cursor, limit: PAGE_SIZE });
    for (const f of page.items) {
      const here = f.hostname === host && f.filepath === path && Boolean(f.filepath_escaped) === escaped;
      same.append(h("tr", {}, td(f.hostname), td(here ? h("span", { text: `${fileName(f)} (this file)` }) : fileLink(f.hostname, f.filepath, f.filepath_escaped, fileName(f)))));
    }
    moreButton("#same-more", page.next_cursor, (next) => loadSame(next).catch(report));
  }
  const history = $("#history tbody");
  async function loadHistory(before) {
    const page = await getJson("/files/history", { ...name, before, limit: PAGE_SIZE });
    for (const v of page.items) {
      history.append(h("tr", {}, td(timeCell(v.superseded_at)), td(v.event), td(bytes(v.file_size), "num"), td(timeCell(v.file_mtime)), td(shaCell(v.sha256))));
    }
    if (!before && !page.items.length) history.append(h("tr", {}, h("td", { colspan: "5", text: "No earlier versions." })));
    moreButton("#history-more", page.next_cursor, (next) => loadHistory(next).catch(report));
  }
  await Promise.all([loadSame(), loadHistory()]);
}

async function search() {
  const form = $("#search-form");
  const q = $("#search-q");
  const host = $("#search-host");
  const body = $("#results tbody");
  const params = new URLSearchParams(location.search);
  q.value = params.get("q") || "";
  host.value = params.get("host") || "";

  async function load(term, node, cursor) {
    const isSha = /^[0-9a-f]{64}$/.test(term);
    const page = isSha
      ? await getJson("/files", { sha256: term, hostname: node, cursor, limit: PAGE_SIZE })
      : await getJson("/files/search", { q: term, hostname: node, cursor, limit: PAGE_SIZE });
    for (const f of page.items) {
      body.append(h("tr", {}, td(f.hostname), td(fileLink(f.hostname, f.filepath, f.filepath_escaped)), td(bytes(f.file_size), "num"), td(timeCell(f.file_mtime)), td(shaCell(f.sha256))));
    }
    if (!cursor) status(page.items.length ? "" : "No file matches.");
    moreButton("#results-more", page.next_cursor, (next) => load(term, node, next).catch(report));
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const term = q.value.trim();
    if (!term) return;
    // the search itself may go in the address (so it can be shared); the key never does
    const url = new URL(location.href);
    url.search = new URLSearchParams(host.value.trim() ? { q: term, host: host.value.trim() } : { q: term }).toString();
    history.replaceState(null, "", url);
    body.replaceChildren();
    status("Searching…");
    load(term, host.value.trim()).catch(report);
  });
  if (q.value) form.requestSubmit();
}

async function keys() {
  const body = $("#keys tbody");
  async function load() {
    const list = await getJson("/api_keys");
    body.replaceChildren(
      ...list.map((k) => {
        const state = k.is_active ? "active" : `revoked ${when(k.revoked_at)}`;
        const revoke = k.is_active
          ? h("button", {
              type: "button",
              "aria-label": `Revoke key ${k.name} (${k.key_prefix})`,
              text: "Revoke",
              onclick: () => {
                if (!confirm(`Revoke the key ${k.name} (${k.key_prefix}…)? Requests with it will be refused.`)) return;
                request(`/api_keys/${k._id}/revoke`, { method: "PUT" })
                  .then(() => status(`Key ${k.name} revoked.`))
                  .then(load)
                  .catch(report);
              },
            })
          : "";
        const rate = k.rate_limit ? `${k.rate_limit}/s${k.rate_limit_burst ? `, burst ${k.rate_limit_burst}` : ""}` : "default";
        return h("tr", { "data-key-id": k._id }, td(k.name), td(h("code", { text: `${k.key_prefix}…` })), td(k.scopes.join(", ")), td(rate), td(timeCell(k.created_at)), td(k.last_used_at ? timeCell(k.last_used_at) : "never"), td(state), td(revoke));
      }),
    );
  }
  const form = $("#key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const error = $("#key-error");
    error.textContent = "";
    const scopes = [...form.querySelectorAll("fieldset input:checked")].map((box) => box.value);
    const payload = { name: $("#key-name").value.trim(), scopes };
    const description = $("#key-description").value.trim();
    if (description) payload.description = description;
    if ($("#key-rate").value) payload.rate_limit = Number($("#key-rate").value);
    if ($("#key-burst").value) payload.rate_limit_burst = Number($("#key-burst").value);
    if (!payload.name || !scopes.length) {
      error.textContent = "A key needs a name and at least one scope.";
      return;
    }
    request("/api_keys", { method: "POST", body: payload })
      .then((r) => r.json())
      .then((created) => {
        $("#new-key-value").value = created.api_key;
        $("#new-key").hidden = false;
        $("#new-key-value").focus();
        $("#new-key-value").select();
        form.reset();
        return load();
      })
      .catch((e) => {
        error.textContent = e instanceof ApiError && e.status === 422 ? "The server refused these values (check the numbers)." : e.message;
      });
  });
  $("#new-key-copy").addEventListener("click", () => navigator.clipboard?.writeText($("#new-key-value").value).then(() => status("Copied.")));
  $("#new-key-dismiss").addEventListener("click", () => {
    $("#new-key-value").value = "";
    $("#new-key").hidden = true;
  });
  await load();
}

function signin() {
  const reason = sessionStorage.getItem("putplace.reason");
  sessionStorage.removeItem("putplace.reason");
  const error = $("#signin-error");
  if (reason) error.textContent = reason;
  const input = $("#signin-key");
  input.focus();
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const candidate = input.value.trim();
    if (!candidate) {
      error.textContent = "Enter an API key.";
      return;
    }
    sessionStorage.setItem(KEY, candidate);
    try {
      const who = await getJson("/whoami");
      sessionStorage.setItem(WHO, JSON.stringify(who));
      input.value = "";
      location.assign(canRead(who.scopes) ? PREFIX : who.scopes.includes("admin") ? `${PREFIX}/keys` : PREFIX);
    } catch (e) {
      sessionStorage.removeItem(KEY);
      sessionStorage.removeItem(WHO);
      error.textContent = e instanceof ApiError && e.status === 401 ? "This key is unknown, revoked or expired." : e.message;
    }
  });
}

function canRead(scopes) {
  return scopes.includes("read") || scopes.includes("admin");
}

const PAGES = { overview, browse, file, search, keys };
const NEEDS = { overview: "read", browse: "read", file: "read", search: "read", keys: "admin" };

async function main() {
  const page = document.body.dataset.page;
  if (page === "signin") {
    signin();
    return;
  }
  if (!key()) {
    location.replace(`${PREFIX}/signin`);
    return;
  }
  $("#signout").addEventListener("click", () => signOut());
  const cached = sessionStorage.getItem(WHO);
  const who = cached ? JSON.parse(cached) : await getJson("/whoami");
  sessionStorage.setItem(WHO, JSON.stringify(who));
  const scopes = who.scopes;
  const allowed = { read: canRead(scopes), admin: scopes.includes("admin") };
  document.querySelectorAll("[data-needs]").forEach((el) => {
    el.hidden = !allowed[el.dataset.needs];
  });
  $("[data-signed-in]").hidden = false;
  $("#who").textContent = `${who.name} (${scopes.join(", ")})`;
  if (!allowed[NEEDS[page]]) {
    $("#content").replaceChildren();
    status(`This key (scopes: ${scopes.join(", ")}) may not see this page: it needs the '${NEEDS[page]}' scope.`, true);
    return;
  }
  await PAGES[page]();
}

main().catch(report);
