// chatkit-broker test page: pick a workflow, mount <openai-chatkit>, watch what happens.
// Plain ES module, no build step. Works under a strict CSP (no inline script or style).

const TOKEN_KEY = "chatkit-broker.token";
const CHATKIT_TAG = "openai-chatkit";
// How long the ChatKit script may take to define <openai-chatkit>, and ChatKit to report ready.
const SCRIPT_TIMEOUT_MS = globalThis.__chatkitBrokerScriptTimeoutMs ?? 15000;
const READY_TIMEOUT_MS = 30000;
const CHATKIT_EVENTS = [
  "chatkit.ready",
  "chatkit.error",
  "chatkit.effect",
  "chatkit.deeplink",
  "chatkit.response.start",
  "chatkit.response.end",
  "chatkit.thread.change",
  "chatkit.thread.load.start",
  "chatkit.thread.load.end",
  "chatkit.tool.change",
  "chatkit.log",
  "chatkit.history.open",
  "chatkit.history.close",
];
const STATUS_TEXT = {
  idle: "idle",
  fetching: "fetching secret…",
  loading: "loading ChatKit…",
  ready: "ready",
  error: "error",
};

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  workflow: null, // the workflow currently mounted (or being mounted)
  generation: 0, // bumped on every mount; stale callbacks compare against it
  retry: null, // what the Retry button does
};

// ---------------------------------------------------------------- event log

function timestamp() {
  const d = new Date();
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function log(kind, text, { level = "info", detail } = {}) {
  const time = timestamp();
  const li = document.createElement("li");
  li.className = `entry ${level}`;
  li.dataset.kind = kind;
  const t = document.createElement("time");
  t.textContent = time;
  const k = document.createElement("span");
  k.className = "kind";
  k.textContent = kind;
  const msg = document.createElement("span");
  msg.className = "msg";
  msg.textContent = text;
  li.append(t, k, msg);
  if (detail !== undefined) {
    const code = document.createElement("code");
    code.className = "detail";
    code.textContent = describe(detail);
    li.append(code);
  }
  $("log").append(li);
  followLog();

  const line = `[chatkit-broker] ${time} ${kind} ${text}`;
  const out = level === "error" ? console.error : level === "warn" ? console.warn : console.info;
  if (detail === undefined) out(line);
  else out(line, detail);
}

// The log stays scrolled to its newest entry unless the reader has scrolled up to read.
let logFollows = true;

function followLog() {
  const list = $("log");
  if (logFollows) list.scrollTop = list.scrollHeight;
}

function watchLogScroll() {
  const list = $("log");
  list.addEventListener("scroll", () => {
    logFollows = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  });
  // Rewrapping (a narrower window, a rotated phone) must not lose the newest entry either.
  new ResizeObserver(followLog).observe(list);
}

function describe(value) {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  let text;
  try {
    text = JSON.stringify(value, (_key, v) => (v instanceof Error ? `${v.name}: ${v.message}` : v));
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

// ---------------------------------------------------------------- status

function setStatus(name, { reason, detail } = {}) {
  $("status").dataset.state = name;
  $("status-text").textContent = STATUS_TEXT[name];
  for (const [id, text] of [
    ["status-reason", reason],
    ["status-detail", detail],
  ]) {
    $(id).textContent = text || "";
    $(id).hidden = !text;
  }
  $("retry").disabled = !(name === "error" && state.retry);
}

// Show an error in words. `err` may be an HttpError from the broker or any Error.
function fail(err, prefix = "") {
  const reason = prefix + reasonFor(err);
  const detail = detailFor(err);
  setStatus("error", { reason, detail });
  log("page", `error: ${reason}${detail ? ` [${detail}]` : ""}`, { level: "error" });
}

// ---------------------------------------------------------------- HTTP

class HttpError extends Error {
  constructor(status, body, response) {
    const err = (body && typeof body === "object" && body.error) || {};
    super(err.message || (status ? `HTTP ${status}` : "network error"));
    this.status = status;
    this.code = err.code || null;
    this.requestId = err.request_id || response?.headers.get("X-Request-ID") || null;
    this.retryAfter = response?.headers.get("Retry-After") || null;
  }
}

function displayPath(url) {
  const u = new URL(url, location.href);
  return u.origin === location.origin ? u.pathname + u.search : u.href;
}

// fetch() that writes method, path, status and duration to the event log.
async function loggedFetch(input, init = {}) {
  const method = (init.method || (input instanceof Request ? input.method : "GET")).toUpperCase();
  const path = displayPath(input instanceof Request ? input.url : String(input));
  const started = performance.now();
  try {
    const res = await fetch(input, init);
    const ms = Math.round(performance.now() - started);
    log("fetch", `${method} ${path} → ${res.status} (${ms} ms)`, { level: res.ok ? "info" : "warn" });
    return res;
  } catch (err) {
    const ms = Math.round(performance.now() - started);
    log("fetch", `${method} ${path} → failed (${ms} ms): ${err.message}`, { level: "error" });
    throw err;
  }
}

function authHeaders(headers = {}) {
  const h = new Headers(headers);
  if (state.token) h.set("Authorization", `Bearer ${state.token}`);
  return h;
}

// JSON request to the broker. Resolves to the parsed body; rejects with HttpError.
async function api(method, path, body) {
  const headers = authHeaders({ Accept: "application/json" });
  const init = { method, headers };
  if (body !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await loggedFetch(path, init);
  } catch (err) {
    throw new HttpError(0, { error: { message: err.message } });
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) throw new HttpError(res.status, data, res);
  return data;
}

// Words a person can act on, for a failed broker call.
function reasonFor(err) {
  if (!(err instanceof HttpError)) return err.message || String(err);
  switch (err.status) {
    case 0:
      return "could not reach the broker — is it running?";
    case 401:
      return state.token
        ? "token expired or invalid — paste a new one"
        : "no token — paste one (chatkit-broker token --sub me)";
    case 403:
      return err.code === "workflow_not_allowed" ? "not allowed for this workflow" : err.message;
    case 429:
      return `rate limited — try again${err.retryAfter ? ` in ${err.retryAfter} s` : " later"}`;
    default:
      return err.message;
  }
}

// The facts behind the words: status, error code, the broker's message if the words did
// not already show it, and the request id to find the broker's log line.
function detailFor(err) {
  if (!(err instanceof HttpError) || err.status === 0) return undefined;
  const parts = [`HTTP ${err.status}`];
  if (err.code) parts.push(err.code);
  if (reasonFor(err) !== err.message) parts.push(err.message);
  if (err.requestId) parts.push(`request id ${err.requestId}`);
  return parts.join(" · ");
}

// ---------------------------------------------------------------- ChatKit script

let scriptPromise = null;

function loadChatKitScript(url) {
  if (customElements.get(CHATKIT_TAG)) return Promise.resolve();
  if (scriptPromise) return scriptPromise;
  const cantLoad = `the ChatKit script could not be loaded from ${url} — offline or blocked?`;
  const script = document.createElement("script");
  script.src = url;
  script.async = true;
  scriptPromise = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `the ChatKit script from ${url} did not define <${CHATKIT_TAG}> within ${SCRIPT_TIMEOUT_MS / 1000} s`,
          ),
        ),
      SCRIPT_TIMEOUT_MS,
    );
    script.addEventListener("error", () => {
      clearTimeout(timer);
      reject(new Error(cantLoad));
    });
    customElements.whenDefined(CHATKIT_TAG).then(() => {
      clearTimeout(timer);
      log("page", `ChatKit script loaded: <${CHATKIT_TAG}> is defined`);
      resolve();
    });
  }).catch((err) => {
    // Forget the failed attempt so Retry loads the script again.
    script.remove();
    scriptPromise = null;
    throw err;
  });
  log("page", `loading ChatKit script from ${url}`);
  document.head.append(script);
  return scriptPromise;
}

