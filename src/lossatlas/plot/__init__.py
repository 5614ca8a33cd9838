"""Figures: matplotlib (PNG/PDF), plotly HTML and ParaView ``.vtp`` exports of results."""

from lossatlas.plot import blocks as blocks
from lossatlas.plot import connect as connect
from lossatlas.plot import hessian as hessian
from lossatlas.plot import phases as phases
from lossatlas.plot import shapes as shapes
from lossatlas.plot import tracking as tracking
from lossatlas.plot import training as training
from lossatlas.plot import trajectory as trajectory
from lossatlas.plot.interactive import to_html as to_html
from lossatlas.plot.landscape import plot_curve as plot_curve
from lossatlas.plot.landscape import plot_result as plot_result
from lossatlas.plot.landscape import plot_surface as plot_surface
from lossatlas.plot.vtp import to_vtp as to_vtp
