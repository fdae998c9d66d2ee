"""HealthCheck every 100 ms from a process of its own, for ``bench/scale.py``.

The poller must not share an interpreter with the benchmark's eight client threads: in one
process it waited for their GIL too, and reported their stalls as the daemon's (in one run of
5,000 creations the in-process poller's worst was 24.3 ms while this process, polling the same
daemon at the same time, saw at most 5.6 ms). A real HealthCheck caller (systemd, the ECS agent,
a kubelet probe) is a process of its own as well.

Protocol: ``python bench/healthpoll.py SOCKET``; each line on stdin names the current phase
(``idle`` pauses the polling: idle CPU is measured then). At end of input it prints one JSON
object, ``{"worst": {phase: seconds}, "failures": {phase: count}}``, and exits. A call that fails
in the ``restart`` phase (from the stop to the new daemon's first answer) is not a failure.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import grpc

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc

EVERY = 0.1


def main(socket: str) -> None:
    phase = ["idle"]
    done = threading.Event()

    def read_phases() -> None:
        for line in sys.stdin:
            phase[0] = line.strip()
        done.set()

    threading.Thread(target=read_phases, daemon=True).start()
    worst: dict[str, float] = {}
    failures: dict[str, int] = {}
    channel: grpc.Channel | None = None
    while not done.wait(EVERY):
        current = phase[0]
        if current == "idle":
            continue
        if channel is None:
            if not os.path.exists(socket):
                continue
            channel = grpc.insecure_channel(f"unix:{socket}")
        started = time.monotonic()
        try:
            pb_grpc.CredentialsFetcherServiceStub(channel).HealthCheck(
                pb.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            if current != "restart":
                failures[current] = failures.get(current, 0) + 1
            channel.close()
            channel = None
            continue
        worst[current] = max(worst.get(current, 0.0), time.monotonic() - started)
    if channel is not None:
        channel.close()
    print(json.dumps({"worst": worst, "failures": failures}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