// ---------------------------------------------------------------- mounting

async function mintSecret(workflow, previousSessionId) {
  const body = { workflow: workflow.name };
  if (previousSessionId) body.previous_session_id = previousSessionId;
  const data = await api("POST", "/api/chatkit/session", body);
  const ttl = data.expires_at ? Math.round(data.expires_at - Date.now() / 1000) : null;
  log(
    "page",
    `secret minted for ${workflow.name}: session ${data.session_id}` +
      (ttl !== null ? `, expires in ${ttl} s` : "") +
      (data.mock ? " (mock)" : ""),
  );
  return data;
}

function useMockBackend() {
  return state.config.mode === "mock" && Boolean(state.config.mock_backend_url);
}

async function mount(workflow) {
  const gen = ++state.generation;
  const current = () => gen === state.generation;
  state.workflow = workflow;
  state.retry = () => mount(workflow);
  markSelected(workflow.name);
  unmount();
  let options;
  if (useMockBackend()) {
    log("page", `mounting ChatKit against the mock backend ${state.config.mock_backend_url}`);
    // Custom-backend mode against the broker's mock ChatKit server: no secret to fetch.
    options = {
      api: {
        url: state.config.mock_backend_url,
        domainKey: state.config.domain_key ?? "local-dev", // required by ChatKit even locally
        fetch: (input, init = {}) => {
          const headers = authHeaders(init.headers ?? (input instanceof Request ? input.headers : {}));
          return loggedFetch(input, { ...init, headers });
        },
      },
    };
  } else {
    log("page", `mounting ChatKit for workflow ${workflow.name}`);
    // Hosted mode (and mock mode without a backend): fetch the first secret *before* mounting,
    // so ChatKit's mount-time getClientSecret(null) never waits on a slow or failing broker.
    setStatus("fetching");
    let first;
    try {
      first = await mintSecret(workflow);
    } catch (err) {
      if (current()) fail(err);
      return;
    }
    if (!current()) return;
    let unused = first.client_secret;
    let sessionId = first.session_id;
    options = {
      api: {
        getClientSecret: async (currentSecret) => {
          if (!current()) throw new Error("this ChatKit instance was replaced");
          if (currentSecret === null && unused) {
            const secret = unused;
            unused = null;
            log("page", "getClientSecret(null): handing over the first secret");
            return secret;
          }
          log("page", `getClientSecret(${currentSecret ? "current" : "null"}): minting a new secret`);
          try {
            const next = await mintSecret(workflow, sessionId);
            sessionId = next.session_id;
            return next.client_secret;
          } catch (err) {
            if (current()) fail(err, "refresh failed: ");
            throw err;
          }
        },
      },
    };
  }

  setStatus("loading");
  try {
    await loadChatKitScript(state.config.chatkit_js_url);
  } catch (err) {
    if (current()) fail(err);
    return;
  }
  if (!current()) return;

  const el = document.createElement(CHATKIT_TAG);
  el.className = "chatkit";
  for (const name of CHATKIT_EVENTS) {
    el.addEventListener(name, (event) => onChatKitEvent(name, event, current));
  }
  const readyTimer = setTimeout(() => {
    if (current() && $("status").dataset.state === "loading") {
      fail(new Error(`ChatKit did not report ready within ${READY_TIMEOUT_MS / 1000} s — look at the browser console`));
    }
  }, READY_TIMEOUT_MS);
  el.addEventListener("chatkit.ready", () => clearTimeout(readyTimer), { once: true });
  $("chat").append(el);
  $("chat-placeholder").hidden = true;
  el.setOptions(options);
}

