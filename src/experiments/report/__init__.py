"""Job outputs: results and embedding tables, figures and the printed summary."""

from experiments.report.embedding import embed_keys
from experiments.report.figures import boxplot_figure, tsne_figure
from experiments.report.summary import summary_text
from experiments.report.tables import read_metadata, write_parquet

__all__ = ["embed_keys", "boxplot_figure", "tsne_figure", "summary_text", "read_metadata", "write_parquet"]
