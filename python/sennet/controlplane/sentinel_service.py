"""What Register and Heartbeat do, independent of transport (gRPC or Connect).

Transports decode the body (`codec.py`), authenticate (`auth.py`), and call
these functions; they map `RequestError` to their own status. Keeping the
logic here means both transports validate, authorize and store identically.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

from sennet.common.log import event
from sennet.controlplane import validate
from sennet.controlplane.auth import Authenticator, Principal
from sennet.controlplane.fleet import Fleet
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store
from sennet.controlplane.writer import HeartbeatWriter
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.sentinel_service")


class SentinelService:
    def __init__(
        self, store: Store, writer: HeartbeatWriter, fleet: Fleet, auth: Authenticator
    ) -> None:
        self._auth = auth
        self._store = store
        self._writer = writer
        self._fleet = fleet

    def register(self, principal: Principal, req: pb.RegisterRequest) -> pb.RegisterResponse:
        """Enrol (or re-enrol) an agent; blocking (one committed transaction)."""
        validate.register(req)
        token = self._store.enrol(req, principal.token_id)
        self._auth.forget()
        self._fleet.enrolled(
            req.agent_id, req.hostname, req.agent_version, req.kernel_version, time.time()
        )
        event(
            log,
            "agent_enrolled",
            agent=req.agent_id,
            hostname=req.hostname,
            bootstrap_id=principal.token_id,
            issued_id=token.token_id,
        )
        return pb.RegisterResponse(agent_id=req.agent_id, agent_token=token.text)

    def heartbeat(
        self, principal: Principal, req: pb.HeartbeatRequest
    ) -> Future[pb.HeartbeatResponse]:
        """Validate and queue a heartbeat; the future resolves once it is committed."""
        validate.heartbeat(req)
        if principal.agent_id != req.agent_id:
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"agent_id: the token belongs to another agent, not {req.agent_id}",
                "agent_mismatch",
            )
        return self._writer.submit(req)
