"""Which model directory a command uses.

Precedence, first match wins:

1. the explicit `--model DIR` of the command;
2. the environment variable `MEDMAX_MODEL`;
3. `model = "DIR"` in `medmax.toml` in the working directory (relative to that file);

With none of them, `NoModelError` (the CLI exits 2 with its message): a forgotten `--model` must
not quietly produce outputs from random weights.

The value `tiny` at any level selects the built-in tiny random demo model (unless ./tiny is a
directory), built on first use into the cache (`$MEDMAX_CACHE/tiny-model-v1`, else
`$XDG_CACHE_HOME/medmax/tiny-model-v1`, else `~/.cache/medmax/tiny-model-v1`) with a one-line
notice on stderr. The tiny build is atomic: it is written to a temporary directory beside the
target and renamed into place under a file lock, so concurrent processes never see a half-written
model. Outputs made with a random model say so (`model_random`; `model.load.model_is_random`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medmax_cli.model.load import MODEL_INFO_FILE, ModelDirError, check_model_dir

ENV_MODEL = "MEDMAX_MODEL"
ENV_CACHE = "MEDMAX_CACHE"
CONFIG_NAME = "medmax.toml"
TINY_NAME = "tiny-model-v1"
TINY_KEYWORD = "tiny"
TINY_SEED = 0

Notify = Callable[[str], None]

NO_MODEL_HINT = (
    "no model chosen: pass --model DIR (a local Hugging Face Chameleon/Anole directory, e.g. "
    'models/anole-7b), set MEDMAX_MODEL=DIR, or put model = "DIR" in ./medmax.toml; '
    "`--model tiny` (or MEDMAX_MODEL=tiny) selects the tiny random demo model"
)


class NoModelError(ModelDirError):
    """No model was chosen by --model, $MEDMAX_MODEL or medmax.toml."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The medmax cache: $MEDMAX_CACHE, else $XDG_CACHE_HOME/medmax, else ~/.cache/medmax."""
    env = os.environ if env is None else env
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "medmax"


def tiny_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the built-in tiny model lives (it may not be built yet)."""
    return cache_dir(env) / TINY_NAME


def _read_toml_model(config: Path) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError as exc:  # Python 3.10
        raise RuntimeError(f"{config}: reading medmax.toml needs Python 3.11+ (tomllib)") from exc
    # ModelDirError (what the commands catch) for every fault of the file: usage, exit 2, never a traceback
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ModelDirError(f"{config}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{config}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    except RecursionError:
        raise ModelDirError(f"{config}: nested too deeply to be a settings file") from None
    except OSError as exc:
        raise ModelDirError(f"{config}: cannot read ({exc.strerror or exc})") from None
    value = data.get("model")
    if value is not None and not isinstance(value, str):
        raise ModelDirError(f"{config}: 'model' must be a string (a model directory), got {value!r:.60}")
    return value


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock); elsewhere the rename below settles races."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        try:
            import fcntl
        except ModuleNotFoundError:
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes 0700 directories and some writers 0600 files: apply the usual umask instead."""
    mask = _umask()
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def build_tiny_model_atomic(
    target: str | Path, seed: int = TINY_SEED, *, lock: bool = True, **build_kwargs: Any
) -> Path:
    """Build the tiny model into `target` via a temporary sibling directory and a rename.

    A finished `target` (it holds medmax_model.json) is left alone. With `lock` (a
    `.<name>.lock` file beside the target) racing processes build at most once; without it they
    may both build, and the first rename wins. A reader never sees a partial directory.
    """
    from medmax_cli.model.tiny import build_tiny_model

    target = Path(target).expanduser()
    if (target / MODEL_INFO_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    guard = _file_lock(target.parent / f".{target.name}.lock") if lock else contextlib.nullcontext()
    with guard:
        if (target / MODEL_INFO_FILE).is_file():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build_tiny_model(tmp, seed=seed, **build_kwargs)
            _normal_permissions(tmp)
            if target.exists() and not (target / MODEL_INFO_FILE).is_file():
                shutil.rmtree(target)  # a leftover without the completion marker
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / MODEL_INFO_FILE).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # lost an unlocked race to a finished build
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def ensure_tiny_model(env: Mapping[str, str] | None = None, notify: Notify | None = _stderr) -> Path:
    """The built-in tiny model's directory, built on first use (with a notice via `notify`)."""
    target = tiny_model_dir(env)
    if not (target / MODEL_INFO_FILE).is_file():
        if notify is not None:
            notify(f"medmax: no model given; building the tiny demo model in {target} (once)")
        build_tiny_model_atomic(target)
    return target


def resolve_model_dir(
    explicit: str | Path | None = None,
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    notify: Notify | None = _stderr,
) -> Path:
    """The model directory to use: `explicit` > $MEDMAX_MODEL > medmax.toml (`tiny`: the tiny model).

    `cwd` and `env` default to the process's; `notify` receives the one-line notice printed when
    the tiny model is built (stderr by default, None for silence). Raises ModelDirError naming
    the path and where it came from when the chosen path is not a model directory, and
    NoModelError (a ModelDirError) when nothing chose a model.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)

    candidates: list[tuple[str | Path | None, str, Path]] = [
        (explicit, "--model", cwd),
        (env.get(ENV_MODEL) or None, f"${ENV_MODEL}", cwd),
    ]
    config = cwd / CONFIG_NAME
    if config.is_file():
        candidates.append((_read_toml_model(config), str(config), cwd))
    for value, source, base in candidates:
        if value is None or str(value) == "":
            continue
        if str(value) == TINY_KEYWORD and not (base / TINY_KEYWORD).is_dir():
            return ensure_tiny_model(env, notify)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = base / path
        return check_model_dir(path, source=source)
    raise NoModelError(NO_MODEL_HINT)


def model_choice(
    explicit: str | Path | None = None,
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """(value, where it came from) of the model a command would use, without building or checking
    anything: for `--print-config` and `medmax env`. (None, None) when nothing chooses one."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if explicit not in (None, ""):
        return str(explicit), "flag"
    if env.get(ENV_MODEL):
        return env[ENV_MODEL], f"environment {ENV_MODEL}"
    config = cwd / CONFIG_NAME
    if config.is_file():
        try:
            value = _read_toml_model(config)
        except (ValueError, RuntimeError, OSError) as exc:
            return None, f"{config}: {exc}"
        if value:
            return value, str(config)
    return None, None


__all__ = [
    "ENV_CACHE",
    "ENV_MODEL",
    "ModelDirError",
    "NO_MODEL_HINT",
    "NoModelError",
    "build_tiny_model_atomic",
    "cache_dir",
    "ensure_tiny_model",
    "model_choice",
    "resolve_model_dir",
    "tiny_model_dir",
]
