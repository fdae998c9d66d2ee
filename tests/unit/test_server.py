"""The gRPC face without a socket: one status per error class, and ListLeases' pages."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import cast

import grpc
import pytest

from credfetcher import errors, server
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.errors import CredfetcherError, InvalidRequestError
from credfetcher.server import (
    DEFAULT_PAGE_SIZE,
    MAX_MESSAGE_BYTES,
    PAGE_BYTES,
    decode_page_token,
    encode_page_token,
    list_page,
    status_code,
    status_for,
)
from credfetcher.service import LeaseService, LeaseView, TicketView


def error_classes() -> list[type[CredfetcherError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, CredfetcherError)
    ]


def test_every_error_class_has_a_deliberate_status() -> None:
    # A new error class must be placed in the table on purpose; these two inherit on purpose.
    inherit = {errors.CredspecError, errors.DCUnavailableError}
    assert set(error_classes()) - set(server.STATUS_CODES) == inherit
    assert status_code(errors.CredspecError("bad", field="x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(errors.DCUnavailableError("down", attempts=[])) == (
        grpc.StatusCode.UNAVAILABLE
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.KeyRejectedError("no", principal="p"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.KerberosError("no", principal="p"), grpc.StatusCode.UNAVAILABLE),
        (errors.GmsaNotFoundError("no"), grpc.StatusCode.NOT_FOUND),
        (errors.LeaseNotFoundError("no"), grpc.StatusCode.NOT_FOUND),
        (errors.StorageError("no", path="/x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_the_nearest_class_decides(error: CredfetcherError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_messages_name_the_gmsa_once() -> None:
    error = errors.GmsaNotFoundError("no such account")
    error.gmsa = "webapp01"
    assert status_for(error) == (grpc.StatusCode.NOT_FOUND, "gMSA webapp01: no such account")
    named = errors.GmsaNotFoundError("webapp01 does not exist")
    named.gmsa = "WebApp01"
    assert status_for(named)[1] == "webapp01 does not exist"


@pytest.mark.parametrize("lease_id", ["0123456789abcdef0123", "task-1", "credspec"])
def test_page_tokens_round_trip(lease_id: str) -> None:
    assert decode_page_token(encode_page_token(lease_id)) == lease_id
    assert decode_page_token("") == ""


@pytest.mark.parametrize(
    "token", ["nonsense", "l1.", "l1.Li4vZXRj", "l1.%%%", "l1." + "A" * 200, "\x00"]
)
def test_tokens_we_did_not_make_are_refused(token: str) -> None:
    with pytest.raises(InvalidRequestError, match="page_token"):
        decode_page_token(token)


class FakeService:
    """What list_page needs of LeaseService: leases in id order after a point, filtered."""

    def __init__(self, views: list[LeaseView]) -> None:
        self.views = views
        self.asked: list[tuple[str, str, str]] = []

    def iter_leases(
        self, *, after: str = "", gmsa: str = "", state: str = ""
    ) -> Iterator[LeaseView]:
        self.asked.append((after, gmsa, state))
        return iter([v for v in self.views if v.lease_id > after])


def view(n: int, error: str = "") -> LeaseView:
    lease_id = f"{n:020x}"
    directory = f"/k/{lease_id}/webapp01"
    ticket = TicketView("webapp01", "example.com", directory, 1, 2, error, 3)
    return LeaseView(lease_id, False, "failing" if error else "active", (ticket,))


def pages(service: FakeService, request: pb.ListLeasesRequest) -> list[pb.ListLeasesResponse]:
    out = []
    while True:
        response = list_page(cast(LeaseService, service), request)
        out.append(response)
        if not response.next_page_token:
            return out
        request = pb.ListLeasesRequest(
            page_token=response.next_page_token, page_size=request.page_size
        )


def test_pages_cover_every_lease_once_in_order() -> None:
    service = FakeService([view(n) for n in range(2500)])
    got = pages(service, pb.ListLeasesRequest())
    assert [len(p.leases) for p in got] == [DEFAULT_PAGE_SIZE, DEFAULT_PAGE_SIZE, 500]
    ids = [le.lease_id for p in got for le in p.leases]
    assert ids == [f"{n:020x}" for n in range(2500)]
    many = FakeService([view(n) for n in range(6000)])
    # More than MAX_PAGE_SIZE asked: 5,000 at most.
    assert [len(p.leases) for p in pages(many, pb.ListLeasesRequest(page_size=7000))] == [
        5000,
        1000,
    ]
    assert [len(p.leases) for p in pages(service, pb.ListLeasesRequest(page_size=1000))] == [
        1000,
        1000,
        500,
    ]


def test_a_page_never_passes_the_byte_bound() -> None:
    # Long error texts: 1,000 leases of ~20 KiB each would be 20 MiB in one message.
    service = FakeService([view(n, error="x" * 20_000) for n in range(1000)])
    got = pages(service, pb.ListLeasesRequest())
    assert len(got) > 1
    for page in got:
        assert page.ByteSize() <= PAGE_BYTES < MAX_MESSAGE_BYTES
    assert sum(len(p.leases) for p in got) == 1000


def test_filters_go_to_the_service_and_a_bad_state_is_refused() -> None:
    service = FakeService([view(1)])
    list_page(cast(LeaseService, service), pb.ListLeasesRequest(gmsa="WebApp01", state="failing"))
    assert service.asked == [("", "WebApp01", "failing")]
    with pytest.raises(InvalidRequestError, match="state 'asleep'"):
        list_page(cast(LeaseService, service), pb.ListLeasesRequest(state="asleep"))


def test_a_single_huge_lease_still_gets_its_own_page() -> None:
    service = FakeService([view(1, error="y" * (PAGE_BYTES + 10)), view(2)])
    got = pages(service, pb.ListLeasesRequest())
    assert [len(p.leases) for p in got] == [1, 1]
