"""MinHash near-duplicate removal in datatrove's four steps, one pipeline per step.

signatures[N]   each input shard -> per-bucket signature files (rank = shard)
buckets[B*W]    per bucket: sorted signatures -> pairs of duplicates (.dups)
clusters[1]     union-find over every pair -> the documents to remove, per shard
filter[N]       each input shard again, in the same order, minus the removed ones

The reader of the filter step must see each shard exactly as the signature step
did (document index = position in the shard), so both use the same paths file.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig

from aistack.data.readers import make_reader
from aistack.data.writers import make_writer, removed_writer


def minhash_config(cfg) -> MinhashConfig:
    m = cfg.minhash
    return MinhashConfig(
        n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket, seed=m.seed,
        hash_config=HashConfig(precision=m.precision, hash_fc=m.hash_fc),
    )


def _reader(cfg, data_folder: str, paths_file: str):
    i = cfg.input
    return make_reader(i.format, data_folder, paths_file, i.on_bad_file, i.text_key, i.id_key)


def signatures_pipeline(cfg, data_folder: str, paths_file: str, out: Path) -> list:
    return [_reader(cfg, data_folder, paths_file),
            MinhashDedupSignature(output_folder=str(out), config=minhash_config(cfg), language=cfg.language)]


def buckets_pipeline(cfg, signatures: Path, out: Path) -> list:
    return [MinhashDedupBuckets(input_folder=str(signatures), output_folder=str(out), config=minhash_config(cfg))]


def clusters_pipeline(cfg, buckets: Path, out: Path) -> list:
    return [MinhashDedupCluster(input_folder=str(buckets), output_folder=str(out), config=minhash_config(cfg))]


def filter_pipeline(cfg, data_folder: str, paths_file: str, clusters: Path, out: Path) -> list:
    removed = removed_writer(str(out / "removed")) if cfg.keep_removed else None
    return [_reader(cfg, data_folder, paths_file),
            MinhashDedupFilter(input_folder=str(clusters), exclusion_writer=removed),
            make_writer(cfg.output_format, str(out / "documents"))]
