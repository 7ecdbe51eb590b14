"""``python -m pgfast``: the pgfast command."""

from .cli import main

raise SystemExit(main())
