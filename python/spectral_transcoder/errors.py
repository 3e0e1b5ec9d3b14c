"""Exception and warning types of spectral_transcoder, and how messages name options.

Every error the package raises on purpose derives from :class:`SpectralTranscoderError`,
so ``except spectral_transcoder.SpectralTranscoderError`` catches them all, while
the usual ``ValueError`` / ``TypeError`` handlers keep working too. Every warning it
issues derives from :class:`SpectralTranscoderWarning` (a ``UserWarning``).

Messages that suggest an option speak the caller's language: :func:`option` writes
``partial='drop'`` for Python callers and ``--partial drop`` while the command line
runs (it registers its flags with :func:`cli_language`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

__all__ = [
    "SpectralTranscoderError",
    "InvalidInputError",
    "InputTypeError",
    "UnknownSpecError",
    "SpecMismatchError",
    "ModelError",
    "MissingDependencyError",
    "SpectralTranscoderWarning",
    "InputWarning",
    "LevelWarning",
    "option",
    "cli_language",
    "to_cli_language",
]


class SpectralTranscoderError(Exception):
    """Base class of every error raised on purpose by spectral_transcoder."""


class InvalidInputError(SpectralTranscoderError, ValueError):
    """An input has the right type but a bad value: rank, length, NaN/Inf, band count..."""


class InputTypeError(SpectralTranscoderError, TypeError):
    """An input has an unsupported type or dtype."""


class UnknownSpecError(InvalidInputError):
    """A representation spec name is not one of the presets."""


class SpecMismatchError(InvalidInputError):
    """Two stages disagree on the representation they exchange."""


class ModelError(SpectralTranscoderError, ValueError):
    """A model file is missing, corrupt, lacks metadata, or fails its checksum."""


class MissingDependencyError(SpectralTranscoderError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


class SpectralTranscoderWarning(UserWarning):
    """Base class of every warning issued by spectral_transcoder."""


class InputWarning(SpectralTranscoderWarning):
    """An input was read by a guess or repaired (a CSV without header, jittered time stamps...):
    the message says what was done."""


class LevelWarning(SpectralTranscoderWarning):
    """Levels are above what full-scale audio can give, but not so far as to be an error."""


# ------------------------------------------------------------------ the caller's language
# Python keyword -> command-line flag of the running command; None while no command line runs.
# A module global rather than a context variable: the command line runs one command per
# process, and its worker threads (blocks read and classified in parallel) must see it too.
_CLI_FLAGS: Mapping[str, str] | None = None


@contextlib.contextmanager
def cli_language(flags: Mapping[str, str]) -> Iterator[None]:
    """While active, :func:`option` spells options as the command line's ``flags``
    (Python keyword -> flag, e.g. ``{"partial": "--partial"}``)."""
    global _CLI_FLAGS
    before = _CLI_FLAGS
    _CLI_FLAGS = dict(flags)
    try:
        yield
    finally:
        _CLI_FLAGS = before


_NO_VALUE = object()


def option(keyword: str, value: object = _NO_VALUE, *, placeholder: str | None = None) -> str:
    """How the caller sets the option ``keyword``, for error messages.

    Python: ``keyword='value'`` (``value`` as a Python literal), or ``keyword=PLACEHOLDER``.
    Command line: ``--flag value`` / ``--flag PLACEHOLDER`` when the running command has a
    flag for it, else the Python spelling marked as such (the option exists in Python only).
    """
    if value is not _NO_VALUE:
        py, cli = f"{keyword}={value!r}", str(value)
    elif placeholder is not None:
        py, cli = f"{keyword}={placeholder}", placeholder
    else:
        py, cli = f"{keyword}=", ""
    if _CLI_FLAGS is None:
        return py
    flag = _CLI_FLAGS.get(keyword)
    if flag is None:
        return f"{py} (in Python: the command line has no option for it)"
    return f"{flag} {cli}".rstrip()


def speaking_cli() -> bool:
    """True while the command line runs (messages then name its flags)."""
    return _CLI_FLAGS is not None


# keyword="value", keyword='value', keyword=123 or a bare "pass keyword=", as a word of its own:
# after a space, "(" or the start, and before a space, punctuation or the end (so that a path
# such as ".../classifier=YamNet+dataset=full" in a message is left alone).
_PY_OPTION = re.compile(r"(?<![^\s(])([a-z][a-z0-9_]*)=(\"[^\"]*\"|'[^']*'|[\w.+-]*[\w+-])?(?=$|[\s),;:.])")


_PY_NAME = re.compile(r"(?<![\w/.'\"-])([a-z][a-z0-9]*_[a-z0-9_]*)(?![\w/=(-])")


def to_cli_language(message: str, flags: Mapping[str, str] | None = None) -> str:
    """Rewrite the Python keyword spellings in ``message`` (``gaps="mask"``, ``pass dataset=``)
    as the command line's flags, for messages built where :func:`option` was not used.
    Keywords the command line has no flag for are left as they are."""
    table = _CLI_FLAGS if flags is None else flags
    if not table:
        return message

    def repl(m: re.Match[str]) -> str:
        flag: str | None = table.get(m.group(1))
        if flag is None:
            return m.group(0)
        value = m.group(2)
        if value is None:
            return flag
        return f"{flag} {value.strip(chr(34) + chr(39))}"

    message = _PY_OPTION.sub(repl, message)
    # bare keywords with an underscore ("needs spl_offset"): identifiers, not prose
    return _PY_NAME.sub(lambda m: table.get(m.group(1), m.group(0)), message)
