"""The reference step for benchmarks/step.py: the MPL step of the most used PyTorch port
(kekmodel/MPL-pytorch, `main.py: train_loop` and `models.py` near HEAD 7dc6297), re-typed from a
reading of that code. Benchmark material only: nothing in mpltools imports it.

Kept as the port has it, because it changes the cost or the memory:

* its WRN-28-2: in-place leaky ReLU (slope 0.1), BN momentum 0.001, dense dropout 0.2 (block dropout
  0), the first stage activating before the residual, and the other stages' first block computing
  `relu1(bn1(x))` and then not using it (the conv reads `x`);
* one teacher forward over [l; uw; us], one student forward over [l; us] (its labelled rows give
  CE_old), one no-grad student forward over l after the update (CE_new);
* CrossEntropyLoss with label smoothing 0.15; SGD with Nesterov momentum 0.9, weight decay 5e-4
  except for parameters named `bn*`; the cosine schedule with warm-up 5000 and a student wait of
  3000 steps (300,000 in all); a disabled GradScaler and `clip_grad_norm_(max_norm=1e9)` on every
  step (its default `--grad-clip`); the student EMA (decay 0.995) as its Python loop over tensors;
  six `.item()` calls at the end.

Left out: its data loaders (the step takes ready tensors), tqdm, TensorBoard, evaluation and
checkpoints: perf-anchors §2.1 times the same span.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.relu1 = nn.LeakyReLU(0.1, inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.relu2 = nn.LeakyReLU(0.1, inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.same = cin == cout
        self.shortcut = None if self.same else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        if not self.same and self.activate_before_residual:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))  # unused when the block changes width (as in the port)
        out = self.relu2(self.bn2(self.conv1(out if self.same else x)))
        out = self.conv2(out)
        return torch.add(x if self.same else self.shortcut(x), out)


class PortWideResNet(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 28, widen: int = 2, dense_dropout: float = 0.2):
        super().__init__()
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            stages.append(
                nn.Sequential(
                    *[
                        _Block(
                            widths[i] if j == 0 else widths[i + 1],
                            widths[i + 1],
                            stride if j == 0 else 1,
                            activate_before_residual=i == 0,
                        )
                        for j in range(n)
                    ]
                )
            )
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.001)
        self.relu = nn.LeakyReLU(0.1, inplace=True)
        self.drop = nn.Dropout(dense_dropout)
        self.fc = nn.Linear(widths[3], num_classes)
        self.channels = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).view(-1, self.channels)
        return self.fc(self.drop(out))


class _EMA:
    """The port's ModelEMA update: a Python loop, lerp of parameters, copy of buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.module, self.decay = copy.deepcopy(model).eval(), decay

    def update(self, model: nn.Module) -> None:
        with torch.no_grad():
            for e, m in zip(self.module.parameters(), model.parameters()):
                e.copy_(self.decay * e + (1.0 - self.decay) * m)
            for e, m in zip(self.module.buffers(), model.buffers()):
                e.copy_(m)


def _cosine(optimizer, warmup: int, total: int, wait: int = 0):
    def factor(step: int) -> float:
        if step < wait:
            return 0.0
        if step < warmup + wait:
            return step / max(1, warmup + wait)
        progress = (step - warmup - wait) / max(1, total - warmup - wait)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _sgd(model: nn.Module, lr: float = 0.05, weight_decay: float = 5e-4):
    decay = [p for n, p in model.named_parameters() if "bn" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bn" in n]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )


class PortStep:
    """Teacher, student, optimisers, schedules, scalers and EMA as the port's `main()` builds them
    for the README's CIFAR-10-4K command; `__call__` is one pass of its `train_loop` body."""

    def __init__(
        self,
        num_classes: int = 10,
        threshold: float = 0.6,
        temperature: float = 0.7,
        lambda_u: float = 8.0,
        uda_steps: int = 5000,
        grad_clip: float = 1e9,
        ema: float = 0.995,
    ):
        self.teacher, self.student = PortWideResNet(num_classes), PortWideResNet(num_classes)
        self.ema = _EMA(self.student, ema) if ema > 0 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.15)
        self.t_opt, self.s_opt = _sgd(self.teacher), _sgd(self.student)
        self.t_sched = _cosine(self.t_opt, 5000, 300_000)
        self.s_sched = _cosine(self.s_opt, 5000, 300_000, 3000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.t_scaler = torch.amp.GradScaler("cuda", enabled=False)
            self.s_scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.threshold, self.temperature, self.lambda_u, self.uda_steps = threshold, temperature, lambda_u, uda_steps
        self.grad_clip = grad_clip
        self.teacher.zero_grad()
        self.student.zero_grad()

    def __call__(self, step: int, images_l, targets, images_uw, images_us) -> list[float]:
        teacher, student, criterion = self.teacher, self.student, self.criterion
        teacher.train()
        student.train()
        b = images_l.shape[0]
        t_logits = teacher(torch.cat((images_l, images_uw, images_us)))
        t_logits_l = t_logits[:b]
        t_logits_uw, t_logits_us = t_logits[b:].chunk(2)
        del t_logits
        t_loss_l = criterion(t_logits_l, targets)
        soft = torch.softmax(t_logits_uw.detach() / self.temperature, dim=-1)
        max_probs, hard = torch.max(soft, dim=-1)
        mask = max_probs.ge(self.threshold).float()
        t_loss_u = torch.mean(-(soft * torch.log_softmax(t_logits_us, dim=-1)).sum(dim=-1) * mask)
        t_loss_uda = t_loss_l + self.lambda_u * min(1.0, (step + 1) / self.uda_steps) * t_loss_u

        s_logits = student(torch.cat((images_l, images_us)))
        s_logits_l, s_logits_us = s_logits[:b], s_logits[b:]
        del s_logits
        s_loss_l_old = F.cross_entropy(s_logits_l.detach(), targets)
        s_loss = criterion(s_logits_us, hard)
        self.s_scaler.scale(s_loss).backward()
        if self.grad_clip > 0:
            self.s_scaler.unscale_(self.s_opt)
            nn.utils.clip_grad_norm_(student.parameters(), self.grad_clip)
        self.s_scaler.step(self.s_opt)
        self.s_scaler.update()
        self.s_sched.step()
        if self.ema is not None:
            self.ema.update(student)

        with torch.no_grad():
            s_logits_l = student(images_l)
        s_loss_l_new = F.cross_entropy(s_logits_l.detach(), targets)
        dot_product = s_loss_l_new - s_loss_l_old  # the port's sign ("author's code formula")
        _, hard = torch.max(t_logits_us.detach(), dim=-1)
        t_loss_mpl = dot_product * F.cross_entropy(t_logits_us, hard)
        t_loss = t_loss_uda + t_loss_mpl
        self.t_scaler.scale(t_loss).backward()
        if self.grad_clip > 0:
            self.t_scaler.unscale_(self.t_opt)
            nn.utils.clip_grad_norm_(teacher.parameters(), self.grad_clip)
        self.t_scaler.step(self.t_opt)
        self.t_scaler.update()
        self.t_sched.step()
        teacher.zero_grad()
        student.zero_grad()
        return [s_loss.item(), t_loss.item(), t_loss_l.item(), t_loss_u.item(), t_loss_mpl.item(), mask.mean().item()]
