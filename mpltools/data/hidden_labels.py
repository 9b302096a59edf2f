"""The unlabelled part's true labels, kept aside by `mpl data split --keep-hidden-labels` for analysis only.

The side file `unlabeled_hidden_labels.json` sits next to labeled/, unlabeled/ and val/ (outside every
shard set, so no loader sees it). It maps each unlabelled sample's key to its class; diagnostics such as
the pseudo labels' accuracy may read it, training never does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpltools import log
from mpltools.errors import MplError

HIDDEN_LABELS = "unlabeled_hidden_labels.json"


def write_hidden_labels(folder: Path, keys: list[str], labels: np.ndarray, unlabeled: np.ndarray, classes: list[str]) -> Path:
    """`unlabeled`: a boolean mask over `keys` of the samples that went to unlabeled/."""
    chosen = np.flatnonzero(unlabeled)
    doc = {"purpose": "true labels of unlabeled/, for diagnostics only; never read for training",
           "classes": list(classes), "labels": {keys[i]: int(labels[i]) for i in chosen.tolist()}}
    path = Path(folder) / HIDDEN_LABELS
    path.write_text(json.dumps(doc, sort_keys=True))
    return path


def read_hidden_labels(path: Path, classes: list[str]) -> dict[str, int]:
    """Key -> class index; MplError naming the file when it is unreadable or its classes differ."""
    try:
        doc = json.loads(Path(path).read_text())
        labels = {str(k): int(v) for k, v in doc["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MplError(f"{path} is not a hidden-labels file written by `mpl data split --keep-hidden-labels` ({exc}).") from None
    if doc.get("classes") != list(classes):
        raise MplError(f"{path} is for classes {doc.get('classes')}, not the run's {classes}; split the data again.")
    return labels


def find_hidden_labels(unlabeled, classes: list[str]) -> dict[str, int] | None:
    """The side file next to the unlabelled shard set, if `mpl data split --keep-hidden-labels` wrote one.

    Only the diagnostics see it (``diag/pl_accuracy``); a file that does not cover the set is ignored."""
    if unlabeled is None:
        return None
    path = Path(unlabeled.root).parent / HIDDEN_LABELS
    if not path.is_file():
        return None
    labels = read_hidden_labels(path, classes)
    if len(labels) != unlabeled.num_samples:
        log.warn(f"{path} holds {len(labels):,} labels but {unlabeled.root} has {unlabeled.num_samples:,} samples; "
                 "ignoring it (split the data again with --keep-hidden-labels).")
        return None
    log.info(f"hidden labels from {path}: diagnostics only (diag/pl_accuracy), never trained on")
    return labels
