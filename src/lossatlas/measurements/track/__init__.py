"""Measurements taken *during* training, as callbacks of :func:`lossatlas.train` and of a
:class:`~lossatlas.batteries.runs.Recorder` in one's own loop.

A callback is any object with ``on_step(recorder, model, optimizer, *, step, lr, **state)``;
``recorder.step(model, optimizer)`` calls it after every optimizer update (``step`` counts the
updates applied, 0 before the first), and it appends rows to a table of the run with
``recorder.log(name, row)``; ``run.track(name)`` reads the columns back.

>>> import torch, lossatlas as la
>>> X, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
>>> model = torch.nn.Linear(3, 2)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> rec = la.Recorder(None, model, callbacks=[la.track.Sharpness(every=2, data=(X, y))])
>>> rec.step(model, opt, step=0)
>>> for _ in range(4):
...     opt.zero_grad(); torch.nn.functional.cross_entropy(model(X), y).backward(); opt.step()
...     rec.step(model, opt)
>>> rec.finish().track("sharpness")["step"].tolist()
[0.0, 2.0, 4.0]
"""

from lossatlas.batteries.tables import columns, read_table
from lossatlas.measurements.track.preconditioner import adam_preconditioner, adam_threshold
from lossatlas.measurements.track.sharpness import Sharpness, stability_threshold
from lossatlas.measurements.track.spec import parse

__all__ = [
    "Sharpness",
    "adam_preconditioner",
    "adam_threshold",
    "columns",
    "parse",
    "read_table",
    "stability_threshold",
]
