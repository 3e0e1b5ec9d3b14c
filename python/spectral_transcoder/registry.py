"""Model registry: short names -> ONNX files in a user cache directory.

Classifiers (``yamnet``, ``yamnet-torchport``, ``efficientat-mn04``,
``pann-resnet38``, ``pann-cnn14``) and transcoders (``pann-cnn-logits``,
``pann-cnn-mels``, ``yamnet-cnn-logits``, ...) live in separate namespaces: the
same short name may be both a classifier and the transcoder trained for it.

Where the files live, first match wins:

1. ``$SPECTRAL_TRANSCODER_HOME``, else ``$XDG_CACHE_HOME/spectral_transcoder``, else
   ``~/.cache/spectral_transcoder``: ``<home>/<kind>/<name>.onnx``, listed in
   ``<home>/index.json`` with the sha256 recorded at import (verified at every load).
   ``spectral-transcoder models import MODEL.onnx [--name NAME]`` puts files there.
2. Transcoders shipped inside the package: ``spectral_transcoder/models_data/<name>.onnx``
   (checksums from ``models_data/index.json`` when that file exists).

Nothing here touches the network: model files are converted locally from
checkpoints with ``python -m training convert ...`` (see :data:`KNOWN`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._io import atomic_path, atomic_write_text, sha256_file
from ._onnx import read_metadata
from .errors import InvalidInputError, ModelError

__all__ = [
    "ENV_HOME",
    "KINDS",
    "KNOWN",
    "KnownModel",
    "Entry",
    "home",
    "index_path",
    "package_dir",
    "import_model",
    "resolve",
    "entries",
    "how_to_get",
    "default_transcoder",
    "sha256_file",
    "read_index",
    "write_index",
]

Kind = Literal["classifier", "transcoder"]
KINDS: tuple[Kind, ...] = ("classifier", "transcoder")
ENV_HOME = "SPECTRAL_TRANSCODER_HOME"
INDEX_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

_SHARED_MODELS = "../shared/models"
_SHARED_TRANSCODERS = "../shared/reference/models"
_TRANSCODER_FILE = (
    "classifier={clf}+dataset=full+dilation=1+epoch=200+kernel_size=5+learning_rate=-3+nb_channels=64+"
    "nb_layers=5{prop}+step=train+transcoder=cnn_pinv+ts={ts}_model"
)


@dataclass(frozen=True)
class KnownModel:
    """A model the project knows how to build, and how a user gets it."""

    name: str
    kind: Kind
    description: str
    source: str
    """Where the source checkpoint comes from."""
    convert: str
    """The command that converts it into ``<name>.onnx``."""


def _convert(kind: str, source: str, name: str, extra: str = "") -> str:
    return f"python -m training convert {kind} {source} -o {name}.onnx{extra}"


_YAMNET_LABELS = (
    f" --yamnet-class-map {_SHARED_MODELS}/yamnet_class_map.csv --labels {_SHARED_MODELS}/class_labels_indices.csv"
)
_AUDIOSET_LABELS = f" --labels {_SHARED_MODELS}/class_labels_indices.csv"
_PANN_SOURCE = (
    "the official PANNs checkpoint {file} from Zenodo record 3987831 (https://zenodo.org/record/3987831; "
    "docs/conventions.md §7)"
)

#: Every short name the project documents, with how to obtain its file.
KNOWN: tuple[KnownModel, ...] = (
    KnownModel(
        "yamnet",
        "classifier",
        "YAMNet (521 AudioSet classes), official TF front end (MelSpec 'yamnet'); "
        "the teacher of the shipped yamnet transcoder",
        # The per-channel int8 file is the closer one to float YAMNet, and the shipped transcoder's teacher.
        f"{_SHARED_MODELS}/yamnet_int8_perchannel.tflite (models/README.md)",
        _convert("yamnet-tflite", f"{_SHARED_MODELS}/yamnet_int8_perchannel.tflite", "yamnet", _YAMNET_LABELS),
    ),
    KnownModel(
        "yamnet-torchport",
        "classifier",
        "YAMNet, same weights, declared for the paper's torch-port front end (MelSpec 'yamnet_torchport'); "
        "pairs with the yamnet-cnn-logits transcoder",
        f"{_SHARED_MODELS}/yamnet_int8.tflite (models/README.md §2)",
        _convert(
            "yamnet-tflite",
            f"{_SHARED_MODELS}/yamnet_int8.tflite",
            "yamnet-torchport",
            _YAMNET_LABELS + " --input-spec yamnet_torchport",
        ),
    ),
    KnownModel(
        "efficientat-mn04",
        "classifier",
        "EfficientAT MobileNetV3 mn04 (527 AudioSet classes, MelSpec 'efficientat')",
        f"{_SHARED_MODELS}/mn04_as_mAP_432.pt (models/README.md §1)",
        _convert("efficientat", f"{_SHARED_MODELS}/mn04_as_mAP_432.pt", "efficientat-mn04", _AUDIOSET_LABELS),
    ),
    KnownModel(
        "pann-resnet38",
        "classifier",
        "PANN ResNet38 (527 AudioSet classes, MelSpec 'pann'), the paper's teacher",
        _PANN_SOURCE.format(file="ResNet38_mAP=0.434.pth"),
        _convert("pann-resnet38", "ResNet38_mAP=0.434.pth", "pann-resnet38", _AUDIOSET_LABELS),
    ),
    KnownModel(
        "pann-cnn14",
        "classifier",
        "PANN Cnn14 (527 AudioSet classes, MelSpec 'pann')",
        _PANN_SOURCE.format(file="Cnn14_mAP=0.431.pth"),
        _convert("pann-cnn14", "Cnn14_mAP=0.431.pth", "pann-cnn14", _AUDIOSET_LABELS),
    ),
    KnownModel(
        "pann-cnn-logits",
        "transcoder",
        "published CNN transcoder, cense_fast -> pann, trained on PANN logits (ts=1)",
        f"{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='PANN', prop='+prop_logit=100', ts=1)} "
        "(github modantailleur/paperSpectralTranscoder, reference_models/; docs/conventions.md §7)",
        _convert(
            "transcoder",
            f"'{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='PANN', prop='+prop_logit=100', ts=1)}'",
            "pann-cnn-logits",
        ),
    ),
    KnownModel(
        "pann-cnn-mels",
        "transcoder",
        "published CNN transcoder, cense_fast -> pann, trained on PANN Mels (ts=0)",
        f"{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='PANN', prop='', ts=0)} "
        "(github modantailleur/paperSpectralTranscoder, reference_models/; docs/conventions.md §7)",
        _convert(
            "transcoder",
            f"'{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='PANN', prop='', ts=0)}'",
            "pann-cnn-mels",
        ),
    ),
    KnownModel(
        "yamnet-cnn-logits",
        "transcoder",
        "published CNN transcoder, cense_fast -> yamnet_torchport, trained on YAMNet logits (ts=1)",
        f"{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='YamNet', prop='+prop_logit=100', ts=1)} "
        "(github modantailleur/paperSpectralTranscoder, reference_models/; docs/conventions.md §7)",
        _convert(
            "transcoder",
            f"'{_SHARED_TRANSCODERS}/{_TRANSCODER_FILE.format(clf='YamNet', prop='+prop_logit=100', ts=1)}'",
            "yamnet-cnn-logits",
        ),
    ),
    KnownModel(
        "yamnet",
        "transcoder",
        "context transcoder cense_fast -> yamnet (official front end), shipped with the package",
        "spectral_transcoder/models_data/yamnet.onnx (trained by this project; model card yamnet.md beside it)",
        "reinstall the package: this transcoder ships inside it (models_data/yamnet.onnx)",
    ),
    KnownModel(
        "efficientat-mn04",
        "transcoder",
        "context transcoder cense_fast -> efficientat, shipped with the package",
        "spectral_transcoder/models_data/efficientat-mn04.onnx (trained by this project; model card "
        "efficientat-mn04.md beside it)",
        "reinstall the package: this transcoder ships inside it (models_data/efficientat-mn04.onnx)",
    ),
    # No int8 copies ship: the context transcoders of this release are not quantised yet (the earlier
    # efficientat-mn04-int8 was the previous CNN's, withdrawn with it).
)

#: Classifier name -> the transcoder that feeds it by default (its output spec is the classifier's input spec).
DEFAULT_TRANSCODERS: dict[str, str] = {
    "pann-resnet38": "pann-cnn-logits",
    "pann-cnn14": "pann-cnn-logits",
    "yamnet-torchport": "yamnet-cnn-logits",
    "yamnet": "yamnet",
    "efficientat-mn04": "efficientat-mn04",
}


@dataclass(frozen=True)
class Entry:
    """An available model file."""

    name: str
    kind: Kind
    path: Path
    sha256: str | None
    """Recorded at import (None for a packaged file without a recorded checksum)."""
    origin: Literal["cache", "package"]
    source: str = ""
    """The path it was imported from."""
    imported_at: str = ""


# ------------------------------------------------------------------ locations
def home() -> Path:
    """The registry directory: ``$SPECTRAL_TRANSCODER_HOME``, else the XDG cache."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "spectral_transcoder"


