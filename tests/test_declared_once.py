"""Each job's settings are declared once, in its config dataclass: the command's options are
built from the fields, the recipe step inherits them, and an error the library raises about a
key reads as the flag on the command line and as the key in a recipe.

These tests fail when a field is added to a config but not reachable from the command or the
step, or when a default or a range is declared a second time and drifts.
"""

from __future__ import annotations

import dataclasses
import typing

import click
import pytest
from click.testing import CliRunner

from curate.cli.options import flag
from curate.core.config import unwrap_optional
from curate.recipe import build_config, check_value


def _options(command: click.Command) -> dict[str, click.Parameter]:
    """A command's parameters by name (the config key, for options built from a config)."""
    return {p.name: p for p in command.params}


def assert_command_has_fields(command, cls, *, elsewhere=(), exclude=()):
    """Every field of config ``cls`` is an option of ``command`` under its key, with the flag
    of the one key -> flag table and the field's default (``elsewhere``: keys given otherwise,
    e.g. as an argument)."""
    params = _options(command)
    missing = []
    for f in dataclasses.fields(cls):
        if f.name in elsewhere or f.name in exclude:
            continue
        p = params.get(f.name)
        if p is None or flag(f.name) not in p.opts:
            missing.append(f.name)
            continue
        default = p.default
        if isinstance(p.type, click.Choice) and default is not None:
            default = type(f.default)(default) if f.default is not None else default
        if f.default is not dataclasses.MISSING and not p.multiple:
            want = f.default
            if isinstance(want, tuple) and not isinstance(default, tuple):
                default = p.process_value(click.Context(command), p.default)
            assert default == want, f"{f.name}: option default {p.default!r}, field {want!r}"
    assert not missing, f"{command.name}: no option for {missing}"


def assert_step_has_fields(step_cls, cls, *, own_default=("seed",)):
    """The step inherits every field of config ``cls`` with the same type and default (the
    ``own_default`` ones may default to the recipe's value, None)."""
    assert issubclass(step_cls, cls)
    step_fields = {f.name: f for f in dataclasses.fields(step_cls)}
    hints, step_hints = typing.get_type_hints(cls), typing.get_type_hints(step_cls)
    for f in dataclasses.fields(cls):
        s = step_fields[f.name]
        if f.name in own_default:
            assert s.default is None and unwrap_optional(step_hints[f.name])[0] == hints[f.name]
            continue
        assert s.default == f.default and step_hints[f.name] == hints[f.name], f.name


def assert_recipe_takes_fields(step_cls, cls, path="steps[1].x"):
    """Each config key is a recipe key of the step, and its default passes the recipe's type
    check (so a value that `--help` shows can be written in a recipe)."""
    hints = typing.get_type_hints(step_cls)
    for f in dataclasses.fields(cls):
        problems: list[str] = []
        value = f.default if f.default is not dataclasses.MISSING else None
        check_value(value, hints[f.name])
        build_config(step_cls, {f.name: value}, path, problems)
        assert not [p for p in problems if "unknown key" in p], problems


# ------------------------------------------------------------------------------------ audit


def test_audit_settings_are_declared_once():
    from curate.audit.settings import AuditConfig, AuditSettings
    from curate.cli.audit import audit
    from curate.steps.audit import Audit

    assert issubclass(AuditConfig, AuditSettings)
    assert_command_has_fields(audit, AuditConfig, elsewhere=("model",))
    assert "model_dir" in _options(audit)  # model is the command's MODEL_DIR argument
    assert_step_has_fields(Audit, AuditConfig)
    assert_recipe_takes_fields(Audit, AuditConfig, "steps[1].audit")
    # the settings audit.json records are the AuditSettings part of the step's config
    settings = Audit(oracle=True, k=7).audit_config(recipe_seed=5).settings()
    assert type(settings) is AuditSettings and settings.k == 7 and settings.seed == 5


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    return digits_runs(24)


def test_an_audit_error_names_the_flag_in_the_cli_and_the_key_in_a_recipe(digits_run, tmp_path):
    from curate.cli.audit import audit
    from curate.errors import UsageError
    from curate.runner import compute_step
    from curate.steps.audit import Audit
    from curate.steps.base import RunContext
    from curate.table import read_table

    # the oracle is unconditional: classifier-free guidance needs a text model
    args = ["--oracle", "--train", str(digits_run), "--out", str(tmp_path / "a"), "--quiet"]
    args += ["--resolution", "8", "--num-samples", "4", "--steps", "2", "--guidance-scale", "2"]
    res = CliRunner().invoke(audit, args)
    assert res.exit_code == 2 and "--guidance-scale: needs a text-conditional model" in res.output

    step = Audit(oracle=True, resolution=8, num_samples=4, steps=2, guidance_scale=2.0)
    ctx = RunContext(run_dir=digits_run, quiet=True, step_dir=tmp_path / "step")
    with pytest.raises(UsageError, match=r"^guidance_scale: needs a text-conditional model"):
        compute_step(step, read_table(digits_run), ctx)


