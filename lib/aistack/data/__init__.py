"""The data stage on datatrove: readers, FineWeb filters, MinHash dedup, tokenization.

One module, one job: `inputs` (files and shards), `readers` (datatrove readers that
count or name bad files), `blocklist` and `langid` (offline URL filter and language
id), `filters` (the FineWeb pipeline from datatrove blocks), `outputs` (writers and
their columns), `execute` (one datatrove task in-process, staged and published
atomically), `minhash`, `tokenize`, `megatron` (indexed datasets), `stats` (merging
per-task stats) and `funnel` (the plot).
"""
