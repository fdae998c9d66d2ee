"""The gRPC face of the lease service: credentials-fetcher's API on a Unix socket.

Each RPC validates its message, calls :class:`credfetcher.service.LeaseService`, and maps
credfetcher's errors to gRPC status codes in one place (:data:`STATUS_CODES`, :func:`status_for`):
the code comes from the nearest class of the error listed there, the message names the gMSA
concerned. An unexpected exception is
logged with its traceback and answered INTERNAL without internals.

The server is grpc.aio on an event loop of its own thread: HealthCheck is answered on the loop
itself, and every call that may wait on a DC, the KDC or the disk runs in a thread pool
(``CF_RPC_THREADS``). However many slow calls are queued for that pool, HealthCheck never waits
for a worker, so one slow DC never blocks other calls' admission or HealthCheck. The standard
``grpc.health.v1`` service and server reflection are registered too, so ``grpc_cli ls`` works
without a proto file.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credfetcher import errors
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.aws import AwsCredentials
from credfetcher.errors import CredfetcherError, InvalidRequestError
from credfetcher.identity import UserIdentity
from credfetcher.peercred import AllowList, GateLimits, PeerGate, deny_server
from credfetcher.service import LeaseService
from credfetcher.values import LeaseId, Ownership, check_id, check_mode
from credfetcher.views import LeaseView
from credfetcher.wire import DecodeErrorInterceptor

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CredentialsFetcherService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# ListLeases pages: a page never passes PAGE_BYTES, so it fits the 4 MiB receive limit that
# gRPC clients have by default, whatever the lease count or the length of the error texts.
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000
PAGE_BYTES = 3 * 1024 * 1024
LEASE_STATES = frozenset({"active", "failing", "waiting-for-credentials", "unknown"})
_PAGE_MARK = "l1."
T = TypeVar("T")


# Each error class's status; a class not listed takes its nearest listed base's.
STATUS_CODES: dict[type[CredfetcherError], grpc.StatusCode] = {
    errors.CredfetcherError: grpc.StatusCode.INTERNAL,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.BlobError: grpc.StatusCode.DATA_LOSS,
    errors.KerberosError: grpc.StatusCode.UNAVAILABLE,
    errors.KeyRejectedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.DirectoryError: grpc.StatusCode.UNAVAILABLE,
    errors.BindError: grpc.StatusCode.UNAUTHENTICATED,
    errors.GmsaNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.PasswordAccessDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.LeaseNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.StorageError: grpc.StatusCode.INTERNAL,
    errors.UnsupportedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.AwsError: grpc.StatusCode.UNAVAILABLE,
    errors.AwsAccessDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.AwsNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AwsCredentialsError: grpc.StatusCode.UNAUTHENTICATED,
    errors.AwsSecretError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(exc: CredfetcherError) -> grpc.StatusCode:
    """The gRPC status of one of our errors: its class's, or its nearest listed base's."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_for(exc: CredfetcherError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for one of our errors."""
    message = exc.message
    if exc.gmsa and exc.gmsa.lower() not in message.lower():
        message = f"gMSA {exc.gmsa}: {message}"
    return status_code(exc), message


async def _call(
    context: grpc.aio.ServicerContext[Any, Any],
    rpc: str,
    fn: Callable[[], T],
    executor: futures.Executor,
) -> T:
    """Run ``fn`` in the pool; translate our errors to a status (one place for all RPCs)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)
    except CredfetcherError as exc:
        code, message = status_for(exc)
        level = logging.WARNING if code != grpc.StatusCode.INTERNAL else logging.ERROR
        log.log(level, "%s failed: %s: %s", rpc, code.name, message, extra={"GMSA": exc.gmsa or ""})
        await context.abort(code, message)
    except Exception:
        log.exception("%s failed unexpectedly", rpc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"{rpc}: internal error (see the daemon's log)"
        )
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _ownership(service: LeaseService, msg: pb.FileOwnership, present: bool) -> Ownership | None:
    """The request's ownership, its fields checked by the rules the CLI and the config use."""
    if not present:
        return None
    uid = check_id(msg.uid, "ownership uid") if msg.HasField("uid") else None
    gid = check_id(msg.gid, "ownership gid") if msg.HasField("gid") else None
    mode = msg.mode or None  # proto3: 0 is "not set", the daemon's CF_CCACHE_MODE
    if mode is not None:
        check_mode(mode, allow_world_readable=service.config.allow_world_readable)
    return service.ownership_for(uid, gid, mode)


def _user(username: str, password: str, domain: str) -> UserIdentity:
    if not username:
        raise InvalidRequestError("username is empty")
    if not password:
        raise InvalidRequestError("password is empty")
    if len(username) > 256 or len(domain) > 255 or len(password) > 1024:
        raise InvalidRequestError("username, password or domain is too long")
    return UserIdentity.parse(username, password, domain)


def _aws_credentials(
    request: pb.KerberosArnLeaseRequest | pb.RenewKerberosArnLeaseRequest,
) -> AwsCredentials:
    return AwsCredentials.from_request(
        request.access_key_id, request.secret_access_key, request.session_token, request.region
    )


