"""Classification metrics and the evaluation loop shared by `train`, `finetune` and `eval`.

Counts are exact under several processes: every sample is assigned to exactly one process (no
padding of the last batch) and per-class counts and sums are all-reduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


class MetricSums:
    """Running sums from which every metric is computed; additive across batches and processes."""

    def __init__(self, num_classes: int, device="cpu"):
        k = num_classes
        self.correct1 = torch.zeros(k, dtype=torch.float64, device=device)  # per true class
        self.correct5 = torch.zeros(k, dtype=torch.float64, device=device)
        self.count = torch.zeros(k, dtype=torch.float64, device=device)
        self.loss = torch.zeros(1, dtype=torch.float64, device=device)
        self.bin_count = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        self.bin_conf = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        self.bin_correct = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        k = logits.shape[1]
        labels = labels.to(logits.device)
        self.loss += F.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(min(5, k), dim=1).indices
        hit1 = (top[:, 0] == labels).double()
        hit5 = (top == labels[:, None]).any(dim=1).double()
        self.count += torch.bincount(labels, minlength=k).double()
        self.correct1 += torch.bincount(labels, weights=hit1, minlength=k)
        self.correct5 += torch.bincount(labels, weights=hit5, minlength=k)
        confidence = logits.softmax(dim=1).max(dim=1).values.double()
        bins = (confidence * ECE_BINS).long().clamp_(max=ECE_BINS - 1)
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS).double()
        self.bin_conf += torch.bincount(bins, weights=confidence, minlength=ECE_BINS)
        self.bin_correct += torch.bincount(bins, weights=hit1, minlength=ECE_BINS)

    def tensors(self) -> list[torch.Tensor]:
        return [self.correct1, self.correct5, self.count, self.loss, self.bin_count, self.bin_conf, self.bin_correct]

    def all_reduce(self, reducer) -> None:
        """Sum over processes (the reducer averages, so multiply back by the world size)."""
        if getattr(reducer, "world_size", 1) > 1:
            for t in self.tensors():
                t.copy_(reducer.mean(t) * reducer.world_size)

    def result(self, classes: list[str] | None = None) -> dict:
        n = float(self.count.sum())
        if n == 0:
            return {"num_samples": 0}
        per_class = (self.correct1 / self.count.clamp(min=1)).tolist()
        gaps = (self.bin_conf - self.bin_correct).abs().sum() / n
        names = classes or [str(i) for i in range(len(per_class))]
        return {
            "num_samples": int(n),
            "top1": float(self.correct1.sum()) / n,
            "top5": float(self.correct5.sum()) / n,
            "loss": float(self.loss) / n,
            "ece": float(gaps),
            "per_class_top1": {name: (acc if c > 0 else None) for name, acc, c in zip(names, per_class, self.count.tolist())},
        }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches,
    to_input,
    num_classes: int,
    reducer=None,
    autocast=None,
    on_batch=None,
    classes: list[str] | None = None,
) -> dict:
    """Run `model` in eval mode over `batches` of (keys, x, y); `on_batch(keys, logits)` sees predictions."""
    was_training = model.training
    model.eval()
    sums = None
    try:
        for keys, x, y in batches:
            inputs = to_input(x)
            with autocast() if autocast else _null():
                logits = model(inputs).float()
            if on_batch is not None:
                on_batch(keys, logits, y)
            if y is not None:
                sums = sums or MetricSums(num_classes, logits.device)
                sums.update(logits, y)
    finally:
        model.train(was_training)
    if sums is None:
        sums = MetricSums(num_classes)
    if reducer is not None:
        sums.all_reduce(reducer)
    return sums.result(classes)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
