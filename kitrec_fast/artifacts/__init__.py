"""Run directories, plots, model cards, export and Hub upload."""
