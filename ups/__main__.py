"""`python -m ups` is the same as the `ups` console command."""

from ups.cli import main

raise SystemExit(main())
