// @ts-check
// chatkit-broker test page: pick a workflow, mount <openai-chatkit> through the front-end kit,
// watch what happens. When ChatKit cannot load, a custom backend gets the protocol console.
// Plain ES module, no build step, strict CSP (no inline script or style, textContent only).
//
// All the page knows lives in `state`; render() draws the DOM from it and never reads it back.
// The live objects behind it (the kit's api, the element, the abort controller) are in `live`.

import {
  BrokerError,
  connectChatKit,
  createChatKitApi,
  describeApi,
  errorFromResponse,
  signOut,
} from "./chatkit-broker.js";
import { ProtocolClient, emptyTranscript } from "./chatkit-protocol.js";

const TOKEN_KEY = "chatkit-broker.token";
const CHATKIT_TAG = "openai-chatkit";
const READY_TIMEOUT_MS = 30000;
// How long the ChatKit script may take to define <openai-chatkit>; `?chatkit_timeout_ms=` overrides it.
const SCRIPT_TIMEOUT_MS = positive(new URLSearchParams(location.search).get("chatkit_timeout_ms")) ?? 15000;
const LOG_KEEP = 1000;
const STATUS_TEXT = {
  idle: "idle",
  fetching: "fetching secret…",
  loading: "loading ChatKit…",
  ready: "ready",
  // ChatKit's script could not load, but a custom backend still answers through the console:
  // a working state with a limit (amber, explained), not an error
  console: "working — through the protocol console",
  error: "error",
};

/**
 * @typedef {{name: string, label?: string | null, id?: string | null, kind?: string}} Workflow
 * @typedef {{mode: string, auth_required: boolean, chatkit_js_url: string}} Config
 * @typedef {{id: number, time: string, kind: string, text: string, level: "info" | "warn" | "error", detail?: string}} LogEntry
 * @typedef {{reason: string, detail?: string}} Problem
 * @typedef {import("./chatkit-protocol.js").Transcript} Transcript
 * @typedef {import("./chatkit-protocol.js").AttachmentRef} AttachmentRef
 * @typedef {{key: string, id: string, name: string, mimeType: string, previewUrl: string | null, state: "uploading" | "ready" | "failed", error: string | null}} PendingFile
 */

const state = {
  /** @type {Config | null} */
  config: null,
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  /** @type {Workflow[] | null} null: not loaded; the note says why */
  workflows: /** @type {Workflow[] | null} */ (null),
  workflowsNote: "Loading…",
  /** @type {string | null} */
  selected: null,
  /** @type {{name: keyof typeof STATUS_TEXT} & Partial<Problem>} */
  status: { name: "idle" },
  /** @type {"retry-config" | "retry-workflows" | "retry-mount" | null} */
  retry: null,
  /** @type {ReturnType<typeof describeApi>} */
  backend: null,
  /** @type {"placeholder" | "chatkit" | "console"} */
  view: "placeholder",
  console: {
    transcript: emptyTranscript(),
    /** @type {{id: string, title: string}[] | null} */
    threads: null,
    busy: false,
    /** @type {Problem | null} */
    error: null,
    /** @type {string | null} the text of the turn that failed, for Retry */
    failedText: null,
    /** @type {string[]} the attachments that turn carried */
    failedAttachments: [],
    /** @type {PendingFile[]} files attached to the next message (uploading, ready or failed) */
    pending: [],
  },
  /** @type {LogEntry[]} */
  log: [],
  logEpoch: 0, // bumped when the log is cleared
  logFollows: true,
};

const live = {
  generation: 0,
  /** @type {AbortController | null} */
  abort: null,
  /** @type {import("./chatkit-broker.js").ChatKitApi | null} */
  api: null,
  /** @type {HTMLElement | null} */
  element: null,
  /** @type {import("./chatkit-broker.js").ChatKitConnection | null} */
  connection: null,
  /** @type {ProtocolClient | null} */
  client: null,
  /** @type {Promise<void> | null} */
  script: null,
  /** @type {WeakSet<object>} errors already in the log (the kit reported them) */
  logged: new WeakSet(),
  logId: 0,
};

/** @param {string | null} value */
function positive(value) {
  const n = Number(value);
  return value && Number.isFinite(n) && n > 0 ? n : null;
}

/** @param {string} id @returns {HTMLElement} */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el;
}

