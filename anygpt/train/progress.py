"""Progress lines and throughput of a training run (one line per logging step, on stderr).

The Hugging Face ``Trainer`` prints raw log dicts (no step count, no time left) or, at verbose
logging, a tqdm bar that fills log files with carriage returns.  A run here prints instead::

    step 20/400 (5%)  loss 6.1234  lr 9.5e-04  grad 1.23  5,310 tok/s  0:00:41 elapsed, 0:13:00 left
    step 50/400  eval_loss 5.8712
    done: 400 steps in 0:13:41, train loss 3.2101

Tokens per second count real tokens (not padding) per process, over the time spent inside
optimizer steps since the previous logged step (evaluation and checkpoint saving excluded); the
rate is also added to the log history as ``tokens_per_second``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from transformers import TrainerCallback

from anygpt.train.packing import IGNORE


class Throughput:
    """Real tokens and seconds inside optimizer steps since the last training log."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id
        self.tokens = 0
        self.seconds = 0.0

    def count(self, inputs: dict) -> None:
        """Add the real tokens of a batch: not padding (pad id *and* no label)."""
        ids, labels = inputs["input_ids"], inputs.get("labels")
        real = ids != self.pad_id
        if labels is not None:
            real |= labels != IGNORE
        self.tokens += int(real.sum())

    def take(self) -> float | None:
        """Tokens per second since the last call, then start counting again."""
        rate = self.tokens / self.seconds if self.seconds > 0 else None
        self.tokens, self.seconds = 0, 0.0
        return rate


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _num(x: Any, fmt: str) -> str:
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


class ProgressLog(TrainerCallback):
    """Times optimizer steps for :class:`Throughput` and prints one line per log (stderr)."""

    def __init__(self, throughput: Throughput, stream=None) -> None:
        self.throughput = throughput
        self.stream = stream
        self._t0 = 0.0
        self._start = 0.0
        self._first_step = 0

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kw):
        self._start = time.perf_counter()
        self._first_step = state.global_step  # > 0 after a resume: the rate counts from here

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.throughput.seconds += time.perf_counter() - self._t0

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        step, total = state.global_step, state.max_steps
        if "loss" in logs:
            elapsed = time.perf_counter() - self._start
            done = step - self._first_step
            left = elapsed / done * (total - step) if done > 0 else 0.0
            parts = [
                f"step {step}/{total} ({100 * step // max(total, 1)}%)",
                f"loss {_num(logs['loss'], '.4f')}",
            ]
            if "learning_rate" in logs:
                parts.append(f"lr {_num(logs['learning_rate'], '.2e')}")
            if logs.get("grad_norm") is not None:
                parts.append(f"grad {_num(logs['grad_norm'], '.3g')}")
            if logs.get("tokens_per_second") is not None:
                parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
            parts.append(f"{_clock(elapsed)} elapsed, {_clock(left)} left")
            self._print("  ".join(parts))
        elif "eval_loss" in logs:
            self._print(f"step {step}/{total}  eval_loss {_num(logs['eval_loss'], '.4f')}")
        elif "train_runtime" in logs:
            self._print(
                f"done: {step} steps in {_clock(float(logs['train_runtime']))}, "
                f"train loss {_num(logs.get('train_loss'), '.4f')}"
            )
        else:
            self._print(f"step {step}/{total}  " + "  ".join(f"{k} {v}" for k, v in logs.items()))
