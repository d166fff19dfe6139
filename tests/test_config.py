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


def _laughs(levels: int) -> str:
    """A YAML "billion laughs": each anchor a list of nine aliases of the one before (9**levels leaves)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, pattern", [
    ("run:\n  seed: 3\nrun:\n  steps: 5\n", r"malformed YAML at line 3, column 1: duplicate key 'run' \(first at line 1\)"),
    ("run:\n  seed: 3\n  seed: 4\n", r"at line 3, column 3: duplicate key 'seed' \(first at line 2\)"),
    (_laughs(9), r"expands to more than 10000 values"),
    ("run:\n  seed: &s [1, *s]\n", r"nested deeper than 32 levels"),  # an alias inside itself
    ("run:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(10_000)), r"nested deeper than 32 levels"),
    ("run:\n  seed: " + "7" * 100_000 + "\n", r"Exceeds the limit \(4300 digits\)"),
])
def test_hostile_yaml_is_one_line_and_quick(tmp_path, text, pattern):
    import time

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert time.perf_counter() - start < 10  # the alias bomb took minutes in OmegaConf; refused in milliseconds
    assert str(err.value).startswith(f"config file '{path}': ") and "\n" not in str(err.value)
    assert len(str(err.value)) < 300


def test_a_huge_override_value_is_cut_in_the_message():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run.seed=" + "7" * 100_000])
    assert str(err.value) == "run.seed: cannot read '" + "7" * 59 + "... (100002 characters) as int"


def test_a_fifo_config_is_refused(tmp_path):
    import os

    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(fifo)


@pytest.mark.parametrize("override, pattern", [
    ("selection.k=30", r"selection\.k: K=30 is larger than the candidate batch \|B\|=20"),
    ("selection.strategy=best", r"selection\.strategy: must be one of"),
    ("optim.lr=-1", r"optim\.lr: must be > 0"),
    ("optim.lr=fast", r"optim\.lr: cannot read 'fast'"),
    ("rollout.group_size=2.5", r"rollout\.group_size: cannot read"),
    ("rollout.temperature=0", r"rollout\.temperature: must be >= 0\.01"),
    ("rollout.temperature=1e-38", r"rollout\.temperature: must be >= 0\.01 \(logits / T overflow below it\), got 1e-38"),
    ("eval.temperature=0.001", r"eval\.temperature: must be 0 \(greedy\) or >= 0\.01"),
    ("data.tiers={a: 1}", r"^data\.tiers: expected a list, got \{'a': 1\}$"),
    ("run.report_to={a: 1}", r"^run\.report_to: expected a list"),
    ("data.fields=[a,b]", r"^data\.fields: expected a mapping, got \['a', 'b'\]$"),
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
    with pytest.raises(ConfigError, match=r"rollout\.group_size: must be >= 2, got 1 \(advantages are relative"):
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


@pytest.mark.parametrize("override", [
    "optim.lr=inf", "optim.lr=nan", "optim.lr=-inf", "optim.weight_decay=inf", "optim.adam_eps=inf",
    "optim.max_grad_norm=inf", "optim.adam_beta1=nan", "rollout.temperature=inf", "rollout.temperature=nan",
    "rollout.top_p=nan", "algorithm.eps_high=inf", "algorithm.eps_low=nan", "algorithm.kl_coef=inf",
    "eval.temperature=inf", "selection.greso_p_easy=nan", "selection.greso_step=inf",
])
def test_every_float_is_finite(override):
    key = override.split("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got (inf|-inf|nan)$"):
        load_config(None, [override])


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "a\\b", "/abs"])
def test_run_name_is_one_plain_folder_name(name):
    with pytest.raises(ConfigError, match=r"^run\.name: must be one plain folder name"):
        load_config(None, [f"run.name={name}"])
    assert load_config(None, ["run.name=my-run_2.b"]).run.name == "my-run_2.b"


def test_group_size_one_is_refused():
    with pytest.raises(ConfigError, match=r"^rollout\.group_size: must be >= 2, got 1 .*every advantage is 0"):
        load_config(None, ["rollout.group_size=1"])
    assert load_config(None, ["rollout.group_size=2"]).rollout.group_size == 2


def test_unknown_tiers_and_engine_are_named():
    with pytest.raises(ConfigError, match=r"^data\.tiers: unknown tier\(s\) \['foo'\]; known: \['add1'"):
        load_config(None, ["data.tiers=[foo]"])
    with pytest.raises(ConfigError, match=r"^data\.tiers: must not be empty"):
        load_config(None, ["data.tiers=[]"])
    with pytest.raises(ConfigError, match=r"^rollout\.engine: unknown engine 'nope'; known: \['hf'"):
        load_config(None, ["rollout.engine=nope"])


@pytest.mark.parametrize("text, pattern", [
    ("run:\n  name: [a, b\n", r"malformed YAML at line 3, column 1: expected ',' or ']'"),
    ("run:\n\tsteps: 3\n", r"malformed YAML at line 2, column 1: found character '\\t'"),
    ("a: b: c\n", r"malformed YAML at line 1, column 5: mapping values are not allowed here"),
])
def test_malformed_yaml_is_one_line(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_non_utf8_config_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml'?: not UTF-8 text"):
        load_config(path)


def test_resume_changes_name_the_differing_keys():
    from prepo.config import resume_changes

    saved = load_config(None, ["run.steps=3", "run.seed=1"]).to_dict()
    assert resume_changes(saved, load_config(None, ["run.steps=3", "run.seed=1", "run.threads=2",
                                                    "run.progress=false", "run.save_every=1"])) == []
    for override, key in [("run.seed=2", "run.seed"), ("rollout.group_size=4", "rollout.group_size"),
                          ("optim.lr=1e-5", "optim.lr"), ("selection.strategy=greso", "selection.strategy"),
                          ("run.steps=5", "run.steps")]:
        cfg = load_config(None, ["run.steps=3", "run.seed=1", override])
        with pytest.raises(ConfigError, match=rf"^--resume: the config differs from the checkpoint's in {key} "):
            resume_changes(saved, cfg)
    # the flag allows the keys that the checkpoint's state does not depend on, by full or short name
    cfg = load_config(None, ["run.steps=5", "run.seed=1", "optim.lr=1e-5"])
    assert resume_changes(saved, cfg, ["steps", "optim.lr"]) == ["optim.lr (1e-06 -> 1e-05)", "run.steps (3 -> 5)"]
    with pytest.raises(ConfigError, match=r"run\.steps \(3 -> 5\); resume .*--allow-config-change run\.steps"):
        resume_changes(saved, cfg, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"selection\.strategy \('ppl' -> 'greso'\).*cannot change"):
        resume_changes(saved, load_config(None, ["run.steps=3", "run.seed=1", "selection.strategy=greso"]),
                       ["selection.strategy"])
    with pytest.raises(ConfigError, match=r"'nope' is not a config key"):
        resume_changes(saved, cfg, ["nope"])


def test_base_files_merge_section_by_section(tmp_path):
    """`base: other.yaml` (relative to the file) is read first; mappings merge key by key, lists are replaced."""
    (tmp_path / "base.yaml").write_text("optim: {lr: 1.0e-6, weight_decay: 0.5}\ndata: {tiers: [add1, add2]}\n")
    (tmp_path / "sub").mkdir()
    derived = tmp_path / "sub" / "run.yaml"
    derived.write_text("base: ../base.yaml\noptim: {lr: 2.0e-5}\ndata: {tiers: [mul1]}\n")
    cfg = load_config(derived, ["optim.weight_decay=0.25"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.tiers) == (2e-5, 0.25, ["mul1"])
    derived.write_text("base: run.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(derived)


def test_values_are_taken_literally(tmp_path, monkeypatch):
    """An untrusted config never reads the environment or other keys: ${...} stays text, and only a string key may
    hold it; YAML tags that would build objects are refused by the safe loader."""
    monkeypatch.setenv("PREPO_SECRET", "s3cret")
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  system_prompt: 'x ${oc.env:PREPO_SECRET} ${run.name}'\n")
    cfg = load_config(path, ["data.prompt_template=Compute ${question}$"])
    assert cfg.data.system_prompt == "x ${oc.env:PREPO_SECRET} ${run.name}"
    assert cfg.data.prompt_template == "Compute ${question}$"
    with pytest.raises(ConfigError, match=r"^run\.steps: cannot read '\$\{oc.env:PREPO_SECRET\}' as int$"):
        load_config(None, ["run.steps=${oc.env:PREPO_SECRET}"])
    path.write_text("run: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_clip_bounds_eps_low_one_is_refused():
    """eps_low = 1 would let the ratio's lower clip reach 0 (1 - eps_low): refused; just below 1 is allowed."""
    for value in ("1", "1.0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="algorithm.eps_low"):
            load_config(None, [f"algorithm.eps_low={value}"])
    assert load_config(None, ["algorithm.eps_low=0.999"]).algorithm.eps_low == 0.999
    assert load_config(None, ["algorithm.eps_low=0"]).algorithm.eps_low == 0.0


@pytest.mark.parametrize("override", ["data.seed=5", "data.train_size=77", "data.tiers=[add1]", "run.seed=9",
                                      "selection.strategy=random"])
def test_resume_refuses_a_changed_data_key_even_when_allowed(override):
    """The checkpoint's sampler positions index the training set it was built from: a changed data.seed (or any
    fixed key) is refused on --resume even when --allow-config-change names it."""
    from prepo.config import resume_changes

    saved = load_config(None, ["run.steps=3"]).to_dict()
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key} .*cannot change"):
        resume_changes(saved, load_config(None, ["run.steps=3", override]), [key])