/**
 * A DOM element with text, attributes and children; never HTML.
 * @param {string} tag
 * @param {{class?: string, text?: string, data?: Record<string, string>, attrs?: Record<string, string>, on?: Record<string, EventListener>}} [props]
 * @param {(Node | string | null | false | undefined)[]} children
 */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  if (props.class) el.className = props.class;
  if (props.text !== undefined) el.textContent = props.text;
  for (const [k, v] of Object.entries(props.data ?? {})) el.dataset[k] = v;
  for (const [k, v] of Object.entries(props.attrs ?? {})) el.setAttribute(k, v);
  for (const [k, v] of Object.entries(props.on ?? {})) el.addEventListener(k, v);
  for (const child of children) if (child) el.append(child);
  return el;
}

// ---------------------------------------------------------------- state changes

let scheduled = false;

/** Applies a change to the state and schedules one render for all changes of this turn. */
function update(/** @type {() => void} */ change = () => {}) {
  change();
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      render();
    });
  }
}

function timestamp() {
  const d = new Date();
  const pad = (/** @type {number} */ n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/**
 * @param {string} kind
 * @param {string} text
 * @param {{level?: LogEntry["level"], detail?: unknown}} [options]
 */
function log(kind, text, { level = "info", detail } = {}) {
  /** @type {LogEntry} */
  const entry = { id: ++live.logId, time: timestamp(), kind, text, level };
  if (detail !== undefined) entry.detail = describe(detail);
  update(() => {
    state.log.push(entry);
    if (state.log.length > LOG_KEEP) state.log.splice(0, state.log.length - LOG_KEEP);
  });
  const line = `[chatkit-broker] ${entry.time} ${kind} ${text}`;
  const out = level === "error" ? console.error : level === "warn" ? console.warn : console.info;
  if (entry.detail === undefined) out(line);
  else out(line, entry.detail);
}

/** @param {unknown} value */
function describe(value) {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  let text;
  try {
    text = JSON.stringify(value, (_key, v) => (v instanceof Error ? `${v.name}: ${v.message}` : v));
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  // a signed upload or preview URL is a capability: its signature stays out of the log
  text = text.replace(/([?&]t=)[A-Za-z0-9._~%-]+/g, "$1…");
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

/** @param {string} url */
function displayPath(url) {
  const u = new URL(url, location.href);
  return u.origin === location.origin ? u.pathname + u.search : u.href;
}

/** @param {keyof typeof STATUS_TEXT} name @param {Partial<Problem>} [problem] */
function setStatus(name, problem = {}) {
  update(() => {
    state.status = { name, ...problem };
  });
}

// ---------------------------------------------------------------- errors in words

/** Words a person can act on, for a failure. @param {unknown} err */
function reasonFor(err) {
  if (!(err instanceof BrokerError)) return err instanceof Error ? err.message : String(err);
  // the kit's own words name what could not be reached (the broker, or a backend behind it)
  if (err.code === "network_error" && err.status === 0) return err.message;
  switch (err.status) {
    case 401:
      return state.token
        ? "token expired or invalid — paste a new one"
        : "no token — paste one (chatkit-broker token --sub me)";
    case 403:
      return err.code === "workflow_not_allowed" ? "not allowed for this workflow" : err.message;
    case 429:
      return `rate limited — try again${err.retryAfterMs !== null ? ` in ${Math.ceil(err.retryAfterMs / 1000)} s` : " later"}`;
    default:
      return err.message;
  }
}

/** The facts behind the words: status, code, the message if not shown, the request id. @param {unknown} err */
function detailFor(err) {
  if (!(err instanceof BrokerError) || (err.status === 0 && !err.requestId)) return undefined;
  const parts = err.status ? [`HTTP ${err.status}`] : [];
  if (err.code) parts.push(err.code);
  if (reasonFor(err) !== err.message) parts.push(err.message);
  if (err.requestId) parts.push(`request id ${err.requestId}`);
  return parts.join(" · ");
}

/** @param {unknown} err @param {string} [prefix] */
function fail(err, prefix = "") {
  const reason = prefix + reasonFor(err);
  const detail = detailFor(err);
  setStatus("error", { reason, detail });
  if (!(err instanceof Object && live.logged.has(err))) {
    log("page", `error: ${reason}${detail ? ` [${detail}]` : ""}`, { level: "error" });
  }
}

// ---------------------------------------------------------------- the broker's own endpoints

/** JSON GET to the broker, logged. @param {string} path @returns {Promise<any>} */
async function getJson(path) {
  const headers = new Headers({ Accept: "application/json" });
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const started = performance.now();
  let res;
  try {
    res = await fetch(path, { headers });
  } catch (err) {
    log("fetch", `GET ${path} → failed (${Math.round(performance.now() - started)} ms)`, { level: "error" });
    throw new BrokerError(
      `Could not reach the broker (${err instanceof Error ? err.message : String(err)}): is it running?`,
      { code: "network_error", cause: err },
    );
  }
  const ms = Math.round(performance.now() - started);
  log("fetch", `GET ${path} → ${res.status} (${ms} ms)`, { level: res.ok ? "info" : "warn" });
  const text = await res.text();
  if (res.ok) {
    try {
      return JSON.parse(text);
    } catch {
      // falls through to the error below
    }
  }
  throw await errorFromResponse(res, `GET ${path}`, text);
}

// ---------------------------------------------------------------- what the kit reports

/** @param {import("./chatkit-broker.js").KitEvent} e @param {number} generation */
function onKitEvent(e, generation) {
  const current = generation === live.generation;
  const ttl = (/** @type {number} */ at) => Math.round(at - Date.now() / 1000);
  switch (e.type) {
    case "request":
      log("fetch", `${e.method} ${displayPath(e.url ?? "")} → ${e.status || "failed"} (${e.ms} ms)`, {
        level: e.status && e.status < 400 ? "info" : e.status ? "warn" : "error",
      });
      break;
    case "mint":
    case "refresh": {
      const where = e.backendUrl ? `${e.kind} backend ${displayPath(e.backendUrl)}` : `${e.kind}`;
      const expires = `expires in ${ttl(e.expiresAt ?? 0)} s`;
      if (e.type === "mint")
        log("kit", `secret minted for ${e.workflow}: session ${e.sessionId}, ${expires}, ${where}`);
      else
        log(
          "kit",
          `secret renewed for ${e.workflow} (${e.reason}): session ${e.sessionId} replaces ${e.previousSessionId}, ${expires}`,
        );
      if (current && live.api) update(() => (state.backend = describeApi(/** @type {object} */ (live.api))));
      break;
    }
    case "retry":
      log("kit", `retry ${e.attempt} in ${e.delayMs} ms after: ${e.error?.message}`, { level: "warn" });
      break;
    case "token":
      log("kit", `getToken() called again: ${e.reason}`, { level: "warn" });
      break;
    case "signout":
      log("kit", `signed out: ${e.cancelled} session${e.cancelled === 1 ? "" : "s"} cancelled`);
      break;
    case "error": {
      const err = e.error;
      const detail = detailFor(err);
      log("kit", `error (${e.reason}): ${err?.message}${detail ? ` [${detail}]` : ""}`, { level: "error" });
      if (err) live.logged.add(err);
      if (current && e.reason !== "first secret" && e.reason !== "sign-out" && state.view === "chatkit") {
        fail(err, "refresh failed: ");
      }
      break;
    }
    case "chatkit":
      onChatKitEvent(e.name ?? "", e.detail, current);
      break;
  }
}

/** @param {string} name @param {unknown} detail @param {boolean} current */
function onChatKitEvent(name, detail, current) {
  const isError = name === "chatkit.error";
  log("chatkit", name, { level: isError ? "error" : "info", detail: detail ?? undefined });
  if (!current) return;
  if (name === "chatkit.ready") setStatus("ready");
  if (isError && state.status.name !== "ready") {
    const e = /** @type {{error?: Error} | undefined} */ (detail)?.error;
    fail(new Error(`ChatKit reported an error: ${e?.message || describe(detail)}`));
  }
}

// ---------------------------------------------------------------- the ChatKit script

/** @param {string} url */
function loadChatKitScript(url) {
  if (customElements.get(CHATKIT_TAG)) return Promise.resolve();
  if (live.script) return live.script;
  const script = h("script", { attrs: { src: url, async: "" } });
  const seconds = SCRIPT_TIMEOUT_MS / 1000;
  live.script = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(`the ChatKit script from ${url} did not define <${CHATKIT_TAG}> within ${seconds} s`),
        ),
      SCRIPT_TIMEOUT_MS,
    );
    script.addEventListener("error", () => {
      clearTimeout(timer);
      reject(new Error(`the ChatKit script could not be loaded from ${url} — offline or blocked?`));
    });
    customElements.whenDefined(CHATKIT_TAG).then(() => {
      clearTimeout(timer);
      log("page", `ChatKit script loaded: <${CHATKIT_TAG}> is defined`);
      resolve(undefined);
    });
  });
  live.script.catch(() => {
    script.remove(); // forget the failed attempt so Retry loads the script again
    live.script = null;
  });
  log("page", `loading ChatKit script from ${url}`);
  document.head.append(script);
  return live.script;
}

