"""`python -m RadFusionScreenLib ...` is the same as the `radfusion` command."""

from .cli import main

raise SystemExit(main())
