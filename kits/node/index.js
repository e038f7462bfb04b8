// chatkit-broker's assertion verifier for Node ChatKit servers, on jose.
//
// The broker sends every request to your server with a fresh signed JWT in the
// `ChatKit-Broker-Assertion` header. Verify it, and trust nothing else about who is calling:
// signature (ES256 against the broker's JWKS, cached; or HS256 with a shared secret),
// `typ`, audience, issuer, expiry with a few seconds of leeway, `req_sha256` against the exact
// request body — or, for a file upload the broker streams (and so cannot hash), `htm`/`htu`
// against the request's method and path — and, by default, that its `jti` was never seen
// before (in this process).
//
// `htu` is compared by path and query only (percent-decoded; the query's pairs in any
// order): behind a proxy the backend sees another scheme and host than the broker dialled,
// and what binds the assertion to this backend is `aud`, its signature, expiry and single use.
// While the broker's keys cannot be fetched, everything is refused (fail closed) and logged.

import { createHash, timingSafeEqual } from "node:crypto";
import { createRemoteJWKSet, decodeProtectedHeader, errors, jwtVerify } from "jose";

export const ASSERTION_HEADER = "chatkit-broker-assertion";
export const ASSERTION_TYP = "chatkit-broker-assertion+jwt";
export const DEFAULT_ISSUER = "chatkit-broker";
const REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti"];
const MAX_ASSERTION_BYTES = 8 * 1024;
const MAX_REMEMBERED_JTIS = 100_000;

/** The assertion is missing, forged, expired, replayed or meant for someone else: answer 401. */
export class InvalidAssertion extends Error {
  constructor(message) {
    super(message);
    this.name = "InvalidAssertion";
    this.status = 401;
  }
}

/** The broker's key set has never been fetched, so nobody can be verified yet: answer 503. */
export class AssertionKeysUnavailable extends Error {
  constructor(message) {
    super(message);
    this.name = "AssertionKeysUnavailable";
    this.status = 503;
  }
}

/** `req_sha256`: base64url SHA-256 of the exact request body the broker forwarded. */
export function bodyDigest(body) {
  return createHash("sha256").update(body).digest("base64url");
}

function sameDigest(claimed, body) {
  if (typeof claimed !== "string") return false;
  const a = Buffer.from(claimed);
  const b = Buffer.from(bodyDigest(body));
  return a.length === b.length && timingSafeEqual(a, b);
}

function decodedPath(pathname) {
  try {
    return decodeURIComponent(pathname) || "/";
  } catch {
    return null; // a malformed escape names no path we could match
  }
}

function sortedQuery(params) {
  return JSON.stringify([...params.entries()].sort((a, b) => (a[0] + "\0" + a[1] < b[0] + "\0" + b[1] ? -1 : 1)));
}

/** Whether `htu` (the URL the broker sent to) names the request target `url` (Node's `req.url`:
 * the path and query as received, or an absolute URL). */
function sameTarget(htu, url) {
  let wanted;
  let got;
  try {
    wanted = new URL(htu);
    got = new URL(url, "http://backend.invalid");
  } catch {
    return false;
  }
  const path = decodedPath(wanted.pathname);
  return path !== null && path === decodedPath(got.pathname) && sortedQuery(wanted.searchParams) === sortedQuery(got.searchParams);
}

/**
 * The rule for one request, given `{ method, url }`: `htm`/`htu`, when the assertion has them,
 * must be this method and URL; `req_sha256`, when it has it, must be that of `body` (which must
 * then be given). An assertion with neither is refused. `body === undefined` means the body is
 * streamed unread: only an assertion bound to the method and URL passes.
 */
export function checkRequest(claims, { method, url }, body) {
  const targeted = "htm" in claims || "htu" in claims;
  if (targeted) {
    if (typeof claims.htm !== "string" || typeof claims.htu !== "string") {
      throw new InvalidAssertion("the assertion does not name this request's method and URL");
    }
    if (claims.htm.toUpperCase() !== String(method || "").toUpperCase()) {
      throw new InvalidAssertion(`the assertion was issued for a '${claims.htm.slice(0, 10)}' request`);
    }
    if (!sameTarget(claims.htu, String(url || ""))) throw new InvalidAssertion("the assertion was issued for another URL");
  }
  if ("req_sha256" in claims) {
    if (body === undefined) throw new InvalidAssertion("the assertion is bound to a body that was not read");
    if (!sameDigest(claims.req_sha256, body)) throw new InvalidAssertion("the assertion was not issued for this request body");
  } else if (!targeted) {
    throw new InvalidAssertion("the assertion was not issued for this request body");
  }
}

function explain(err, audience, issuer) {
  if (err instanceof errors.JWTExpired) return "the assertion has expired";
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === "aud") return `the assertion is not meant for audience '${audience}'`;
    if (err.claim === "iss") return `the assertion was not issued by '${issuer}'`;
    if (err.claim === "typ") return `the token is not a broker assertion (typ must be ${ASSERTION_TYP})`;
    if (err.reason === "missing") return `the assertion lacks the '${err.claim}' claim`;
    return `the assertion's '${err.claim}' claim is invalid`;
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return "the assertion's signature is invalid";
  if (err instanceof errors.JWKSNoMatchingKey) return "the assertion was signed with a key the broker does not publish";
  if (err instanceof errors.JOSEAlgNotAllowed) return "the assertion is not signed with the pinned algorithm";
  return `the assertion is invalid (${err?.code || err?.name || "error"})`;
}

