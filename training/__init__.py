"""TAGS training package: datasets, training, evaluation and export of the model folder."""
