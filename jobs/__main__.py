"""``python -m jobs ...``: the ``compactor jobs`` command group on its own."""

from jobs.cli import jobs

jobs(prog_name="compactor jobs")
