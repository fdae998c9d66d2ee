"""DecodeErrorInterceptor: an undecodable request is INVALID_ARGUMENT naming the method; good
requests and non-coroutine handlers pass through untouched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.wire import DecodeErrorInterceptor

METHOD = "/credentialsfetcher.CredentialsFetcherService/HealthCheck"


async def health_check(request: pb.HealthCheckRequest, context: Any) -> pb.HealthCheckResponse:
    return pb.HealthCheckResponse(status=f"OK {request.service}")


def delete_lease(request: pb.DeleteKerberosLeaseRequest, context: Any) -> Any:
    # A plain function, as grpc's own health and reflection servicers have.
    return pb.DeleteKerberosLeaseResponse(lease_id=request.lease_id)


HANDLERS = grpc.method_handlers_generic_handler(
    "credentialsfetcher.CredentialsFetcherService",
    {
        "HealthCheck": grpc.unary_unary_rpc_method_handler(
            health_check,
            request_deserializer=pb.HealthCheckRequest.FromString,
            response_serializer=pb.HealthCheckResponse.SerializeToString,
        ),
        "DeleteKerberosLease": grpc.unary_unary_rpc_method_handler(
            delete_lease,
            request_deserializer=pb.DeleteKerberosLeaseRequest.FromString,
            response_serializer=pb.DeleteKerberosLeaseResponse.SerializeToString,
        ),
    },
)


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s.sock"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = grpc.aio.server(interceptors=[DecodeErrorInterceptor()])
        server.add_generic_rpc_handlers((HANDLERS,))
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert started.wait(10)
    try:
        yield path
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def raw_call(path: Path, method: str, data: bytes) -> bytes:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        # No serializers: bytes in, bytes out.
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        return bytes(call(data, timeout=10))


def test_an_undecodable_request_is_invalid_argument_naming_the_method(socket_path: Path) -> None:
    # Field 1 (service, a string) holding bytes that are not UTF-8: proto3 refuses it.
    bad = b"\x0a\x02\xff\xfe"
    with pytest.raises(grpc.RpcError) as info:
        raw_call(socket_path, METHOD, bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert METHOD in (info.value.details() or "")
    assert "not a valid message" in (info.value.details() or "")


def test_good_requests_and_plain_handlers_pass_through(socket_path: Path) -> None:
    answer = raw_call(socket_path, METHOD, pb.HealthCheckRequest(service="x").SerializeToString())
    assert pb.HealthCheckResponse.FromString(answer).status == "OK x"
    delete = "/credentialsfetcher.CredentialsFetcherService/DeleteKerberosLease"
    answer = raw_call(
        socket_path, delete, pb.DeleteKerberosLeaseRequest(lease_id="abc").SerializeToString()
    )
    assert pb.DeleteKerberosLeaseResponse.FromString(answer).lease_id == "abc"
