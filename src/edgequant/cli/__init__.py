"""Command-line entry point. Thin: parse, call the API, print.

Every command shares one error policy: an :class:`EdgequantError` (or a bad usage) becomes one
line on stderr and a non-zero exit; anything unexpected becomes one line too, with the
traceback only under ``--debug``.
"""

from __future__ import annotations

import errno
import sys

import click

from ..errors import EdgequantError

EXIT_ERROR = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgequant")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgequant: FP32 ONNX -> INT8 that is measured faster and within an accuracy budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each command lives in its own module; importing it attaches it to ``cli``.
    import importlib

    for name in ("doctor", "devices_cmd", "inspect_cmd", "quantize_cmd", "bench_cmd", "eval_cmd", "run_cmd",
                 "tune_cmd", "qat_cmd", "fleet_cmd"):
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def _error(msg: str) -> None:
    click.echo(f"edgequant: error: {msg}", err=True)


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, a job scheduler, a CI timeout) stops a command as Ctrl-C does: worker processes
    are ended and partial outputs removed by the same cleanup, instead of the process just vanishing."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    _register()
    _stop_on_sigterm()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:  # the error line says "re-run with --debug": accept it after the command too
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        # Non-standalone click returns ctx.exit()'s code instead of raising it.
        rv = cli.main(args=args, prog_name="edgequant", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:  # usage errors, bad paths given to click types
        _error(exc.format_message())
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except click.exceptions.Abort:      # click's form of Ctrl-C
        _error("interrupted")
        return 130
    except EdgequantError as exc:
        if debug:
            raise
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as exc:
        if debug:
            raise
        if exc.errno == errno.ENOSPC:      # e.g. inside onnxruntime's quantizer, writing a temp model
            _error(f"no space left on device writing {exc.filename or 'a temporary file (check TMPDIR too)'}")
        else:
            where = f"{exc.filename}: " if exc.filename else ""
            _error(f"{where}{exc.strerror or exc} (re-run with --debug for the traceback)")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            raise
        text = " ".join(str(exc).split())[:500]
        _error(f"unexpected {type(exc).__name__}: {text} (re-run with --debug for the traceback)")
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
