"""The data kinds (filter, dedup, tokenize) on datatrove: readers, FineWeb filters,
MinHash dedup, tokenization.

One module, one job: `inputs` (files and shards), `readers` (datatrove readers that
count or name bad files), `blocklist` and `langid` (offline URL filter and language
id), `filters` (the FineWeb pipeline from datatrove blocks), `writers` (writers and
their columns), `staged_run` (one datatrove rank in-process, staged and published
atomically), `shard_task` (one array task over its shard), `run_paths` (where a data
run keeps things), `minhash`, `tokenize`, `megatron` (indexed datasets), `stats`
(merging per-task stats), `funnel` (the plot) and `stats_report` (both, for a run).
"""
