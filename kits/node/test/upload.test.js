// Streamed uploads: the broker's file relay signs an assertion without `req_sha256` (a stream
// cannot be hashed in advance) but with `htm`/`htu`, the method and backend URL. The verifier
// lets it through only for that method and path (+ query); over real HTTP, a Node server
// verifying with `verifyUpload` takes a body of several MiB as it arrives.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { dirname, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { InvalidAssertion, createVerifier, verifyUpload } from "../index.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const python = process.env.CHATKIT_BROKER_PYTHON || resolve(root, ".venv/bin/python");
const quiet = { error() {}, warn() {} };

function listen(handler) {
  const server = createServer(handler);
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

function post(port, path, headers, body, method = "POST") {
  return new Promise((ok, fail) => {
    const req = httpRequest({ host: "127.0.0.1", port, path, method, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => ok({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString() || "{}") }));
    });
    req.on("error", fail);
    // written in pieces, as the broker streams it
    for (let at = 0; at < body.length; at += 256 * 1024) req.write(body.subarray(at, at + 256 * 1024));
    req.end();
  });
}

describe("uploads the broker streams", { skip: !existsSync(python) && `no Python at ${python}` }, () => {
  let fx;
  let jwks;
  let jwksUrl;
  const path = "/support/attachments/atc_1/upload?v=1&sig=a+b"; // the signed query, reordered

  before(async () => {
    fx = JSON.parse(execFileSync(python, ["-m", "tests.support.assertion_fixture"], { cwd: root, encoding: "utf8" }));
    jwks = await listen((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(fx.jwks));
    });
    jwksUrl = `http://127.0.0.1:${jwks.address().port}/.well-known/jwks.json`;
  });
  after(() => jwks?.close());

  const verifier = () => createVerifier({ jwksUrl, audience: fx.audience, issuer: fx.issuer, log: quiet });

  it("accepts an upload assertion for this method and path, on whatever host", async () => {
    const v = verifier();
    const caller = await v.verify(fx.upload.tokens[0], undefined, { method: "POST", url: path });
    assert.equal(caller.user, "alice");
    assert.equal(caller.claims.req_sha256, undefined);
    await assert.rejects(v.verify(fx.upload.tokens[0], undefined, { method: "POST", url: path }), /replayed/);
  });

  const refusals = {
    "on another path": [{ method: "POST", url: "/support/attachments/atc_2/upload?v=1&sig=a+b" }, /another URL/],
    "with another query": [{ method: "POST", url: "/support/attachments/atc_1/upload?v=2&sig=a+b" }, /another URL/],
    "without its query": [{ method: "POST", url: "/support/attachments/atc_1/upload" }, /another URL/],
    "with another method": [{ method: "PUT", url: path }, /'POST' request/],
  };
  for (const [name, [request, reason]] of Object.entries(refusals)) {
    it(`refuses an upload assertion ${name}, without spending it`, async () => {
      const v = verifier();
      await assert.rejects(v.verify(fx.upload.tokens[1], undefined, request), (err) => {
        assert.ok(err instanceof InvalidAssertion, err);
        assert.match(err.message, reason);
        return true;
      });
      assert.equal((await v.verify(fx.upload.tokens[1], undefined, { method: "POST", url: path })).user, "alice");
    });
  }

  it("refuses an assertion bound to neither body nor URL, or to half a URL binding", async () => {
    const v = verifier();
    await assert.rejects(v.verify(fx.refused["without a body hash"], undefined, { method: "POST", url: path }), /not issued for this request body/);
    await assert.rejects(v.verify(fx.upload.htu_only, undefined, { method: "POST", url: path }), /does not name this request's method/);
    // a ChatKit request's assertion (req_sha256) cannot pass unread as a stream
    await assert.rejects(v.verify(fx.valid[0], undefined, { method: "POST", url: path }), /body that was not read/);
    assert.equal((await v.verify(fx.valid[0], fx.body, { method: "POST", url: "/support/chatkit" })).user, "alice");
  });

  it("a Node server with verifyUpload takes a streamed upload of several MiB", async () => {
    const v = verifier();
    const server = await listen(async (req, res) => {
      let caller;
      try {
        caller = await verifyUpload(v, req);
      } catch (err) {
        res.writeHead(err.status || 500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: err.message }));
        req.resume();
        return;
      }
      let size = 0;
      let pieces = 0;
      req.on("data", (chunk) => {
        size += chunk.length;
        pieces += 1;
      });
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ user: caller.user, size, pieces }));
      });
    });
    try {
      const port = server.address().port;
      const file = Buffer.alloc(3 * 1024 * 1024 + 11, 7);
      const header = (token) => ({ "chatkit-broker-assertion": token, "content-type": "application/octet-stream" });
      const good = await post(port, path, header(fx.upload.tokens[2]), file);
      assert.equal(good.status, 200);
      assert.equal(good.body.user, "alice");
      assert.equal(good.body.size, file.length);
      assert.ok(good.body.pieces > 1);
      const replayed = await post(port, path, header(fx.upload.tokens[2]), file);
      assert.equal(replayed.status, 401);
      assert.match(replayed.body.error, /replayed/);
      const elsewhere = await post(port, "/support/attachments/atc_9/upload", header(fx.upload.tokens[0]), file);
      assert.equal(elsewhere.status, 401);
    } finally {
      server.close();
    }
  });
});