# ----------------------------------------------------------------------------------- sample


def test_sample_settings_are_declared_once():
    from curate.cli.model import sample
    from curate.generate import SampleConfig

    assert_command_has_fields(sample, SampleConfig, elsewhere=("model",))
    assert _options(sample)["prompts"].opts == ["--prompt"] and _options(sample)["prompts"].multiple
    assert _options(sample)["model"].param_type_name == "argument"


def test_a_sample_error_names_flags_in_the_cli_and_keys_in_the_library(tmp_path):
    from curate.cli.model import sample
    from curate.errors import UsageError
    from curate.generate import SampleConfig, generate_job

    config = SampleConfig(prompts=("a",), prompts_from=str(tmp_path))
    with pytest.raises(UsageError, match=r"^prompts/prompts_from: give either, not both"):
        generate_job(config, tmp_path / "s")
    args = ["digits-tiny", "--out", str(tmp_path / "s"), "--prompt", "a"]
    res = CliRunner().invoke(sample, [*args, "--prompts-from", str(tmp_path)])
    assert res.exit_code == 2 and "--prompt/--prompts-from: give either, not both" in res.output
    with pytest.raises(UsageError, match=r"^embedding_noise needs a text model; digits-tiny"):
        generate_job(SampleConfig(num=2, steps=2, embedding_noise=0.5), tmp_path / "t")


# ------------------------------------------------------------------------------------- rank


def test_rank_settings_are_declared_once():
    from curate.cli.rank import rank
    from curate.rank.config import RankConfig
    from curate.steps.rank import Rank

    assert_command_has_fields(rank, RankConfig)
    assert_step_has_fields(Rank, RankConfig, own_default=())
    assert_recipe_takes_fields(Rank, RankConfig, "steps[1].rank")
    assert "shard" in _options(rank) and "shard_size" in _options(rank)  # both kept


