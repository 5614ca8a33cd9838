"""A Hugging Face ``Trainer`` callback that records a tracker's table (optional extra:
``transformers`` with ``accelerate``).

Use::

    from lossatlas.measurements.track.huggingface import TrackerCallback
    cb = TrackerCallback(la.track.Sharpness(every=10, data=batch_dict, loss="model"),
                         out="run/lossatlas")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    la.load_run("run/lossatlas").track("sharpness")

``step`` is ``state.global_step`` (optimizer updates applied), measured at the start of
training (step 0) and after every update the tracker asks for; ``lr`` is the optimizer's
current rate. The optimizer Accelerate wraps is unwrapped, so Adam/AdamW runs get the
preconditioned sharpness. With dict data (``{"input_ids": ..., "labels": ...}``) pass
``loss="model"`` to the tracker so the model's own loss is measured, as the Trainer trains it.
"""

from __future__ import annotations

import os
from typing import Any

from lossatlas.batteries.runs import Recorder
from lossatlas.core.errors import LossAtlasError

try:
    from transformers import TrainerCallback
except ImportError:  # the optional extra is missing: TrackerCallback says so when built
    TrainerCallback = object

__all__ = ["TrackerCallback"]


def _unwrap(optimizer):
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or itself)."""
    return getattr(optimizer, "optimizer", optimizer)


class TrackerCallback(TrainerCallback):
    """Run ``tracker`` (e.g. :class:`la.track.Sharpness`) inside ``Trainer.train``; its
    table goes to the run folder ``out`` (default ``<output_dir>/lossatlas``)."""

    def __init__(self, tracker: Any, out: str | os.PathLike | None = None):
        if TrainerCallback is object:
            raise LossAtlasError(
                "TrackerCallback needs transformers and accelerate; pip install "
                "'lossatlas[trainer]' (or transformers accelerate)"
            )
        self.tracker, self.out = tracker, out
        self.recorder: Recorder | None = None

    def _call(self, model, optimizer, step: int) -> None:
        opt = _unwrap(optimizer)
        lr = float(opt.param_groups[0]["lr"]) if opt is not None else None
        self.tracker.on_step(self.recorder, model, opt, step=step, lr=lr)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        out = self.out if self.out is not None else os.path.join(args.output_dir, "lossatlas")
        self.recorder = Recorder(out, model, every=None,
                                 info={"source": "transformers.Trainer"}, overwrite=True)
        if state.global_step == 0:
            self._call(model, optimizer, 0)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self._call(model, optimizer, state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self.recorder is not None:
            self.recorder.finish()
