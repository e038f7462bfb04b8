// @ts-check
/**
 * chatkit-broker front-end kit: connects OpenAI's <openai-chatkit> web component to a
 * chatkit-broker, whatever kind of backend the workflow has.
 *
 * One ES module, no dependencies, no build step; served by the broker at /chatkit-broker.js.
 *
 *     import { connectChatKit } from "/chatkit-broker.js";
 *     const chat = await connectChatKit(document.querySelector("openai-chatkit"), {
 *       workflow: "support", getToken: () => mySignIn.idToken() });
 *
 * The broker's mint answer decides the mode: a hosted workflow (`backend: null`) gives ChatKit
 * `{getClientSecret}`; a custom backend (gateway, agent, mock: `backend: {url, domain_key}`)
 * gives `{url, domainKey, fetch}`, whose fetch carries the broker's session secret and renews it.
 * Secrets never reach an event, a log line or an error message.
 */

export const KIT_VERSION = "0.1.0";

const MINT_PATH = "/api/chatkit/session";
// 5xx answers that name a configuration problem: retrying cannot help, so they are final.
const FINAL_CODES = new Set([
  "upstream_auth_failed",
  "upstream_workflow_not_found",
  "backend_rejected_identity",
]);
const CANCEL_PATH = "/api/chatkit/session/cancel";

/** The `chatkit.*` DOM events of `<openai-chatkit>` (types of @openai/chatkit 1.9.0). */
export const CHATKIT_EVENTS = Object.freeze([
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
]);

/**
 * @typedef {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>} FetchLike
 *
 * @typedef {object} TokenRequest
 * @property {boolean} afterUnauthorized true when the broker refused the previous token (401):
 *   return a fresh one (re-run your sign-in's silent refresh), not the cached one.
 *
 * @typedef {(request: TokenRequest) => string | null | undefined | Promise<string | null | undefined>} GetToken
 *
 * @typedef {object} RetryPolicy
 * @property {number} [retries] attempts after the first, for network errors, 5xx and 429 (default 3)
 * @property {number} [baseDelayMs] first back-off, doubled each attempt, with jitter (default 500)
 * @property {number} [maxDelayMs] cap of one back-off (default 8000)
 * @property {number} [maxRetryAfterMs] a longer `Retry-After` is not waited for: the error surfaces (default 30000)
 *
 * @typedef {object} KitOptions
 * @property {string} workflow the workflow's name in the broker's allowlist
 * @property {GetToken} [getToken] the signed-in user's JWT for the broker; omit it only for a
 *   broker in mock mode, which accepts anonymous callers
 * @property {string} [broker] the broker's origin, e.g. "https://chat-broker.example.com"; "" = this page's origin
 * @property {FetchLike} [fetch] the fetch to use (default: the global one)
 * @property {(event: KitEvent) => void} [onEvent] called with every mint, refresh, retry, request and error
 * @property {AbortSignal} [signal] aborts pending mints and back-offs; afterwards every call fails with code "aborted"
 * @property {RetryPolicy} [retry]
 * @property {number} [refreshMarginMs] a custom backend's secret is renewed this long before it expires (default 60000)
 * @property {number} [timeoutMs] how long one request to the broker may take, body included (default 15000)
 *
 * @typedef {object} BackendInfo
 * @property {string} url where ChatKit sends its requests, relative to the broker
 * @property {string} domain_key the `domainKey` ChatKit requires even locally
 * @property {{type: "two_phase"} | {type: "direct", uploadUrl: string}} [upload_strategy] how files are uploaded (workflows that accept files)
 * @property {BrokerAttachments} [attachments] the workflow's file policy, for `composer.attachments`
 * @property {{enabled: boolean}} [dictation] whether the workflow transcribes speech, for `composer.dictation`
 *
 * @typedef {object} BrokerAttachments
 * @property {boolean} enabled
 * @property {number} [max_size] bytes
 * @property {number} [max_count] files per message
 * @property {Record<string, string[]>} [accept] MIME type → file extensions
 *
 * @typedef {object} MintAnswer the broker's answer to POST /api/chatkit/session
 * @property {string} client_secret
 * @property {number} expires_at unix seconds
 * @property {string} session_id
 * @property {{name: string, kind?: string, id?: string | null}} workflow
 * @property {BackendInfo | null} [backend] null (or absent, before brokers knew custom backends) for hosted
 * @property {boolean} [mock]
 *
 * @typedef {{getClientSecret: (currentClientSecret: string | null) => Promise<string>}} HostedApi
 * @typedef {{url: string, domainKey: string, fetch: typeof fetch, uploadStrategy?: {type: "two_phase"} | {type: "direct", uploadUrl: string}}} CustomApi
 * @typedef {HostedApi | CustomApi} ChatKitApi what to pass as ChatKit's `api` option
 *
 * @typedef {object} KitEvent one thing the kit did or saw, safe to log (never a secret or token)
 * @property {"mint" | "refresh" | "retry" | "token" | "request" | "error" | "chatkit" | "signout"} type
 * @property {number} at milliseconds since the epoch
 * @property {string} [workflow]
 * @property {string} [kind] the workflow's backend kind: hosted, gateway, agent or mock
 * @property {string | null} [backendUrl] a custom backend's URL (null for hosted)
 * @property {string} [sessionId]
 * @property {string} [previousSessionId]
 * @property {number} [expiresAt] unix seconds
 * @property {string} [reason] why a secret was (re)minted or a token asked for again
 * @property {string} [method]
 * @property {string} [url]
 * @property {number} [status] HTTP status of a request (0: no answer)
 * @property {number} [ms] how long a request took
 * @property {number} [attempt] the retry's number (1 = first retry)
 * @property {number} [delayMs] the back-off before that retry
 * @property {number} [cancelled] how many sessions a sign-out cancelled
 * @property {string} [name] a chatkit.* event's name
 * @property {unknown} [detail] a chatkit.* event's detail
 * @property {BrokerError} [error]
 *
 * @typedef {object} ChatKitConnection
 * @property {ChatKitApi} api the `api` object handed to ChatKit
 * @property {KitEvents} events every mint, refresh, error and chatkit.* event (`entries`, and an "event" DOM event for each new one)
 * @property {() => Promise<string[]>} signOut cancels all of the user's broker sessions; resolves to their ids
 * @property {() => void} disconnect stops listening to the element and refuses further secrets
 */

