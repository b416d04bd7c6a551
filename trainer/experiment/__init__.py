"""Experiments: a grid of recipe and training variants, each built, trained over seeds and scored, with a
summary that says which differences exceed the seed noise. `trainer experiment FILE --out DIR` is the command;
see `spec` for the file format, `runner` for the layout of DIR, `report` for the outputs."""
from trainer.experiment.spec import ExperimentError, load_experiment

__all__ = ["ExperimentError", "load_experiment"]
