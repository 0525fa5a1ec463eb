"""ship's orchestrator: config, the release model, the store, the Prefect flows, intake,
notifications and the CLI.

Prefect reads its settings when first imported; importing this package applies ship's
defaults first, whichever module is imported.
"""

from orchestrator import engine as _engine  # noqa: F401