/**
 * Every failure the kit reports, with the broker's facts: the HTTP status (0 when there was
 * no HTTP answer), its error code, and the request id that finds the broker's log line.
 */
export class BrokerError extends Error {
  /**
   * @param {string} message words a person can act on
   * @param {{status?: number, code?: string, requestId?: string | null, retryAfterMs?: number | null, cause?: unknown}} [facts]
   */
  constructor(message, facts = {}) {
    super(message, facts.cause === undefined ? undefined : { cause: facts.cause });
    this.name = "BrokerError";
    /** @type {number} */
    this.status = facts.status ?? 0;
    /** @type {string} */
    this.code = facts.code ?? "error";
    /** @type {string | null} */
    this.requestId = facts.requestId ?? null;
    /** @type {number | null} */
    this.retryAfterMs = facts.retryAfterMs ?? null;
  }

  /** Whether trying again later may succeed: no answer (in time), a 5xx, or a 429. */
  get transient() {
    if (FINAL_CODES.has(this.code)) return false;
    if (this.code === "network_error" || this.code === "timeout") return true;
    return this.status === 429 || this.status >= 500;
  }
}

/**
 * The kit's event stream: keeps the last entries (so a logger attached late misses nothing)
 * and dispatches an "event" CustomEvent for each new one.
 */
export class KitEvents extends EventTarget {
  /** @param {number} [keep] how many entries to keep */
  constructor(keep = 500) {
    super();
    this.keep = keep;
    /** @type {KitEvent[]} */
    this.entries = [];
  }

  /** @param {KitEvent} event */
  add(event) {
    this.entries.push(event);
    if (this.entries.length > this.keep) this.entries.splice(0, this.entries.length - this.keep);
    this.dispatchEvent(new CustomEvent("event", { detail: event }));
  }

