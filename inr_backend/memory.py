"""GPU out-of-memory: lower the batch (or the inference chunk) and go on, instead of failing the job.

A trainer or a chunked inference loop holds its batch or chunk size in an ``AdaptiveSize``. On
``torch.OutOfMemoryError`` it calls ``size.lower(exc, step=N)``: the step's tensors are dropped
(the exception's traceback, which holds the failed step's frames, is cleared), the CUDA cache is
emptied, the size is halved and a ``warning`` goes to the user ("GPU out of memory at step N:
batch lowered from A to B; training continues"); the caller then retries the step (or the
chunked call) at the new size. Below ``floor`` (1/1024 of the configured size, but at least a few
hundred) it gives up with an OutOfMemoryError whose text job.py turns into its clear message.

The step count and the learning-rate schedule do not change; only the size of each step does.

Test hook: ``INR_INJECT_OOM`` makes ``inject(site)`` raise a real OutOfMemoryError instance at
chosen calls, so the fallback is tested on machines without a GPU (see ``inject``).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any, Callable

import torch

log = logging.getLogger("inr_backend")

# torch >= 2.5 has torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class).
OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

INJECT_ENV = "INR_INJECT_OOM"
MIN_FLOOR = 256            # never lower a batch or chunk below this many items
FLOOR_FRACTION = 1024      # ... nor below 1/1024 of its configured size (ten halvings)


def default_floor(size: int) -> int:
    """The smallest size a configured ``size`` may be lowered to (at most ``size`` itself)."""
    return min(int(size), max(int(size) // FLOOR_FRACTION, MIN_FLOOR))


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, OutOfMemoryError)


def caused_by_oom(exc: BaseException) -> bool:
    """An OutOfMemoryError, or an error raised while one was handled: a CUDA graph capture that
    runs out of memory fails again when the capture ends, with the OutOfMemoryError as context."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def release_memory(device: Any = None) -> None:
    """Free what a failed step left behind: unreachable tensors, then the CUDA caching allocator's
    unused blocks (so the smaller retry can use them, and other processes see them free)."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


class AdaptiveSize:
    """A batch or chunk size that halves on GPU out-of-memory, down to ``floor``.

    what: the name in messages ("batch", "samples per batch", "chunk"); unit: what it counts
    ("points", "rays") for chunk messages; report(message, size): where the warning goes (the
    job context records ``size.record()`` in result.json); device: whose cache to empty.
    """

    def __init__(self, size: int, *, what: str = "batch", unit: str = "", floor: int | None = None,
                 report: Callable[[str, "AdaptiveSize"], None] | None = None, device: Any = None,
                 original: int | None = None, at_step: int | None = None, training: bool = True):
        self.size = int(size)
        self.original = int(original if original is not None else size)   # the configured size
        self.floor = default_floor(self.original) if floor is None else int(floor)
        self.what, self.unit, self.report, self.device = what, unit, report, device
        self.at_step = at_step           # the step (training) at which it was last lowered
        self.phase: str | None = None    # the phase (inference) in which it was last lowered
        self.training = training
        self.times = 0

    @property
    def lowered(self) -> bool:
        return self.size < self.original

    def lower(self, exc: BaseException, *, step: int | None = None, phase: str | None = None) -> int:
        """Halve the size after ``exc`` (an OutOfMemoryError) and return it; re-raise when the
        halved size would be below the floor. Call it from the ``except`` block."""
        link: BaseException | None = exc
        for _ in range(8):               # the failed step's frames (and their tensors) go now
            if link is None:
                break
            link.__traceback__ = None
            link = link.__cause__ or link.__context__
        release_memory(self.device)
        smaller = self.size // 2
        where = f"at step {step}" if step is not None else f"while {phase}" if phase else "during a step"
        if smaller < self.floor:
            log.error("GPU out of memory %s at %s %d (floor %d): %s", where, self.what, self.size, self.floor, exc)
            lowered = f", lowered from {self.original:,}" if self.lowered else ""
            raise OutOfMemoryError(f"{where} even with the {self.what} at {self.size:,}{lowered}, the lowest this "
                                   "job goes; close other programs that use the GPU") from None
        previous, self.size = self.size, smaller
        self.times += 1
        self.at_step, self.phase = step, phase
        unit = f" {self.unit}" if self.unit else ""
        goes_on = "training continues" if self.training else "continuing"
        message = f"GPU out of memory {where}: {self.what} lowered from {previous:,} to {smaller:,}{unit}; {goes_on}"
        log.warning("%s (%s)", message, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        if self.report is not None:
            self.report(message, self)
        return smaller

    def record(self) -> dict:
        """What result.json (``batch_lowered`` / ``chunk_lowered``) and the resume state keep."""
        record: dict[str, Any] = {"what": self.what, "from": self.original, "to": self.size, "times": self.times}
        if self.at_step is not None:
            record["at_step"] = self.at_step
        if self.phase is not None:
            record["phase"] = self.phase
        return record

    def restore(self, record: dict | None) -> None:
        """Continue at the lowered size of a resumed run's state (``record()`` of the earlier run)."""
        if not isinstance(record, dict) or int(record.get("from", -1)) != self.original:
            return
        size = int(record.get("to", self.size))
        if self.floor <= size < self.size:
            self.size = size
            self.at_step = record.get("at_step")
            self.times = int(record.get("times", 1))
            at = f" at step {self.at_step}" if self.at_step is not None else ""
            message = (f"the {self.what} stays lowered from {self.original:,} to {size:,} (the GPU ran out of "
                       f"memory{at} before the resume)")
            log.info("%s", message)
            if self.report is not None:
                self.report(message, self)


