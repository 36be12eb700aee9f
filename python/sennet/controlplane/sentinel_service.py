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
from sennet.controlplane import tokens, validate
from sennet.controlplane.auth import Authenticator, Principal
from sennet.controlplane.fleet import Fleet
from sennet.controlplane.identity import Identity
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.update_offers import OfferBook
from sennet.controlplane.validate_insights import DEFAULT_LIMITS, Limits
from sennet.controlplane.writer import Outcome, Writer
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.sentinel_service")


class SentinelService:
    def __init__(
        self,
        identity: Identity,
        writer: Writer,
        fleet: Fleet,
        auth: Authenticator,
        limits: Limits = DEFAULT_LIMITS,
        offers: OfferBook | None = None,
    ) -> None:
        self._limits = limits
        self._offers = offers
        self._auth = auth
        self._identity = identity
        self._writer = writer
        self._fleet = fleet

    def register(self, principal: Principal, req: pb.RegisterRequest) -> pb.RegisterResponse:
        """Enrol an agent, or rotate its token; blocking (one committed transaction).

        With a bootstrap token only a new agent id (or one an operator reset)
        enrols; with an agent token only that agent's own id, and the call
        rotates its token. `identity.py` decides, inside the transaction.
        """
        validate.register(req)
        rotating = principal.kind is tokens.TokenKind.AGENT
        if rotating and principal.agent_id != req.agent_id:
            raise _mismatch(req.agent_id)
        try:
            token = self._identity.enrol(req, principal.kind, principal.token_id)
        except RequestError as err:
            event(
                log,
                "enrolment_refused",
                logging.WARNING,
                agent=req.agent_id,
                presented_id=principal.token_id,
                reason=err.reason,
            )
            raise
        self._auth.forget()
        self._fleet.enrolled(
            req.agent_id, req.hostname, req.agent_version, req.kernel_version, time.time()
        )
        if rotating:
            event(
                log,
                "agent_token_rotated",
                agent=req.agent_id,
                previous_id=principal.token_id,
                issued_id=token.token_id,
            )
        else:
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
        stored: Future[pb.HeartbeatResponse] = Future()
        offer = self.queue_heartbeat(principal, req, stored)
        return stored if offer is None else _with_offer(stored, offer)

    def queue_heartbeat(
        self, principal: Principal, req: pb.HeartbeatRequest, outcome: Outcome
    ) -> pb.UpdateOffer | None:
        """Validate and queue a heartbeat for `outcome`, settled once it is committed.

        Returns the update offer its acknowledgement carries, if any; the caller
        adds it to the answer (`heartbeat` does, for a future).
        """
        validate.heartbeat(req, self._limits)
        if principal.agent_id != req.agent_id:
            raise _mismatch(req.agent_id)
        self._writer.enqueue(req, outcome)
        return self._offers.offer_for(req) if self._offers is not None else None


def _with_offer(
    stored: Future[pb.HeartbeatResponse], offer: pb.UpdateOffer
) -> Future[pb.HeartbeatResponse]:
    """The acknowledgement with the offer added, resolved when `stored` is (never before)."""
    out: Future[pb.HeartbeatResponse] = Future()

    def done(f: Future[pb.HeartbeatResponse]) -> None:
        if out.done():  # the caller gave up meanwhile
            return
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        answer = f.result()
        answer.update_offer.CopyFrom(offer)
        out.set_result(answer)

    out.add_done_callback(lambda f: stored.cancel() if f.cancelled() else None)
    stored.add_done_callback(done)
    return out


def _mismatch(agent_id: str) -> RequestError:
    return RequestError(
        Code.PERMISSION_DENIED,
        f"agent_id: the token belongs to another agent, not {agent_id}",
        "agent_mismatch",
    )
