"""`--config FILE` and `--print-config`: settings from a TOML file, and the settings that will run.

`read_config` turns a TOML file with one section per command ([pack], [fetch.pmc]) into click's
default_map. Every option a command has may be set there, the common ones too (max-reject-rate,
heartbeat, stats, log-level...). Everything wrong with the file (not UTF-8, not TOML, nested too
deep, an unknown section or key, a value the option would refuse, an integer beyond 64 bits, a
non-finite number) is a usage error, exit 2, naming `--config`, the section and the key.

`render_settings` prints what a command will run with: defaults resolved (the value a None
default stands for: the environment, the preset, finetune's recipe), the environment and the
config file applied, and the model the environment selects, each line saying where it came from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 16 << 20
INT64 = 1 << 63


class ConfigFileError(ValueError):
    """A --config file that cannot be used (the CLI prints it and exits 2)."""


def _click() -> Any:
    from typer import core

    return core._click


# --------------------------------------------------------------------------- reading


def _config_key(param: Any) -> str:
    """A parameter's key in a config file: its long flag without dashes (`seq-len`), else its name."""
    longs = [o[2:] for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else param.name.replace("_", "-")


def _settable(param: Any) -> bool:
    """Every option may be set in a config file (`print-config = true` too); --help is no setting."""
    return bool(param.name) and param.name != "help"


def _shown(param: Any) -> bool:
    """What --print-config lists: the settings, not the request to print them."""
    return _settable(param) and param.name != "mm_print_config"


def config_params(command: Any) -> dict[str, Any]:
    """Every spelling a config file may use for a command's parameters -> the click parameter."""
    keys: dict[str, Any] = {}
    for param in command.params:
        if not _settable(param):
            continue
        plain = param.name.removeprefix("mm_")
        for spelling in (_config_key(param), plain, plain.replace("_", "-")):
            keys[spelling] = param
        for opt in list(getattr(param, "opts", [])) + list(getattr(param, "secondary_opts", [])):
            if opt.startswith("--"):
                keys.setdefault(opt[2:], param)
    return keys


def _load_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        if not path.is_file():
            raise ConfigFileError(
                f"--config {path}: not a regular file" if path.exists() else f"--config {path}: no such file"
            )
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigFileError(
                f"--config {path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a settings file"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"--config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"--config {path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path}: not valid TOML ({exc})") from None
    except (RecursionError, MemoryError):
        raise ConfigFileError(f"--config {path}: nested too deeply to be a settings file") from None


def _is_many(param: Any) -> bool:
    """A parameter that takes a list (repeatable option, variadic argument, a pair like --compare A B)."""
    descriptor = getattr(param, "type_descriptor", None)
    return bool(
        getattr(param, "multiple", False)
        or getattr(param, "nargs", 1) != 1
        or getattr(descriptor, "is_list", False)
        or getattr(descriptor, "is_tuple", False)
    )


def _check_scalar(value: Any, param: Any, where: str) -> None:
    if isinstance(value, dict):
        raise ConfigFileError(f"{where}: a table where a value belongs")
    if isinstance(value, list):
        raise ConfigFileError(f"{where}: a list where one value belongs")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        raise ConfigFileError(f"{where}: integer {str(value)[:20]}... is beyond 64 bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigFileError(f"{where}: must be a finite number; got {value}")
    flag = getattr(param, "is_flag", False) and not getattr(param, "count", False)
    if flag and not isinstance(value, bool):
        raise ConfigFileError(f"{where}: must be true or false; got {value!r}")
    if isinstance(value, bool) and not flag:  # click would read true as 1 or "True": a value rewritten
        raise ConfigFileError(f"{where}: takes a value, not {str(value).lower()}")


def _check_value(value: Any, param: Any, command: Any, where: str) -> Any:
    """The value as click's default_map holds it, after the checks the option's flag would get."""
    click = _click()
    if _is_many(param):
        items = value if isinstance(value, list) else [value]
        for item in items:
            _check_scalar(item, param, where)
        value = items
    else:
        _check_scalar(value, param, where)
    try:
        ctx = click.Context(command, info_name=command.name, resilient_parsing=True)
        if hasattr(param, "type_cast_value"):  # click
            param.type_cast_value(ctx, value)
        else:  # typer >= 0.24 (its own click copy): the same conversion and range checks
            param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    except click.exceptions.BadParameter as exc:
        raise ConfigFileError(f"{where}: {exc.message}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigFileError(f"{where}: {exc}") from None
    return value


def read_config(path: Path, group: Any) -> dict[str, Any]:
    """A TOML file with one section per command ([pack], [fetch.pmc]) as a click default_map.

    Keys are option names with - or _ (`seq-len` or `seq_len`), the common options included
    (`max-reject-rate`, `heartbeat`, `stats`, ...). Raises ConfigFileError naming the file,
    section and key for anything the command would not accept.
    """
    data = _load_toml(Path(path))

    def convert(table: dict[str, Any], command: Any, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        subcommands = getattr(command, "commands", None)
        keys = {} if subcommands is not None else config_params(command)
        for key, value in table.items():
            here = f"{where}.{key}" if where else key
            if subcommands is not None:
                if key not in subcommands:
                    raise ConfigFileError(
                        f"--config {path}: unknown section [{here}] (known: {', '.join(sorted(subcommands))})"
                    )
                if not isinstance(value, dict):
                    raise ConfigFileError(
                        f"--config {path}: [{here}] must be a section of settings, not a value"
                    )
                out[key] = convert(value, subcommands[key], here)
                continue
            param = keys.get(key) or keys.get(key.replace("_", "-"))
            if param is None:
                known = ", ".join(sorted({_config_key(p) for p in keys.values()}))
                raise ConfigFileError(f"--config {path}: unknown key {here!r} (known: {known})")
            if param.name in out:  # `seq-len` and `seq_len` both given: which one runs would be a guess
                raise ConfigFileError(f"--config {path}: [{where}] {key}: the same setting is given twice")
            out[param.name] = _check_value(value, param, command, f"--config {path}: [{where}] {key}")
        return out

    return convert(data, group, "")


# --------------------------------------------------------------------------- --print-config

Resolved = tuple[Any, str]  # (value, where it came from); value None: a comment line instead
Resolver = Callable[[str, dict[str, Any], Any], dict[str, Resolved]]


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Resolved:
    if os.environ.get(name):
        try:
            return convert(os.environ[name]), f"environment {name}"
        except ValueError:
            return os.environ[name], f"environment {name} (not valid: the command will refuse it)"
    return default, "default"


def _common(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    """What a None default of the options many commands share stands for."""
    from medmax_cli.observe import DEFAULT_HEARTBEAT

    out: dict[str, Resolved] = {}
    if "model" in params and params["model"] is None:
        from medmax_cli.model.resolve import model_choice

        value, source = model_choice(None)
        out["model"] = (
            (value, source)
            if value
            else (
                None,
                "none chosen: the command exits 2 (--model DIR, or --model tiny for the random demo model)",
            )
        )
    if "media_dir" in params and params["media_dir"] is None:
        out["media_dir"] = _env("MEDMAX_MEDIA", "media")
    if "mm_heartbeat" in params and params["mm_heartbeat"] is None:
        out["mm_heartbeat"] = _env("MEDMAX_HEARTBEAT", DEFAULT_HEARTBEAT, float)
    if "mm_log_level" in params and params["mm_log_level"] is None:
        verbose = params.get("mm_verbose") or 0
        if verbose:
            out["mm_log_level"] = ("debug" if verbose >= 2 else "info", "from -v")
        elif params.get("quiet"):
            out["mm_log_level"] = ("error", "from -q")
        else:
            out["mm_log_level"] = _env("MEDMAX_LOG", "warning")
    if "mm_stats" in params and params["mm_stats"] is None:
        folder = os.environ.get("MEDMAX_STATS_DIR")
        out["mm_stats"] = (
            (f"{folder}/<time>-{command.replace(' ', '-')}-<pid>.json", "environment MEDMAX_STATS_DIR")
            if folder
            else (None, "none: no stats file")
        )
    if "rejects" in params and params["rejects"] is None:
        if params.get("on_error") == "skip":
            out["rejects"] = (f"medmax-{command.split()[-1]}-rejects.jsonl", "default with --on-error skip")
        else:
            out["rejects"] = (None, "none: with --on-error fail the first bad record stops the run")
    if "mm_max_reject_rate" in params and params["mm_max_reject_rate"] is None:
        out["mm_max_reject_rate"] = (None, "none: exit 1 only when records were rejected and none written")
    if "cache_dir" in params and params["cache_dir"] is None:
        media = params.get("media_dir") or out.get("media_dir", (None,))[0] or "media"
        out["cache_dir"] = (f"{media}/.cache", "default: MEDIA_DIR/.cache")
    return out


_NONE_MEANS = {
    "max_steps": "none: epochs x steps per epoch",
    "stop_after": "none: run to the end of the schedule",
    "deepspeed": "none: FSDP/DDP",
}


def _finetune(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    """finetune's flags default to None and take the recipe's values (train/config.py)."""
    from medmax_cli.train.config import FIELDS, ConfigError, TrainConfig, read_config_file

    defaults = TrainConfig()
    from_file: dict[str, Any] = {}
    if params.get("config"):
        try:
            from_file = {k.replace("-", "_"): v for k, v in read_config_file(params["config"]).items()}
        except (ConfigError, OSError, ValueError):
            from_file = {}
    out: dict[str, Resolved] = {}
    for name, value in params.items():
        if value is not None or name not in FIELDS:
            continue
        if name in from_file:
            out[name] = (from_file[name], f"finetune --config {params['config']}")
        elif name == "model":
            continue  # below
        elif getattr(defaults, name) is None:
            out[name] = (None, _NONE_MEANS.get(name, "none"))
        else:
            out[name] = (getattr(defaults, name), "default (the MedMax recipe)")
    if params.get("attn") is None and "attn" in params:
        out["attn"] = (from_file.get("attn_implementation", defaults.attn_implementation), "default")
    if params.get("model") is None and "model" not in from_file:
        recorded = None
        if params.get("shards"):
            try:
                import json

                manifest = json.loads((Path(params["shards"]) / "manifest.json").read_text(encoding="utf-8"))
                recorded = (manifest.get("model") or {}).get("dir")
            except (OSError, ValueError, AttributeError):
                recorded = None
        if recorded:
            out["model"] = (recorded, f"{params['shards']}/manifest.json (the model pack used)")
    return out


def _generate(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    """generate's sampling flags default to None: the preset's values."""
    from medmax_cli.generate.config import ANOLE, MEDMAX_EVAL, SAMPLING_FIELDS

    presets = {"anole": ANOLE, "medmax-eval": MEDMAX_EVAL}
    chosen = params.get("preset")
    out: dict[str, Resolved] = {}
    if chosen is None:
        out["preset"] = (None, "per record: medmax-eval for items with meta.eval_task, else anole")
    for name in SAMPLING_FIELDS:
        if params.get(name) is not None:
            continue
        if chosen in presets:
            out[name] = (getattr(presets[chosen], name), f"preset {chosen}")
            continue
        a, m = getattr(ANOLE, name), getattr(MEDMAX_EVAL, name)
        out[name] = (
            (a, "default (both presets)") if a == m else (None, f"per preset: anole {a}, medmax-eval {m}")
        )
    if params.get("max_new_tokens") is None:
        out["max_new_tokens"] = (
            None,
            "per preset: anole up to the model's context; medmax-eval by task (VQA 1 or 60, ...)",
        )
    return out


def _synthesize(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    if params.get("llm_cache") is not None:
        return {}
    from medmax_cli.commands.synthesize import _default_cache

    return {"llm_cache": (str(_default_cache()), "default (XDG_CACHE_HOME or ~/.cache, /medmax/llm)")}


def _score(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    if params.get("judge_cache") is not None:
        return {}
    if params.get("judge_url"):
        return {"judge_cache": (".medmax-cache/judge", "default with a judge")}
    return {"judge_cache": (None, "none: no --judge-url, no judge")}


def _fetch_pmc(command: str, params: dict[str, Any], ctx: Any) -> dict[str, Resolved]:
    out: dict[str, Resolved] = {}
    if params.get("contact") is None:
        from medmax_cli.http import DEFAULT_CONTACT_URL

        out["contact"] = _env("MEDMAX_CONTACT", DEFAULT_CONTACT_URL)
    if params.get("rate") is None:
        out["rate"] = (None, "per host: NCBI 3/s (10 with NCBI_API_KEY), Europe PMC 10/s, others 5/s")
    return out


RESOLVERS: dict[str, Resolver] = {
    "medmax finetune": _finetune,
    "medmax generate": _generate,
    "medmax synthesize": _synthesize,
    "medmax score": _score,
    "medmax fetch pmc": _fetch_pmc,
}

_BRACKET = re.compile(r"\[([^\[\]]*)\]\.?\s*$")


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and "://" in value:
        from medmax_cli.egress import redact_url

        return redact_url(value)
    return value


def render_settings(command: str, ctx: Any, params: dict[str, Any]) -> str:
    """The settings `command` will run with, as a TOML section `--config` reads back.

    `params` holds every parameter, the common ones (mm_*) included. Each line says where its
    value came from: flag, config file, environment, default; a comment stands for a value that
    is decided later (per record, or nothing at all), saying what decides it.
    """
    ParameterSource = _click().core.ParameterSource  # noqa: N806

    sources = {
        ParameterSource.COMMANDLINE: "flag",
        ParameterSource.DEFAULT_MAP: "config file",
        ParameterSource.ENVIRONMENT: "environment",
    }
    resolved = _common(command, params, ctx)
    if command in RESOLVERS:
        resolved.update(RESOLVERS[command](command, params, ctx))
    by_name = {p.name: p for p in ctx.command.params}
    lines = [f"[{'.'.join(command.split()[1:])}]"]
    for name, value in params.items():
        param = by_name.get(name)
        if param is not None and not _shown(param):
            continue
        key = _config_key(param) if param is not None else name
        source = sources.get(ctx.get_parameter_source(name), "default")
        if value is None and name in resolved:
            value, source = resolved[name]
        value = _plain(value)
        if isinstance(value, list) and param is not None and not _is_many(param):
            value = ",".join(map(str, value))  # a comma list flag (finetune --lora-targets)
        if value is None:
            if source == "default":
                match = _BRACKET.search(getattr(param, "help", None) or "")
                source = f"not set: {match.group(1)}" if match else "not set (no default)"
            lines.append(f"# {key} = ...  # {source}")
        else:
            lines.append(f"{key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"
