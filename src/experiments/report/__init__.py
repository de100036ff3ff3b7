"""Job outputs: results and embedding tables, figures and the printed summary."""

from experiments.report.embedding import embed_keys, embedding_rows
from experiments.report.figures import MIN_PROFILE_LAYERS, boxplot_figure, depth_profile_figure, tsne_figure
from experiments.report.summary import summary_text
from experiments.report.tables import read_metadata, write_parquet

__all__ = ["embed_keys", "embedding_rows", "boxplot_figure", "depth_profile_figure", "tsne_figure",
           "MIN_PROFILE_LAYERS", "summary_text", "read_metadata", "write_parquet"]
