// @ts-check
/**
 * A small client of the ChatKit protocol (the one chatkit-python's ChatKitServer serves), for
 * the test page's protocol console: when the ChatKit script cannot load, the page still talks
 * to a custom backend through the kit's fetch and shows what it streams. Diagnostic only; it
 * understands text replies and attachments (two-phase uploads), not widgets or tools.
 *
 * Every request is a POST of {type, params} to the backend URL. Streaming ones answer with
 * server-sent events (`data: {json}` blocks), the rest with JSON (chatkit-python chatkit/types.py).
 */

import { BrokerError, errorFromResponse } from "./chatkit-broker.js";

/**
 * @typedef {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>} FetchLike
 * @typedef {{type: string, [key: string]: any}} ChatKitEvent one server-sent event of a stream
 *
 * @typedef {object} AttachmentRef a file a user message carries, as the backend describes it
 * @property {string} id
 * @property {string} name
 * @property {string} mimeType
 * @property {string | null} previewUrl an image's signed preview URL (works as `<img src>`)
 *
 * @typedef {object} Message one line of the transcript
 * @property {string} id the thread item id
 * @property {"user" | "assistant" | "widget" | "other"} role
 * @property {string} text all content parts, joined
 * @property {string[]} parts the text of each content part, by content_index
 * @property {AttachmentRef[]} attachments the files a user message carries
 * @property {boolean} done false while the assistant's text is still streaming in
 *
 * @typedef {object} Transcript what the console shows of one thread
 * @property {string | null} threadId
 * @property {string | null} title
 * @property {Message[]} messages
 * @property {string | null} progress the backend's last progress_update text while a reply runs
 * @property {{message: string, allowRetry: boolean} | null} error the stream's error event, if any
 */

/**
 * The input of a text message, with the ids of uploaded attachments (UserMessageInput: all
 * four keys are required).
 * @param {string} text @param {string[]} [attachments]
 */
export function userInput(text, attachments = []) {
  return { content: [{ type: "input_text", text }], attachments, inference_options: {} };
}

/** A backend's attachment (chatkit's FileAttachment / ImageAttachment) as the console shows it. @param {any} a @returns {AttachmentRef} */
export function attachmentRef(a) {
  return {
    id: String(a?.id ?? ""),
    name: String(a?.name ?? ""),
    mimeType: String(a?.mime_type ?? ""),
    previewUrl: typeof a?.preview_url === "string" ? a.preview_url : null,
  };
}

/** @returns {Transcript} */
export function emptyTranscript() {
  return { threadId: null, title: null, messages: [], progress: null, error: null };
}

/**
 * Text of each of an item's content parts (user input_text/input_tag, assistant output_text).
 * @param {any} item
 * @returns {string[]}
 */
function itemParts(item) {
  if (item.type === "widget") return [item.copy_text || "[widget]"];
  const parts = Array.isArray(item.content) ? item.content : [];
  return parts.map((/** @type {any} */ part) => (typeof part?.text === "string" ? part.text : ""));
}

/** @param {any} item @returns {Message["role"]} */
function roleOf(item) {
  if (item.type === "user_message") return "user";
  if (item.type === "assistant_message") return "assistant";
  if (item.type === "widget") return "widget";
  return "other";
}

/** @param {any} item @param {boolean} done @returns {Message} */
function toMessage(item, done) {
  const parts = itemParts(item);
  const attachments = Array.isArray(item.attachments) ? item.attachments.map(attachmentRef) : [];
  return { id: String(item.id), role: roleOf(item), text: parts.join(""), parts, attachments, done };
}

/**
 * Applies one stream event to the transcript (in place) and returns it.
 * @param {Transcript} t
 * @param {ChatKitEvent} event
 */
