"""One spelling per idea across the tools: a flag learnt in one tool works in the others (the old spellings stay)."""

import pytest
import typer

from vivim.bench.cli import app as bench_app
from vivim.evaluate import app as eval_app
from vivim.export.cli import app as export_app
from vivim.runtime.cli import app as run_app
from vivim.train import app as train_app


def _options(app: typer.Typer, subcommand: str | None = None) -> dict[str, set[str]]:
    command = typer.main.get_command(app)
    if subcommand is not None:
        command = command.commands[subcommand]  # type: ignore[attr-defined]
    # Typer carries its own copy of click: options are told apart by their kind, not by click's classes
    return {p.name: set(p.opts) for p in command.params if p.param_type_name == "option" and p.name}


OUTPUT = {"-o", "--out", "--output"}
CASES = [
    ("vivim-train", train_app, None, {"out": OUTPUT, "frames": {"--frames", "-T"}, "size": {"--size", "-s"},
                                      "device": {"--device", "-d"}}),
    ("vivim-eval", eval_app, None, {"device": {"--device", "-d"}}),
    ("vivim-bench", bench_app, None, {"out": OUTPUT, "frames": {"--frames", "-T", "-t"}, "size": {"--size", "-s"},
                                      "device": {"--device", "-d"}}),
    ("vivim-export onnx", export_app, "onnx", {"output": OUTPUT, "frames": {"--frames", "-T"}, "size": {"--size", "-s"}}),
    ("vivim-export plugin", export_app, "plugin", {"output_dir": OUTPUT}),
    ("vivim-export trt", export_app, "trt", {"output": OUTPUT}),
    ("vivim-run", run_app, None, {"device": {"--device", "-d"}}),
]


@pytest.mark.parametrize("tool,app,subcommand,expected", CASES, ids=[c[0] for c in CASES])
def test_shared_flags_have_the_same_spellings(tool, app, subcommand, expected):
    options = _options(app, subcommand)
    for name, spellings in expected.items():
        assert options.get(name) == spellings, (tool, name, options.get(name))


def test_no_tool_declares_one_spelling_twice():
    for tool, app, subcommand, _ in CASES:
        seen: dict[str, str] = {}
        for name, spellings in _options(app, subcommand).items():
            for flag in spellings:
                assert flag not in seen, f"{tool}: {flag} names both {seen[flag]} and {name}"
                seen[flag] = name


def _commands(app: typer.Typer, name: str):
    """(tool name, click command) for an app and each of its subcommands."""
    command = typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [(name, command)]
    return [(f"{name} {sub}", cmd) for sub, cmd in subcommands.items()]


def test_every_seed_flag_takes_the_range_numpy_and_torch_accept():
    """A negative or too large --seed reached NumPy or torch after work had begun (a traceback, a half-written
    dataset); the flag itself now refuses it, with the same range in every tool that has one."""
    from vivim.constants import SEED_MAX
    from vivim.data.cli import app as data_app

    apps = [("vivim-train", train_app), ("vivim-eval", eval_app), ("vivim-bench", bench_app),
            ("vivim-export", export_app), ("vivim-run", run_app), ("vivim-data", data_app)]
    seeded = {}
    for name, app in apps:
        for tool, command in _commands(app, name):
            for p in command.params:
                if p.name == "seed":
                    seeded[tool] = (p.min, p.max)  # type: ignore[attr-defined]
    assert set(seeded) >= {"vivim-train", "vivim-bench", "vivim-export check", "vivim-data synth"}, seeded
    assert all(limits == (0, SEED_MAX) for limits in seeded.values()), seeded


@pytest.mark.parametrize("value", ["-1", str(2**32)])
def test_a_seed_out_of_range_is_refused_before_any_work(tmp_path, value):
    from typer.testing import CliRunner

    from vivim.data.cli import app as data_app

    out = tmp_path / "synth"
    result = CliRunner().invoke(data_app, ["synth", str(out), "--videos", "1", "--frames", "2", "--size", "32",
                                           "--seed", value])
    assert result.exit_code == 2 and "--seed" in result.output, result.output
    assert not out.exists()  # nothing started: no half-written dataset to refuse the next run


def test_export_size_takes_one_side_or_h_by_w():
    """-s 256 as in vivim-train and vivim-bench (a square), 256x320 for another aspect; anything else is named."""
    from vivim.errors import VivimError
    from vivim.export.cli import parse_size

    assert parse_size(None) is None
    assert parse_size("256") == (256, 256) and parse_size("256x320") == (256, 320) and parse_size("64,96") == (64, 96)
    assert parse_size("128X64") == (128, 64)
    for bad in ("", "x", "256x", "1x2x3", "big"):
        with pytest.raises(VivimError, match=f"--size {bad}: give one side N"):
            parse_size(bad)


