"""Training config: YAML + dotted overrides, type coercion, and validation messages that name the key."""
import pytest
import yaml

from prepo.config import ConfigError, TrainConfig, load_config, save_config


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == TrainConfig()
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "selection": {"strategy": "ppl", "k": 3, "num_candidates": 15},
        "optim": {"lr": 2.0e-5},
        "data": {"tiers": ["add1", "add2"]},
    }))
    cfg = load_config(path, ["selection.strategy=random", "optim.lr=3e-6", "rollout.group_size=4",
                             "run.progress=false", "data.system_prompt=null", "data.tiers=[sub1]",
                             "eval.max_new_tokens=12", "data.fields={prompt_field: problem}"])
    assert cfg.selection.strategy == "random" and cfg.selection.k == 3 and cfg.selection.num_candidates == 15
    assert cfg.optim.lr == 3e-6 and isinstance(cfg.optim.lr, float)     # YAML would read "3e-6" as a string
    assert cfg.rollout.group_size == 4 and isinstance(cfg.rollout.group_size, int)
    assert cfg.run.progress is False
    assert cfg.data.system_prompt is None
    assert cfg.data.tiers == ["sub1"]
    assert cfg.eval.max_new_tokens == 12
    assert cfg.data.fields == {"prompt_field": "problem"}
    # comma lists work too, and string values stay strings
    cfg = load_config(None, ["data.tiers=add1, mul2", "run.name=12"])
    assert cfg.data.tiers == ["add1", "mul2"] and cfg.run.name == "12"


@pytest.mark.parametrize("override, key", [
    ("selection.nope=1", "selection.nope"),
    ("nope.k=1", "nope.k"),
    ("model.name_or_path.x=1", "model.name_or_path.x"),
])
def test_unknown_key_lists_valid_keys(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert key in msg and "valid keys" in msg
    if override.startswith("selection."):
        assert "selection.strategy" in msg and "selection.num_candidates" in msg


@pytest.mark.parametrize("text, pattern", [
    ("rollout:\n  group_size: 4\n  temprature: 0.7\n", r"rollout\.temprature.*valid keys: .*rollout\.temperature"),
    ("rollouts:\n  group_size: 4\n", r"rollouts.*valid keys: .*run\.steps"),
    ("run:\n  name: [a, b]\n", r"run\.name: expected a string"),
    ("optim: 3\n", r"optim: expected a mapping"),
    ("- a\n- b\n", "mapping at the top level"),
])
def test_bad_yaml_rejected(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, pattern", [
    ("selection.k=30", r"selection\.k: K=30 is larger than the candidate batch \|B\|=20"),
    ("selection.strategy=best", r"selection\.strategy: must be one of"),
    ("optim.lr=-1", r"optim\.lr: must be > 0"),
    ("optim.lr=fast", r"optim\.lr: cannot read 'fast'"),
    ("rollout.group_size=2.5", r"rollout\.group_size: cannot read"),
    ("rollout.temperature=0", r"rollout\.temperature: must be > 0"),
    ("run.progress=perhaps", r"run\.progress: expected true or false"),
    ("algorithm.weighting=tokens", r"algorithm\.weighting: must be one of"),
    ("algorithm.loss_aggregation=sum", r"algorithm\.loss_aggregation"),
    ("selection.greso_p_easy=1.5", r"selection\.greso_p_easy: must be in \[0, 1\]"),
    ("data.score_span=all", r"data\.score_span"),
    ("data.fields={question: q}", r"data\.fields: unknown key"),
    ("run.steps=0", r"run\.steps: must be >= 1"),
    ("run.seed=null", r"run\.seed: cannot read 'null'"),
    ("selection=ppl", r"'selection' is a section"),
    ("selection.k", r"expected key=value"),
])
def test_bad_values_rejected(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_cross_section_combinations():
    with pytest.raises(ConfigError, match=r"rollout\.group_size: strategy 'dynamic'.*G >= 2"):
        load_config(None, ["selection.strategy=dynamic", "rollout.group_size=1"])
    with pytest.raises(ConfigError, match=r"data\.prompt_template"):
        load_config(None, ["data.prompt_template=Solve it"])
    with pytest.raises(ConfigError, match=r"algorithm\.skip_zero_advantage"):
        load_config(None, ["algorithm.skip_zero_advantage=true", "algorithm.kl_coef=0.1"])
    assert load_config(None, ["selection.k=20"]).selection.k == 20  # K == |B| is allowed


def test_demo_config_is_valid():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(demo)
    assert cfg.selection.strategy == "ppl" and cfg.algorithm.weighting != "none"
    assert cfg.data.train == "arith"