// ---------------------------------------------------------------- mounting

/** Forgets whatever was mounted: the element, the console, pending mints. */
function unmount() {
  live.generation += 1;
  live.abort?.abort();
  live.abort = null;
  live.connection?.disconnect();
  live.connection = null;
  live.element?.remove();
  live.element = null;
  live.api = null;
  live.client = null;
  update(() => {
    state.view = "placeholder";
    state.backend = null;
    state.console = {
      transcript: emptyTranscript(),
      threads: null,
      busy: false,
      error: null,
      failedText: null,
      failedAttachments: [],
      pending: [],
    };
  });
}

/** @param {Workflow} workflow */
async function mount(workflow) {
  unmount();
  const generation = live.generation;
  const current = () => generation === live.generation;
  const abort = new AbortController();
  live.abort = abort;
  const config = /** @type {Config} */ (state.config);
  update(() => {
    state.selected = workflow.name;
    state.retry = "retry-mount";
  });
  setStatus("fetching");
  log("page", `connecting ChatKit for workflow ${workflow.name}`);

  let api;
  try {
    api = await createChatKitApi({
      workflow: workflow.name,
      // mock mode accepts anonymous callers; live mode always has a token here
      getToken: state.token ? () => state.token : undefined,
      signal: abort.signal,
      onEvent: (e) => onKitEvent(e, generation),
    });
  } catch (err) {
    if (current()) fail(err);
    return;
  }
  if (!current()) return;
  live.api = api;
  update(() => (state.backend = describeApi(api)));

  setStatus("loading");
  try {
    await loadChatKitScript(config.chatkit_js_url);
  } catch (err) {
    if (!current()) return;
    if (!("url" in api)) {
      fail(err); // a hosted workflow has nothing else to talk to
      return;
    }
    setStatus("console", {
      reason:
        "ChatKit's script could not load (offline, or blocked by a proxy or an extension), so this " +
        "page talks to the backend itself through the protocol console below: the broker and the " +
        "backend work; ChatKit's own UI (widgets, dictation) is not shown. Retry loads ChatKit again.",
      detail: err instanceof Error ? err.message : String(err),
    });
    openConsole(api);
    return;
  }
  if (!current()) return;

  const element = h(CHATKIT_TAG, { class: "chatkit" });
  live.element = element;
  update(() => (state.view = "chatkit"));
  render(); // the element is in the page before ChatKit gets its options
  const readyTimer = setTimeout(() => {
    if (current() && state.status.name === "loading") {
      fail(
        new Error(
          `ChatKit did not report ready within ${READY_TIMEOUT_MS / 1000} s — look at the browser console`,
        ),
      );
    }
  }, READY_TIMEOUT_MS);
  element.addEventListener("chatkit.ready", () => clearTimeout(readyTimer), { once: true });
  try {
    live.connection = await connectChatKit(element, { api, signal: abort.signal });
  } catch (err) {
    if (current()) fail(err);
  }
}