  /**
   * Calls `listener` with every event from now on; returns the function that stops it.
   * @param {(event: KitEvent) => void} listener
   */
  subscribe(listener) {
    /** @param {Event} e */
    const handler = (e) => listener(/** @type {CustomEvent<KitEvent>} */ (e).detail);
    this.addEventListener("event", handler);
    return () => this.removeEventListener("event", handler);
  }
}

// ---------------------------------------------------------------------------------- HTTP

/** @param {string} broker @param {string} path */
function join(broker, path) {
  if (/^[a-z][a-z0-9+.-]*:/i.test(path)) return path;
  return broker.replace(/\/+$/, "") + path;
}

/** @param {string | null} value @param {number} now */
function parseRetryAfter(value, now) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/**
 * The broker's error as a BrokerError, from a response that is not OK (or not JSON when it
 * should be). Reads the body; never echoes it (a proxy's page could be anything).
 * @param {Response} res
 * @param {string} what e.g. "POST /api/chatkit/session"
 * @param {string} [text] the body, when already read
 * @returns {Promise<BrokerError>}
 */
export async function errorFromResponse(res, what, text) {
  if (text === undefined) {
    try {
      text = await res.text();
    } catch {
      text = "";
    }
  }
  const headerId = res.headers.get("X-Request-ID");
  const retryAfterMs = parseRetryAfter(res.headers.get("Retry-After"), Date.now());
  /** @type {unknown} */
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const error = body && typeof body === "object" && "error" in body ? body.error : null;
  if (error && typeof error === "object") {
    const e = /** @type {{code?: unknown, message?: unknown, request_id?: unknown}} */ (error);
    return new BrokerError(typeof e.message === "string" ? e.message : `HTTP ${res.status} from ${what}`, {
      status: res.status,
      code: typeof e.code === "string" ? e.code : `http_${res.status}`,
      requestId: typeof e.request_id === "string" ? e.request_id : headerId,
      retryAfterMs,
    });
  }
  if (typeof error === "string" && error) {
    // not the broker's shape, but words someone meant for a person (e.g. a starter-app server)
    return new BrokerError(error.slice(0, 300), {
      status: res.status,
      code: `http_${res.status}`,
      requestId: headerId,
      retryAfterMs,
    });
  }
  const type = (res.headers.get("Content-Type") || "no content type").split(";")[0];
  return new BrokerError(
    `${what} answered HTTP ${res.status} with ${type}, not the broker's JSON: ` +
      "is a proxy in between, or does `broker` point at the wrong server?",
    { status: res.status, code: "bad_response", requestId: headerId, retryAfterMs },
  );
}

/**
 * @param {number} ms
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted());
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", stop);
      resolve();
    }
    function stop() {
      clearTimeout(timer);
      reject(aborted());
    }
    signal?.addEventListener("abort", stop, { once: true });
  });
}

function aborted() {
  return new BrokerError("Stopped: this ChatKit connection was replaced or disconnected.", {
    code: "aborted",
  });
}

function signedOut() {
  return new BrokerError("Signed out: this ChatKit connection hands out no more secrets.", {
    code: "signed_out",
  });
}

/** @param {unknown} value @returns {value is MintAnswer} */
function isMintAnswer(value) {
  if (!value || typeof value !== "object") return false;
  const v = /** @type {Record<string, unknown>} */ (value);
  const backend = v.backend;
  const backendOk =
    backend === null ||
    backend === undefined ||
    (typeof backend === "object" &&
      typeof (/** @type {Record<string, unknown>} */ (backend).url) === "string" &&
      typeof (/** @type {Record<string, unknown>} */ (backend).domain_key) === "string");
  return (
    typeof v.client_secret === "string" &&
    v.client_secret.length > 0 &&
    typeof v.expires_at === "number" &&
    typeof v.session_id === "string" &&
    backendOk
  );
}

// ---------------------------------------------------------------------------------- session

/** @type {WeakMap<object, BrokerSession>} */
const SESSIONS = new WeakMap();

/**
 * One workflow's secrets for one signed-in user: mints, refreshes (naming the previous
 * session, so the broker cancels it), retries and reports.
 */
