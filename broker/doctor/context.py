"""What every doctor check reads: one frozen context, built once per run.

Checks get their inputs from here and nowhere else (no ``os.environ``, no module state), so a
test runs them in-process with explicit mappings, and a later check learns what an earlier one
found only through the typed result the runner hands it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import load_settings
from ..http import HttpPool
from ..settings import API_KEY_VARIABLES, ConfigError, Settings, api_key_in_effect
from .budget import Budget


@dataclass(frozen=True)
class DoctorContext:
    """The run's inputs.

    ``env`` is what the service would read (the shell over ``.env``); ``shell`` and ``dotenv``
    are its two sources, kept apart so the key check can say where a key came from. ``settings``
    is None when the configuration is invalid, and ``problems`` then says why.
    """

    env: Mapping[str, str]
    shell: Mapping[str, str]
    dotenv: Mapping[str, str]
    settings: Settings | None
    problems: tuple[str, ...]
    http: HttpPool
    budget: Budget
    token: str | None = None
    now: Callable[[], float] = time.time  # wall clock: session and token expiry
    smoke: bool = False  # doctor --smoke: backends send one real message per workflow

    @classmethod
    def load(
        cls,
        env: Mapping[str, str],
        shell: Mapping[str, str],
        dotenv: Mapping[str, str],
        *,
        http: HttpPool,
        budget: Budget,
        token: str | None = None,
        now: Callable[[], float] = time.time,
        smoke: bool = False,
    ) -> DoctorContext:
        """Validate ``env`` with the service's own ``load_settings`` and keep either outcome."""
        try:
            settings, problems = load_settings(env), ()
        except ConfigError as exc:
            settings, problems = None, tuple(exc.problems)
        return cls(env, shell, dotenv, settings, problems, http, budget, token, now, smoke)

    @property
    def key(self) -> tuple[str | None, str | None]:
        """(variable, key) of the API key in effect, exactly as the service picks it."""
        return api_key_in_effect(self.env)

    @property
    def secrets(self) -> set[str]:
        """Every secret the inputs hold, so that ``scrub`` can mask any that slips through."""
        found = {self.token or "", self.key[1] or ""}
        found |= {(self.dotenv.get(v) or "").strip() for v in API_KEY_VARIABLES}
        if self.settings is not None:
            found.add(self.settings.jwt.secret or "")
            found |= set(self.settings.session_secrets)
        return found - {""}
