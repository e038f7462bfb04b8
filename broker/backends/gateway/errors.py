"""The gateway's failures before the first byte reached the browser, as broker errors.

Defined here until ``broker/errors.py`` on main has them (same names, statuses and codes);
then this module re-exports main's classes and can go.
"""

from __future__ import annotations

from ...errors import BrokerError


class BackendUnavailable(BrokerError):
    """503: the workflow's server could not be connected to (refused, DNS, TLS)."""

    status, code = 503, "backend_unavailable"


class BackendTimeout(BrokerError):
    """504: no connection, or no first byte, within the workflow's timeouts."""

    status, code = 504, "backend_timeout"


class BackendError(BrokerError):
    """502: the server answered 5xx, a redirect, or something that is not ChatKit."""

    status, code = 502, "backend_error"


class BackendRejectedIdentity(BrokerError):
    """502: the server refused the broker's signed identity (401/403): a setup problem."""

    status, code = 502, "backend_rejected_identity"
