"""Exception types of spectral_transcoder.

Every error the package raises on purpose derives from :class:`SpectralTranscoderError`,
so ``except spectral_transcoder.SpectralTranscoderError`` catches them all, while
the usual ``ValueError`` / ``TypeError`` handlers keep working too.
"""

from __future__ import annotations


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
