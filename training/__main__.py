"""``python -m training`` (and the console script ``spectral-transcoder-train``): see :mod:`training.cli`."""

from .cli import main

raise SystemExit(main())
