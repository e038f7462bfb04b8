"""The one gate every backend's callers pass: who is calling, and may they use this workflow.

Sign-in (an app JWT; in mock mode optional), the per-user limits, the allowlist and each
workflow's ``require`` are checked here and nowhere else, so the hosted, gateway, agent and
mock backends cannot drift apart on who gets in. A backend receives an ``Admission``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .auth import Identity, Verifier, bearer_token
from .backends.base import Admission
from .errors import Unauthenticated, WorkflowNotAllowed
from .ratelimit import RateLimits
from .service_keys import KEY_USER_PREFIX, ServiceKey, ServiceKeys, acting_user, is_service_key
from .session_secrets import SessionSecrets, is_session_secret
from .workflow import Workflow

_QUERY_TOKEN = re.compile(r"(?:^|&)(?:access_token|token|jwt|id_token|auth|authorization)=", re.I)


def unmet_requirements(workflow: Workflow, claims: Mapping[str, Any]) -> list[str]:
    """The names of the ``require`` claims this caller does not satisfy."""
    unmet = []
    for claim, want in workflow.require:
        have = claims.get(claim)
        options = want if isinstance(want, tuple) else (want,)
        if not any(_same(have, option) for option in options):
            unmet.append(claim)
    return unmet


def _same(have: Any, want: Any) -> bool:
    # True == 1 in Python; a claim of 1 must not satisfy `require = { admin = true }`
    return type(have) is type(want) and have == want


class Gate:
    """Admits callers. ``anonymous_user`` (mock mode) is who a request without a token is;
    ``trust_unverified`` (mock mode with no key configured) reads a token's ``sub`` unchecked."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        workflows: Sequence[Workflow],
        limits: RateLimits,
        secrets: SessionSecrets | None = None,
        anonymous_user: str | None = None,
        trust_unverified: bool = False,
    ) -> None:
        self._verifier = verifier
        self._workflows = tuple(workflows)
        self._by_ref = {wf.name: wf for wf in self._workflows} | {
            wf.id: wf for wf in self._workflows if wf.id is not None
        }
        self._limits = limits
        self._secrets = secrets
        self._anonymous = anonymous_user
        self._trust_unverified = trust_unverified
        #: set by the agent backend, whose database holds them (service_keys.py)
        self.service_keys: ServiceKeys | None = None

    async def identify(
        self, authorization: str | None, *, count_mint: bool = False, query: str = ""
    ) -> Identity:
        """The caller's identity from ``Authorization: Bearer <JWT>``.

        ``count_mint`` counts one mint against the user's limit (``BROKER_RATE_LIMIT``), which
        every authenticated mint request spends, whatever its outcome. ``query`` (the raw query
        string) only shapes the message: a token there is never read.
        """
        token = bearer_token(authorization)
        if token is None:
            if self._anonymous is None:
                if _QUERY_TOKEN.search(query):
                    raise Unauthenticated(
                        "Send the token in the Authorization header ('Authorization: Bearer "
                        "<JWT>'), not in the query string: the broker never reads tokens there "
                        "(query strings end up in logs and browser history).",
                        invalid_token=False,
                    )
                raise Unauthenticated(
                    "Sign-in required: send 'Authorization: Bearer <JWT>' from your app's sign-in.",
                    invalid_token=False,
                )
            identity = Identity(user=self._anonymous, claims={})
        elif is_service_key(token):
            raise Unauthenticated(
                "A service key (ckb_sk_…) is only good at /api/workflows/<name>/runs, "
                "/api/runs/… and the read-back routes of the workflows it names."
            )
        elif is_session_secret(token):
            raise Unauthenticated(
                "A session secret (cks_…) is only good at its own workflow's ChatKit endpoint "
                "and, for an agent workflow, its threads and runs; send your app's sign-in "
                "token (JWT) here."
            )
        elif self._trust_unverified and not self._verifier.configured:
            identity = self._verifier.read_unverified(token)
        else:
            identity = await self._verifier.verify(token)
        if identity.user.startswith(KEY_USER_PREFIX):
            # the history of a service key running as itself (service_keys.py): no token's
            raise Unauthenticated("This user id is reserved for service keys.")
        if count_mint:
            await self._limits.hit_user(identity.user)
        return identity

    def allowed(self, identity: Identity) -> list[Workflow]:
        """The workflows this caller's claims allow, in configuration order."""
        return [wf for wf in self._workflows if not unmet_requirements(wf, identity.claims)]

    def admit(self, identity: Identity, ref: str) -> Admission:
        """Admit ``identity`` to the allowlisted workflow ``ref`` (a name or a ``wf_`` id)."""
        workflow = self._by_ref.get(ref)
        if workflow is None:
            raise WorkflowNotAllowed(
                f"Workflow {ref[:80]!r} is not on this broker's allowlist "
                "(BROKER_WORKFLOWS / BROKER_WORKFLOWS_FILE)."
            )
        unmet = unmet_requirements(workflow, identity.claims)
        if unmet:
            raise WorkflowNotAllowed(
                f"Your account may not use workflow {workflow.name!r}: it requires the "
                f"claim(s) {', '.join(unmet)} with other values."
            )
        return Admission(identity, workflow)

    def secret_workflow(self, authorization: str | None) -> str | None:
        """The workflow a valid ``cks_`` secret in ``authorization`` was issued for, else
        None: for routes that name a thread but no workflow (admit it with ``admit_chatkit``)."""
        token = bearer_token(authorization)
        if token is None or not is_session_secret(token) or self._secrets is None:
            return None
        return self._secrets.workflow_of(token)

    async def admit_chatkit(
        self, authorization: str | None, workflow: Workflow, *, query: str = ""
    ) -> Admission:
        """Admit a ChatKit request for ``workflow``: its own session secret, or an app JWT.

        A session secret was checked against the allowlist when it was minted; it must be
        for this very workflow, unexpired and not cancelled. A JWT goes through the gate
        as a mint would, minus the mint limit.
        """
        token = bearer_token(authorization)
        if token is not None and is_session_secret(token):
            if self._secrets is None:
                raise Unauthenticated("This broker issues no session secrets.")
            admission = await self._secrets.admit(token, workflow)
        else:
            identity = await self.identify(authorization, query=query)
            admission = self.admit(identity, workflow.name)
        await self.count_request(workflow, admission.identity.user)
        return admission

    async def count_request(self, workflow: Workflow, user: str) -> None:
        """One request of ``user`` to ``workflow`` against its ``max_requests_per_minute``
        (429 past it), whatever credential it came with: a secret, a JWT, a service key or
        a signed URL (the gateway's direct ``uploadUrl``)."""
        if workflow.max_requests_per_minute is not None:
            await self._limits.hit_per_minute(
                "workflow_requests",
                f"{workflow.name}:{user}",
                workflow.max_requests_per_minute,
                what=f"requests to workflow {workflow.name!r}",
            )

    def service_key_token(self, authorization: str | None) -> str | None:
        """The ``ckb_sk_`` key in ``authorization``, if that is what it holds."""
        token = bearer_token(authorization)
        return token if token is not None and is_service_key(token) else None

    async def service_key(self, authorization: str | None) -> ServiceKey:
        """The third kind of caller: a back end's service key (401 if not a live one)."""
        token = self.service_key_token(authorization)
        if token is None or self.service_keys is None:
            raise Unauthenticated("The service key is not valid.")
        return await self.service_keys.authenticate(token)

    async def admit_service_key(
        self, key: ServiceKey, workflow: Workflow, user: Any = None
    ) -> Admission:
        """Admit ``key`` to ``workflow`` as ``user`` (acting for users) or as itself; its
        ``--rate`` and the workflow's per-user limit both count, the latter for that user."""
        acting = acting_user(key, workflow.name, user)
        if workflow.require:
            # `require` asks claims of a user's sign-in; a key holds none for the users it
            # names (nor for itself), and trusting it for them would let a back end run a
            # workflow for a user `require` keeps out (an anonymous one, say)
            raise WorkflowNotAllowed(
                f"Workflow {workflow.name[:80]!r} requires sign-in claims "
                f"({', '.join(claim for claim, _ in workflow.require)}) that a service key "
                "cannot show for a user: run it with the user's own token, or drop its "
                "require."
            )
        if key.rate_per_minute is not None:
            await self._limits.hit_per_minute(
                "service_key", key.name, key.rate_per_minute, what=f"service key {key.name!r}"
            )
        await self.count_request(workflow, acting)
        return Admission(Identity(user=acting, claims={}), workflow)