/**
 * A verifier for one audience. Pass exactly one of `jwksUrl` (ES256) or `secret` (HS256).
 * `verify(token, body, request?)` resolves to `{ user, claims }` or rejects with
 * `InvalidAssertion` / `AssertionKeysUnavailable`. With `request` (`{ method, url }`, e.g.
 * Node's `req`) the whole `checkRequest` rule applies, and `body` may be `undefined` for an
 * upload the broker streams.
 */
export function createVerifier({
  jwksUrl,
  secret,
  audience,
  issuer = DEFAULT_ISSUER,
  leeway = 5,
  singleUse = true,
  cacheMaxAge = 300_000,
  cooldown = 30_000,
  timeout = 3_000,
  log = console,
  now = () => Date.now(),
} = {}) {
  if (!audience) throw new TypeError("audience is required: the workflow's audience (default its name)");
  if (!jwksUrl === !secret) throw new TypeError("pass exactly one of jwksUrl (ES256) or secret (HS256)");
  const algorithm = jwksUrl ? "ES256" : "HS256";
  const key = jwksUrl
    ? createRemoteJWKSet(new URL(jwksUrl), { cacheMaxAge, cooldownDuration: cooldown, timeoutDuration: timeout })
    : new TextEncoder().encode(secret);
  let keysFetched = false;
  const spent = new Map(); // jti -> exp (seconds), oldest first

  function spend(claims) {
    const nowSeconds = now() / 1000;
    for (const [jti, exp] of spent) {
      if (exp + leeway >= nowSeconds && spent.size < MAX_REMEMBERED_JTIS) break;
      spent.delete(jti);
    }
    const jti = String(claims.jti);
    if (spent.has(jti)) throw new InvalidAssertion("the assertion was already used (replayed)");
    spent.set(jti, Number(claims.exp));
  }

  async function verify(token, body, request) {
    if (typeof token !== "string" || !token) throw new InvalidAssertion(`no ChatKit-Broker-Assertion header`);
    if (token.length > MAX_ASSERTION_BYTES) throw new InvalidAssertion("the assertion is larger than 8 KiB");
    let header;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      throw new InvalidAssertion("the assertion is not a JWT");
    }
    if (String(header.typ || "").toLowerCase() !== ASSERTION_TYP) {
      throw new InvalidAssertion(`the token is not a broker assertion (typ must be ${ASSERTION_TYP})`);
    }
    if (header.alg !== algorithm) throw new InvalidAssertion(`the assertion is not signed with ${algorithm}`);
    if (header.crit) throw new InvalidAssertion("the assertion uses critical header extensions");
    let payload;
    try {
      ({ payload } = await jwtVerify(token, key, {
        algorithms: [algorithm], // pinned: never the token's own choice
        audience,
        issuer,
        clockTolerance: leeway,
        requiredClaims: REQUIRED,
        currentDate: new Date(now()),
      }));
      keysFetched = true;
    } catch (err) {
      const keysDown =
        err instanceof errors.JWKSTimeout ||
        err instanceof errors.JWKSInvalid ||
        err?.name === "TypeError" || // fetch failed: connection refused, DNS
        err?.code === "ERR_JOSE_GENERIC"; // a non-200 answer from the JWKS URL
      if (jwksUrl && keysDown && !keysFetched) {
        log.error(
          `chatkit-broker verifier: cannot fetch the broker's keys from ${jwksUrl} (${err.message}); ` +
            "refusing every request (503) until it answers",
        );
        throw new AssertionKeysUnavailable(`the broker's key set at ${jwksUrl} could not be fetched yet`);
      }
      if (keysDown && jwksUrl) {
        log.warn(`chatkit-broker verifier: refetching the broker's keys from ${jwksUrl} failed (${err.message})`);
      }
      throw new InvalidAssertion(explain(err, audience, issuer));
    }
    const user = payload.sub;
    if (typeof user !== "string" || !user || user.length > 512) {
      throw new InvalidAssertion("the assertion's 'sub' must be a non-empty string");
    }
    if (request) {
      checkRequest(payload, request, body);
    } else if (body !== undefined && !sameDigest(payload.req_sha256, body)) {
      throw new InvalidAssertion("the assertion was not issued for this request body");
    }
    if (singleUse) spend(payload);
    return { user, claims: payload };
  }

  return { verify, audience, issuer, algorithm };
}

/**
 * Verify a Node `http.IncomingMessage`-like request whose raw body you already read:
 * `await verifyRequest(verifier, req.headers, rawBody)`.
 */
export function verifyRequest(verifier, headers, body, request) {
  const value = typeof headers?.get === "function" ? headers.get(ASSERTION_HEADER) : headers?.[ASSERTION_HEADER];
  return verifier.verify(Array.isArray(value) ? undefined : value ?? undefined, body, request);
}

/**
 * Verify a Node `http.IncomingMessage` whose body you have not read — a file upload the broker
 * streams: `await verifyUpload(verifier, req)`, then read or pipe `req` as it arrives. Passes
 * only an assertion bound to this request's method and URL (`htm`/`htu`); every ChatKit request
 * (bound to its body) needs `verifyRequest` with the raw body instead.
 */
export function verifyUpload(verifier, req) {
  return verifyRequest(verifier, req.headers, undefined, { method: req.method, url: req.url });
}
