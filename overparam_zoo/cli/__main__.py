"""``python -m overparam_zoo.cli``: the same as the ``overparam-zoo`` console script."""

from overparam_zoo.cli import main

raise SystemExit(main())