def test_base_chains_resolve_relative_to_each_file(tmp_path):
    """A chain of three files in three folders: each ``base:`` is relative to the file that names it, the nearest
    file wins key by key; a loop through two files and a missing base are one line naming the file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "root.yaml").write_text("optim: {lr: 1.0e-6, weight_decay: 0.5}\nrun: {steps: 7, seed: 1}\n")
    (tmp_path / "a" / "mid.yaml").write_text("base: ../root.yaml\noptim: {lr: 3.0e-6}\nrun: {seed: 2}\n")
    leaf = tmp_path / "a" / "b" / "leaf.yaml"
    leaf.write_text("base: ../mid.yaml\nrun: {seed: 3}\n")
    cfg = load_config(leaf)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.run.steps, cfg.run.seed) == (3e-6, 0.5, 7, 3)
    assert load_config(leaf, ["run.seed=4"]).run.seed == 4  # overrides come last
    (tmp_path / "root.yaml").write_text("base: a/b/leaf.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(leaf)
    (tmp_path / "a" / "mid.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"config file '.*nowhere\.yaml' does not exist"):
        load_config(leaf)
    (tmp_path / "root.yaml").write_text("run: {steps: 7}\n")
    (tmp_path / "a" / "mid.yaml").write_text("base: ../root.yaml\nrun: {sed: 2}\n")  # a typo in a base is named
    with pytest.raises(ConfigError, match=r"^unknown config key\(s\) run\.sed; valid keys: run\.name"):
        load_config(leaf)


@pytest.mark.parametrize("override, key, expected", [
    ("run.name=12", "run.name", "12"),                      # a string key keeps the text
    ("optim.lr=1e-5", "optim.lr", 1e-5),                    # YAML 1.1 would read 1e-5 as a string
    ("optim.lr=2", "optim.lr", 2.0),
    ("run.progress=no", "run.progress", False),
    ("run.steps=0x10", "run.steps", 16),
    ("data.system_prompt=", "data.system_prompt", None),   # nothing after '=': null where null is allowed ...
    ("data.tiers=", "data.tiers", None),
    ("run.report_to=", "run.report_to", []),               # ... else empty
    ("run.report_to=tensorboard", "run.report_to", ["tensorboard"]),
    ("data.tiers=add1,mul2", "data.tiers", ["add1", "mul2"]),
    ("data.tiers=sub1", "data.tiers", ["sub1"]),
    ("data.tiers=null", "data.tiers", None),
    ("data.system_prompt=Answer with a number, nothing else.", "data.system_prompt",
     "Answer with a number, nothing else."),
    ("data.prompt_template=Q: {question} = ?", "data.prompt_template", "Q: {question} = ?"),
    ("eval.max_new_tokens=null", "eval.max_new_tokens", None),
])
def test_override_values_are_typed_by_the_key(override, key, expected):
    section, name = key.split(".")
    value = getattr(getattr(load_config(None, [override]), section), name)
    assert value == expected and type(value) is type(expected)


def test_mappings_take_dotted_keys_and_sections():
    from prepo.config import TrainConfig
    from prepo.structured import build

    cfg = build(TrainConfig, {"optim": {"lr": 1e-5, "weight_decay": 0.1}}, {"optim.lr": 2e-5, "run.steps": 3})
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.run.steps) == (2e-5, 0.1, 3)
    assert build(TrainConfig, {"run": None}) == TrainConfig()  # an empty section keeps the defaults
    with pytest.raises(ConfigError, match=r"^unknown config key\(s\) optim\.lrr; valid keys: optim\.lr"):
        build(TrainConfig, {"optim.lrr": 1})


@pytest.mark.parametrize("text", ["a\\${x}", "a\\\\${x}", "${", "$ {x} }", "\\", "${a:${b}}", "${{x}}$"])
def test_strings_with_dollars_and_backslashes_stay_verbatim(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"system_prompt": text, "tiers": [f"add1{text}"]}}))
    with pytest.raises(ConfigError, match=r"data\.tiers: unknown tier"):
        load_config(path)
    path.write_text(yaml.safe_dump({"data": {"system_prompt": text}}))
    assert load_config(path).data.system_prompt == text
    assert load_config(None, [f"data.system_prompt={text}"]).data.system_prompt == text
