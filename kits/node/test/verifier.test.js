// The Node verifier against the broker's real JWKS and real assertions, made by the broker's
// own signer (tests/support/assertion_fixture.py, run with the repository's Python), plus
// what needs no broker: an unreachable JWKS, a replay.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import {
  AssertionKeysUnavailable,
  InvalidAssertion,
  bodyDigest,
  createVerifier,
  verifyRequest,
} from "../index.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const python = process.env.CHATKIT_BROKER_PYTHON || resolve(root, ".venv/bin/python");

function brokerFixture() {
  const out = execFileSync(python, ["-m", "tests.support.assertion_fixture"], { cwd: root, encoding: "utf8" });
  return JSON.parse(out);
}

function serveJson(document, status = 200) {
  const server = createServer((req, res) => {
    server.fetches = (server.fetches || 0) + 1;
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(document));
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

const quiet = { error() {}, warn() {} };

describe("the broker's real assertions", { skip: !existsSync(python) && `no Python at ${python}` }, () => {
  let fx;
  let server;
  let jwksUrl;

  before(async () => {
    fx = brokerFixture();
    server = await serveJson(fx.jwks);
    jwksUrl = `http://127.0.0.1:${server.address().port}/.well-known/jwks.json`;
  });
  after(() => server?.close());

  it("accepts a real assertion for its body, with the claims the broker signed", async () => {
    const verifier = createVerifier({ jwksUrl, audience: fx.audience, issuer: fx.issuer });
    const caller = await verifier.verify(fx.valid[0], fx.body);
    assert.equal(caller.user, "alice");
    assert.equal(caller.claims.email, "alice@example.com");
    assert.equal(caller.claims.wf, "support");
    assert.equal(caller.claims.req_sha256, bodyDigest(fx.body));
    const second = await verifyRequest(verifier, { "chatkit-broker-assertion": fx.valid[1] }, Buffer.from(fx.body));
    assert.equal(second.user, "alice");
    assert.equal(server.fetches, 1); // the key set is cached
  });

  it("accepts clock skew within the leeway", async () => {
    const verifier = createVerifier({ jwksUrl, audience: fx.audience, issuer: fx.issuer });
    assert.equal((await verifier.verify(fx.within_leeway, fx.body)).user, "alice");
  });

  const why = {
    "signed by another key": /does not publish/,
    "for another audience": /audience 'support'/,
    "from another issuer": /not issued by/,
    "expired beyond the leeway": /expired/,
    "for another body": /not issued for this request body/,
    "without a body hash": /not issued for this request body/,
    "HS256 under a JWKS verifier": /not signed with ES256/,
    "not a JWT": /not a JWT/,
  };
  for (const [name, reason] of Object.entries(why)) {
    it(`refuses an assertion ${name}`, async () => {
      const verifier = createVerifier({ jwksUrl, audience: fx.audience, issuer: fx.issuer, log: quiet });
      await assert.rejects(verifier.verify(fx.refused[name], fx.body), (err) => {
        assert.ok(err instanceof InvalidAssertion, err);
        assert.match(err.message, reason);
        return true;
      });
    });
  }

  it("refuses a replayed assertion", async () => {
    const verifier = createVerifier({ jwksUrl, audience: fx.audience, issuer: fx.issuer });
    await verifier.verify(fx.valid[1], fx.body);
    await assert.rejects(verifier.verify(fx.valid[1], fx.body), /replayed/);
  });

  it("verifies an hs256 workflow's assertion with the shared secret", async () => {
    const verifier = createVerifier({ secret: fx.hs256.secret, audience: fx.audience, issuer: fx.issuer });
    assert.equal((await verifier.verify(fx.hs256.token, fx.body)).user, "alice");
    const wrong = createVerifier({ secret: "x".repeat(40), audience: fx.audience, issuer: fx.issuer });
    await assert.rejects(wrong.verify(brokerFixture().hs256.token, fx.body), InvalidAssertion);
  });
});

describe("no broker needed", () => {
  it("fails closed with a clear log line while the JWKS cannot be fetched", async () => {
    const lines = [];
    const verifier = createVerifier({
      jwksUrl: "http://127.0.0.1:9/.well-known/jwks.json", // nothing listens on port 9
      audience: "support",
      log: { error: (line) => lines.push(line), warn() {} },
    });
    const token =
      "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJjaGF0a2l0LWJyb2tlci1hc3NlcnRpb24rand0In0." +
      "eyJzdWIiOiJhbGljZSJ9.c2ln";
    await assert.rejects(verifier.verify(token, "{}"), AssertionKeysUnavailable);
    assert.match(lines[0], /cannot fetch the broker's keys from http:\/\/127\.0\.0\.1:9.*refusing every request \(503\)/);
  });

  it("fails closed when the JWKS answers 500", async () => {
    const server = await serveJson({ error: "down" }, 500);
    try {
      const verifier = createVerifier({
        jwksUrl: `http://127.0.0.1:${server.address().port}/jwks.json`,
        audience: "support",
        log: quiet,
      });
      const token =
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJjaGF0a2l0LWJyb2tlci1hc3NlcnRpb24rand0In0." +
        "eyJzdWIiOiJhbGljZSJ9.c2ln";
      await assert.rejects(verifier.verify(token, "{}"), AssertionKeysUnavailable);
    } finally {
      server.close();
    }
  });

  it("refuses a missing header and a token of another type", async () => {
    const verifier = createVerifier({ secret: "s".repeat(40), audience: "support" });
    await assert.rejects(verifier.verify(undefined, "{}"), /no ChatKit-Broker-Assertion header/);
    const plainJwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
    await assert.rejects(verifier.verify(plainJwt, "{}"), /not a broker assertion/);
  });

  it("insists on one audience and one kind of key", () => {
    assert.throws(() => createVerifier({ jwksUrl: "http://x/jwks.json" }), /audience is required/);
    assert.throws(() => createVerifier({ audience: "a" }), /exactly one of/);
  });
});