export function applyEvent(t, event) {
  const find = (/** @type {string} */ id) => t.messages.find((m) => m.id === id);
  switch (event.type) {
    case "thread.created":
    case "thread.updated":
      t.threadId = event.thread?.id ?? t.threadId;
      t.title = event.thread?.title ?? t.title;
      break;
    case "thread.item.added": {
      if (!event.item || roleOf(event.item) === "other") break;
      const existing = find(event.item.id);
      if (existing) Object.assign(existing, toMessage(event.item, false));
      else t.messages.push(toMessage(event.item, event.item.type === "user_message"));
      break;
    }
    case "thread.item.updated": {
      const message = find(event.item_id);
      const update = event.update ?? {};
      if (!message) break;
      const i = Number(update.content_index ?? 0);
      if (update.type === "assistant_message.content_part.text_delta") {
        message.parts[i] = (message.parts[i] ?? "") + (update.delta ?? "");
      } else if (
        update.type === "assistant_message.content_part.added" ||
        update.type === "assistant_message.content_part.done"
      ) {
        message.parts[i] = update.content?.text ?? message.parts[i] ?? "";
      }
      message.text = message.parts.join("");
      break;
    }
    case "thread.item.done":
    case "thread.item.replaced": {
      if (!event.item || roleOf(event.item) === "other") break;
      const existing = find(event.item.id);
      if (existing) Object.assign(existing, toMessage(event.item, true));
      else t.messages.push(toMessage(event.item, true));
      if (event.item.type === "assistant_message") t.progress = null;
      break;
    }
    case "thread.item.removed":
      t.messages = t.messages.filter((m) => m.id !== event.item_id);
      break;
    case "progress_update":
      t.progress = typeof event.text === "string" ? event.text : null;
      break;
    case "error":
      t.progress = null;
      for (const m of t.messages) m.done = true; // the reply ends here
      t.error = {
        message: event.message || `the backend reported an error (${event.code})`,
        allowRetry: Boolean(event.allow_retry),
      };
      break;
    default:
      break;
  }
  return t;
}

/**
 * The events of a server-sent-event response, parsed. Rejects with a BrokerError when the
 * body breaks off, ends inside an event, or carries something that is not JSON.
 * @param {Response} res
 * @param {string} what e.g. "threads.create"
 * @returns {AsyncGenerator<ChatKitEvent, void, void>}
 */
export async function* readEvents(res, what) {
  const requestId = res.headers.get("X-Request-ID");
  if (!res.body) return;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let count = 0;
  for (;;) {
    /** @type {ReadableStreamReadResult<Uint8Array>} */
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      throw new BrokerError(`The backend's stream for ${what} broke off after ${count} events.`, {
        status: res.status,
        code: "stream_interrupted",
        requestId,
        cause: err,
      });
    }
    buffer += chunk.done ? decoder.decode() : decoder.decode(chunk.value, { stream: true });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a comment or keep-alive
      /** @type {unknown} */
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        throw new BrokerError(`The backend's stream for ${what} carried an event that is not JSON.`, {
          status: res.status,
          code: "bad_response",
          requestId,
        });
      }
      if (!event || typeof event !== "object" || typeof (/** @type {any} */ (event).type) !== "string") {
        throw new BrokerError(`The backend's stream for ${what} carried an event without a type.`, {
          status: res.status,
          code: "bad_response",
          requestId,
        });
      }
      count += 1;
      yield /** @type {ChatKitEvent} */ (event);
    }
    if (chunk.done) break;
  }
  if (buffer.trim()) {
    throw new BrokerError(`The backend's stream for ${what} ended in the middle of an event.`, {
      status: res.status,
      code: "stream_interrupted",
      requestId,
    });
  }
}

/** Speaks the ChatKit protocol to one backend URL through a given fetch (the kit's). */
export class ProtocolClient {
  /**
   * @param {{url: string, fetch: FetchLike, onEvent?: (event: ChatKitEvent, request: string) => void}} options
   */
  constructor({ url, fetch, onEvent }) {
    this.url = url;
    this.fetch = fetch;
    this.onEvent = onEvent ?? (() => {});
  }