@pytest.mark.parametrize("args, expected", [
    (["--worst", "0"], "error: Invalid value for '--worst': Input should be greater than or equal to 1 (see "),
    (["--bogus"], "error: No such option: --bogus (see "),
    ([], "error: Missing option '--data'. (see "),
])
def test_usage_errors_are_one_line_like_every_other_error(args, expected, tmp_path):
    """Typer's own checks (a range, an unknown option, a missing option) printed a boxed multi-line message; they
    read like every other error now: one line naming the flag, exit 2."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-c", "import sys; from vivim.evaluate import main; sys.argv[0] = 'vivim-eval'; main()",
               "demo", *(["--data", str(tmp_path)] if args and args[0] != "--data" else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(expected) and lines[0].endswith("vivim-eval --help)"), lines


def test_every_exit_path_of_run_app(capsys):
    """run_app runs Typer apps non-standalone: --help, a bare group (its help), typer.Exit(n), click's Abort and a
    subcommand's usage error must each end as click's standalone mode would, in one line."""
    from vivim.cli_utils import run_app as run_typer_app

    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def returns() -> None:
        return None

    @app.command()
    def exits(code: int = 3) -> None:
        raise typer.Exit(code)

    @app.command()
    def aborts() -> None:
        raise typer.Abort()

    def outcome(*args):
        with pytest.raises(SystemExit) as stop:
            run_typer_app(lambda standalone_mode: app(list(args), prog_name="tool", standalone_mode=standalone_mode))
        out, err = capsys.readouterr()
        return stop.value.code, out, err.strip().splitlines()

    code, out, err = outcome("--help")
    assert code == 0 and "returns" in out and err == []
    code, out, err = outcome()
    assert code == 2 and "returns" in out + "".join(err) and not any(line.startswith("error:") for line in err)
    assert outcome("returns")[0] == 0
    assert outcome("exits")[0] == 3 and outcome("exits", "--code", "0")[0] == 0
    assert outcome("aborts")[::2] == (1, ["aborted"])
    code, _, err = outcome("exits", "--code", "x")
    assert code == 2 and len(err) == 1 and err[0].endswith("(see tool exits --help)"), err


def test_no_command_returns_a_value():
    """Non-standalone, click hands back a command's return value and typer.Exit(n)'s n alike, and run_app takes an
    int as the exit status: a command that returned one would exit with it. Every command returns None."""
    import typing

    from vivim.data.cli import app as data_app

    apps = [train_app, eval_app, bench_app, export_app, run_app, data_app]
    commands = [info.callback for app in apps for info in app.registered_commands]
    assert len(commands) >= 9
    for callback in commands:
        assert typing.get_type_hints(callback).get("return") is type(None), callback.__qualname__


def test_the_two_value_size_of_earlier_versions_is_answered_with_the_new_form(tmp_path):
    from typer.testing import CliRunner

    from vivim.errors import VivimError

    result = CliRunner().invoke(export_app, ["onnx", "demo", "-o", str(tmp_path / "m.onnx"), "--size", "64", "96"])
    assert isinstance(result.exception, VivimError), result.output
    assert str(result.exception) == "--size 64 96: give the two sides as HxW, e.g. --size 64x96"
    assert not (tmp_path / "m.onnx").exists()


def test_help_at_80_columns_names_every_option_and_default_in_full(monkeypatch):
    """A console on a Jetson (SSH, serial) is often 80 columns wide, and help piped to a file or pager gets 80 too:
    every flag and its default must be there whole (Rich's boxed tables cut them: '--max-row-secon…')."""
    from typer.testing import CliRunner

    from vivim.data.cli import app as data_app

    monkeypatch.setenv("COLUMNS", "80")
    apps = [("vivim-train", train_app), ("vivim-eval", eval_app), ("vivim-bench", bench_app),
            ("vivim-export", export_app), ("vivim-run", run_app), ("vivim-data", data_app)]
    for name, app in apps:
        for tool, command in _commands(app, name):
            words = tool.split()[1:]
            result = CliRunner().invoke(app, [*words, "--help"], terminal_width=80)
            assert result.exit_code == 0, (tool, result.output)
            text = result.output
            assert "…" not in text and max(map(len, text.splitlines())) <= 80, (tool, text)
            joined = " ".join(text.split())  # a default may wrap onto the next line
            for p in command.params:
                if p.param_type_name != "option":
                    continue
                for flag in [*p.opts, *p.secondary_opts]:
                    assert flag in text, (tool, flag)
                default = p.default
                if isinstance(default, (int, float, str)) and not isinstance(default, bool) and p.show_default:
                    assert str(default) in joined, (tool, p.name, default)
