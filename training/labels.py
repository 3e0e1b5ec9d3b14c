"""Class-label CSVs: AudioSet's ``class_labels_indices.csv`` and YAMNet's ``yamnet_class_map.csv``.

Both files have the header ``index,mid,display_name`` (names may contain quoted
commas). They cannot ship with the project, so the converters take them as
arguments. YAMNet's 521 classes are the 527 AudioSet classes minus six, in the same
order; a YAMNet label's ``index`` is its AudioSet index, matched by ``mid``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from spectral_transcoder.errors import ModelError
from spectral_transcoder.metadata import Label

__all__ = ["read_label_csv", "audioset_labels", "yamnet_labels"]

_HEADER = ["index", "mid", "display_name"]


def read_label_csv(path: str | Path, *, what: str, option: str) -> list[Label]:
    """Rows of an ``index,mid,display_name`` CSV as :class:`Label` (index = the file's own index).

    ``what``/``option`` name the file and the command-line option in error messages.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{option}: {what} file {str(p)!r} does not exist")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelError(f"{option}: cannot read {what} {str(p)!r}: {exc}") from exc
    if not rows or [c.strip() for c in rows[0]] != _HEADER:
        got = rows[0] if rows else "an empty file"
        raise ModelError(f"{option}: {str(p)!r} is not a {what} (expected the header {','.join(_HEADER)}, got {got})")
    labels: list[Label] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise ModelError(f"{option}: {str(p)!r} line {line}: expected 3 columns, got {len(row)}: {row}")
        try:
            index = int(row[0])
        except ValueError:
            raise ModelError(f"{option}: {str(p)!r} line {line}: index {row[0]!r} is not an integer") from None
        if index != len(labels):
            raise ModelError(
                f"{option}: {str(p)!r} line {line}: index {index}, expected {len(labels)} (rows must be in order)"
            )
        labels.append(Label(index, row[1].strip(), row[2].strip()))
    return labels


def audioset_labels(path: str | Path, *, n_classes: int, option: str = "--labels") -> list[Label]:
    """The AudioSet classes of ``class_labels_indices.csv``; checks there are ``n_classes``."""
    labels = read_label_csv(path, what="AudioSet class_labels_indices.csv", option=option)
    if len(labels) != n_classes:
        raise ModelError(f"{option}: {str(path)!r} has {len(labels)} classes; the model has {n_classes}")
    return labels


def yamnet_labels(
    class_map: str | Path, audioset: str | Path | None = None, *, n_classes: int = 521
) -> tuple[list[Label], str]:
    """YAMNet's classes with their AudioSet index, and how the index was obtained.

    With ``audioset`` (class_labels_indices.csv) each mid is looked up there (an
    unknown mid is an error). Without it the index stays YAMNet's own and the
    returned note says so.
    """
    labels = read_label_csv(class_map, what="YAMNet yamnet_class_map.csv", option="--yamnet-class-map")
    if len(labels) != n_classes:
        raise ModelError(f"--yamnet-class-map: {str(class_map)!r} has {len(labels)} classes; YAMNet has {n_classes}")
    if audioset is None:
        return labels, "yamnet index (no class_labels_indices.csv given: pass --labels to get AudioSet indices)"
    audioset_rows = read_label_csv(audioset, what="AudioSet class_labels_indices.csv", option="--labels")
    by_mid = {lb.mid: lb.index for lb in audioset_rows}
    missing = [lb.mid for lb in labels if lb.mid not in by_mid]
    if missing:
        raise ModelError(
            f"--labels: {len(missing)} YAMNet mids are not in {str(audioset)!r} (first: {missing[:5]}); "
            "is it AudioSet's class_labels_indices.csv?"
        )
    return [Label(by_mid[lb.mid], lb.mid, lb.name) for lb in labels], "audioset index matched by mid"