def index_path() -> Path:
    return home() / "index.json"


def package_dir() -> Path:
    """Where transcoders shipped with the package live (may not exist)."""
    return Path(__file__).resolve().parent / "models_data"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInputError(
            f"model name {name!r} is not valid: use letters, digits, '.', '_' and '-' (start with a letter or digit)"
        )


def read_index(path: Path) -> dict[str, Any]:
    """A registry index (``{"format", "models": {kind: {name: record}}}``), empty when absent."""
    if not path.exists():
        return {"format": INDEX_FORMAT, "models": {k: {} for k in KINDS}}
    try:
        idx: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(idx, dict) or not isinstance(idx.get("models"), dict):
            raise ValueError("no 'models' table")
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"the registry index {str(path)!r} is unreadable ({exc}); delete it and import the models again"
        ) from None
    for k in KINDS:
        idx["models"].setdefault(k, {})
    return idx


def write_index(path: Path, idx: dict[str, Any]) -> None:
    """Write an index atomically (readers see the old or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(idx, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ queries
def _cache_entries() -> list[Entry]:
    root = home()
    idx = read_index(root / "index.json")
    out = []
    for kind in KINDS:
        for name, rec in sorted(idx["models"][kind].items()):
            out.append(
                Entry(
                    name,
                    kind,
                    root / rec["file"],
                    rec.get("sha256"),
                    "cache",
                    rec.get("source", ""),
                    rec.get("imported_at", ""),
                )
            )
    return out


def _package_entries() -> list[Entry]:
    d = package_dir()
    if not d.is_dir():
        return []
    recorded: dict[str, Any] = {}
    if (d / "index.json").exists():
        recorded = read_index(d / "index.json")["models"].get("transcoder", {})
    return [
        Entry(p.stem, "transcoder", p, recorded.get(p.stem, {}).get("sha256"), "package")
        for p in sorted(d.glob("*.onnx"))
    ]


def entries(kind: Kind | None = None) -> list[Entry]:
    """Available models (user cache first, then packaged), optionally of one kind."""
    if kind is not None:
        _check_kind(kind)
    seen: set[tuple[str, str]] = set()
    out = []
    for e in _cache_entries() + _package_entries():
        if (e.kind, e.name) in seen or (kind is not None and e.kind != kind):
            continue
        seen.add((e.kind, e.name))
        out.append(e)
    return out


def known(name: str | None = None, kind: Kind | None = None) -> list[KnownModel]:
    return [k for k in KNOWN if (name is None or k.name == name) and (kind is None or k.kind == kind)]


def how_to_get(name: str, kind: Kind) -> str:
    """The message for a model that is not available: exactly how to get it."""
    k = known(name, kind)
    if not k:
        avail = ", ".join(e.name for e in entries(kind)) or "none"
        names = ", ".join(m.name for m in known(kind=kind))
        return (
            f"no {kind} named {name!r} in the registry ({home()}). Available {kind}s: {avail}. "
            f"Known names: {names}. Import an ONNX file with `spectral-transcoder models import PATH --name {name}`."
        )
    m = k[0]
    if m.convert.startswith("reinstall"):
        return f"the {kind} {name!r} ({m.description}) is not installed: {m.convert}."
    return (
        f"the {kind} {name!r} ({m.description}) is not in the registry ({home()}). To get it:\n"
        f"  1. source file: {m.source}\n"
        f"  2. convert it (needs torch, training extras): {m.convert}\n"
        f"  3. register it: spectral-transcoder models import {name}.onnx --name {name}\n"
        "The registry directory is $SPECTRAL_TRANSCODER_HOME, else $XDG_CACHE_HOME/spectral_transcoder or "
        "~/.cache/spectral_transcoder."
    )


def resolve(name: str, kind: Kind) -> Entry:
    """The available file for ``name`` in the ``kind`` namespace, or :class:`ModelError` saying how to get it."""
    _check_kind(kind)
    for e in entries(kind):
        if e.name == name:
            if not e.path.is_file():
                raise ModelError(
                    f"the {kind} {name!r} is registered but its file {str(e.path)!r} is missing. "
                    + how_to_get(name, kind)
                )
            return e
    raise ModelError(how_to_get(name, kind))


def default_transcoder(classifier_name: str) -> str | None:
    """The transcoder that feeds a known classifier by default, or None."""
    return DEFAULT_TRANSCODERS.get(classifier_name)


# ------------------------------------------------------------------ import
def import_model(path: str | os.PathLike[str], *, name: str | None = None) -> Entry:
    """Copy an ONNX model file into the registry and record its sha256.

    The file must load in ONNX Runtime and carry ``st.*`` metadata; its kind
    (classifier / transcoder) comes from the metadata, and ``name`` defaults to the
    metadata's name. Importing under an existing name replaces that entry.
    """
    src = Path(path)
    meta, sha = read_metadata(src)  # raises ModelError for missing / corrupt / unlabelled files
    name = name or meta.name
    _check_name(name)
    root = home()
    rel = Path(meta.kind) / f"{name}.onnx"
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:  # a half-copied model never takes the name
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != sha:
            raise ModelError(f"{str(src)!r} changed while it was being imported; try again")
    idx_path = root / "index.json"
    idx = read_index(idx_path)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    idx["models"][meta.kind][name] = {
        "file": rel.as_posix(),
        "sha256": sha,
        "source": str(src.resolve()),
        "imported_at": now,
        "model_name": meta.name,
        "input_spec": meta.input_spec.name,
        "output_spec": meta.output_spec.name if meta.output_spec is not None else None,
    }
    idx["format"] = INDEX_FORMAT
    write_index(idx_path, idx)
    return Entry(name, meta.kind, dest, sha, "cache", str(src.resolve()), now)
