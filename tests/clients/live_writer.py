"""Streams a run whose frame i holds the value i everywhere, at a steady pace.

``live_writer.py --address A --run R --frames N [--pause S] [--journal PATH
--reconnect-timeout S --journal-limit BYTES]``; ``--journal-limit`` caps the
size of any file the process writes (``RLIMIT_FSIZE``), so a journal growing
past it fails as on a full disk. Readers can check any frame they see: frame i must
be all i, never zeros or a mix.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from trajstore import EveryNStep, RemoteStorageWriter, WriterGroupConfig, view


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.002)
    parser.add_argument("--journal", default=None)
    parser.add_argument("--reconnect-timeout", type=float, default=300.0)
    parser.add_argument("--journal-limit", type=int, default=None)
    args = parser.parse_args()
    if args.journal_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.journal_limit, args.journal_limit))
    config = {
        "x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1)),
    }
    first = {"a": np.zeros((64, 3), np.float32), "b": np.int64(0)}
    with RemoteStorageWriter(
        args.address,
        args.run,
        config,
        first,
        args.frames,
        compile_views=False,
        send_interval=0.01,
        journal=args.journal,
        reconnect_timeout=args.reconnect_timeout,
    ) as log:
        for step in range(args.frames):
            log.log({"a": np.full((64, 3), step, np.float32), "b": np.int64(step)}, step)
            time.sleep(args.pause)
    print("done", flush=True)


if __name__ == "__main__":
    main()
