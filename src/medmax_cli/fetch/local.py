"""`fetch jats` and `fetch jsonl`: sources already on disk (JATS files, PMC packages, record files).

JATS inputs may be single .xml/.nxml files, folders of them (a synced PMC Cloud folder has
`PMC{n}.{v}/PMC{n}.{v}.xml` with its media and a `PMC{n}.{v}.json` metadata file beside it), or
PMC bulk packages (`.tar.gz`: one folder per article). Images are looked up in the article's
own folder only; hrefs that would leave it are refused.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from medmax_cli.fetch.figures import article_admitted, figure_records
from medmax_cli.fetch.jats import Article, Figure, JatsError, candidate_names, normalise_license, parse_jats
from medmax_cli.fetch.rows import LFS_POINTER, lfs_pointer_message
from medmax_cli.media import (
    MAX_IMAGE_BYTES,
    MediaError,
    MediaStore,
    max_input_bytes,
    open_local_file,
    read_local_file,
    safe_relative_path,
)
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy, in_shard, read_records

XML_SUFFIXES = (".xml", ".nxml")
PACKAGE_SUFFIXES = (".tar.gz", ".tgz")
MAX_PACKAGE_MEMBER = MAX_IMAGE_BYTES
# One PMC article package holds its XML, PDF and media: a few to a few hundred MB uncompressed.
# Past this total the package is refused (a gzip bomb would otherwise fill memory).
MAX_PACKAGE_BYTES = 2 * 1024**3


def _is_package(path: Path) -> bool:
    return path.name.lower().endswith(PACKAGE_SUFFIXES)


def _is_xml(path: Path) -> bool:
    """A JATS file, also gzip-compressed (`article.nxml.gz`)."""
    return path.name.lower().removesuffix(".gz").endswith(XML_SUFFIXES)


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files to read, in a deterministic order: folders are walked and sorted. Links found while
    walking a folder are kept only when they resolve inside it (`_outside` says which do not)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and (_is_xml(p) or _is_package(p)))
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return found


def _outside(path: Path, roots: list[Path]) -> bool:
    """Found while walking one of `roots`, does `path` (a link, or under one) resolve outside it?
    A file named directly by the user is theirs to name."""
    for root in roots:
        if root.is_dir() and root in path.parents:
            return root.resolve() not in path.resolve().parents
    return False


MAX_SIDECAR_BYTES = 16 * 1024 * 1024  # a PMC Cloud metadata JSON is a few KB
OA_FILE_LISTS = ("oa_file_list.csv", "oa_non_comm_use_pdf.csv", "oa_comm_use_file_list.csv")


class OaFileList:
    """PMC's OA file list (`oa_file_list.csv`: File, Article Citation, Accession ID, Last Updated,
    PMID, License), when one lies in an input folder: the last place a licence is read from
    (after the XML's `<license>`, `<license-p>` and copyright text), by PMCID or package name."""

    def __init__(self, table: dict[str, str], name: str):
        self.table = table
        self.name = name

    @classmethod
    def find(cls, paths: list[Path], policy: ErrorPolicy) -> OaFileList | None:
        from medmax_cli.fetch.rows import csv_rows

        folders = {p if p.is_dir() else p.parent for p in paths}
        for folder in sorted(folders):
            for name in OA_FILE_LISTS:
                file = folder / name
                if file.is_file():
                    table: dict[str, str] = {}
                    for _line, row in csv_rows(file, policy, ("File", "License")):
                        code = (row.get("License") or "").strip()
                        keys = [row.get("Accession ID") or "", PurePosixPath(row.get("File") or "").name]
                        for key in keys:
                            key = key.strip().lower().removesuffix(".tar.gz")
                            if key:
                                table[key] = code
                    return cls(table, file.name)
        return None

    def apply(self, article: Article, package: str) -> None:
        if article.license != "other":
            return
        keys = [(article.pmcid or "").lower(), package.lower().removesuffix(".tar.gz").removesuffix(".tgz")]
        code = next((self.table[k] for k in keys if k and k in self.table), None)
        if code and normalise_license(code) != "other":
            article.license = normalise_license(code)
            article.license_source = f"{self.name} License"


CLOUD_FLAGS = ("license_code", "is_pmc_openaccess", "is_manuscript", "is_historical_ocr", "is_retracted")


def apply_cloud_metadata(article: Article, meta: dict[str, Any]) -> Article:
    """PMC Cloud metadata JSON overrides what the XML says about licence, version and retraction,
    and its flags (author manuscript, historical OCR, ...) are kept in `article.pmc`.

    `license_code` is "CC BY", "CC BY-NC", ..., "TDM" (text and data mining only: licence `tdm`)
    or null (the XML's licence stands)."""
    code = meta.get("license_code")
    if isinstance(code, str) and code.strip():
        if code.strip().upper() == "TDM":
            article.license = "tdm"
        else:
            article.license = normalise_license(code, article.license_url)
        article.license_source = "pmc-cloud-metadata license_code"
    if meta.get("is_retracted"):
        article.retracted = True
    article.pmc = {k: meta[k] for k in CLOUD_FLAGS if k in meta}
    if isinstance(meta.get("version"), int):
        article.version = meta["version"]
    if meta.get("pmcid") and not article.pmcid:
        article.pmcid = str(meta["pmcid"])
    return article


def fetch_jats(
    paths: Iterable[str | Path],
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    licenses: frozenset[str] | None = None,
    source: str = "jats",
    shard: tuple[int, int] | None = None,
    max_package_bytes: int = MAX_PACKAGE_BYTES,
) -> Iterator[dict[str, Any]]:
    """Figure records from local JATS files, folders and PMC packages (`shard`: by file name)."""
    paths = [Path(p) for p in paths]
    file_list = OaFileList.find(paths, policy)
    for path in expand_inputs(paths):
        if not in_shard(path.name, shard):
            continue
        if _outside(path, paths):
            policy.report.count("in")
            policy.reject(
                RecordError("refused: a link that leads outside the input folder"), None, where=str(path)
            )
            continue
        if _is_package(path):
            yield from _package(
                path,
                media=media,
                policy=policy,
                licenses=licenses,
                source=source,
                max_bytes=max_package_bytes,
                file_list=file_list,
            )
        else:
            yield from _xml_file(
                path, media=media, policy=policy, licenses=licenses, source=source, file_list=file_list
            )


def _xml_file(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    licenses: frozenset[str] | None,
    source: str,
    file_list: OaFileList | None = None,
) -> Iterator[dict[str, Any]]:
    where = str(path)
    try:
        data = read_local_file(path, limit=max_input_bytes(), what=where)
    except MediaError as exc:
        policy.report.count("in")
        policy.reject(exc, None, where=where, record_id=path.stem)
        return
    if path.name.lower().endswith(".gz"):
        try:
            data = _gunzip(data, max_input_bytes())
        except (OSError, EOFError, ValueError) as exc:
            policy.report.count("in")
            policy.reject(RecordError(f"cannot decompress ({exc})", cls="file unreadable"), None, where=where)
            return
    pointer = lfs_pointer_message(data, path)
    if pointer is not None:
        policy.report.count("in")
        policy.reject(RecordError(pointer, cls="git lfs pointer"), None, where=where, record_id=path.stem)
        return
    try:
        article = parse_jats(data, name=where)
    except JatsError as exc:
        policy.report.count("in")
        policy.reject(exc, None, where=where, record_id=path.stem)
        return
    folder = path.parent
    sidecar = path.with_suffix(".json")
    if sidecar.exists() and not _in_folder(sidecar, folder):
        policy.report.count("in")
        policy.reject(
            RecordError(f"refused: {sidecar.name} links outside the article folder"), None, where=where
        )
        return
    if sidecar.exists():
        try:
            apply_cloud_metadata(article, orjson.loads(read_local_file(sidecar, limit=MAX_SIDECAR_BYTES)))
        except MediaError as exc:
            policy.report.count("in")
            policy.reject(exc, None, where=where)
            return
        except orjson.JSONDecodeError as exc:
            policy.report.count("in")
            policy.reject(RecordError(f"unreadable PMC metadata {sidecar.name} ({exc})"), None, where=where)
            return
    if file_list is not None:
        file_list.apply(article, path.name)
    policy.report.count("articles")
    if not article_admitted(article, policy=policy, licenses=licenses, where=where):
        return
    listing = {p.name for p in folder.iterdir()}

    def resolve(figure: Figure, href: str) -> dict[str, Any]:
        for name in candidate_names(href):
            if "/" not in name and name not in listing:
                continue
            # resolves links and refuses any that leave the article folder, before a byte is read
            full = safe_relative_path(folder, name, what=f"{where} {figure.figure_id} href {name}")
            if full.is_file():
                return media.import_file(full, what=f"{where} {figure.figure_id} {name}")
        raise RecordError(
            f"image file not found for href {href!r} beside {path.name} (looked in folder {folder} for "
            f"{', '.join(candidate_names(href))})",
            cls="image not found",
        )

    for record in figure_records(
        article, resolve, source=source, policy=policy, where=where, fallback_key=path.stem
    ):
        policy.report.count("figures")
        yield record


def _gunzip(data: bytes, limit: int) -> bytes:
    import gzip
    import io

    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        out = handle.read(limit + 1)
    if len(out) > limit:
        raise ValueError(f"decompresses past the {limit}-byte limit")
    return out


class _TooBig(Exception):
    pass


def _in_folder(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def _package(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    licenses: frozenset[str] | None,
    source: str,
    max_bytes: int = MAX_PACKAGE_BYTES,
    file_list: OaFileList | None = None,
) -> Iterator[dict[str, Any]]:
    """A PMC bulk package: read every regular member into memory (at most `max_bytes` in all,
    counted from the members' declared sizes before reading), then one article per XML member."""
    members: dict[str, bytes] = {}
    total = 0
    try:
        with (
            open_local_file(path, limit=None, what=str(path)) as raw,
            tarfile.open(fileobj=raw, mode="r:*") as archive,
        ):
            for member in archive:  # links and other non-regular members are never followed
                if not member.isfile():
                    continue
                name = str(PurePosixPath(member.name))
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    continue
                total += member.size  # declared sizes: checked before anything is decompressed
                if total > max_bytes:
                    raise _TooBig(
                        f"package refused: over {max_bytes} bytes uncompressed "
                        f"(at member {name!r}); a PMC article package is far smaller"
                    )
                if member.size > MAX_PACKAGE_MEMBER and not name.lower().endswith(XML_SUFFIXES):
                    continue  # too big to be a figure (a video, a dataset): not read
                handle = archive.extractfile(member)
                if handle is not None:
                    members[name] = handle.read(member.size)
    except _TooBig as exc:
        policy.report.count("in")
        policy.reject(RecordError(str(exc), cls="package refused"), None, where=str(path))
        return
    except MediaError as exc:
        policy.report.count("in")
        policy.reject(exc, None, where=str(path))
        return
    except (tarfile.TarError, OSError, EOFError) as exc:
        policy.report.count("in")
        policy.reject(
            RecordError(f"unreadable package ({exc})", cls="unreadable package"), None, where=str(path)
        )
        return
    for xml_name in sorted(n for n in members if n.lower().endswith(XML_SUFFIXES)):
        where = f"{path}:{xml_name}"
        folder = str(PurePosixPath(xml_name).parent)
        prefix = "" if folder == "." else folder + "/"
        try:
            article = parse_jats(members[xml_name], name=where)
        except JatsError as exc:
            policy.report.count("in")
            policy.reject(exc, None, where=where)
            continue
        if file_list is not None:
            file_list.apply(article, path.name)
        policy.report.count("articles")
        if not article_admitted(article, policy=policy, licenses=licenses, where=where):
            continue

        def resolve(figure: Figure, href: str, prefix: str = prefix, where: str = where) -> dict[str, Any]:
            for name in candidate_names(href):
                if prefix + name in members:
                    return media.put(members[prefix + name], what=f"{where} {figure.figure_id} {name}")
            raise RecordError(
                f"image file not found for href {href!r} in the package (looked in {prefix or './'} for "
                f"{', '.join(candidate_names(href))})",
                cls="image not found",
            )

        stem = PurePosixPath(xml_name).stem
        for record in figure_records(
            article, resolve, source=source, policy=policy, where=where, fallback_key=stem
        ):
            policy.report.count("figures")
            yield record


def fetch_jsonl(
    path: str | Path, *, root: str | Path, media: MediaStore, policy: ErrorPolicy
) -> Iterator[dict[str, Any]]:
    """Records from a local JSONL file whose image paths are relative to `root`, imported into the store."""
    root = Path(root)
    with open_local_file(path, limit=None, what=str(path)) as stream:
        if stream.peek(len(LFS_POINTER))[: len(LFS_POINTER)] == LFS_POINTER:
            pointer = lfs_pointer_message(stream.read(1025), Path(path))
            raise RecordError(pointer or "a Git LFS pointer file", where=str(path), cls="git lfs pointer")
        for record in read_records(stream, name=str(path), policy=policy, media=media):
            try:
                images = []
                for index, image in enumerate(record.get("images") or []):
                    what = f"record {record['id']!r} images[{index}]"
                    if image.get("path"):
                        full = safe_relative_path(root, image["path"], what=what)
                        ref = media.import_file(full, what=what)
                        image = {**{k: v for k, v in image.items() if k not in ref}, **ref}
                    images.append(image)
                record = {**record, "images": images}
                validate(record)
            except RECORD_FAULTS as exc:
                policy.reject(exc, record, where=str(path))
                continue
            yield record
