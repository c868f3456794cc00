"""The one top-level error handler: faults become one line on stderr, never a traceback.

`medmax <cmd>: cannot write: <path>: <reason>` (exit 1) for a full disk or an unwritable output,
`cannot open: <path>: <reason>` for a missing or forbidden file, `cannot continue: out of memory`
and so on. Bad records and broken streams are reported by the stages themselves (exit 1); usage
errors by click (exit 2). Set `MEDMAX_DEBUG=1` to get the Python traceback instead. Messages
pass through the egress redaction, so no API key reaches the terminal. SIGTERM (medmax_cli.process)
ends a run with 143 and Ctrl-C with 130, their temporary files removed; a reader gone from stdout
ends it quietly with 0. Exit codes: docs/security.md.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any

DEBUG_ENV = "MEDMAX_DEBUG"
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _command(argv: Sequence[str], names: Sequence[str]) -> str:
    for arg in argv:
        if arg in names:
            return f"medmax {arg}"
    return "medmax"


def describe(exc: BaseException) -> str:
    """`cannot <verb>: <path>: <reason>` (or a plain reason) for an error that stops a run."""
    from medmax_cli.atomic import CannotWrite

    if isinstance(exc, CannotWrite):
        return str(exc)
    if exc.__class__.__name__ == "EgressRefused":
        return str(exc)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        verb = "write" if exc.errno in _WRITE_ERRNOS else "open"
        if exc.filename:
            target = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            return f"cannot {verb}: {target}: {reason}"
        return f"cannot {'write' if exc.errno in _WRITE_ERRNOS else 'continue'}: {reason}"
    if isinstance(exc, MemoryError):
        return (
            "cannot continue: out of memory (lower the batch or the size caps MEDMAX_MAX_LINE_BYTES / "
            "MEDMAX_MAX_MEMBER_BYTES; see docs/security.md)"
        )
    if isinstance(exc, EOFError):
        return f"cannot read: input ended unexpectedly ({exc or 'EOFError'})"
    if isinstance(exc, RecursionError):
        return "cannot continue: input nested too deeply"
    if _known(exc):
        return f"error: {exc}"
    return f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback and report it)"


def _known(exc: BaseException) -> bool:
    """The toolkit's own error types (a clear message already), matched without importing them."""
    names = {
        "RecordError",
        "MediaError",
        "StreamError",
        "HttpError",
        "LLMError",
        "JudgeError",
        "ReplyRejected",
    }
    return any(cls.__name__ in names and cls.__module__.startswith("medmax_cli") for cls in type(exc).__mro__)


def run(app: Any, argv: Sequence[str] | None = None) -> int:
    """Run the typer `app` (not standalone, so nothing escapes unseen); returns the exit status."""
    from typer.exceptions import Abort, Exit, TyperException

    from medmax_cli.process import EXIT_TERMINATED, Terminated

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            result = app(args=argv, prog_name="medmax", standalone_mode=False)
        finally:  # whatever ended the run: no temporary output is left behind (medmax_cli.atomic)
            from medmax_cli.atomic import discard_pending

            discard_pending()
    except Terminated:
        return _fail(argv, app, "terminated (SIGTERM); temporary files removed", EXIT_TERMINATED)
    except Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer's translation of Ctrl-C
            return _fail(argv, app, "interrupted", EXIT_INTERRUPTED)
        return int(exc.exit_code)
    except TyperException as exc:  # usage errors: the parser's own message and status (2)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"medmax: error: {exc.format_message()}", file=sys.stderr)
        return int(exc.exit_code)
    except Abort as exc:  # typer turns EOFError into Abort
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Terminated):
            return _fail(argv, app, "terminated (SIGTERM); temporary files removed", EXIT_TERMINATED)
        if cause is None or isinstance(cause, KeyboardInterrupt):
            return _fail(argv, app, "interrupted", EXIT_INTERRUPTED)
        return _handle(argv, app, cause)
    except KeyboardInterrupt:
        return _fail(argv, app, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except SystemExit as exc:  # click answers EPIPE with sys.exit(1); a gone reader is not a failure
        cause = exc.__context__
        if isinstance(cause, OSError) and cause.errno == errno.EPIPE:
            _silence_stdout()
            return 0
        raise
    except Exception as exc:  # noqa: BLE001 - the point of a top-level handler (MemoryError too)
        return _handle(argv, app, exc)
    if result == EXIT_INTERRUPTED:  # typer turned Ctrl-C into Exit(130) and returned its code
        return _fail(argv, app, "interrupted", EXIT_INTERRUPTED)
    return result if isinstance(result, int) else 0


def _handle(argv: Sequence[str], app: Any, exc: BaseException) -> int:
    if debug_enabled():
        raise exc
    return _fail(argv, app, describe(exc), EXIT_ERROR)


def _fail(argv: Sequence[str], app: Any, message: str, code: int) -> int:
    from medmax_cli.egress import redact_text

    found = [*getattr(app, "registered_commands", []), *getattr(app, "registered_groups", [])]
    names = [c.name for c in found if getattr(c, "name", None)]
    try:
        print(f"{_command(argv, names)}: {redact_text(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