async function doSignOut() {
  const api = live.api;
  if (!api) return;
  try {
    await signOut(api);
  } catch (err) {
    fail(err, "sign-out failed: ");
    return;
  }
  unmount();
  update(() => {
    state.selected = null;
    state.retry = null;
  });
  setStatus("idle");
}

// ---------------------------------------------------------------- the protocol console

/** @param {import("./chatkit-broker.js").CustomApi} api */
function openConsole(api) {
  const generation = live.generation;
  live.client = new ProtocolClient({
    url: api.url,
    fetch: api.fetch,
    onEvent: (event, request) => {
      if (generation === live.generation) log("sse", `${request} ← ${event.type}`, { detail: event });
    },
  });
  log("page", `ChatKit is unavailable: the protocol console talks to ${displayPath(api.url)} directly`, {
    level: "warn",
  });
  update(() => (state.view = "console"));
}

/**
 * Runs one console request; a failure shows in the console (with Retry), never unhandled.
 * @param {(client: ProtocolClient) => Promise<void>} work
 * @param {string | null} [failedText] the message to send again on Retry
 */
async function consoleRun(work, failedText = null) {
  const client = live.client;
  if (!client || state.console.busy) return;
  const generation = live.generation;
  update(() => {
    state.console.busy = true;
    state.console.error = null;
    state.console.transcript.error = null;
  });
  try {
    await work(client);
    if (generation === live.generation) update(() => (state.console.failedText = null));
  } catch (err) {
    if (generation !== live.generation) return;
    const problem = { reason: reasonFor(err), detail: detailFor(err) };
    log("console", `error: ${problem.reason}${problem.detail ? ` [${problem.detail}]` : ""}`, {
      level: "error",
    });
    update(() => {
      state.console.error = problem;
      state.console.failedText = failedText;
    });
  } finally {
    if (generation === live.generation) update(() => (state.console.busy = false));
  }
}

