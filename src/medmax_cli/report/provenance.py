"""The page's header: versions, the model and adapter each stage used, each stage's settings, and
whether any input came from a random model.

A random model is flagged by `"model_random": true` at the top of pack's manifest.json, in each
prediction's `generation` object (or its `settings`), in finetune's RUN/config.json, or in a stats
file's settings; one such input puts a RANDOM MODEL banner at the top of the page, since every
number below it then measures noise. Versions of torch and transformers are read from the installed
package metadata (importing torch for a version string would cost seconds); the versions a run
recorded (stats `version`, the score summary's provenance) are listed beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from medmax_cli import __version__
from medmax_cli.egress import is_secret_param, redact_text, redact_url
from medmax_cli.report.collect import RunFiles, iter_jsonl, read_json
from medmax_cli.report.lineage import StageRun

PACKAGES = ("torch", "transformers", "peft")
MODEL_KEYS = ("model", "adapter", "model_dir", "vq")
MAX_PREDICTION_SCAN = 100_000  # predictions read for the header (model identity, random flag)


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class Provenance:
    versions: dict[str, str] = field(default_factory=dict)  # this report's environment
    recorded_versions: dict[str, set[str]] = field(default_factory=dict)  # medmax version -> files
    models: list[tuple[str, str, str]] = field(default_factory=list)  # (where, model, adapter)
    settings: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (stage, settings)
    random_in: list[str] = field(default_factory=list)  # inputs that say model_random: true


def clean(value: Any) -> str:
    """A setting as shown: secrets in URLs and key-like parameters masked."""
    text = value if isinstance(value, str) else str(value)
    if "://" in text:
        text = redact_url(text)
    return redact_text(text)


def decoder_is_random(model_dir: Path | None) -> bool:
    """Whether the model the report decodes with is one medmax built with random weights
    (model.load's rule; that module imports no torch)."""
    from medmax_cli.model.load import model_is_random

    return model_dir is not None and model_is_random(model_dir)


def _is_random(*objects: Any) -> bool:
    return any(isinstance(o, dict) and o.get("model_random") is True for o in objects)


def _model_of(settings: dict[str, Any]) -> tuple[str, str]:
    model = settings.get("model") or settings.get("model_dir") or ""
    return clean(model) if model else "", clean(settings.get("adapter") or "")


def collect(files: RunFiles, runs: list[StageRun], decoder: Path | None = None) -> Provenance:
    prov = Provenance(versions={"medmax": __version__, **{p: package_version(p) for p in PACKAGES}})
    if decoder is not None:
        prov.models.append(("this report's VQ reconstructions", clean(decoder), ""))
        if decoder_is_random(decoder):
            prov.random_in.append(f"{decoder} (the decoder of the gallery's reconstructions)")

    def version(value: Any, where: str) -> None:
        if isinstance(value, str) and value:
            prov.recorded_versions.setdefault(value, set()).add(where)

    def model(where: str, settings: dict[str, Any]) -> None:
        name, adapter = _model_of(settings)
        if (name or adapter) and (where, name, adapter) not in prov.models:
            prov.models.append((where, name, adapter))

    for run in runs:
        settings = run.data.get("settings") if isinstance(run.data.get("settings"), dict) else {}
        version(run.data.get("version"), run.stats.name)
        prov.settings.append((run.label, settings))
        model(run.label, settings)
        if _is_random(run.data, settings):
            prov.random_in.append(str(run.stats))
    for path in files.manifests:
        manifest = read_json(path, files.notes)
        settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
        prov.settings.append((f"pack manifest {path.parent.name}/{path.name}", settings))
        fingerprint = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
        described = {"model": settings.get("model") or fingerprint.get("dir") or ""}
        prints = [
            f"{k.split('_')[0]} {fingerprint[k]}"
            for k in ("tokenizer_fingerprint", "vq_fingerprint")
            if fingerprint.get(k)
        ]
        if prints and described["model"]:
            described["model"] = f"{described['model']} ({', '.join(prints)})"
        model(f"pack manifest {path.parent.name}", described)
        if _is_random(manifest, settings):
            prov.random_in.append(str(path))
    for run in files.runs:
        config_path = run / "config.json"
        if not config_path.is_file():
            continue
        config = read_json(config_path, files.notes)
        prov.settings.append((f"finetune run {run.name}", config))
        model(f"finetune run {run.name}", config)
        if _is_random(config):
            prov.random_in.append(str(config_path))
    for path in files.summaries:
        summary = read_json(path, files.notes)
        provenance = summary.get("provenance") if isinstance(summary.get("provenance"), dict) else {}
        version(provenance.get("medmax_cli"), path.name)
        if _is_random(provenance):
            prov.random_in.append(str(path))
    for path in files.predictions:
        seen: set[str] = set()
        random = False
        for i, record in enumerate(iter_jsonl(path, files.notes)):
            if i >= MAX_PREDICTION_SCAN:
                break
            generation = record.get("generation") if isinstance(record.get("generation"), dict) else {}
            settings = generation.get("settings") if isinstance(generation.get("settings"), dict) else {}
            random |= _is_random(generation, settings)
            key = repr(sorted((k, str(v)) for k, v in settings.items() if k != "seed"))
            if settings and key not in seen and len(seen) < 4:
                seen.add(key)
                prov.settings.append((f"generate -> {path.name}", settings))
                model(f"generate -> {path.name}", settings)
        if random:
            prov.random_in.append(str(path))
    return prov


def settings_rows(settings: dict[str, Any]) -> list[list[str]]:
    """(name, value) rows of the settings that were set (None and empty values left out)."""
    rows = []
    for key in sorted(settings):
        value = settings[key]
        if value is None or value == [] or value == {} or value == "":
            continue
        rows.append([str(key), "***" if is_secret_param(str(key)) else clean(value)])
    return rows