class BrokerSession {
  /** @param {KitOptions} options */
  constructor(options) {
    if (!options || typeof options.workflow !== "string" || !options.workflow) {
      throw new BrokerError('Name the workflow: createChatKitApi({workflow: "<name>", …}).', {
        code: "invalid_options",
      });
    }
    this.workflow = options.workflow;
    this.getToken = options.getToken;
    this.broker = options.broker ?? "";
    /** @type {FetchLike} */
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.signal = options.signal;
    const retry = options.retry ?? {};
    this.retries = retry.retries ?? 3;
    this.baseDelayMs = retry.baseDelayMs ?? 500;
    this.maxDelayMs = retry.maxDelayMs ?? 8000;
    this.maxRetryAfterMs = retry.maxRetryAfterMs ?? 30000;
    this.refreshMarginMs = options.refreshMarginMs ?? 60000;
    this.timeoutMs = options.timeoutMs ?? 15000;
    this.events = new KitEvents();
    if (options.onEvent) this.events.subscribe(options.onEvent);
    /** @type {MintAnswer | null} */
    this.answer = null;
    this.mintedAt = 0;
    /** @type {Promise<MintAnswer> | null} */
    this.minting = null;
    this.closed = false;
    this.signedOut = false;
  }

  /** @param {Omit<KitEvent, "at">} event */
  emit(event) {
    this.events.add({ at: Date.now(), workflow: this.workflow, ...event });
  }

  check() {
    if (this.signedOut) throw signedOut();
    if (this.signal?.aborted || this.closed) throw aborted();
  }

  /**
   * The caller's token, or null when no getToken was given (mock mode).
   * @param {boolean} afterUnauthorized
   * @returns {Promise<string | null>}
   */
  async token(afterUnauthorized) {
    if (!this.getToken) return null;
    let token;
    try {
      token = await this.getToken({ afterUnauthorized });
    } catch (err) {
      throw new BrokerError(`getToken() failed: ${err instanceof Error ? err.message : String(err)}`, {
        code: "token_error",
        cause: err,
      });
    }
    if (typeof token !== "string" || !token.trim()) {
      throw new BrokerError(
        "getToken() returned no token: return the signed-in user's JWT for the broker " +
          "(omit getToken only against a broker in mock mode).",
        { code: "no_token" },
      );
    }
    return token.trim();
  }

  /**
   * One JSON request to the broker. Resolves to the parsed body and the request id; rejects
   * with BrokerError.
   * @param {string} path
   * @param {unknown} body
   * @param {string | null} token
   * @returns {Promise<{data: unknown, requestId: string | null}>}
   */
  async post(path, body, token) {
    const url = join(this.broker, path);
    const what = `POST ${path}`;
    const headers = new Headers({ Accept: "application/json", "Content-Type": "application/json" });
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const started = performance.now();
    // One deadline for the answer and its body; the caller's signal still stops it at once.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.timeoutMs);
    const stop = () => deadline.abort();
    this.signal?.addEventListener("abort", stop, { once: true });
    const failed = (/** @type {unknown} */ err, /** @type {number} */ status) => {
      if (this.signal?.aborted) return aborted();
      if (deadline.signal.aborted) {
        return new BrokerError(`The broker did not answer ${what} within ${this.timeoutMs / 1000} s.`, {
          status,
          code: "timeout",
          cause: err,
        });
      }
      return null;
    };
    /** @type {Response} */
    let res;
    let text = "";
    let readFailed = null;
    try {
      try {
        res = await this.fetch(url, {
          method: "POST",
          headers,
          body: JSON.stringify(body),
          signal: deadline.signal,
        });
      } catch (err) {
        this.emit({
          type: "request",
          method: "POST",
          url,
          status: 0,
          ms: Math.round(performance.now() - started),
        });
        const stopped = failed(err, 0);
        if (stopped) throw stopped;
        const crossOrigin =
          typeof location !== "undefined" && new URL(url, location.href).origin !== location.origin;
        const hint = crossOrigin
          ? "is it running, and does its BROKER_ALLOWED_ORIGINS list this page's origin?"
          : "is it running?";
        throw new BrokerError(
          `Could not reach the broker at ${url} (${err instanceof Error ? err.message : String(err)}): ${hint}`,
          { code: "network_error", cause: err },
        );
      }
      try {
        text = await res.text();
      } catch (err) {
        readFailed = failed(err, res.status) ?? err;
      }
    } finally {
      clearTimeout(timer);
      this.signal?.removeEventListener("abort", stop);
    }
    this.emit({
      type: "request",
      method: "POST",
      url,
      status: res.status,
      ms: Math.round(performance.now() - started),
    });
    if (readFailed instanceof BrokerError) throw readFailed;
    if (readFailed) {
      throw new BrokerError(`The broker's answer to ${what} broke off before it was complete.`, {
        status: res.status,
        code: "network_error",
        requestId: res.headers.get("X-Request-ID"),
        cause: readFailed,
      });
    }
    if (!res.ok) throw await errorFromResponse(res, what, text);
    try {
      return { data: JSON.parse(text), requestId: res.headers.get("X-Request-ID") };
    } catch {
      throw await errorFromResponse(res, what, text);
    }
  }

