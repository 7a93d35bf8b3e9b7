"""Keep third-party noise out of the user's terminal: edgequant reports through its own output only.

onnxruntime's quantizer logs warnings on the root logger, its histogram calibrators print to
stdout and the sessions it creates log native warnings (``quiet_logging``); Qualcomm's QNN libraries write banners from native code
(``native_output_silenced``). ``EDGEQUANT_DEBUG=1`` shows everything.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Redirect file descriptors 1 and 2 to a scratch file while native code runs.

    With ``EDGEQUANT_DEBUG=1`` in the environment nothing is hidden.
    """
    if os.environ.get("EDGEQUANT_DEBUG"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


_ort_quiet_depth = 0


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Python-level noise of onnxruntime's quantization tools: root-logger warnings and prints."""
    if os.environ.get("EDGEQUANT_DEBUG"):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort = sys.modules.get("onnxruntime")
    if ort is None:
        import onnxruntime as ort
    # sessions the quantization tools create log native warnings at onnxruntime's default level (2);
    # onnxruntime has no getter, so nesting is counted: only the outermost block restores it
    global _ort_quiet_depth
    if _ort_quiet_depth == 0:
        ort.set_default_logger_severity(4)
    _ort_quiet_depth += 1
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        _ort_quiet_depth -= 1
        if _ort_quiet_depth == 0:
            ort.set_default_logger_severity(2)
        logging.disable(previous)
