"""Figures of a results folder (matplotlib, optional): learning curves, per-node scatter and
gains, the metric against node size, and MOCHA's task correlations, as PNG and PDF.

`plot_results(folder)` writes them into `folder / "plots"`; `figures(folder)` yields them as
matplotlib `Figure`s (for a notebook). Nothing here switches matplotlib's global backend:
figures are drawn on `matplotlib.figure.Figure` and saved through Agg (PNG) or the PDF backend.
Reading the folder is in `reading`, what every figure shares in `style`, the figures in
`curves`, `per_node` and `heatmap`, writing them in `writing`.
"""

from fedmtl.plots.curves import curves_figure
from fedmtl.plots.heatmap import heatmap_figure, relationship_heatmap
from fedmtl.plots.per_node import best_personalized, gains_figure, scatter_figure, size_figure
from fedmtl.plots.reading import PlotError, Run, load
from fedmtl.plots.style import available, gain
from fedmtl.plots.writing import figures, plot_results, remove_figures

__all__ = ["PlotError", "Run", "available", "best_personalized", "curves_figure", "figures",
           "gain", "gains_figure", "heatmap_figure", "load", "plot_results",
           "relationship_heatmap", "remove_figures", "scatter_figure", "size_figure"]
