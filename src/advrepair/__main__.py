"""``python -m advrepair`` is the ``advrepair`` command."""
from advrepair.apps.cli import main

raise SystemExit(main())