  /**
   * Runs `attempt` with the retry rules: a 401 asks getToken once more, network errors, 5xx
   * and 429 back off (honouring Retry-After) a bounded number of times, anything else is final.
   * @template T
   * @param {(token: string | null) => Promise<T>} attempt
   * @returns {Promise<T>}
   */
  async withRetries(attempt) {
    let token = await this.token(false);
    let askedAgain = false;
    for (let retry = 0; ;) {
      this.check();
      try {
        return await attempt(token);
      } catch (err) {
        const e =
          err instanceof BrokerError ? err : new BrokerError(String(err), { code: "error", cause: err });
        if (e.code === "aborted" || e.code === "signed_out") throw e;
        if (e.status === 401 && this.getToken && !askedAgain) {
          askedAgain = true;
          this.emit({ type: "token", reason: "the broker refused the token (401)", error: e });
          token = await this.token(true);
          continue;
        }
        if (!e.transient || retry >= this.retries) throw e;
        retry += 1;
        let delayMs = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (retry - 1));
        delayMs = Math.round(delayMs / 2 + (Math.random() * delayMs) / 2);
        if (e.retryAfterMs !== null) {
          if (e.retryAfterMs > this.maxRetryAfterMs) throw e;
          delayMs = e.retryAfterMs;
        }
        this.emit({ type: "retry", attempt: retry, delayMs, error: e });
        await sleep(delayMs, this.signal);
      }
    }
  }

  /**
   * A new secret. Concurrent callers share one mint; a refresh names the previous session.
   * @param {string} reason
   * @returns {Promise<MintAnswer>}
   */
  mint(reason) {
    if (!this.minting) {
      this.minting = this.mintNow(reason).finally(() => {
        this.minting = null;
      });
    }
    return this.minting;
  }

  /** @param {string} reason @returns {Promise<MintAnswer>} */
  async mintNow(reason) {
    const previous = this.answer?.session_id;
    /** @type {{workflow: string, previous_session_id?: string}} */
    const body = { workflow: this.workflow };
    if (previous) body.previous_session_id = previous;
    try {
      this.check();
      const answer = await this.withRetries(async (token) => {
        const { data, requestId } = await this.post(MINT_PATH, body, token);
        if (!isMintAnswer(data)) {
          throw new BrokerError(
            `The broker's answer to POST ${MINT_PATH} is not a session (no client_secret, ` +
              "expires_at and session_id): is `broker` pointing at a chatkit-broker?",
            { status: 200, code: "bad_response", requestId },
          );
        }
        return data;
      });
      this.check();
      this.answer = answer;
      this.mintedAt = Date.now();
      this.emit({
        type: previous ? "refresh" : "mint",
        reason,
        kind: kindOf(answer),
        backendUrl: answer.backend ? join(this.broker, answer.backend.url) : null,
        sessionId: answer.session_id,
        ...(previous ? { previousSessionId: previous } : {}),
        expiresAt: answer.expires_at,
      });
      return answer;
    } catch (err) {
      const e = err instanceof BrokerError ? err : new BrokerError(String(err), { cause: err });
      if (e.code !== "aborted" && e.code !== "signed_out") this.emit({ type: "error", reason, error: e });
      throw e;
    }
  }

  /** Whether the current secret is too close to its expiry to send. */
  expiring() {
    if (!this.answer) return true;
    const now = Date.now();
    if (now - this.mintedAt < 1000) return false; // just minted: use it, whatever the clocks say
    const lifetime = this.answer.expires_at * 1000 - this.mintedAt;
    const margin = Math.min(this.refreshMarginMs, Math.max(0, lifetime / 2));
    return this.answer.expires_at * 1000 - now <= margin;
  }

  /** The current answer, re-minted first when it is about to expire. */
  async fresh() {
    this.check();
    if (this.expiring() && this.answer) return this.mint("the secret is about to expire");
    return /** @type {MintAnswer} */ (this.answer);
  }

  /**
   * Cancels every broker session of the user (all workflows); resolves to their ids.
   * @returns {Promise<string[]>}
   */
  async signOut() {
    try {
      const { data } = await this.withRetries((token) => this.post(CANCEL_PATH, { all: true }, token));
      const list = data && typeof data === "object" && "cancelled" in data ? data.cancelled : null;
      const cancelled = Array.isArray(list) ? list.filter((id) => typeof id === "string") : [];
      this.emit({ type: "signout", cancelled: cancelled.length });
      return cancelled;
    } catch (err) {
      const e = err instanceof BrokerError ? err : new BrokerError(String(err), { cause: err });
      this.emit({ type: "error", reason: "sign-out", error: e });
      throw e;
    } finally {
      this.signedOut = true;
    }
  }
}

