"""``python -m music_flamingo`` is the ``music-flamingo`` command."""

import sys

from .cli import main

sys.exit(main())
