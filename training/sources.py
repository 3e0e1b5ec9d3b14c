"""Training-audio sources: an index of real, unannotated audio (the teacher classifiers label it).

Sources: Debian packages installed by ``training/install_audio_sources.sh`` (the files dpkg
lists for each package of :data:`training.source_catalogue.PACKAGES`, sorted into domains by its
first matching rule); the MIDI files of :data:`training.source_catalogue.MIDI_PACKAGES` that the
script rendered to FLAC under ``$ST_AUDIO_SOURCES/midi``; the shared data (UrbanSound8K folds:
``urban``, field recordings: ``field``); and ``--extra [DOMAIN=]DIR`` folders. A record's ``group``
(:func:`training.source_catalogue.file_group` for package files) holds the files that must never be
split between training and held-out data; :func:`assign_split` picks a split per group from a
sha256 (the same on every machine). Unreadable, too short (< :data:`MIN_DURATION_S`),
silent and byte-identical files are skipped and counted. CLI: ``python -m training sources index``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .paths import shared_dir
from .source_catalogue import PACKAGES, file_group, package_licence

__all__ = [
    "SourceRecord",
    "DOMAINS",
    "build_index",
    "write_index",
    "load_index",
    "assign_split",
    "record_split",
    "add_parser",
]

INDEX_FORMAT = "spectral_transcoder.audio_sources/1"
DOMAINS = ("speech", "sfx", "music", "environment", "urban", "field", "extra")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga")
MIN_DURATION_S = 0.5
SILENCE_PEAK = 2.0**-15  # silent: every |sample| <= this (below one 16-bit step)
SPLITS = ("train", "valid", "test")
US8K_LICENCE = "CC-BY-NC-3.0"
US8K_TRAIN_FOLDS = (1,)
US8K_HELDOUT_FOLDS = (2,)
DEFAULT_SHARED = shared_dir() / "data"
DEFAULT_AUDIO_SOURCES = Path(
    os.environ.get("ST_AUDIO_SOURCES")  # as in install_audio_sources.sh
    or Path.home() / ".cache" / "spectral_transcoder" / "audio-sources"
)

_US8K_NAME = re.compile(r"(\d+)-\d+-\d+-\d+")
_TAU_NAME = re.compile(r"([a-z_]+-[a-z]+-\d+)-\d+-[a-z0-9]+")


@dataclass(frozen=True)
class SourceRecord:
    """One audio file: ``path`` (absolute at index time), ``source`` (Debian package, ``urbansound8k``,
    ``field-recordings``, ``extra:<dir>``), ``domain`` (:data:`DOMAINS`), ``group`` (never split, see
    :func:`assign_split`), ``licence`` (short), ``fold`` (UrbanSound8K only)."""

    path: str
    source: str
    domain: str
    group: str
    licence: str
    duration_s: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    fold: int | None = None


# ------------------------------------------------------------------ discovery
def _package_candidates(root: Path, missing: list[str]) -> Iterable[SourceRecord]:
    """The audio files that dpkg lists (``<pkg>.list``, ``<pkg>:<arch>.list``) for each package."""
    info = root / "var/lib/dpkg/info"
    for package, rules in PACKAGES.items():
        lists = [p for p in (info / f"{package}.list", *sorted(info.glob(f"{package}:*.list"))) if p.is_file()]
        if not lists:
            missing.append(package)
        for name in sorted({ln.strip() for p in lists for ln in p.read_text(errors="replace").splitlines()}):
            full = root / name.lstrip("/")
            if not name.lower().endswith(AUDIO_EXTENSIONS) or full.is_symlink() or not full.is_file():
                continue
            domain = next((d for d, pat in rules if fnmatch.fnmatchcase(name.lower(), pat)), "")
            if domain:
                yield SourceRecord(
                    str(full), package, domain, file_group(package, name), package_licence(package, name, root)
                )


def _midi_candidates(audio_sources: Path, root: Path) -> Iterable[SourceRecord]:
    """The FLAC renderings of MIDI files (``manifest.tsv`` rows with status ``ok``)."""
    midi, rows = audio_sources / "midi", list[list[str]]()
    if (manifest := midi / "manifest.tsv").is_file():
        rows = [r[:3] for r in (ln.split("\t") for ln in manifest.read_text().splitlines()[1:]) if r[3:] == ["ok"]]
    elif midi.is_dir():  # no manifest: <package>/<path under /usr/share, no suffix>.flac
        for f in sorted(midi.glob("*/**/*.flac")):
            package, *rest = f.relative_to(midi).with_suffix("").parts
            rows.append([package, "/usr/share/" + "/".join(rest), str(f.relative_to(midi))])
    for package, mid, rel in rows:
        yield SourceRecord(str(midi / rel), package, "music", f"midi:{mid}", package_licence(package, mid, root))


def _walk(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _shared_candidates(shared: Path) -> Iterable[SourceRecord]:
    us8k = shared / "urbansound8k-subset"
    for fold_dir in sorted(us8k.glob("fold*")) if us8k.is_dir() else []:
        fold = int(fold_dir.name[4:]) if fold_dir.name[4:].isdigit() else None
        for f in _walk(fold_dir):
            m = _US8K_NAME.fullmatch(f.stem)
            group = f"us8k:{m.group(1)}" if m else f"urbansound8k:{f.relative_to(us8k)}"
            yield SourceRecord(str(f.resolve()), "urbansound8k", "urban", group, US8K_LICENCE, fold=fold)
    field_dir = shared / "field-recordings"
    for f in _walk(field_dir) if field_dir.is_dir() else []:
        m = _TAU_NAME.fullmatch(f.stem)
        group, licence = (
            (f"tau:{m.group(1)}", "TAU-2020-Mobile research use only")
            if m
            else (f"field:{f.relative_to(field_dir)}", "unstated (see shared/README.md)")
        )
        yield SourceRecord(str(f.resolve()), "field-recordings", "field", group, licence)


def _extra_candidates(spec: str) -> Iterable[SourceRecord]:
    head, sep, tail = spec.partition("=")
    domain, folder = (head, tail) if sep and head in DOMAINS else ("extra", spec)
    if not (base := Path(folder)).is_dir():
        raise ValueError(f"--extra {spec!r}: {folder!r} is not a directory")
    source = f"extra:{base.resolve().name}"
    for f in _walk(base):
        yield SourceRecord(
            str(f.resolve()), source, domain, f"{source}:{f.relative_to(base)}", "unknown (extra folder)"
        )


# ------------------------------------------------------------------ probing
def _probe(path: str) -> tuple[float, int, int] | tuple[str, str]:
    """``(duration_s, sample_rate, channels)``, or ``(skip reason, detail)``."""
    try:
        with sf.SoundFile(path) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if rate <= 0 or frames <= 0:
                return "unreadable", "no audio frames"
            if frames / rate < MIN_DURATION_S:
                return "too_short", f"{frames / rate:.3f} s"
            blocks = f.blocks(blocksize=32768, dtype="float32", always_2d=True)
            if not any(b.size and float(np.max(np.abs(b))) > SILENCE_PEAK for b in blocks):
                return "silent", "digital silence"
            if f.seekable():  # decode the end too: catches truncated files cheaply
                f.seek(max(0, frames - 4096))
                f.read(4096, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - libsndfile and decoder errors of every kind
        return "unreadable", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return frames / rate, rate, channels


def _duplicates(paths: Sequence[str]) -> dict[str, str]:
    """``{path: first path with the same bytes}`` for every later copy (hashing equal sizes only)."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for p in paths:
        by_size[os.path.getsize(p)].append(p)
    dup: dict[str, str] = {}
    for same in (v for v in by_size.values() if len(v) > 1):
        first: dict[str, str] = {}
        origs = {p: first.setdefault(hashlib.sha256(Path(p).read_bytes()).hexdigest(), p) for p in same}
        dup.update((p, orig) for p, orig in origs.items() if orig != p)
    return dup