/** @param {string} text @param {string[]} [attachments] the ids of uploaded files */
function consoleSend(text, attachments) {
  const t = state.console.transcript;
  const changed = () => update();
  const c = state.console;
  const ids = attachments ?? c.pending.filter((f) => f.state === "ready").map((f) => f.id);
  if (!attachments) update(() => (c.pending = c.pending.filter((f) => f.state === "uploading")));
  update(() => (c.failedAttachments = ids));
  return consoleRun(
    (client) =>
      t.threadId
        ? client.addUserMessage(t.threadId, text, t, changed, ids)
        : client.createThread(text, t, changed, ids),
    text,
  );
}

/**
 * Attaches one file to the next message: attachments.create, then the upload to the signed
 * URL the backend gave (logged like the kit's fetches); the chip shows its state and, for an
 * image, the preview the backend serves.
 * @param {File} file
 */
async function consoleAttach(file) {
  const client = live.client;
  if (!client) return;
  const generation = live.generation;
  /** @type {PendingFile} */
  const entry = { key: `f${++pendingSeq}`, id: "", name: file.name, mimeType: file.type, previewUrl: null, state: "uploading", error: null };
  update(() => (state.console.pending = [...state.console.pending, entry]));
  /** @type {import("./chatkit-protocol.js").FetchLike} */
  const upload = async (input, init) => {
    const started = performance.now();
    const method = init?.method ?? "POST";
    const path = displayPath(String(input)).replace(/\?.*$/, "?…"); // the signature stays out of the log
    try {
      const res = await fetch(input, init);
      log("fetch", `${method} ${path} → ${res.status} (${Math.round(performance.now() - started)} ms)`, {
        level: res.ok ? "info" : "warn",
      });
      return res;
    } catch (err) {
      log("fetch", `${method} ${path} → failed (${Math.round(performance.now() - started)} ms)`, { level: "error" });
      throw err;
    }
  };
  try {
    const ref = await client.attach(file, upload);
    if (generation !== live.generation) return;
    log("console", `attached ${ref.name} (${ref.mimeType}) as ${ref.id}`);
    update(() => Object.assign(entry, { id: ref.id, mimeType: ref.mimeType, previewUrl: ref.previewUrl, state: "ready" }));
  } catch (err) {
    if (generation !== live.generation) return;
    const reason = reasonFor(err);
    log("console", `could not attach ${file.name}: ${reason}`, { level: "error" });
    update(() => Object.assign(entry, { state: "failed", error: reason }));
  }
  update(() => (state.console.pending = [...state.console.pending]));
}

let pendingSeq = 0;

/**
 * One attachment of a user message: an image as its preview (the backend's signed URL, no
 * header needed), any other file as its name and type.
 * @param {AttachmentRef} a
 */
function attachmentView(a) {
  return h(
    "figure",
    { class: "attachment", data: { attachment: a.id, type: a.mimeType } },
    a.previewUrl && h("img", { class: "preview", attrs: { src: a.previewUrl, alt: a.name } }),
    h("figcaption", { text: `${a.name} · ${a.mimeType}` }),
  );
}

/** Takes a file back before sending (attachments.delete for one that was uploaded). @param {PendingFile} entry */
function consoleDetach(entry) {
  update(() => (state.console.pending = state.console.pending.filter((f) => f !== entry)));
  if (entry.state === "ready" && live.client) {
    live.client.detach(entry.id).catch((err) => log("console", `attachments.delete: ${reasonFor(err)}`, { level: "warn" }));
  }
}

function consoleRetry() {
  const t = state.console.transcript;
  const users = t.messages.filter((m) => m.role === "user");
  const last = users[users.length - 1];
  if (state.console.failedText !== null && (!last || last.text !== state.console.failedText)) {
    // The failed message never reached the thread: send it again, with its files.
    return consoleSend(state.console.failedText, state.console.failedAttachments);
  }
  if (!t.threadId || !last) return;
  update(() => (t.messages = t.messages.slice(0, t.messages.indexOf(last) + 1)));
  return consoleRun((client) =>
    client.retryAfterItem(/** @type {string} */ (t.threadId), last.id, t, () => update()),
  );
}

