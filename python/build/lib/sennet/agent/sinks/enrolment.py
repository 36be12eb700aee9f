"""The agent token: the stored one, or a new one obtained with the bootstrap token.

Enrolment belongs to the control plane's database, not to one address: every
replica on that database accepts the token, so the sink enrols through
whichever replica it is using and never again because it failed over.
The token lives in `state_dir/agent/agent-token` (mode 0600). If the control
plane rejects it (revoked, or its database was replaced) the sink enrols again,
but the control plane lets a bootstrap token enrol an agent id it already knows
only after an operator's `agent reset` (and never a disabled one). Such a
refusal, or a bootstrap token that expired or was used up, needs a person: it
is logged once per refused streak (`enrolment_refused`) while the sink keeps
backing off and retrying, and keeps the newest counters, so nothing is lost
once the operator acts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from sennet.agent.sinks.agent_token import TokenFile
from sennet.agent.sinks.replicas import Replica
from sennet.agent.snapshot import Snapshot
from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.proto.contract import REGISTER

# A Register refused with one of these will not succeed by retrying alone.
_NEEDS_OPERATOR = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class Enrolment:
    """The token in use (None until enrolled) and the enrolment counts."""

    def __init__(
        self,
        tokens: TokenFile,
        bootstrap_token: str,
        agent_id: str,
        hostname: Callable[[], str],
        deadline_s: float,
        log: logging.Logger,
    ) -> None:
        self._tokens = tokens
        self._bootstrap = bootstrap_token
        self._agent_id = agent_id
        self._hostname = hostname
        self._deadline_s = deadline_s
        self._log = log
        self._lock = threading.Lock()
        self.token = tokens.load()
        self.enrolments = 0
        self.refusals = 0  # Register calls refused for want of an operator's action
        self._refusal_logged = False  # `enrolment_refused` is logged once per refused streak

    def discard(self) -> None:
        """The control plane rejected the token: forget it (file included)."""
        self._tokens.discard()
        self.token = None

    def enrol(self, snap: Snapshot, replica: Replica) -> str:
        """Register through `replica`; store and return the new token (raises grpc.RpcError)."""
        if not self._bootstrap:
            raise UserError("no agent token and no bootstrap_token configured; cannot enrol")
        try:
            resp = replica.register(
                REGISTER.request(
                    agent_id=self._agent_id,
                    hostname=self._hostname()[:253],
                    agent_version=snap.agent_version,
                    kernel_version=snap.kernel_version,
                ),
                timeout=self._deadline_s,
                metadata=(("authorization", f"Bearer {self._bootstrap}"),),
            )
        except grpc.RpcError as exc:
            if exc.code() in _NEEDS_OPERATOR:
                self._refused(exc, replica.address)
            raise
        self._tokens.store(resp.agent_token)
        self.token = resp.agent_token
        with self._lock:
            self.enrolments += 1
            self._refusal_logged = False
        event(
            self._log,
            "enrolled",
            control_plane=replica.address,
            agent=self._agent_id,
            token_file=self._tokens.path,
        )
        return resp.agent_token

    def _refused(self, exc: grpc.RpcError, address: str) -> None:
        """Count a refused enrolment; say so once per streak, at error level (a person must act)."""
        with self._lock:
            self.refusals += 1
            first = not self._refusal_logged
            self._refusal_logged = True
        if first:
            event(
                self._log,
                "enrolment_refused",
                logging.ERROR,
                control_plane=address,
                agent=self._agent_id,
                code=exc.code().name,
                detail=exc.details(),
                needs="an operator: `sennet-controlplane agent reset` (or `agent enable`) for "
                "this agent id, or a valid bootstrap_token; retrying with backoff meanwhile",
            )
