"""``python -m spectral_transcoder``: the same command line as ``spectral-transcoder``."""

from .cli import main

raise SystemExit(main())
