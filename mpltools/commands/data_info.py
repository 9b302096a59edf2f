"""`mpl data info DIR|PATTERN|URL [--verify]`: counts, class histogram, input spec; --verify checks every byte.

With a manifest nothing but the manifest is read (for a remote set: nothing is downloaded). --verify reads
every shard once; a remote shard is fetched into a temporary file, checked against the manifest's sha256
and deleted before the next one (data/remote.py), so the disk holds one shard at a time."""

from __future__ import annotations

from collections import Counter

from mpltools import log
from mpltools.data.codecs import decode_input
from mpltools.data.opening import open_shard_set
from mpltools.data.remote import RemoteShard
from mpltools.data.shards import ShardError, read_shard, sha256_file
from mpltools.errors import MplError

MAX_LISTED = 20  # problems listed one by one; the rest are only counted (a set of wrong images has one per sample)


class _Problems(list):
    """The first MAX_LISTED problems, and how many there were in all."""

    total = 0

    def append(self, problem: str) -> None:
        self.total += 1
        if len(self) < MAX_LISTED:
            super().append(problem)


def run(location: str, verify: bool) -> dict:
    shards = open_shard_set(location)
    report = _manifest_report(location, shards)
    if not verify and shards.manifest is not None:
        return report
    # A manifest-less pattern is counted by reading it; --verify checks everything, reporting every fault.
    problems = _Problems()
    report["counted_samples"], counts = _read_shards(shards, verify, problems)
    if counts:
        report["counted_class_counts"] = (
            [counts[c] for c in range(max(counts) + 1)]
            if shards.manifest is None
            else [counts[c] for c in range(shards.num_classes)]
        )
        if shards.class_counts is not None and shards.labeled and report["counted_class_counts"] != shards.class_counts:
            problems.append(f"{shards.root}: class counts in the shards differ from the manifest's")
    if verify:
        report["verified"] = not problems
        report["problems"] = list(problems)
        report["problem_count"] = problems.total
    return report


def _manifest_report(location: str, shards) -> dict:
    """What the manifest says (nothing is read from the shards)."""
    report: dict = {
        "path": str(location),
        "has_manifest": shards.manifest is not None and not shards.scanned,  # else read by a scan
        "shards": len(shards.shard_paths),
        "metadata": shards.origin,
        "checksums": shards.manifest is not None and None not in shards.shard_checksums,
    }
    if shards.manifest is not None:
        report.update(
            num_samples=shards.num_samples,
            labeled=shards.labeled,
            classes=shards.classes,
            class_counts=shards.class_counts,
            input=shards.input_spec.to_json(),
            extras=shards.extras,
            provenance=shards.provenance,
        )
    return report


def _read_shards(shards, verify: bool, problems: _Problems) -> tuple[int, Counter]:
    """Read every shard once: (samples counted, label -> count). With `verify`, checksums, labels, unique keys
    and every sample's decoding are checked too; faults go to `problems`."""
    spec = shards.input_spec  # --verify decodes every sample and checks it against the manifest's shape
    counts: Counter = Counter()
    total = 0
    first_seen: dict[str, object] = {}  # key -> shard, to find keys repeated across shards
    with log.progress("verify" if verify else "count", total=len(shards.shard_paths), unit="shards") as bar:
        for i, path in enumerate(shards.shard_paths):
            checked_on_fetch = isinstance(path, RemoteShard)  # read_shard refuses a remote shard whose sha256 differs
            if verify and shards.manifest is not None and shards.shard_checksums[i] is not None and not checked_on_fetch:
                if sha256_file(path) != shards.shard_checksums[i]:
                    problems.append(f"{path}: sha256 does not match {shards.origin} (the shard changed or is corrupt)")
            in_shard = 0
            try:
                for sample in read_shard(path, num_classes=shards.num_classes):
                    in_shard += 1
                    if verify:
                        _check_sample(sample, path, shards, first_seen, problems)
                    if sample.label is not None:
                        counts[sample.label] += 1
                    if verify:
                        try:
                            decode_input(sample, path, spec)
                        except ShardError as exc:
                            problems.append(exc.message)
            except ShardError as exc:
                problems.append(exc.message)
            if shards.manifest is not None and in_shard != shards.shard_counts[i]:
                problems.append(f"{path}: holds {in_shard} samples but the manifest says {shards.shard_counts[i]}")
            total += in_shard
            bar.advance()
    return total, counts


def _check_sample(sample, path, shards, first_seen: dict, problems: _Problems) -> None:
    """--verify: a label where the set says there is one, and a key no earlier sample had."""
    if shards.manifest is not None and shards.labeled != (sample.label is not None):
        problems.append(
            f"{path}: sample {sample.key!r} "
            + ("has no label in a labelled shard set" if shards.labeled else "has a label in an unlabelled shard set")
        )
    if sample.key in first_seen:
        problems.append(f"{path}: sample key {sample.key!r} also appears in {first_seen[sample.key]}; keys must be unique")
    else:
        first_seen[sample.key] = path


def render(report: dict) -> str:
    """Human-readable report for stdout (the JSON form is for scripts)."""
    lines = [f"shard set   {report['path']}"]
    if "input" in report:
        spec = report["input"]
        lines.append(
            f"samples     {report['num_samples']:,} in {report['shards']} shard(s), {'labelled' if report['labeled'] else 'unlabelled'}"
        )
        lines.append(f"input       {spec['kind']} {spec['encoding']} shape={spec['shape']} dtype={spec['dtype']}")
        lines.append(f"classes     {len(report['classes'])}")
        if report.get("class_counts"):
            width = max(len(c) for c in report["classes"])
            peak = max(report["class_counts"]) or 1
            for name, count in zip(report["classes"], report["class_counts"]):
                lines.append(f"  {name:<{width}} {count:>8,} {'#' * max(1, round(30 * count / peak)) if count else ''}")
        if report.get("extras"):
            lines.append(f"extras      {', '.join(report['extras'])}")
    else:
        lines.append(f"samples     {report.get('counted_samples', '?'):,} in {report['shards']} shard(s) (no manifest)")
    if report.get("metadata") and not report.get("checksums"):
        lines.append(f"metadata    {report['metadata']}")
    if "verified" in report:
        ok = (
            "OK: checksums match, every sample decodes"
            if report.get("checksums")
            else "OK: every sample decodes (no checksums to compare: the shards have no manifest.json)"
        )
        lines.append(f"verify      {ok}" if report["verified"] else f"verify      FAILED: {report['problem_count']} problem(s)")
        lines += [f"  - {p}" for p in report["problems"]]
        if report["problem_count"] > len(report["problems"]):
            lines.append(
                f"  - ... and {report['problem_count'] - len(report['problems'])} more (the first {MAX_LISTED} are listed)"
            )
    return "\n".join(lines)


def check_verified(report: dict) -> None:
    """After the report is printed: problems found by --verify make the command fail (exit 1)."""
    if report.get("verified") is False:
        raise MplError(f"{report['path']}: {report['problem_count']} problem(s) found; see above.")