function onChatKitEvent(name, event, current) {
  const detail = event.detail;
  const isError = name === "chatkit.error";
  log("chatkit", name, {
    level: isError ? "error" : "info",
    detail: detail ?? undefined,
  });
  if (!current()) return;
  if (name === "chatkit.ready") setStatus("ready");
  if (isError && $("status").dataset.state !== "ready") {
    const e = detail?.error;
    fail(new Error(`ChatKit reported an error: ${e?.message || describe(detail)}`));
  }
}

function unmount() {
  for (const el of $("chat").querySelectorAll(CHATKIT_TAG)) el.remove();
  $("chat-placeholder").hidden = false;
}

// ---------------------------------------------------------------- workflows

function markSelected(name) {
  for (const b of $("workflows").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(b.dataset.workflow === name));
  }
}

function showWorkflowsMessage(text) {
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = text;
  $("workflows").replaceChildren(p);
}

async function loadWorkflows() {
  state.retry = loadWorkflows;
  if (state.config.auth_required && !state.token) {
    showWorkflowsMessage("Paste a token above to see your workflows.");
    setStatus("idle");
    return;
  }
  let data;
  try {
    data = await api("GET", "/api/chatkit/workflows");
  } catch (err) {
    showWorkflowsMessage("Could not load workflows.");
    fail(err);
    return;
  }
  const list = data.workflows || [];
  if (list.length === 0) {
    showWorkflowsMessage("No workflows are allowed for this token.");
  } else {
    $("workflows").replaceChildren(...list.map(workflowButton));
    if (state.workflow) markSelected(state.workflow.name);
  }
  log("page", `${list.length} workflow${list.length === 1 ? "" : "s"} available`);
  if ($("status").dataset.state === "error") setStatus("idle");
}

function workflowButton(wf) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "workflow";
  b.dataset.workflow = wf.name;
  b.setAttribute("aria-pressed", "false");
  if (wf.id) b.title = wf.id;
  const label = document.createElement("span");
  label.className = "wf-label";
  label.textContent = wf.label || wf.name;
  b.append(label);
  if (label.textContent !== wf.name) {
    const name = document.createElement("span");
    name.className = "wf-name";
    name.textContent = wf.name;
    b.append(name);
  }
  b.addEventListener("click", () => mount(wf));
  return b;
}

// ---------------------------------------------------------------- start-up

function showToken() {
  $("token-box").hidden = false;
  $("token-optional").hidden = state.config.auth_required;
  $("token").value = state.token;
}

function useToken(value) {
  state.token = value.trim();
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  log("page", state.token ? "token set" : "token cleared");
  loadWorkflows();
}

async function loadConfig() {
  state.retry = loadConfig;
  try {
    state.config = await api("GET", "/api/chatkit/config");
  } catch (err) {
    showWorkflowsMessage("Could not read the broker's configuration.");
    fail(err);
    return;
  }
  const mode = state.config.mode;
  $("mode").dataset.mode = mode;
  $("mode").textContent = `mode: ${mode}`;
  $("mock-banner").hidden = mode !== "mock";
  log("page", `mode ${mode}; ChatKit script ${state.config.chatkit_js_url}`, {
    detail: state.config,
  });
  showToken();
  await loadWorkflows();
}

watchLogScroll();
$("log-clear").addEventListener("click", () => {
  $("log").replaceChildren();
  logFollows = true;
});
$("retry").addEventListener("click", () => state.retry?.());
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  useToken($("token").value);
});
$("token-forget").addEventListener("click", () => {
  $("token").value = "";
  useToken("");
});
loadConfig();