def build_index(
    *,
    shared: str | os.PathLike[str] | None = DEFAULT_SHARED,
    audio_sources: str | os.PathLike[str] | None = DEFAULT_AUDIO_SOURCES,
    extra: Sequence[str] = (),
    root: str | os.PathLike[str] = "/",
    packages: bool = True,
    jobs: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Find, probe and summarise the training audio: the index as a JSON-ready dict. ``root``
    prefixes the Debian paths (tests use a fake tree); ``None`` leaves a kind of source out."""
    root_p, missing = Path(root), list[str]()
    found: list[SourceRecord] = [
        *(_package_candidates(root_p, missing) if packages else ()),
        *(_midi_candidates(Path(audio_sources), root_p) if audio_sources is not None else ()),
        *(_shared_candidates(Path(shared)) if shared is not None else ()),
    ]
    for spec in extra:
        found += _extra_candidates(spec)
    unique: dict[str, SourceRecord] = {}
    for c in found:
        unique.setdefault(c.path, c)
    dups = _duplicates(list(unique))
    skipped: Counter[str] = Counter(duplicate=len(dups))
    examples = {"duplicate": [f"{p} (same bytes as {orig})" for p, orig in list(dups.items())[:5]]}
    todo = [c for c in unique.values() if c.path not in dups]
    records: list[SourceRecord] = []
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for i, (c, res) in enumerate(zip(todo, pool.map(_probe, (c.path for c in todo)))):
            if progress and i % 2000 == 0:
                print(f"probed {i}/{len(todo)} files", file=sys.stderr, flush=True)
            if isinstance(res[0], str):
                skipped[res[0]] += 1
                examples.setdefault(res[0], []).extend([f"{c.path} ({res[1]})"][: 5 - len(examples.get(res[0], []))])
            else:
                records.append(
                    replace(c, duration_s=round(float(res[0]), 4), sample_rate=int(res[1]), channels=int(res[2]))
                )
    return {
        "format": INDEX_FORMAT,
        "root": str(root_p),
        "shared": None if shared is None else str(shared),
        "audio_sources": None if audio_sources is None else str(audio_sources),
        "packages_missing": missing,
        "summary": summarise(records),
        "skipped": {k: v for k, v in sorted(skipped.items()) if v},
        "skipped_examples": {k: v for k, v in sorted(examples.items()) if v},
        "records": [asdict(r) for r in records],
    }


def summarise(records: Sequence[SourceRecord]) -> dict[str, Any]:
    """Per domain and per source: files, hours, groups, files per domain and per licence."""

    def table(key: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in records:
            e = out.setdefault(
                getattr(r, key), {"files": 0, "s": 0.0, "groups": set(), "domains": Counter(), "licences": Counter()}
            )
            e["files"], e["s"] = e["files"] + 1, e["s"] + r.duration_s
            e["groups"].add(r.group)
            e["domains"][r.domain] += 1
            e["licences"][r.licence] += 1
        return {
            k: {
                "files": e["files"],
                "hours": round(e["s"] / 3600, 3),
                "groups": len(e["groups"]),
                "domains": dict(e["domains"].most_common()),
                "licences": dict(e["licences"].most_common()),
            }
            for k, e in sorted(out.items())
        }

    return {
        "files": len(records),
        "hours": round(sum(r.duration_s for r in records) / 3600, 3),
        "by_domain": table("domain"),
        "by_source": table("source"),
    }


def write_index(index: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``index`` as JSON atomically (a temporary file in the same folder, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_index(path: str | os.PathLike[str]) -> list[SourceRecord]:
    """The records of an index written by :func:`write_index`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not an audio-sources index (format {INDEX_FORMAT!r})")
    names = {f.name for f in fields(SourceRecord)}
    return [SourceRecord(**{k: v for k, v in r.items() if k in names}) for r in data["records"]]


# ------------------------------------------------------------------ splits
def assign_split(
    group: str, *, heldout_fraction: float, valid_fraction: float, salt: str = "", fold: int | None = None
) -> str:
    """``"train"``, ``"valid"`` or ``"test"`` for every file of ``group``, from a sha256 of it.

    A ``heldout_fraction`` of the groups is held out; ``valid_fraction`` (at most
    ``heldout_fraction``) of all groups goes to ``valid``, the rest of the held-out ones to
    ``test``. UrbanSound8K groups (``us8k:...``) with their ``fold``: fold 1 always
    ``train``, fold 2 always held out (``valid`` or ``test`` by the same hash, in the same
    proportion; half and half when ``heldout_fraction`` is 0). Depends only on the arguments.
    """
    if not 0.0 <= valid_fraction <= heldout_fraction <= 1.0:
        raise ValueError(f"need 0 <= valid_fraction ({valid_fraction}) <= heldout_fraction ({heldout_fraction}) <= 1")
    digest = hashlib.sha256(f"{salt}\x1f{group}".encode()).digest()
    u_held, u_valid = (int.from_bytes(digest[i : i + 8], "big") / 2.0**64 for i in (0, 8))
    us8k = group.startswith("us8k:")
    if us8k and fold in US8K_TRAIN_FOLDS:
        return "train"
    if not (us8k and fold in US8K_HELDOUT_FOLDS) and u_held >= heldout_fraction:
        return "train"
    return "valid" if u_valid < (valid_fraction / heldout_fraction if heldout_fraction > 0 else 0.5) else "test"


def record_split(record: SourceRecord, *, heldout_fraction: float, valid_fraction: float, salt: str = "") -> str:
    """:func:`assign_split` of ``record.group``, with its UrbanSound8K fold."""
    return assign_split(
        record.group, heldout_fraction=heldout_fraction, valid_fraction=valid_fraction, salt=salt, fold=record.fold
    )


# ------------------------------------------------------------------ CLI
def _cmd_index(args: argparse.Namespace) -> int:
    index = build_index(
        shared=None if args.no_shared else args.shared,
        audio_sources=args.audio_sources,
        extra=args.extra or (),
        root=args.root,
        packages=not args.no_packages,
        jobs=args.jobs,
        progress=True,
    )
    write_index(index, args.output)
    s = index["summary"]
    print(f"wrote {args.output}: {s['files']} files, {s['hours']:.2f} h")
    for name, d in s["by_domain"].items():
        print(f"  {name:<12} {d['files']:>6} files {d['hours']:>8.2f} h {d['groups']:>6} groups")
    print("  skipped: " + (", ".join(f"{k} {v}" for k, v in index["skipped"].items()) or "none"))
    if index["packages_missing"]:
        print("  not installed (see training/install_audio_sources.sh): " + " ".join(index["packages_missing"]))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``sources index`` on an argparse subparsers object."""
    p = sub.add_parser("sources", help="index the training audio (Debian packages, rendered MIDI, shared data)")
    ssub = p.add_subparsers(dest="sources_command", metavar="SUBCOMMAND", required=True)
    q = ssub.add_parser(
        "index",
        help="walk the sources and write a JSON index",
        description=(
            "Walk the Debian packages of training/source_catalogue.py (install them with "
            "training/install_audio_sources.sh), the rendered MIDI and the shared data; probe each file (skip "
            "unreadable, < 0.5 s, silent and duplicate files) and write a JSON index with a summary per domain and "
            "source."
        ),
    )
    q.add_argument("-o", "--output", required=True, metavar="INDEX.json", help="index file to write (atomically)")
    q.add_argument(
        "--shared",
        default=str(DEFAULT_SHARED),
        metavar="DIR",
        help="folder with urbansound8k-subset/ and field-recordings/ (default %(default)s)",
    )
    q.add_argument("--no-shared", action="store_true", help="leave the shared data out")
    q.add_argument(
        "--audio-sources",
        default=str(DEFAULT_AUDIO_SOURCES),
        metavar="DIR",
        help="folder of rendered audio ($ST_AUDIO_SOURCES; default %(default)s)",
    )
    q.add_argument(
        "--extra",
        action="append",
        metavar="[DOMAIN=]DIR",
        help=f"another audio folder (repeatable); DOMAIN: {', '.join(DOMAINS)} (default extra)",
    )
    q.add_argument("--no-packages", action="store_true", help="leave the Debian packages out")
    q.add_argument("--root", default="/", help=argparse.SUPPRESS)
    q.add_argument("--jobs", type=int, default=2, help="files probed in parallel (default 2)")
    q.set_defaults(func=_cmd_index)
