"""The catalogue of the training-audio sources (:mod:`training.sources` walks it).

:data:`PACKAGES`: the Debian packages that ``training/install_audio_sources.sh`` installs, each
with the path rules that sort its files into domains (the first matching rule wins);
:data:`MIDI_PACKAGES`: the packages whose MIDI files the script renders to FLAC;
:func:`file_group`: the group (files never split between training and held-out data) of an
installed file; :func:`package_licence`: a file's short licence from the package's
``/usr/share/doc/<package>/copyright``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections import Counter
from pathlib import Path

__all__ = ["Rule", "PACKAGES", "MIDI_PACKAGES", "file_group", "package_licence"]

Rule = tuple[str, str]  # (domain, fnmatch pattern on the lower-cased path, '*' matches '/'); "" excludes
_GAME: tuple[Rule, ...] = (("music", "*/music/*"), ("sfx", "*"))
PACKAGES: dict[str, tuple[Rule, ...]] = {  # package -> rules; the first rule matching a file wins
    # speech: telephone prompts (8 kHz), dubbed dialogue, spoken letters and words
    **{
        p: (("", "*/silence/*"), ("speech", "/usr/share/asterisk/sounds/*"))
        for p in (
            "asterisk-core-sounds-en-wav",
            "asterisk-core-sounds-es-wav",
            "asterisk-core-sounds-fr-wav",
            "asterisk-core-sounds-it-wav",
            "asterisk-core-sounds-ru-wav",
            "asterisk-prompt-it-menardi-wav",
        )
    },
    "fillets-ng-data": (
        ("music", "*/fillets-ng/music/*"),
        ("speech", "*/fillets-ng/sound/*/en/*"),
        ("speech", "*/borejokes/*"),
        ("sfx", "*"),
    ),
    **{p: (("speech", "*"),) for p in ("fillets-ng-data-cs", "fillets-ng-data-nl", "klettres-data", "ktuberling-data")},
    # sound effects (with the music, voices and ambiences some of them also ship)
    "tuxpaint-stamps-default": (("speech", "*_desc*"), ("sfx", "*")),
    "hedgewars-data": (("speech", "*/sounds/voices/*"), *_GAME),
    "wesnoth-1.16-data": (("environment", "*/sounds/ambient/*"), ("sfx", "*")),
    "supertux-data": (("speech", "*/supertux2/speech/*"), *_GAME),
    **{p: _GAME for p in ("pingus-data", "frozen-bubble-data", "colobot-common-sounds", "lincity-ng-data")},
    **{p: (("sfx", "*"),) for p in ("sound-theme-freedesktop", "oxygen-sounds", "gnome-audio")},
    "lomiri-sounds": (("music", "*/ringtones/*"), ("sfx", "*")),
    "warmux-data": (("speech", "*/sound/default/voices/*"), *_GAME),
    "megaglest-data": (("environment", "*/tilesets/*/sounds/*"), *_GAME),
    "freedink-data": (("music", "*/dink/sound/*.ogg"), ("sfx", "*")),
    # music and instrument samples
    "hyperrogue-music": (("sfx", "*/hyperrogue/sounds/*"), ("music", "*")),
    **{
        p: (("music", "*"),)
        for p in (
            "wesnoth-1.16-music",
            "hydrogen-drumkits",
            "sonic-pi-samples",
            "drascula-music",
            "singularity-music",
            "fretsonfire-songs-muldjord",
            "fretsonfire-songs-sectoid",
            "asterisk-moh-opsound-wav",
        )
    },
}
MIDI_PACKAGES = (
    "mma",
    "simutrans-data",
    "openttd-openmsx",
    "planetblupi-music-midi",
    "kobodeluxe-data",
    "freedink-data",
)
"""Packages whose MIDI files the install script renders (music, grouped by MIDI file)."""

GROUPS: tuple[tuple[str, str], ...] = (
    # (regex on the absolute path, fullmatch; group template filled with the regex's groups)
    (r"/usr/share/asterisk/sounds/[^/]+/(.+)\.[^./]+", "asterisk:{}"),  # drop the language
    (r".*/fillets-ng/sound/(.+)/[a-z]{2}/([^/]+)\.[^./]+", "fillets-ng:{}/{}"),  # same line, any language
    (r".*/ktuberling/sounds/[^/]+/([^/]+)\.[^./]+", "ktuberling:{}"),
    (r".*/tuxpaint/stamps/(.+?)(?:_desc[^/]*)?\.[^./]+", "tuxpaint:{}"),  # a stamp's sound + descriptions
    (r".*/drascula/[^/]+/([^/]+)\.[^./]+", "drascula:{}"),  # a track in every language
    (r".*/fretsonfire/data/songs/(.+)/[^/]+", "fretsonfire:{}"),  # song and guitar stems
    (r".*/hydrogen/data/drumkits/([^/]+)/.+", "hydrogen-drumkit:{}"),  # velocity layers of one kit
)

# ------------------------------------------------------------------ licences
_CC = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/(\d\.\d)", re.I)
_COMMON = re.compile(r"common-licenses/((?:L?GPL|GFDL|Artistic|Apache|MPL|CC0)[-0-9.]*)")
LICENCE_OVERRIDES = {"singularity-music": "CC-BY-SA-3.0"}  # free-form files read by hand


@functools.cache
def _copyright(package: str, root: Path) -> tuple[list[tuple[re.Pattern[str], str]], str]:
    """``(DEP-5 rules, package summary)``: each rule is (regex on the path's end, licence)."""
    path = root / "usr/share/doc" / package / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [], "unknown (no copyright file)"
    rules: list[tuple[re.Pattern[str], str]] = []
    for para in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:\s*(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:[ \t]*(\S.*)$", para, re.M)
        if files and lic and not all(f.startswith("debian/") for f in files.group(1).split()):
            # a source pattern also matches by its tails of >= 2 components (data/music/* -> music/*)
            tails = {
                "/".join(parts[i:])
                for f in files.group(1).split()
                if (parts := f.lstrip("./").split("/"))
                for i in range(max(1, len(parts) - 1))
            }
            alts = "|".join(fnmatch.translate(t) for t in sorted(tails))
            rules.append((re.compile(rf"(?:^|/)(?:{alts})"), lic.group(1).strip()))
    names: Counter[str] = Counter(lic for _, lic in rules)
    if not names:  # free-form copyright file
        names.update(f"CC-{m.group(1).upper()}-{m.group(2)}" for m in _CC.finditer(text))
        names.update(m.group(1).rstrip(".-") for m in _COMMON.finditer(text))
    top = [n for n, _ in names.most_common()]
    summary = ", ".join(top[:4]) + (f" +{len(top) - 4} more" if len(top) > 4 else "") if top else f"see {path}"
    return rules, LICENCE_OVERRIDES.get(package, summary)


def package_licence(package: str, path: str | None = None, root: str | os.PathLike[str] = "/") -> str:
    """Short licence from ``/usr/share/doc/<package>/copyright``: for the installed file ``path`` the
    ``License:`` of the last DEP-5 ``Files:`` paragraph matching the path's end; else the licence names,
    most frequent first (``debian/*`` left out; free-form files: CC URLs, ``common-licenses`` names)."""
    rules, summary = _copyright(package, Path(root))
    return next((lic for rx, lic in reversed(rules) if rx.search(path.lstrip("/"))), summary) if path else summary


def file_group(source: str, path: str) -> str:
    """The group of the file ``path`` of ``source``: by the first :data:`GROUPS` regex matching it, else the file."""
    for rx, template in GROUPS:
        if m := re.fullmatch(rx, path):
            return template.format(*m.groups())
    return f"{source}:{path.lstrip('/')}"