class CredentialsFetcherServicer(pb_grpc.CredentialsFetcherServiceServicer):
    """Every RPC of credentialsfetcher.CredentialsFetcherService."""

    def __init__(self, service: LeaseService, executor: futures.Executor) -> None:
        self.service = service
        self.executor = executor

    async def AddKerberosLease(
        self, request: pb.CreateKerberosLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateKerberosLeaseResponse:
        def run() -> pb.CreateKerberosLeaseResponse:
            own = _ownership(self.service, request.ownership, request.HasField("ownership"))
            result = self.service.add_lease(list(request.credspec_contents), ownership=own)
            return pb.CreateKerberosLeaseResponse(
                lease_id=result.lease_id,
                created_kerberos_file_paths=[str(d) for d in result.directories],
            )

        return await _call(context, "AddKerberosLease", run, self.executor)

    async def AddNonDomainJoinedKerberosLease(
        self,
        request: pb.CreateNonDomainJoinedKerberosLeaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.CreateNonDomainJoinedKerberosLeaseResponse:
        def run() -> pb.CreateNonDomainJoinedKerberosLeaseResponse:
            user = _user(request.username, request.password, request.domain)
            own = _ownership(self.service, request.ownership, request.HasField("ownership"))
            result = self.service.add_lease(
                list(request.credspec_contents), user=user, ownership=own
            )
            return pb.CreateNonDomainJoinedKerberosLeaseResponse(
                lease_id=result.lease_id,
                created_kerberos_file_paths=[str(d) for d in result.directories],
            )

        return await _call(context, "AddNonDomainJoinedKerberosLease", run, self.executor)

    async def RenewNonDomainJoinedKerberosLease(
        self,
        request: pb.RenewNonDomainJoinedKerberosLeaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RenewNonDomainJoinedKerberosLeaseResponse:
        def run() -> pb.RenewNonDomainJoinedKerberosLeaseResponse:
            user = _user(request.username, request.password, request.domain)
            paths = self.service.renew_domainless(user)
            return pb.RenewNonDomainJoinedKerberosLeaseResponse(
                renewed_kerberos_file_paths=[str(p) for p in paths]
            )

        return await _call(context, "RenewNonDomainJoinedKerberosLease", run, self.executor)

    async def DeleteKerberosLease(
        self, request: pb.DeleteKerberosLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteKerberosLeaseResponse:
        def run() -> pb.DeleteKerberosLeaseResponse:
            paths = self.service.delete_lease(LeaseId(request.lease_id))
            return pb.DeleteKerberosLeaseResponse(
                lease_id=request.lease_id, deleted_kerberos_file_paths=[str(p) for p in paths]
            )

        return await _call(context, "DeleteKerberosLease", run, self.executor)

    async def HealthCheck(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthCheckResponse:
        # On the loop, not in the pool: health() only reads in-memory state under short locks.
        ok, message = self.service.health()
        return pb.HealthCheckResponse(status="OK" if ok else message)

    async def AddKerberosArnLease(
        self, request: pb.KerberosArnLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateKerberosArnLeaseResponse:
        def run() -> pb.CreateKerberosArnLeaseResponse:
            credentials = _aws_credentials(request)
            result = self.service.add_arn_lease(list(request.credspec_arns), credentials)
            return pb.CreateKerberosArnLeaseResponse(
                lease_id=result.lease_id,
                krb_ticket_response_map=[
                    pb.KerberosTicketArnResponse(
                        credspec_arns=arn, created_kerberos_file_paths=str(directory)
                    )
                    for arn, directory in result.directories
                ],
            )

        return await _call(context, "AddKerberosArnLease", run, self.executor)

    async def RenewKerberosArnLease(
        self, request: pb.RenewKerberosArnLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RenewKerberosArnLeaseResponse:
        def run() -> pb.RenewKerberosArnLeaseResponse:
            self.service.renew_arn_leases(_aws_credentials(request))
            return pb.RenewKerberosArnLeaseResponse(status="successful")

        return await _call(context, "RenewKerberosArnLease", run, self.executor)

    async def ListLeases(
        self, request: pb.ListLeasesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListLeasesResponse:
        def run() -> pb.ListLeasesResponse:
            return list_page(self.service, request)

        return await _call(context, "ListLeases", run, self.executor)


def _fill_lease_info(info: pb.LeaseInfo, view: LeaseView) -> None:
    """Fill ``info`` in place: building a LeaseInfo and appending it would copy it once more."""
    info.lease_id = view.lease_id
    info.domainless = view.domainless
    info.state = view.state
    for t in view.tickets:
        info.tickets.add(
            service_account_name=t.gmsa,
            domain_name=t.domain,
            krb_file_path=t.directory,
            expires_at=int(t.expires_at),
            renew_until=int(t.renew_until),
            last_error=t.last_error,
            next_renewal_at=int(t.next_renewal_at),
        )


def encode_page_token(lease_id: str) -> str:
    return _PAGE_MARK + base64.urlsafe_b64encode(lease_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The last lease id of the previous page; InvalidRequestError for anything we did not make."""
    if not token:
        return ""
    try:
        if not token.startswith(_PAGE_MARK):
            raise ValueError
        raw = token[len(_PAGE_MARK) :]
        lease_id = LeaseId(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
    except (ValueError, InvalidRequestError):
        shown = token[:64].encode("unicode_escape").decode("ascii")
        raise InvalidRequestError(
            f"page_token {shown!r} is not a next_page_token this daemon sent"
        ) from None
    return lease_id


def list_page(service: LeaseService, request: pb.ListLeasesRequest) -> pb.ListLeasesResponse:
    """One page of ListLeases: at most ``page_size`` leases and :data:`PAGE_BYTES` bytes."""
    if request.state and request.state not in LEASE_STATES:
        raise InvalidRequestError(
            f"state {request.state[:64]!r} is not one of {', '.join(sorted(LEASE_STATES))}"
        )
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    response = pb.ListLeasesResponse()
    used = 0
    views = service.iter_leases(
        after=decode_page_token(request.page_token), gmsa=request.gmsa, state=request.state
    )
    leases = response.leases
    for view in views:
        if len(leases) >= size:
            response.next_page_token = encode_page_token(leases[-1].lease_id)
            break
        info = leases.add()
        _fill_lease_info(info, view)
        # Field tag + length prefix: at most 1 + 5 bytes on top of the message itself.
        cost = info.ByteSize() + 6
        if len(leases) > 1 and used + cost > PAGE_BYTES:
            del leases[-1]
            response.next_page_token = encode_page_token(leases[-1].lease_id)
            break
        used += cost
    return response


class Server:
    """The grpc.aio server bound to the Unix socket, with health and reflection.

    Its event loop runs in a thread of its own, so the daemon's main thread stays a plain loop
    of signal handling and sd_notify.
    """

    def __init__(self, service: LeaseService) -> None:
        self.service = service
        config = service.config
        self.socket_path = config.socket_path
        self._gate: PeerGate | None = None
        self._deny: grpc.Server | None = None
        self._executor = futures.ThreadPoolExecutor(
            max_workers=config.rpc_threads, thread_name_prefix="rpc"
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-aio", daemon=True
        )
        self.health = health.aio.HealthServicer()
        self.grpc: grpc.aio.Server | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _serve(self, address: str) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[DecodeErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_CredentialsFetcherServiceServicer_to_server(
            CredentialsFetcherServicer(self.service, self._executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        server.add_insecure_port(address)
        await server.start()
        return server

    def start(self) -> None:
        config = self.service.config
        config.socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._loop_thread.start()
        gid = grp.getgrnam(config.socket_group).gr_gid if config.socket_group else None
        allow_list = AllowList(config.allowed_uids, config.allowed_gids)
        if allow_list:
            self._start_gated(allow_list, gid)
            return
        # A socket left by a killed daemon would make bind fail with EADDRINUSE.
        if self.socket_path.is_socket() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            self.grpc = self._run(self._serve(f"unix:{self.socket_path}"))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, config.socket_mode)
        if gid is not None:
            os.chown(self.socket_path, -1, gid)
        self.update_health()

    def _start_gated(self, allow_list: AllowList, gid: int | None) -> None:
        """Serve behind the SO_PEERCRED gate (see :mod:`credfetcher.peercred`)."""
        private = self.service.config.socket_dir / ".credfetcher-private"
        private.mkdir(mode=0o700, exist_ok=True)
        private.chmod(0o700)
        for name in ("service.sock", "deny.sock"):
            (private / name).unlink(missing_ok=True)
        self.grpc = self._run(self._serve(f"unix:{private / 'service.sock'}"))
        self._deny = deny_server(f"unix:{private / 'deny.sock'}")
        self._deny.start()
        config = self.service.config
        limits = GateLimits(
            max_connections=config.peer_max_connections,
            max_per_uid=config.peer_max_per_uid,
            max_refused=config.peer_max_refused,
            idle_timeout=config.peer_idle_timeout,
        )
        self._gate = PeerGate(
            self.socket_path,
            private / "service.sock",
            private / "deny.sock",
            allow_list,
            limits=limits,
        )
        self._gate.start(self.service.config.socket_mode, gid)
        self.update_health()

    def update_health(self) -> bool:
        ok, _ = self.service.health()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._run(self.health.set("", status))
        self._run(self.health.set(SERVICE_NAME, status))
        return ok

    def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight calls finish within ``grace`` seconds."""
        self._run(self.health.enter_graceful_shutdown())
        if self._gate is not None:
            self._gate.stop()
        if self.grpc is not None:
            self._run(self.grpc.stop(grace), timeout=grace + 2)
        if self._deny is not None:
            self._deny.stop(0).wait(1)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(2)
        self.socket_path.unlink(missing_ok=True)