def retry_chunked(run: Callable[[int], Any], chunk: AdaptiveSize, *, phase: str) -> Any:
    """``run(chunk.size)``, again with a halved chunk after each GPU out-of-memory (whole call:
    chunked inference keeps no state worth saving between its chunks)."""
    while True:
        try:
            return run(chunk.size)
        except Exception as exc:  # noqa: BLE001 - only a GPU out-of-memory is handled
            if not caused_by_oom(exc):
                raise
            chunk.lower(exc, phase=phase)


# --------------------------------------------------------------------------- the test hook

_injection: dict[str, list[tuple[int, int | None]]] | None = None
_calls: dict[str, int] = {}


def _parse_injection(text: str) -> dict[str, list[tuple[int, int | None]]]:
    plan: dict[str, list[tuple[int, int | None]]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        site, _, calls = item.partition(":")
        calls = calls.strip() or "1"
        try:
            if calls.endswith("+"):
                first, last = int(calls[:-1]), None
            elif "-" in calls:
                first, last = (int(value) for value in calls.split("-", 1))
            else:
                first = last = int(calls)
        except ValueError:
            log.warning("ignoring %s item %r (expected SITE:N, SITE:N-M or SITE:N+)", INJECT_ENV, item)
            continue
        plan.setdefault(site.strip(), []).append((first, last))
    return plan


def inject(site: str) -> None:
    """TEST HOOK, not a feature: raise a real OutOfMemoryError at chosen calls of ``site``.

    ``INR_INJECT_OOM="train_step:3"`` (read once per process) raises at the 3rd call of
    ``inject("train_step")``; ``SITE:N-M`` at calls N to M, ``SITE:N+`` at every call from N on;
    several items are separated by commas. Sites: ``train_step`` (every trainer's step),
    ``extract_chunk`` (mesh extraction's field evaluations), ``render_chunk`` (NeRF render and
    image sampling chunks). Without the variable this is a dictionary lookup.
    """
    global _injection
    if _injection is None:
        _injection = _parse_injection(os.environ.get(INJECT_ENV, ""))
    plan = _injection.get(site)
    if not plan:
        return
    count = _calls[site] = _calls.get(site, 0) + 1
    if any(first <= count and (last is None or count <= last) for first, last in plan):
        raise OutOfMemoryError(f"CUDA out of memory (injected by {INJECT_ENV} at call {count} of {site!r})")


def injecting(fn: Callable, site: str) -> Callable:
    """``fn`` with ``inject(site)`` before every call (a field evaluated chunk by chunk)."""
    def wrapped(*args, **kwargs):
        inject(site)
        return fn(*args, **kwargs)
    return wrapped


__all__ = ["OutOfMemoryError", "AdaptiveSize", "caused_by_oom", "default_floor", "inject", "injecting",
           "is_out_of_memory",
           "release_memory", "retry_chunked", "INJECT_ENV"]
