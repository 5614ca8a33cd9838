"""A PyTorch Lightning callback that records a tracker's table (optional extra ``lightning``).

Use::

    from lossatlas.measurements.track.lightning import TrackerCallback
    cb = TrackerCallback(la.track.Sharpness(every=10, data=(X, y)), out="run/lossatlas")
    lightning.Trainer(max_epochs=5, callbacks=[cb]).fit(module, loader)
    la.load_run("run/lossatlas").track("sharpness")

``step`` is ``trainer.global_step`` (optimizer updates applied), measured at the start of
training (step 0) and after every batch whose update the tracker asks for. The measured model
is the ``LightningModule`` itself: its ``forward`` must give the output the tracker's ``loss``
takes (``loss=`` any callable ``loss(output, target)``, default cross-entropy); ``lr`` is the
first optimizer's current rate, and an Adam/AdamW first optimizer gets the preconditioned
sharpness.
"""

from __future__ import annotations

import os
from typing import Any

from lossatlas.batteries.runs import Recorder
from lossatlas.core.errors import LossAtlasError

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the optional extra is missing: TrackerCallback says so when built
    Callback = object

__all__ = ["TrackerCallback"]


class TrackerCallback(Callback):
    """Run ``tracker`` (e.g. :class:`la.track.Sharpness`) inside ``Trainer.fit``; its
    table goes to the run folder ``out`` (default ``<default_root_dir>/lossatlas``)."""

    def __init__(self, tracker: Any, out: str | os.PathLike | None = None):
        if Callback is object:
            raise LossAtlasError(
                "TrackerCallback needs lightning; pip install 'lossatlas[lightning]'"
            )
        self.tracker, self.out = tracker, out
        self.recorder: Recorder | None = None
        self._last = -1

    def _call(self, trainer, module) -> None:
        step = int(trainer.global_step)
        if step == self._last:  # gradient accumulation: no update since the last call
            return
        self._last = step
        opts = trainer.optimizers
        opt = getattr(opts[0], "optimizer", opts[0]) if opts else None
        lr = float(opt.param_groups[0]["lr"]) if opt is not None else None
        self.tracker.on_step(self.recorder, module, opt, step=step, lr=lr)

    def on_train_start(self, trainer, pl_module) -> None:
        out = self.out if self.out is not None else os.path.join(trainer.default_root_dir,
                                                                 "lossatlas")
        self.recorder = Recorder(out, pl_module, every=None,
                                 info={"source": "lightning.Trainer"}, overwrite=True)
        self._call(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._call(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self.recorder.finish()
