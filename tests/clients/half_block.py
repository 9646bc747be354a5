"""Opens a run on a store, sends part of one big block, then waits to be killed.

A writer that vanishes mid-frame, as a crashed node's would: the store holds
a session and a half-received block for it until its lease runs out.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc

from trajstore import wire
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--frame-mib", type=int, default=64, help="size of the one frame")
    parser.add_argument("--send-mib", type=int, default=48, help="how much of it to send")
    args = parser.parse_args()
    frame = args.frame_mib << 20
    spec = RunSpec(groups=(GroupSpec("group['x']", True, (LeafSpec("", "uint8", (frame,)),)),))
    channel = grpc.insecure_channel(
        args.address, options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = pb_grpc.IngestServiceStub(channel)
    opened = stub.OpenRun(pb.OpenRunRequest(run=args.run, schema=wire.schema_to_proto(spec)))
    part = min(opened.max_message_bytes, 4 << 20)
    payload = bytes(part)

    def requests():
        sent = 0
        while sent + part <= args.send_mib << 20:
            yield pb.WriteRequest(
                session=opened.session,
                block=1,
                group=0,
                start=0,
                count=1,
                total_bytes=frame,
                offset=sent,
                data=payload,
            )
            sent += part
        print("sent", flush=True)
        while True:  # the block never completes: killed here
            time.sleep(3600)

    for _ in stub.Write(requests()):
        pass


if __name__ == "__main__":
    sys.exit(main())
