"""Scheduled compaction: keep the partitions a job config names compacted, unattended.

One module per concept: ``config`` (the YAML job config, validated with line numbers),
``triggers`` (when a partition is due), ``leases`` (one scheduler per partition, across
machines), ``retry`` (transient or permanent, and the backoff), ``rounds`` (one round with its
retries and commit fence), ``history`` (SQLite), ``metrics`` (Prometheus), ``scheduler`` (the
loop that ties them together) and ``cli`` (``compactor jobs ...``).

    from jobs.config import load_config
    from jobs.scheduler import Scheduler

    scheduler = Scheduler(load_config("jobs.yaml"))
    runs = scheduler.run_once()      # evaluate triggers, run what is due, wait
    scheduler.shutdown()
"""