  /** @param {string} type @param {unknown} params */
  async send(type, params) {
    let res;
    try {
      res = await this.fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
        body: JSON.stringify({ type, params }),
      });
    } catch (err) {
      if (err instanceof BrokerError) throw err;
      throw new BrokerError(`Could not reach the ChatKit backend at ${this.url} (${String(err)}).`, {
        code: "network_error",
        cause: err,
      });
    }
    if (!res.ok) throw await errorFromResponse(res, type);
    return res;
  }

  /**
   * A JSON request (threads.list, threads.get_by_id, …): resolves to the parsed answer.
   * @param {string} type @param {unknown} params @returns {Promise<any>}
   */
  async request(type, params) {
    const res = await this.send(type, params);
    const text = await res.text();
    try {
      return JSON.parse(text);
    } catch {
      throw await errorFromResponse(res, type, text);
    }
  }

  /**
   * A streaming request: applies every event to `transcript` (and reports it), and rejects
   * with code "stream_interrupted" when the stream ends while a reply is still open.
   * @param {string} type @param {unknown} params @param {Transcript} transcript
   * @param {() => void} [changed] called after each event, to re-render
   */
  async stream(type, params, transcript, changed = () => {}) {
    const res = await this.send(type, params);
    const contentType = res.headers.get("Content-Type") || "";
    if (!contentType.startsWith("text/event-stream")) throw await errorFromResponse(res, type);
    /** @type {Set<string>} */
    const open = new Set();
    let sawError = false;
    for await (const event of readEvents(res, type)) {
      this.onEvent(event, type);
      if (event.type === "thread.item.added" && event.item?.type === "assistant_message")
        open.add(event.item.id);
      if (event.type === "thread.item.done" || event.type === "thread.item.replaced")
        open.delete(event.item?.id);
      if (event.type === "thread.item.removed") open.delete(event.item_id);
      if (event.type === "error") sawError = true;
      applyEvent(transcript, event);
      changed();
    }
    if (open.size && !sawError) {
      for (const m of transcript.messages) if (open.has(m.id)) m.done = true;
      throw new BrokerError(`The backend closed the stream for ${type} in the middle of a reply.`, {
        status: res.status,
        code: "stream_interrupted",
        requestId: res.headers.get("X-Request-ID"),
      });
    }
  }

  /** @param {string} text @param {Transcript} t @param {() => void} [changed] @param {string[]} [attachments] */
  createThread(text, t, changed, attachments = []) {
    return this.stream("threads.create", { input: userInput(text, attachments) }, t, changed);
  }

  /** @param {string} threadId @param {string} text @param {Transcript} t @param {() => void} [changed] @param {string[]} [attachments] */
  addUserMessage(threadId, text, t, changed, attachments = []) {
    return this.stream(
      "threads.add_user_message",
      { thread_id: threadId, input: userInput(text, attachments) },
      t,
      changed,
    );
  }

  /**
   * Attaches a file the two-phase way, as ChatKit does: `attachments.create` (name, size,
   * type), then the bytes as multipart (`file`) to the upload descriptor's URL. That URL is a
   * signed capability: it is fetched with `upload` (the plain fetch), never with the bearer.
   * @param {File} file
   * @param {FetchLike} [upload]
   * @returns {Promise<AttachmentRef>}
   */
  async attach(file, upload = (input, init) => fetch(input, init)) {
    const created = await this.request("attachments.create", {
      name: file.name,
      size: file.size,
      mime_type: file.type || "application/octet-stream",
    });
    const descriptor = created?.upload_descriptor;
    if (!descriptor || typeof descriptor.url !== "string") {
      throw new BrokerError(
        "The backend's attachments.create answer has no upload_descriptor: the console only " +
          "knows two-phase uploads.",
        { code: "bad_response" },
      );
    }
    const form = new FormData();
    form.append("file", file, file.name);
    let res;
    try {
      res = await upload(descriptor.url, {
        method: descriptor.method || "POST",
        headers: descriptor.headers || {},
        body: form,
      });
    } catch (err) {
      throw new BrokerError(`Could not upload ${file.name} (${String(err)}).`, {
        code: "network_error",
        cause: err,
      });
    }
    if (!res.ok) throw await errorFromResponse(res, "the upload");
    return attachmentRef(created);
  }

  /** attachments.delete: a file the user took back before sending. @param {string} id */
  detach(id) {
    return this.request("attachments.delete", { attachment_id: id });
  }

  /** @param {string} threadId @param {string} itemId @param {Transcript} t @param {() => void} [changed] */
  retryAfterItem(threadId, itemId, t, changed) {
    return this.stream("threads.retry_after_item", { thread_id: threadId, item_id: itemId }, t, changed);
  }

  /** @returns {Promise<{data: {id: string, title?: string | null, created_at?: string}[], has_more: boolean}>} */
  listThreads(limit = 20) {
    return this.request("threads.list", { limit, order: "desc" });
  }

  /** The thread with its items, as a transcript. @param {string} threadId @returns {Promise<Transcript>} */
  async loadThread(threadId) {
    const thread = await this.request("threads.get_by_id", { thread_id: threadId });
    const t = emptyTranscript();
    t.threadId = thread.id;
    t.title = thread.title ?? null;
    for (const item of thread.items?.data ?? []) {
      if (roleOf(item) !== "other") t.messages.push(toMessage(item, true));
    }
    return t;
  }
}
