"""Quantizing worker processes never outlive the process that started them: killed (SIGKILL) or
stopped (SIGTERM), the parent's jobs end with it instead of running on, orphaned, for minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

PARENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    from edgequant.jobs import quantize_batch

    def slow_job(job):            # a stand-in for AdaRound: minutes of work, its pid recorded
        Path(job).write_text(str(os.getpid()))
        time.sleep(120)
        return {"ok": True}

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        quantize_batch([str(out / "a.pid"), str(out / "b.pid")], 2, slow_job)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:       # a zombie waiting for its reaper is gone too
        return f.read().split()[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_when_their_parent_is_killed(tmp_path: Path, sig) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        pids_files = [tmp_path / "a.pid", tmp_path / "b.pid"]
        deadline = time.monotonic() + 60
        while not all(p.exists() and p.read_text() for p in pids_files):
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in pids_files]
        assert all(_alive(pid) for pid in workers)
        parent.send_signal(sig)
        parent.wait(30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()