function consoleListThreads() {
  return consoleRun(async (client) => {
    const page = await client.listThreads();
    update(
      () => (state.console.threads = page.data.map((th) => ({ id: th.id, title: th.title || "(untitled)" }))),
    );
  });
}

/** @param {string} threadId */
function consoleOpenThread(threadId) {
  return consoleRun(async (client) => {
    const transcript = await client.loadThread(threadId);
    update(() => {
      state.console.transcript = transcript;
      state.console.threads = null;
    });
  });
}

// ---------------------------------------------------------------- workflows and config

async function loadWorkflows() {
  update(() => (state.retry = "retry-workflows"));
  if (state.config?.auth_required && !state.token) {
    update(() => {
      state.workflows = null;
      state.workflowsNote = "Paste a token above to see your workflows.";
    });
    setStatus("idle");
    return;
  }
  let data;
  try {
    data = await getJson("/api/chatkit/workflows");
  } catch (err) {
    update(() => {
      state.workflows = null;
      state.workflowsNote = "Could not load workflows.";
    });
    fail(err);
    return;
  }
  /** @type {Workflow[]} */
  const list = Array.isArray(data?.workflows) ? data.workflows : [];
  update(() => {
    state.workflows = list;
    state.workflowsNote = list.length ? "" : "No workflows are allowed for this token.";
  });
  log("page", `${list.length} workflow${list.length === 1 ? "" : "s"} available`);
  if (state.status.name === "error") setStatus("idle");
}

async function loadConfig() {
  update(() => (state.retry = "retry-config"));
  try {
    const config = await getJson("/api/chatkit/config");
    update(() => (state.config = config));
  } catch (err) {
    update(() => (state.workflowsNote = "Could not read the broker's configuration."));
    fail(err);
    return;
  }
  const config = /** @type {Config} */ (state.config);
  log("page", `mode ${config.mode}; ChatKit script ${config.chatkit_js_url}`, { detail: config });
  /** @type {HTMLInputElement} */ ($("token")).value = state.token; // the field's initial value, once
  await loadWorkflows();
}

/** @param {string} value */
function useToken(value) {
  const token = value.trim();
  update(() => (state.token = token));
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  log("page", token ? "token set" : "token cleared");
  loadWorkflows();
}

function retry() {
  if (state.retry === "retry-config") loadConfig();
  else if (state.retry === "retry-workflows") loadWorkflows();
  else if (state.retry === "retry-mount") {
    const wf = state.workflows?.find((w) => w.name === state.selected);
    if (wf) mount(wf);
  }
}

// ---------------------------------------------------------------- render

/** @type {Map<string, string>} */
const drawn = new Map();

/** Redraws one part of the page when what it shows has changed. @param {string} part @param {unknown} shows @param {() => void} draw */
function part(part, shows, draw) {
  const key = JSON.stringify(shows);
  if (drawn.get(part) === key) return;
  drawn.set(part, key);
  draw();
}

