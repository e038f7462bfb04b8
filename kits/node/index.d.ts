export declare const ASSERTION_HEADER: "chatkit-broker-assertion";
export declare const ASSERTION_TYP: "chatkit-broker-assertion+jwt";
export declare const DEFAULT_ISSUER: "chatkit-broker";

/** The verified caller: `user` is the assertion's `sub`, `claims` all its verified claims. */
export interface VerifiedAssertion {
  user: string;
  claims: {
    iss: string;
    aud: string;
    sub: string;
    iat: number;
    exp: number;
    jti: string;
    wf?: string;
    sid?: string;
    req_sha256?: string;
    /** An upload's method and backend URL, instead of req_sha256. */
    htm?: string;
    htu?: string;
    [claim: string]: unknown;
  };
}

export declare class InvalidAssertion extends Error {
  readonly status: 401;
}
export declare class AssertionKeysUnavailable extends Error {
  readonly status: 503;
}

export interface VerifierOptions {
  /** The broker's JWKS, e.g. https://broker.example/.well-known/jwks.json (ES256). */
  jwksUrl?: string;
  /** The shared secret of an `assertion = "hs256"` workflow, instead of jwksUrl. */
  secret?: string;
  /** The workflow's audience (its `audience` option, default its name). */
  audience: string;
  /** BROKER_PUBLIC_URL, or "chatkit-broker" when unset. */
  issuer?: string;
  /** Seconds of clock skew accepted on exp/iat (default 5). */
  leeway?: number;
  /** Refuse a second use of a jti until it expires (default true; per process). */
  singleUse?: boolean;
  cacheMaxAge?: number;
  cooldown?: number;
  timeout?: number;
  log?: Pick<Console, "error" | "warn">;
  now?: () => number;
}

/** The request as the backend received it: its method and `req.url` (path and query). */
export interface RequestTarget {
  method: string;
  url: string;
}

export interface Verifier {
  /** Resolves to the caller, or rejects with InvalidAssertion / AssertionKeysUnavailable. */
  verify(
    token: string | undefined | null,
    body?: string | Uint8Array,
    request?: RequestTarget,
  ): Promise<VerifiedAssertion>;
  readonly audience: string;
  readonly issuer: string;
  readonly algorithm: "ES256" | "HS256";
}

export declare function createVerifier(options: VerifierOptions): Verifier;
export declare function bodyDigest(body: string | Uint8Array): string;
export declare function verifyRequest(
  verifier: Verifier,
  headers: Record<string, string | string[] | undefined> | { get(name: string): string | null },
  body: string | Uint8Array | undefined,
  request?: RequestTarget,
): Promise<VerifiedAssertion>;
export declare function verifyUpload(
  verifier: Verifier,
  req: { method?: string; url?: string; headers: Record<string, string | string[] | undefined> },
): Promise<VerifiedAssertion>;
export declare function checkRequest(
  claims: VerifiedAssertion["claims"],
  request: RequestTarget,
  body?: string | Uint8Array,
): void;