/** @param {MintAnswer} answer */
function kindOf(answer) {
  if (answer.workflow && typeof answer.workflow.kind === "string") return answer.workflow.kind;
  if (!answer.backend) return "hosted";
  return answer.mock ? "mock" : "custom";
}

// ---------------------------------------------------------------------------------- api objects

/** @param {BrokerSession} session @returns {HostedApi} */
function hostedApi(session) {
  /** @type {string | null} */
  let unused = session.answer?.client_secret ?? null;
  return {
    getClientSecret: async (currentClientSecret) => {
      session.check();
      if (currentClientSecret === null && unused !== null && !session.expiring()) {
        const secret = unused; // the prefetched one: ChatKit's mount does not wait on the broker
        unused = null;
        return secret;
      }
      unused = null;
      const answer = await session.mint(
        currentClientSecret ? "ChatKit asked for a refresh" : "ChatKit remounted",
      );
      return answer.client_secret;
    },
  };
}

/**
 * @param {RequestInfo | URL} input
 * @param {RequestInit | undefined} init
 */
function replayable(input, init) {
  const body = init?.body;
  return (
    !(typeof ReadableStream !== "undefined" && body instanceof ReadableStream) &&
    !(input instanceof Request && input.bodyUsed)
  );
}

/** @param {BrokerSession} session @param {BackendInfo} backend @returns {CustomApi} */
function customApi(session, backend) {
  const url = join(session.broker, backend.url);

  /**
   * @param {RequestInfo | URL} input
   * @param {RequestInit | undefined} init
   * @param {string} secret
   */
  async function send(input, init, secret) {
    const request = input instanceof Request ? input : null;
    const headers = new Headers(init?.headers ?? request?.headers);
    headers.set("Authorization", `Bearer ${secret}`);
    const method = (init?.method ?? request?.method ?? "GET").toUpperCase();
    const target = request ? request.url : String(input);
    const started = performance.now();
    try {
      const res = await session.fetch(input, { ...init, headers });
      session.emit({
        type: "request",
        method,
        url: target,
        status: res.status,
        ms: Math.round(performance.now() - started),
      });
      return res;
    } catch (err) {
      session.emit({
        type: "request",
        method,
        url: target,
        status: 0,
        ms: Math.round(performance.now() - started),
      });
      throw new BrokerError(
        `Could not reach the ChatKit backend at ${target} (${err instanceof Error ? err.message : String(err)}).`,
        { code: "network_error", cause: err },
      );
    }
  }

  /** @type {typeof fetch} */
  const fetchWithSecret = async (input, init) => {
    const answer = await session.fresh();
    const again = input instanceof Request ? input.clone() : input;
    const res = await send(input, init, answer.client_secret);
    if (res.status !== 401 || !replayable(again, init)) return res;
    // Refused: expired early, cancelled elsewhere, or the broker restarted. Re-mint once,
    // unless another request already did since this one was sent.
    const current = session.answer;
    const next =
      current && current.session_id !== answer.session_id
        ? current
        : await session.mint("the backend refused the secret (401)");
    return send(again, init, next.client_secret);
  };

  /** @type {CustomApi} */
  const api = { url, domainKey: backend.domain_key, fetch: fetchWithSecret };
  const strategy = backend.upload_strategy;
  if (strategy?.type === "two_phase") api.uploadStrategy = { type: "two_phase" };
  else if (strategy?.type === "direct" && typeof strategy.uploadUrl === "string")
    api.uploadStrategy = { type: "direct", uploadUrl: join(session.broker, strategy.uploadUrl) };
  return api;
}

