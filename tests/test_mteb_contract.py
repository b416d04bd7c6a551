"""The parts of mteb's internals that `trainer/eval` builds on, checked by name and signature: when a new mteb
moves one, this fails naming it (pyproject caps mteb at the newest minor checked here)."""
import importlib
import inspect

import pytest

from trainer.eval.taskfile import SETTINGS

CLASSES = {
    "mteb.abstasks.sts": "AbsTaskSTS", "mteb.abstasks.classification": "AbsTaskClassification",
    "mteb.abstasks.clustering": "AbsTaskClustering", "mteb.abstasks.pair_classification": "AbsTaskPairClassification",
    "mteb.abstasks.retrieval": "AbsTaskRetrieval", "mteb.abstasks.task_metadata": "TaskMetadata",
    "mteb.models.model_meta": "ModelMeta", "mteb.models.abs_encoder": "AbsEncoder",
}
BY_TYPE = {"sts": "AbsTaskSTS", "classification": "AbsTaskClassification", "clustering": "AbsTaskClustering",
           "pair_classification": "AbsTaskPairClassification", "retrieval": "AbsTaskRetrieval",
           "reranking": "AbsTaskRetrieval"}


def _cls(name: str):
    module = next(m for m, c in CLASSES.items() if c == name)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module, name", sorted(CLASSES.items()))
def test_the_classes_we_subclass_or_call_are_where_we_import_them(module, name):
    assert hasattr(importlib.import_module(module), name), f"mteb moved {module}.{name} (trainer/eval imports it)"


def test_the_functions_and_hooks_we_use_keep_their_names_and_signatures():
    import mteb
    from mteb.models.abs_encoder import get_prompt_name  # noqa: F401
    from mteb.models.model_meta import ScoringFunction  # noqa: F401

    for fn in ("evaluate", "get_task", "get_tasks", "get_benchmark", "ResultCache"):
        assert hasattr(mteb, fn), f"mteb.{fn} is gone (trainer/eval calls it)"
    params = list(inspect.signature(_cls("AbsTaskRetrieval").task_specific_scores).parameters)
    assert params == ["self", "scores", "qrels", "results", "hf_split", "hf_subset"], \
        f"AbsTaskRetrieval.task_specific_scores changed ({params}); trainer/eval/local.py replaces it"
    load = inspect.signature(_cls("AbsTaskSTS").load_data).parameters
    assert "num_proc" in load and any(p.kind is p.VAR_KEYWORD for p in load.values()), \
        "AbsTask.load_data changed its signature; trainer/eval/local.py overrides it"


@pytest.mark.parametrize("task_type", sorted(SETTINGS))
def test_every_setting_a_task_file_may_override_is_an_attribute_of_the_mteb_class(task_type):
    cls = _cls(BY_TYPE[task_type])
    missing = [name for name in SETTINGS[task_type] if not hasattr(cls, name)]
    assert not missing, f"{cls.__name__} no longer has {missing} (task files' `settings:` set them)"
