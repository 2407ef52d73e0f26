"""`hub:` sources: files of a Hugging Face dataset repository, fetched with `huggingface_hub` (prepare time only).

    source = "hub:Shitao/bge-m3-data:**/msmarco_len-*.jsonl"     repo id, then a glob over the repo's file paths
    source = "hub:Shitao/bge-m3-data:**/*.jsonl!**/msmarco_*!**/nq_*"   "!glob" excludes matches

The glob is matched against `list_repo_files(repo, repo_type="dataset")`, every match is downloaded once into the
Hugging Face cache (`hf_hub_download`, resumable, honours HF_TOKEN / HF_HUB_OFFLINE / HF_ENDPOINT), and the local
files are read in sorted path order by their suffix (.jsonl / .jsonl.gz / .json -> JSONL, .parquet -> Parquet).
Nothing here runs during training: `prepare` turns hub data into prepared ArrayRecord datasets.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data import sources


def parse(location: str) -> tuple[str, str]:
    """"owner/repo:pattern" -> (repo id, pattern)."""
    repo, sep, pattern = location.partition(":")
    if not sep or repo.count("/") != 1 or not pattern:
        raise UsageError(f"hub source {location!r} must be 'owner/repo:glob' (e.g. 'Shitao/bge-m3-data:**/*.jsonl')")
    return repo, pattern


def list_repo_files(repo: str) -> list[str]:
    import huggingface_hub

    return huggingface_hub.list_repo_files(repo, repo_type="dataset")


def download(repo: str, filename: str) -> str:
    import huggingface_hub

    return huggingface_hub.hf_hub_download(repo, filename, repo_type="dataset")


def _match(path: str, pattern: str) -> bool:  # fnmatch's * crosses "/"; "**/x" also matches a top-level x
    return fnmatch.fnmatch(path, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(path, pattern[3:]))


def matching_files(location: str) -> list[str]:
    repo, spec = parse(location)
    pattern, *excludes = spec.split("!")
    files = list_repo_files(repo)
    matches = sorted(f for f in files if _match(f, pattern) and not any(_match(f, x) for x in excludes))
    if not matches:
        shown = ", ".join(sorted(files)[:20])
        raise FileNotFoundError(f"hub:{location}: no file of dataset repo {repo} matches {pattern!r}; "
                                f"its files include: {shown}")
    return matches


def local_files(location: str) -> list[Path]:
    """Downloads (or finds in the cache) every matching file; returns the local paths."""
    repo, _ = parse(location)
    return [Path(download(repo, f)) for f in matching_files(location)]


def read_rows(location: str, invalid: sources.Invalid = sources.raise_invalid) -> Iterator[sources.Row]:
    for path in local_files(location):
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            yield from sources.read_jsonl(path, invalid)
        elif name.endswith(".parquet"):
            yield from sources.read_parquet(path)
        else:
            raise UsageError(f"hub:{location}: {path.name} is neither JSONL nor Parquet")
