"""`python -m RadFusionScreenLib ...` is the same as the `radfusion` command."""

from RadFusionScreenLib.app.cli import main

raise SystemExit(main())
