from pathlib import Path

import pytest

from datakit.recipe import RecipeError, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: r
sources:
  - name: qa_pairs
    path: data/qa.jsonl
    adapter: qa
    columns: {query: question, positive: answer}
steps: []
output: {shard_rows: 100}
"""


def _err(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, Path("r.yaml"))
    return str(info.value)


def test_good_recipe_and_defaults():
    recipe = parse_recipe(GOOD, Path("r.yaml"))
    assert recipe.sources[0].columns == {"query": "question", "positive": "answer"}
    assert recipe.output.shard_rows == 100 and recipe.output.compression == "none"
    assert len(recipe.sha256()) == 64


def test_hash_ignores_key_order_and_formatting_but_not_content():
    a = parse_recipe(GOOD, Path("r.yaml")).sha256()
    reordered = GOOD.replace("output: {shard_rows: 100}", "output:\n  shard_rows: 100")
    assert parse_recipe(reordered, Path("r.yaml")).sha256() == a
    assert parse_recipe(GOOD.replace("100", "101"), Path("r.yaml")).sha256() != a


def test_unknown_key_is_named_with_its_line():
    msg = _err(GOOD.replace("    adapter: qa\n", "    adapter: qa\n    colums: {}\n"))
    assert "r.yaml:6: sources[0].colums: unknown key 'colums'" in msg


def test_wrong_type_names_key_and_line():
    msg = _err(GOOD.replace("shard_rows: 100", "shard_rows: many"))
    assert "r.yaml:8: output.shard_rows" in msg and "integer" in msg


def test_unknown_adapter_option_role_and_step():
    assert "sources[0].adapter" in _err(GOOD.replace("adapter: qa", "adapter: qaa"))
    msg = _err(GOOD.replace("    adapter: qa\n", "    adapter: qa\n    options: {both_orders: true}\n"))
    assert "r.yaml:6: sources[0].options.both_orders: unknown key 'both_orders'" in msg
    msg = _err(GOOD.replace("{query: question, positive: answer}", "{query: question, answer: a}"))
    assert "sources[0].columns.answer: adapter 'qa' has no role 'answer'" in msg
    msg = _err(GOOD.replace("steps: []", "steps:\n  - type: dedupe\n"))
    assert "r.yaml:8: steps[0].type: unknown step type 'dedupe'" in msg
    msg = _err(GOOD.replace("steps: []", "steps:\n  - type: filter\n    min_char: 3\n"))
    assert "r.yaml:9: steps[0].min_char: unknown key 'min_char'" in msg


def test_exactly_one_location_and_unique_names():
    assert "exactly one of path, hf, sql" in _err(GOOD.replace("    path: data/qa.jsonl\n", ""))
    assert "exactly one of path, hf, sql" in _err(GOOD.replace("    path: data/qa.jsonl\n",
                                                                  "    path: a.jsonl\n    sql: SELECT 1\n"))
    two = GOOD.replace("steps: []", "  - {name: qa_pairs, path: b.jsonl, adapter: qa}\nsteps: []")
    assert "two sources are named 'qa_pairs'" in _err(two)


def test_yaml_is_safe_loaded():
    evil = "name: !!python/object/apply:os.system ['echo pwned']\nsources: []\n"
    assert "not valid YAML" in _err(evil)
    assert "not valid YAML" in _err("name: [unclosed\n")
    assert "a recipe is a mapping" in _err("- just\n- a list\n")


def test_load_recipe_resolves_base_dir_and_reports_missing_file(tmp_path):
    (tmp_path / "r.yaml").write_text(GOOD)
    loaded = load_recipe(tmp_path / "r.yaml")
    assert loaded.base_dir == tmp_path.resolve()
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_shipped_recipes_and_training_configs_are_valid():
    from trainer.eval.taskfile import load_task_file
    from trainer.experiment import load_experiment
    from trainer.config import load_config

    from datakit.engines.benchspec import load_bench_spec

    for path in (ROOT / "recipes").rglob("*.yaml"):
        if "out" in path.relative_to(ROOT / "recipes").parts:
            continue  # what a user's run of a shipped recipe wrote
        if path.name.startswith("train-") or path.name == "train.yaml":
            load_config(path)  # training configs live beside the recipes that build their corpus
        elif path.name.startswith("eval") or path.name in ("tasks.yaml", "dev.yaml"):
            load_task_file(path)  # `trainer eval` task files
        elif path.name == "bench.yaml" or path.name.startswith("bench-"):
            load_bench_spec(path)  # `datakit bench build --from-spec`
        elif (path.parent.name == "experiments" and not path.name.startswith("corpus-")) or \
                path.name.startswith("experiment"):
            load_experiment(path)  # every variant resolves and validates
        else:
            load_recipe(path)
    assert load_config(ROOT / "trainer" / "configs" / "qzhou-7b.yaml").data.eta == 0.72
    load_recipe(ROOT / "benchmarks" / "recipes" / "shared_corpus.yaml")
    bench = ROOT / "benchmarks" / "experiments"  # the CPU experiments whose tables are in RESULTS.md
    load_config(bench / "train.yaml")
    load_task_file(bench / "eval.yaml")
    for path in bench.glob("corpus*.yaml"):
        load_recipe(path)
    experiments = list(bench.glob("[0-9]*.yaml"))
    assert len(experiments) >= 5
    for path in experiments:
        load_experiment(path)
