// Stand-in for OpenAI's chatkit.js, served by tests/static/test_page.py through request interception
// (the real script comes from cdn.platform.openai.com, which the tests cannot reach).
// It defines <openai-chatkit>, records what the page hands it on window.__chatkitStandIn, and
// behaves like the real component where the page depends on it: in hosted mode it calls
// getClientSecret(null) on mount and getClientSecret(<current secret>) on refresh(); in
// custom-backend mode it POSTs to api.url through api.fetch. Then it dispatches chatkit.* events.
(() => {
  const record = {
    setOptions: [], // one summary per setOptions() call
    secrets: [], // every secret getClientSecret resolved to, in order
    backend: [], // custom-backend mode: {status, body} of each request
    errors: [],
  };
  window.__chatkitStandIn = record;

  const summarize = (options) => {
    const api = options.api || {};
    return {
      apiKeys: Object.keys(api).sort(),
      url: api.url ?? null,
      domainKey: api.domainKey ?? null,
      hasFetch: typeof api.fetch === "function",
      hasGetClientSecret: typeof api.getClientSecret === "function",
    };
  };

  class ChatKitStandIn extends HTMLElement {
    connectedCallback() {
      // How many secrets the page had minted (requests completed) when it mounted us.
      record.sessionPostsBeforeMount = performance
        .getEntriesByType("resource")
        .filter((e) => new URL(e.name).pathname === "/api/chatkit/session").length;
      this.style.display = "flex";
      this.style.alignItems = "center";
      this.style.justifyContent = "center";
      this.style.background = "repeating-linear-gradient(135deg, #eef2fb 0 12px, #e4eaf8 12px 24px)";
      this.style.color = "#2a3550";
      this.style.font = "600 15px system-ui, sans-serif";
      this.textContent = "ChatKit stand-in (tests)";
    }

    setOptions(options) {
      this.options = options;
      record.setOptions.push(summarize(options));
      this.start().catch((error) => {
        record.errors.push(String(error));
        this.emit("chatkit.error", { error });
      });
    }

    emit(name, detail) {
      this.dispatchEvent(new CustomEvent(name, { detail }));
    }

    async start() {
      const api = this.options.api;
      if (api.getClientSecret) {
        this.secret = await api.getClientSecret(null);
        record.secrets.push(this.secret);
      } else {
        const doFetch = api.fetch || fetch;
        const res = await doFetch(api.url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ type: "threads.list", params: { limit: 5, order: "desc" } }),
        });
        record.backend.push({ status: res.status, body: await res.text() });
      }
      this.emit("chatkit.ready");
      this.emit("chatkit.thread.change", { threadId: null });
      this.emit("chatkit.log", { name: "stand-in.mounted", data: { mode: api.url ? "custom" : "hosted" } });
    }

    // What the real component does shortly before the secret expires.
    async refresh() {
      this.emit("chatkit.thread.load.start", { threadId: "thr_standin" });
      this.secret = await this.options.api.getClientSecret(this.secret);
      record.secrets.push(this.secret);
      this.emit("chatkit.thread.load.end", { threadId: "thr_standin" });
      this.emit("chatkit.response.start");
      this.emit("chatkit.response.end");
    }
  }

  record.refresh = () => document.querySelector("openai-chatkit").refresh();
  customElements.define("openai-chatkit", ChatKitStandIn);
})();
