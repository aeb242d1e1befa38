"""The compaction pipeline, one module per step: plan, hash_bucket, dedupe, materialize, commit.

Data flow of one round (D = driver; tasks and actors run on the runtime)::

    D: plan ── per file (or several small) ─▶ hash_bucket task: read key/order/op columns only
                                    └─▶ per group of buckets: (hi, lo, [order], row, op),
                                        sorted by key; position and file once per output
    dedupe actor (one per group of buckets, index cached across rounds)
        fold the records into its buckets' key index (D then frees them); plan ─▶ per bucket:
        files kept in place, surviving rows per source file
    materialize task (a run of consecutive source files, writing every bucket they feed):
        read sources in place, only needed row groups, write Parquet at the target size;
        meanwhile the actors point the new index at the new files and persist it
    D: commit the new bucket file lists atomically; actors adopt the new index

Whole rows never travel through the shuffle: only keys, ordering values and row locators.
"""
