"""fsutil.scratch_cwd from two threads (tune quantizes in a background thread while the search runs):
the process must end in the folder it started in, never in one of the scratch folders (deleted later)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from edgequant.fsutil import scratch_cwd


def test_two_threads_in_scratch_folders_leave_the_working_directory_where_it_was(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    home = tmp_path / "home"
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (home, a, b):
        d.mkdir()
    monkeypatch.chdir(home)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, str] = {}

    def first() -> None:
        with scratch_cwd(a):
            a_inside.set()
            b_inside.wait(0.5)          # unguarded, b would enter here and later restore "a"
            seen["a"] = os.getcwd()
        a_left.set()

    def second() -> None:
        a_inside.wait(5)
        with scratch_cwd(b):
            b_inside.set()
            a_left.wait(5)
            seen["b"] = os.getcwd()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a": str(a), "b": str(b)}      # each block ran in its own folder
    assert os.getcwd() == str(home)