/** @param {HTMLElement} el @param {string | undefined | null} text */
function showText(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

function render() {
  const { config, status } = state;
  part("mode", config?.mode ?? null, () => {
    const mode = config?.mode ?? "unknown";
    $("mode").dataset.mode = mode;
    $("mode").textContent = `mode: ${config ? mode : "…"}`;
    $("mock-banner").hidden = mode !== "mock";
    $("token-box").hidden = !config;
    $("token-optional").hidden = !config || config.auth_required;
  });

  part("workflows", [state.workflows, state.workflowsNote, state.selected], () => {
    const list = state.workflows ?? [];
    if (!list.length) {
      $("workflows").replaceChildren(h("p", { class: "hint", text: state.workflowsNote }));
      return;
    }
    $("workflows").replaceChildren(
      ...list.map((wf) => {
        const label = wf.label || wf.name;
        return h(
          "button",
          {
            class: "workflow",
            data: { workflow: wf.name },
            attrs: {
              type: "button",
              "aria-pressed": String(wf.name === state.selected),
              ...(wf.id ? { title: wf.id } : {}),
            },
            on: { click: () => mount(wf) },
          },
          h(
            "span",
            { class: "wf-head" },
            h("span", { class: "wf-label", text: label }),
            wf.kind && h("span", { class: "wf-kind", data: { kind: wf.kind }, text: wf.kind }),
          ),
          label !== wf.name && h("span", { class: "wf-name", text: wf.name }),
        );
      }),
    );
  });

  part(
    "backend",
    state.backend && [state.backend.kind, state.backend.backendUrl, state.backend.sessionId],
    () => {
      const b = state.backend;
      const rows = b
        ? [
            ["kind", b.kind],
            [
              "URL",
              b.backendUrl ? displayPath(b.backendUrl) : "OpenAI (hosted; ChatKit talks to api.openai.com)",
            ],
            ["session", b.sessionId],
          ]
        : [["kind", "—"]];
      $("backend").replaceChildren(
        ...rows.flatMap(([k, v]) => [
          h("dt", { text: k }),
          h("dd", { text: v, data: { field: k.toLowerCase() } }),
        ]),
      );
      $("backend").dataset.kind = b?.kind ?? "none";
    },
  );

  part("status", [status, state.retry, Boolean(state.backend)], () => {
    $("status").dataset.state = status.name;
    $("status-text").textContent = STATUS_TEXT[status.name];
    showText($("status-reason"), status.reason);
    showText($("status-detail"), status.detail);
    /** @type {HTMLButtonElement} */ ($("retry")).disabled = !((status.name === "error" || status.name === "console") && state.retry);
    /** @type {HTMLButtonElement} */ ($("sign-out")).disabled = !state.backend;
  });

  part("chat", [state.view, live.generation], () => {
    $("chat-placeholder").hidden = state.view !== "placeholder";
    $("console").hidden = state.view !== "console";
    $("chat").dataset.view = state.view;
    for (const el of $("chat").querySelectorAll(CHATKIT_TAG)) if (el !== live.element) el.remove();
    if (state.view === "chatkit" && live.element && !live.element.isConnected) $("chat").append(live.element);
  });

  if (state.view === "console") renderConsole();
  renderLog();
}

function renderConsole() {
  const c = state.console;
  const t = c.transcript;
  part("console-head", [live.client?.url, state.backend?.kind, t.threadId, t.title, c.busy], () => {
    $("console-url").textContent = live.client ? displayPath(live.client.url) : "";
    $("console-input").setAttribute(
      "placeholder",
      state.backend?.kind === "mock"
        ? "Message the mock backend (try /slow or /error)"
        : "Message the backend",
    );
    $("console-thread").textContent = t.threadId
      ? `thread ${t.threadId}${t.title ? ` · ${t.title}` : ""}`
      : "new thread";
    for (const id of ["console-new", "console-threads", "console-send"]) {
      /** @type {HTMLButtonElement} */ ($(id)).disabled = c.busy;
    }
  });
  part("console-threads", c.threads, () => {
    const list = $("console-thread-list");
    list.hidden = c.threads === null;
    list.replaceChildren(
      ...(c.threads?.length
        ? c.threads.map((th) =>
            h(
              "li",
              {},
              h(
                "button",
                {
                  class: "quiet",
                  data: { thread: th.id },
                  attrs: { type: "button" },
                  on: { click: () => consoleOpenThread(th.id) },
                },
                h("span", { text: th.title }),
                h("code", { text: th.id }),
              ),
            ),
          )
        : [h("li", { class: "hint", text: "No threads yet." })]),
    );
  });
  part("console-transcript", [t.messages, t.progress, t.error], () => {
    const items = t.messages.map((m) =>
      h(
        "li",
        { class: `turn ${m.role}`, data: { role: m.role, done: String(m.done) } },
        h("span", { class: "who", text: m.role === "user" ? "you" : m.role }),
        m.attachments.length > 0 && h("div", { class: "attachments" }, ...m.attachments.map(attachmentView)),
        h("p", { class: "text", text: m.text || (m.done ? "" : "…") }),
      ),
    );
    if (t.progress) items.push(h("li", { class: "turn progress", text: t.progress }));
    if (!items.length)
      items.push(h("li", { class: "hint", text: "Send a message to start a thread (threads.create)." }));
    const list = $("console-transcript");
    list.replaceChildren(...items);
    list.scrollTop = list.scrollHeight;
  });
  const problem =
    c.error ??
    (t.error
      ? { reason: t.error.message, detail: t.error.allowRetry ? "the backend allows a retry" : undefined }
      : null);
  const attachable = Boolean(state.backend?.attachments);
  part("console-files", [attachable, state.backend?.attachments ?? null, c.pending, c.busy], () => {
    const pick = /** @type {HTMLInputElement} */ ($("console-file"));
    $("console-attach").hidden = !attachable;
    /** @type {HTMLButtonElement} */ ($("console-attach")).disabled = c.busy;
    const accept = state.backend?.attachments?.accept;
    if (accept) pick.accept = Object.entries(accept).flatMap(([type, exts]) => [type, ...exts]).join(",");
    else pick.removeAttribute("accept");
    const list = $("console-pending");
    list.hidden = c.pending.length === 0;
    list.replaceChildren(
      ...c.pending.map((f) =>
        h(
          "li",
          { class: "pending-file", data: { state: f.state, key: f.key } },
          f.previewUrl && h("img", { class: "thumb", attrs: { src: f.previewUrl, alt: f.name } }),
          h("span", { class: "name", text: f.name }),
          h("span", { class: "file-state", text: f.state === "failed" ? `failed: ${f.error}` : f.state }),
          h("button", {
            class: "quiet",
            text: "×",
            attrs: { type: "button", "aria-label": `remove ${f.name}` },
            on: { click: () => consoleDetach(f) },
          }),
        ),
      ),
    );
  });
  part("console-error", [problem, c.busy], () => {
    $("console-error").hidden = !problem;
    showText($("console-error-reason"), problem?.reason);
    showText($("console-error-detail"), problem?.detail);
    /** @type {HTMLButtonElement} */ ($("console-retry")).disabled = c.busy;
  });
}

let logShown = 0;
let logEpochShown = 0;

/** Appends the entries not shown yet (the log only grows, until it is cleared). */
function renderLog() {
  const list = $("log");
  if (logEpochShown !== state.logEpoch) {
    list.replaceChildren();
    logEpochShown = state.logEpoch;
  }
  const fresh = state.log.filter((e) => e.id > logShown);
  if (!fresh.length) return;
  list.append(
    ...fresh.map((e) =>
      h(
        "li",
        { class: `entry ${e.level}`, data: { kind: e.kind } },
        h("time", { text: e.time }),
        h("span", { class: "kind", text: e.kind }),
        h("span", { class: "msg", text: e.text }),
        e.detail !== undefined && h("code", { class: "detail", text: e.detail }),
      ),
    ),
  );
  while (list.childElementCount > LOG_KEEP) list.firstElementChild?.remove();
  logShown = fresh[fresh.length - 1].id;
  if (state.logFollows) list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------- start-up

function start() {
  const logList = $("log");
  logList.addEventListener("scroll", () => {
    // The log stays at its newest entry unless the reader scrolled up to read.
    state.logFollows = logList.scrollTop + logList.clientHeight >= logList.scrollHeight - 4;
  });
  new ResizeObserver(() => {
    if (state.logFollows) logList.scrollTop = logList.scrollHeight;
  }).observe(logList);
  $("log-clear").addEventListener("click", () =>
    update(() => {
      state.log = [];
      state.logEpoch += 1;
      state.logFollows = true;
    }),
  );
  $("retry").addEventListener("click", retry);
  $("sign-out").addEventListener("click", doSignOut);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useToken(/** @type {HTMLInputElement} */ ($("token")).value);
  });
  $("token-forget").addEventListener("click", () => {
    /** @type {HTMLInputElement} */ ($("token")).value = "";
    useToken("");
  });
  $("console-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = /** @type {HTMLTextAreaElement} */ ($("console-input"));
    const text = input.value.trim();
    if (!text || state.console.busy) return;
    input.value = "";
    consoleSend(text);
  });
  $("console-input").addEventListener("keydown", (event) => {
    const e = /** @type {KeyboardEvent} */ (event);
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      /** @type {HTMLFormElement} */ ($("console-form")).requestSubmit();
    }
  });
  $("console-retry").addEventListener("click", consoleRetry);
  $("console-attach").addEventListener("click", () => $("console-file").click());
  $("console-file").addEventListener("change", () => {
    const pick = /** @type {HTMLInputElement} */ ($("console-file"));
    for (const file of Array.from(pick.files ?? [])) consoleAttach(file);
    pick.value = "";
  });
  $("console-new").addEventListener("click", () =>
    update(() => {
      state.console.transcript = emptyTranscript();
      state.console.error = null;
      state.console.threads = null;
      state.console.pending = [];
    }),
  );
  $("console-threads").addEventListener("click", consoleListThreads);
  render();
  loadConfig();
}

start();