/**
 * ChatKit's `composer` option with `attachments` set from the workflow's file policy (the
 * broker's mint answer): the page's own composer options are kept, but it cannot turn on
 * what the workflow refuses, nor raise its limits.
 * @param {unknown} composer the page's composer option, if any
 * @param {BackendInfo | null | undefined} backend
 * @returns {Record<string, unknown> | undefined}
 */
export function composerFor(composer, backend) {
  let given = composer && typeof composer === "object" ? /** @type {Record<string, any>} */ (composer) : undefined;
  const dictation = backend?.dictation;
  if (dictation) {
    // only where the workflow transcribes: the page may turn it off, not on
    const own = given?.dictation && typeof given.dictation === "object" ? given.dictation : {};
    given = { ...given, dictation: { ...own, enabled: Boolean(dictation.enabled) && own.enabled !== false } };
  }
  const policy = backend?.attachments;
  if (!policy) return given;
  const own = given?.attachments && typeof given.attachments === "object" ? given.attachments : {};
  if (!policy.enabled) return { ...given, attachments: { ...own, enabled: false } };
  /** @type {Record<string, unknown>} */
  const attachments = { ...own, enabled: own.enabled !== false };
  if (typeof policy.max_size === "number")
    attachments.maxSize = typeof own.maxSize === "number" ? Math.min(own.maxSize, policy.max_size) : policy.max_size;
  if (typeof policy.max_count === "number")
    attachments.maxCount =
      typeof own.maxCount === "number" ? Math.min(own.maxCount, policy.max_count) : policy.max_count;
  if (policy.accept && !own.accept) attachments.accept = policy.accept;
  return { ...given, attachments };
}

/**
 * Mints the first secret for `workflow` and resolves to the object to pass as ChatKit's `api`
 * option: `{getClientSecret}` for a hosted workflow, `{url, domainKey, fetch}` for a custom
 * backend. Rejects with a BrokerError when the broker refuses or cannot be reached.
 * @param {KitOptions} options
 * @returns {Promise<ChatKitApi>}
 */
export async function createChatKitApi(options) {
  const session = new BrokerSession(options);
  const first = await session.mint("first secret");
  const api = first.backend ? customApi(session, first.backend) : hostedApi(session);
  SESSIONS.set(api, session);
  return api;
}

/**
 * The kit's event stream of an `api` made by createChatKitApi (null for any other object).
 * @param {object} api
 * @returns {KitEvents | null}
 */
export function eventsOf(api) {
  return SESSIONS.get(api)?.events ?? null;
}

/**
 * What the kit knows of an `api` made by createChatKitApi: the backend's kind and URL, the
 * workflow's file policy (null when it takes no files, or for hosted workflows) and the
 * current session (never its secret); null for any other object.
 * @param {object} api
 * @returns {{workflow: string, kind: string, backendUrl: string | null, attachments: BrokerAttachments | null, sessionId: string, expiresAt: number} | null}
 */
