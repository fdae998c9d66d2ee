"""Requests that do not decode get INVALID_ARGUMENT, not grpcio's INTERNAL.

grpcio answers a request its deserializer cannot parse (a string field that is not UTF-8, which
proto3 forbids; a truncated or garbled message) with INTERNAL "Exception deserializing request!"
and logs a traceback, as if the daemon had a bug. :class:`DecodeErrorInterceptor` wraps each
unary-unary method's deserializer instead: an undecodable request is answered INVALID_ARGUMENT
with protobuf's reason (which names the message type, never the bytes).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["DecodeErrorInterceptor"]


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a request that fails to decode into INVALID_ARGUMENT (unary-unary methods)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        behaviour: Callable[[Any, Any], Any] = handler.unary_unary
        method = handler_call_details.method

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{method}: the request is not a valid message: {request.reason}",
                )
            result = behaviour(request, context)
            # Our servicer's methods are coroutines; grpc's own (health, reflection) may not be.
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=tolerant, response_serializer=handler.response_serializer
        )
