"""One settings system: nested groups that are the components' settings, YAML files with nested mappings,
dotted ``--set``, the old flat keys of saved runs mapped to the groups, one-line errors for every command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from samadapt.cli import app
from samadapt.config import EmbedConfig, EvalConfig, FinetuneConfig, PromiseConfig, ServeConfig
from samadapt.errors import ConfigError
from samadapt.inference.segment_cases import segment_settings
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.models.registry import REGISTRY
from samadapt.models.sam import build_sam, save_sam
from samadapt.prompts.box_noise import BoxNoise
from samadapt.settings import (
    config_to_dict,
    load_config,
    make_config,
    migrate_renamed,
    parse_overrides,
    save_config,
)
from samadapt.training.engine import EngineSettings
from samadapt.training.phpg import PHPGSettings
from samadapt.training.pruning import PruningSettings
from support import OLD_ADAPT_CONFIG, OLD_TRAIN_CONFIG, one_line_error, synthetic_prepared


def test_an_old_flat_train_config_reads_as_the_groups(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_TRAIN_CONFIG)
    config = load_config(FinetuneConfig, path)
    assert config.engine == EngineSettings(steps=4, batch_size=2, lr=1e-3, warmup_steps=2, checkpoint_every=2,
                                           eval_every=3)
    assert config.box_noise == BoxNoise("sam")
    assert config.pruning == PruningSettings("class", min_class_share=0.0)
    assert config.phpg == PHPGSettings(correction_rounds=1, error_head=True)  # as the run was: the head on
    assert (config.data, config.model, config.objective, config.select_model) == ("/data/prepared", "tiny", "phpg",
                                                                                  "best")
    save_config(config, tmp_path / "again.yaml")  # saved again: the groups, and the same settings
    again = yaml.safe_load((tmp_path / "again.yaml").read_text())
    assert again["engine"]["lr"] == 1e-3 and again["pruning"]["policy"] == "class" and "prune_ratio" not in again
    assert load_config(FinetuneConfig, tmp_path / "again.yaml") == config


def test_an_old_flat_adapt_config_keeps_its_engine(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_ADAPT_CONFIG)
    config = load_config(PromiseConfig, path)
    assert config.engine == EngineSettings(steps=4, batch_size=8, lr=1e-3, weight_decay=0.0)
    assert (config.mode, config.multimask_output) == ("apm+ips", True)


def test_migration_moves_old_keys_and_a_new_key_wins():
    renamed = FinetuneConfig.renamed
    assert migrate_renamed({"lr": 1e-4, "pruning": "class", "prune_ratio": 1.0, "objective": "phpg"}, renamed) == {
        "engine": {"lr": 1e-4}, "pruning": {"policy": "class", "ratio": 1.0}, "objective": "phpg"}
    assert migrate_renamed({"steps": 3, "engine": {"steps": 5}}, renamed) == {"engine": {"steps": 5}}
    assert migrate_renamed({"pruning": {"policy": "class"}}, renamed) == {"pruning": {"policy": "class"}}


def test_dotted_overrides_nest_and_a_group_keeps_the_commands_defaults():
    assert parse_overrides(["engine.lr=1e-4", "engine.steps=5", "objective=phpg", "classes=[a, b]"]) == {
        "engine": {"lr": "1e-4", "steps": 5}, "objective": "phpg", "classes": ["a", "b"]}  # YAML 1.1: "1e-4"
    assert load_config(FinetuneConfig, None, parse_overrides(["engine.lr=1e-4"])).engine.lr == 1e-4
    promise = load_config(PromiseConfig, None, parse_overrides(["engine.steps=5"]))
    assert promise.engine == EngineSettings(steps=5, batch_size=8, lr=1e-3, weight_decay=0.0)
    assert load_config(FinetuneConfig, None, {}).engine == EngineSettings()


def test_a_file_with_groups_under_dotted_overrides(tmp_path: Path):
    path = tmp_path / "settings.yaml"
    path.write_text("engine:\n  lr: 1.0e-4\n  steps: 50\nphpg:\n  first_weights: {box_tight: 2, click_centre: 1}\n"
                    "objective: phpg\n")
    config = load_config(FinetuneConfig, path, parse_overrides(["engine.steps=7", "phpg.first_weights={box_loose: 1}"]))
    assert (config.engine.lr, config.engine.steps) == (1e-4, 7)  # the group's other fields stay the file's
    assert config.phpg.first_weights == {"box_loose": 1.0}  # a mapping-valued setting is replaced whole
    assert config.objective == "phpg"


def test_a_config_round_trips_through_yaml(tmp_path: Path):
    config = make_config(FinetuneConfig, {
        "engine": {"steps": 9, "lr": 2e-4}, "pruning": {"policy": "class", "protected_classes": ["lesion"]},
        "box_noise": {"style": "none"}, "lesion_classes": "tumour"})
    assert config.pruning.protected_classes == ("lesion",) and config.lesion_classes == ["tumour"]
    save_config(config, tmp_path / "config.yaml")
    assert load_config(FinetuneConfig, tmp_path / "config.yaml") == config
    assert config_to_dict(config)["engine"]["steps"] == 9


@pytest.mark.parametrize("pairs, message", [
    (["engine.lr=abc"], "options: engine.lr must be a number, got 'abc'"),
    (["engine.lrr=1"], "options: unknown setting(s) engine.lrr; known: engine.steps, engine.batch_size"),
    (["prune_ratio=1"], "options: prune_ratio is now pruning.ratio (--set pruning.ratio=...)"),
    (["box_noise=sam"], "options: box_noise is a group of settings, not one value; set its fields, e.g. --set "
                        "box_noise.style=sam"),
    (["engine.steps=0"], "engine setting steps=0: use an integer >= 1"),
    (["phpg.guidance_mix=2"], "phpg setting guidance_mix=2.0: use a fraction between 0 and 1"),
])
def test_bad_settings_are_one_plain_message(pairs, message):
    with pytest.raises(ConfigError) as caught:
        load_config(FinetuneConfig, None, parse_overrides(pairs))
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("pair", ["engine.lr", "=3", "engine..lr=1", "x=[unclosed"])
def test_malformed_overrides_are_refused(pair):
    with pytest.raises(ConfigError, match=re.escape(f"--set '{pair}'")):
        parse_overrides([pair])


def test_segment_reads_a_file_and_takes_dotted_or_nested_overrides(tmp_path: Path):
    path = tmp_path / "segment.yaml"
    path.write_text("window: liver\npropagation:\n  margin_px: 3\nauto:\n  min_score: 0.4\n")
    settings = segment_settings(None, "ct", {"propagation.min_area": 20}, path)
    assert (settings.window, settings.modality) == ("liver", "CT")
    assert (settings.propagation.margin_px, settings.propagation.min_area, settings.auto.min_score) == (3, 20, 0.4)
    assert segment_settings("abdomen", None, {"propagation": {"margin_px": 1}}, path).window == "abdomen"
    with pytest.raises(ConfigError, match="unknown setting"):  # the axis comes from the prompt file
        segment_settings(overrides={"axis": "coronal"})


def test_the_option_commands_have_settings_classes():
    assert EvalConfig(model="a,b", jitter=[0, 5], protocol=["box", "interactive"]).jitter == "0,5"
    assert EvalConfig(model="a,b").model == ["a", "b"]
    with pytest.raises(ConfigError, match="serve setting port=0"):
        ServeConfig(port=0)
    with pytest.raises(ConfigError, match="embed setting batch_size=0"):
        EmbedConfig(batch_size=0)


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> tuple:
    spec = REGISTRY["test_micro"]
    cases = {cid: (n, (spec.image_size, spec.image_size), False) for cid, n in {"c0": 2, "c1": 3}.items()}
    prepared = synthetic_prepared(tmp_path_factory.mktemp("prepared"), spec.image_size, cases, 0, "settings")
    torch.manual_seed(0)
    return prepared, save_sam(build_sam(spec), spec, tmp_path_factory.mktemp("model") / "micro.pth")


def test_embed_takes_a_config_file_options_and_set(micro, tmp_path: Path):
    prepared, checkpoint = micro
    path = tmp_path / "embed.yaml"
    path.write_text(f"model: {checkpoint}\nbatch_size: 2\nfeatures: false\nout: {tmp_path / 'from_file'}\n")
    result = CliRunner().invoke(app, ["embed", str(prepared.root), "--config", str(path), "--features",
                                      "--set", f"out={tmp_path / 'from_set'}"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "from_file").exists()  # --set wins over the file
    assert EmbeddingCache(tmp_path / "from_set").has_features  # and the option too


@pytest.mark.parametrize("command, args, words", [
    ("embed", ["PREPARED", "--set", "batch_size=0"], ["embed setting batch_size=0"]),
    ("embed", ["PREPARED", "--set", "batchsize=2"], ["unknown setting(s) batchsize"]),
    ("eval", ["PREPARED", "--set", "split=training"], ["eval setting split='training'"]),
    ("eval", ["PREPARED", "--set", "workers=0"], ["--workers 0: give a number of worker processes >= 1"]),
    ("eval", ["PREPARED", "--set", "max_slices=all"], ["--max-slices all: give a number of slices >= 1"]),
    ("serve", ["--set", "port=70000"], ["serve setting port=70000"]),
    ("serve", ["--port", "0"], ["serve setting port=0"]),
    ("train", ["PREPARED", "--out", "OUT", "--set", "engine.lr=-1"], ["engine setting lr=-1"]),
    ("adapt", ["PREPARED", "--out", "OUT", "--set", "engine.batch_size=x"], ["engine setting batch_size='x'"]),
    ("segment", ["PREPARED", "--out", "OUT", "--boxes", "B.json", "--set", "propagation.min_area=abc"],
     ["propagation setting min_area='abc'"]),
    ("prepare", ["PREPARED", "OUT", "--set", "image_size=abc"], ["prepare setting image_size='abc'"]),
])
def test_a_bad_value_for_any_command_is_one_line(micro, tmp_path: Path, command, args, words):
    prepared, _ = micro
    (tmp_path / "B.json").write_text("{}")
    paths = {"PREPARED": str(prepared.root), "OUT": str(tmp_path / "out"), "B.json": str(tmp_path / "B.json")}
    result = CliRunner().invoke(app, [command, *[paths.get(a, a) for a in args]])
    one_line_error(result, *words)
    assert not (tmp_path / "out").exists()


def test_a_bad_setting_in_an_eval_config_file_names_the_file(micro, tmp_path: Path):
    prepared, _ = micro
    path = tmp_path / "eval.yaml"
    path.write_text("seed: -1\n")
    one_line_error(CliRunner().invoke(app, ["eval", str(prepared.root), "--config", str(path)]),
                   f"{path}: eval setting seed=-1")


def _keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key ``--set`` accepts for settings class ``cls``."""
    import dataclasses
    import typing

    from samadapt.settings import group_class

    hints, keys = typing.get_type_hints(cls), set()
    for f in dataclasses.fields(cls):
        if not f.init or not f.metadata.get("setting", True):
            continue
        group = group_class(hints[f.name])
        keys |= _keys(group, f"{prefix}{f.name}.") if group else {prefix + f.name}
    return keys


def test_every_set_key_the_docs_show_is_a_setting():
    """``--set KEY=...`` in the README and docs/: a setting of the command the same line or block runs (of
    any command where none is named)."""
    import re

    from samadapt.config import PrepareConfig, PretrainConfig
    from samadapt.inference.segment_cases import SegmentSettings

    commands = {"train": FinetuneConfig, "adapt": PromiseConfig, "segment": SegmentSettings, "eval": EvalConfig,
                "serve": ServeConfig, "embed": EmbedConfig, "prepare": PrepareConfig, "pretrain": PretrainConfig}
    known = {name: _keys(cls) for name, cls in commands.items()}
    root = Path(__file__).resolve().parents[1]
    checked = 0
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in doc.read_text(encoding="utf-8").splitlines():
            named = re.findall(r"samadapt ([a-z]+)", line)
            allowed = set().union(*(known[c] for c in named if c in known)) or set().union(*known.values())
            for key in re.findall(r"--set ([A-Za-z_][\w.]*)=", line):
                if key in ("key", "group.key") or "KEY" in key:  # the grammar's placeholders
                    continue
                assert key in allowed, f"{doc.name}: --set {key}= is no setting of {named or 'any command'}"
                checked += 1
    assert checked > 20
