"""What the disk cap adds to each poll of a running sandbox (``harness.trusted.executor.supervise``).

    python results/security/disk_poll.py

Times ``untrusted_files.files_bytes`` on a run folder of a smoke evaluation's size, with one live process that
imported torch as the sandbox's, without and with reading its mappings (done every ``MAPS_INTERVAL_S``), against the
process scan every poll already makes. Prints milliseconds per poll.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.trusted import executor
from harness.trusted.untrusted_files import files_bytes, remove_tree

REPEATS = 200


def main() -> None:
    run = Path(tempfile.mkdtemp(prefix="harness-disk-poll-"))
    for folder in ("tmp", "weights"):
        (run / folder).mkdir()
    (run / "request.json").write_bytes(b"x" * 13_000)  # the sizes a smoke evaluation's run folder holds
    (run / "sandbox.log").write_bytes(b"l" * 2_000)
    (run / "weights" / "rung0.pt").write_bytes(b"w" * 200_000)
    proc = subprocess.Popen([sys.executable, "-c", "import torch, time; print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        for maps in (False, True):
            started = time.perf_counter()
            for _ in range(REPEATS):
                files_bytes(run, [proc.pid], maps)
            print(f"files_bytes, mappings read {maps}: {(time.perf_counter() - started) / REPEATS * 1e3:.3f} ms")
        watched = executor.Started(proc, open(os.devnull, "wb"))
        started = time.perf_counter()
        for _ in range(REPEATS // 4):
            executor._sandbox_processes(watched)
        print(f"the process scan of every poll: {(time.perf_counter() - started) / (REPEATS // 4) * 1e3:.3f} ms")
    finally:
        proc.kill()
        proc.wait()
        remove_tree(run)


if __name__ == "__main__":
    main()
