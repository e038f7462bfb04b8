// Compiled by test_kit_types.py with `tsc --noEmit` against @openai/chatkit's own types: what
// the kit builds must be what ChatKit accepts. Not shipped; never run.
import type { ChatKitOptions, OpenAIChatKit } from "@openai/chatkit";
import {
  BrokerError,
  connectChatKit,
  createChatKitApi,
  describeApi,
  signOut,
  type ChatKitApi,
  type KitEvent,
} from "chatkit-broker";

export async function hosted(): Promise<ChatKitOptions> {
  const api: ChatKitOptions["api"] = await createChatKitApi({
    workflow: "support",
    getToken: () => "a.jwt.token",
  });
  return { api, theme: { colorScheme: "dark" } };
}

export async function custom(el: OpenAIChatKit): Promise<void> {
  const api: ChatKitApi = await createChatKitApi({
    workflow: "gateway-demo",
    broker: "https://broker.example.com",
    getToken: async ({ afterUnauthorized }) => (afterUnauthorized ? "fresh.jwt" : "cached.jwt"),
    retry: { retries: 2, baseDelayMs: 100 },
    onEvent: (event: KitEvent) => console.info(event.type, event.status ?? ""),
  });
  el.setOptions({ api, history: { enabled: true } });
  if ("url" in api) {
    const custom: Extract<ChatKitOptions["api"], { url: string }> = api;
    const res: Response = await custom.fetch!(custom.url, { method: "POST", body: "{}" });
    console.info(res.status, describeApi(api)?.kind);
  }
  await signOut(api);
}

export async function connected(el: OpenAIChatKit): Promise<string[]> {
  const chat = await connectChatKit(el, { workflow: "support", getToken: () => "t", locale: "en" });
  const api: ChatKitOptions["api"] = chat.api;
  chat.events.subscribe((event) => {
    if (event.error instanceof BrokerError) console.warn(event.error.status, event.error.code, event.error.requestId);
  });
  void api;
  return chat.signOut();
}