export function describeApi(api) {
  const session = SESSIONS.get(api);
  const answer = session?.answer;
  if (!session || !answer) return null;
  return {
    workflow: session.workflow,
    kind: kindOf(answer),
    backendUrl: answer.backend ? join(session.broker, answer.backend.url) : null,
    attachments: answer.backend?.attachments?.enabled ? answer.backend.attachments : null,
    sessionId: answer.session_id,
    expiresAt: answer.expires_at,
  };
}

/**
 * Cancels all of the user's broker sessions (sign-out) for an `api` made by createChatKitApi;
 * afterwards that api refuses to hand out secrets. Resolves to the cancelled sessions' ids.
 * @param {object} api
 * @returns {Promise<string[]>}
 */
export function signOut(api) {
  const session = SESSIONS.get(api);
  if (!session) {
    return Promise.reject(
      new BrokerError("signOut() needs an api made by createChatKitApi.", { code: "invalid_options" }),
    );
  }
  return session.signOut();
}

/**
 * @param {string} tag
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
function whenDefined(tag, signal) {
  if (customElements.get(tag)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted());
    const stop = () => reject(aborted());
    signal?.addEventListener("abort", stop, { once: true });
    customElements.whenDefined(tag).then(() => {
      signal?.removeEventListener("abort", stop);
      resolve();
    });
  });
}

/**
 * @typedef {Partial<KitOptions> & {api?: ChatKitApi} & Record<string, unknown>} ConnectOptions
 *   the kit's options (or an `api` from createChatKitApi) plus any other ChatKit options
 *   (theme, history, composer, …), which are passed on to `setOptions` unchanged
 */

/**
 * Mints (unless handed an `api` from createChatKitApi), waits until `<openai-chatkit>` is
 * defined (the CDN script may still be loading), forwards its chatkit.* events to the kit's
 * event stream and calls `element.setOptions({...rest, api})`.
 * @param {HTMLElement & {setOptions?: (options: any) => void}} element the `<openai-chatkit>` element
 * @param {ConnectOptions} options
 * @returns {Promise<ChatKitConnection>}
 */
export async function connectChatKit(element, options) {
  const {
    api: given,
    workflow,
    getToken,
    broker,
    fetch,
    onEvent,
    signal,
    retry,
    refreshMarginMs,
    timeoutMs,
    ...rest
  } = options;
  /** @type {ChatKitApi} */
  let api;
  if (given) {
    api = given;
  } else {
    if (typeof workflow !== "string") {
      throw new BrokerError('Name the workflow: connectChatKit(element, {workflow: "<name>", …}).', {
        code: "invalid_options",
      });
    }
    api = await createChatKitApi({
      workflow,
      getToken,
      broker,
      fetch,
      onEvent,
      signal,
      retry,
      refreshMarginMs,
      timeoutMs,
    });
  }
  const session = SESSIONS.get(api);
  const events = session?.events ?? new KitEvents();
  if (given && onEvent) events.subscribe(onEvent);
  await whenDefined(element.localName, signal ?? session?.signal);

  const forward = /** @param {Event} event */ (event) =>
    events.add({
      type: "chatkit",
      at: Date.now(),
      name: event.type,
      detail: /** @type {CustomEvent} */ (event).detail,
    });
  for (const name of CHATKIT_EVENTS) element.addEventListener(name, forward);
  const setOptions = element.setOptions;
  if (typeof setOptions !== "function") {
    throw new BrokerError(`<${element.localName}> has no setOptions(): is it OpenAI's <openai-chatkit>?`, {
      code: "invalid_options",
    });
  }
  const composer = composerFor(rest.composer, session?.answer?.backend);
  setOptions.call(element, composer ? { ...rest, composer, api } : { ...rest, api });

  return {
    api,
    events,
    signOut: () => signOut(api),
    disconnect: () => {
      for (const name of CHATKIT_EVENTS) element.removeEventListener(name, forward);
      if (session) session.closed = true;
    },
  };
}