def test_a_rank_error_names_the_flag_in_the_cli_and_the_key_in_a_recipe(digits_run):
    from curate.cli.rank import rank
    from curate.errors import RecipeError
    from curate.recipe import parse_recipe

    res = CliRunner().invoke(rank, ["--dataset", str(digits_run), "--axes", "2", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "--axes/--ode-steps: fd and jvp are one-axis, one-step; use --estimator frame" in (
        res.output
    )
    raw = {"dataset": "builtin:digits", "steps": [{"rank": {"axes": 2}}]}
    with pytest.raises(RecipeError, match=r"steps\[1\]\.rank\.axes/ode_steps: fd and jvp"):
        parse_recipe(raw)


# ------------------------------------------------------------------------------------ dedup


def test_dedup_settings_are_the_step_fields():
    from curate.cli.dedup import _own_defaults, _shared
    from curate.cli.dedup import run as dedup_run
    from curate.steps.dedup import DedupCaptions, DedupImages

    own = _own_defaults()
    assert set(own) == {"calibration_sample", "background_sample", "report_groups"}
    for cls in (DedupImages, DedupCaptions):
        assert_command_has_fields(dedup_run, cls, elsewhere=("tiers",), exclude=own)
        assert_recipe_takes_fields(cls, cls, f"steps[1].{cls.name}")
    params = _options(dedup_run)
    assert all(params[k].default is None for k in own)  # each step's own default
    assert params["images"].default == ",".join(DedupImages().tiers)
    assert params["captions"].default == ",".join(DedupCaptions().tiers)
    # a setting of both steps is one option: its help and type are the same in both
    images = {f.name: f for f in dataclasses.fields(DedupImages)}
    hints_i, hints_c = typing.get_type_hints(DedupImages), typing.get_type_hints(DedupCaptions)
    for f in dataclasses.fields(DedupCaptions):
        if f.name in _shared():
            assert f.metadata == images[f.name].metadata or f.name in own, f.name
            assert hints_c[f.name] == hints_i[f.name], f.name


def test_a_dedup_error_names_the_flag_in_the_cli_and_the_key_in_a_recipe(digits_run):
    from curate.cli.dedup import run as dedup_run
    from curate.errors import RecipeError
    from curate.recipe import parse_recipe

    res = CliRunner().invoke(dedup_run, [str(digits_run), "--keep", "tallest", "--quiet"])
    assert res.exit_code == 2 and "--keep" in res.output and "keep:" not in res.output
    raw = {"dataset": "builtin:digits", "steps": [{"dedup_images": {"keep": "tallest"}}]}
    with pytest.raises(RecipeError, match=r"steps\[1\]\.dedup_images\.keep: "):
        parse_recipe(raw)


def test_dedup_calibrate_settings_are_declared_once():
    from curate.cli.dedup import _EMBEDDER_KEYS
    from curate.cli.dedup import calibrate as dedup_calibrate
    from curate.dedup.calibrate import CalibrateConfig
    from curate.steps.dedup import DedupImages

    assert_command_has_fields(dedup_calibrate, CalibrateConfig)
    # the embedder models are the dedup_images step's fields: one declaration, one default
    images = {f.name: f for f in dataclasses.fields(DedupImages)}
    step_fields = dataclasses.make_dataclass(
        "EmbedderFields", [(k, object, images[k]) for k in _EMBEDDER_KEYS]
    )
    assert_command_has_fields(dedup_calibrate, step_fields)
    params = _options(dedup_calibrate)
    for key in _EMBEDDER_KEYS:
        assert images[key].metadata["help"] in params[key].help, key
    own = {"run_dir", "out", "device", "seed", "quiet"}
    fields = {f.name for f in dataclasses.fields(CalibrateConfig)} | set(_EMBEDDER_KEYS)
    assert set(params) == fields | own  # no option declared by hand beside them


def test_a_calibrate_error_names_the_flag_in_the_cli_and_the_key_in_the_library(digits_run):
    from curate.cli.dedup import calibrate as dedup_calibrate
    from curate.dedup.calibrate import CalibrateConfig, calibrate_run
    from curate.errors import UsageError

    res = CliRunner().invoke(dedup_calibrate, [str(digits_run), "--tiers", "sift", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "--tiers: unknown 'sift'; use a comma list of phash" in res.output
    with pytest.raises(UsageError, match=r"^tiers: unknown 'sift'; use a comma list of phash"):
        calibrate_run(digits_run, CalibrateConfig(tiers=("sift",)))
    with pytest.raises(UsageError, match=r"^transforms: none given"):
        calibrate_run(digits_run, CalibrateConfig(transforms=()))


# -------------------------------------------------------------------------------------- amg


def test_amg_settings_are_declared_once():
    """Every AMGConfig field is an --amg-<key> option of `sample` and `audit` with the field's
    default, the audit step's `amg:` mapping takes the same keys, and an AMG error names the
    key in the library and the --amg- flag on the command line."""
    from curate.cli.audit import audit
    from curate.cli.model import sample
    from curate.errors import UsageError
    from curate.guidance.config import AMGConfig
    from curate.steps.audit import Audit

    for command in (sample, audit):
        params = _options(command)
        for f in dataclasses.fields(AMGConfig):
            p = params.get("amg_" + f.name)
            assert p is not None and flag(f.name, "amg_") in p.opts, (command.name, f.name)
            value = p.process_value(click.Context(command), p.default)
            assert value == f.default, (command.name, f.name, p.default)
        assert {"amg", "amg_train"} <= set(params)
    assert Audit(oracle=True, amg={"lambdas": "fixed", "k": 8}).amg_config().k == 8
    problems = Audit(oracle=True, amg={"lambdas": [-1.0, -2.0]}).validate()
    assert any(p.startswith("amg: lambdas: MIN -1 is above MAX -2") for p in problems), problems
    with pytest.raises(UsageError, match=r"^k: must be >= 1"):
        AMGConfig(k=0).validate()
    args = ["digits-tiny", "--out", "unused", "--amg", "--amg-train", "unused"]
    res = CliRunner().invoke(sample, [*args, "--amg-lambdas=-1,-2"])
    assert res.exit_code == 2 and "--amg-lambdas: MIN -1 is above MAX -2" in res.output
    res = CliRunner().invoke(sample, [*args, "--amg-features", "sscd"])
    assert res.exit_code == 2 and "--amg-features-model: the dissimilarity guidance" in res.output
    assert "--amg-features pixel" in res.output and "--amg-guidances" in res.output
    res = CliRunner().invoke(sample, [*args, "--amg-scales", "1,2"])
    assert res.exit_code == 2 and "expected 3 comma-separated numbers" in res.output
