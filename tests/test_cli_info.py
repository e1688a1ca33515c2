import json

from lowrank_precond import backends
from lowrank_precond.cli import main


def test_info_names_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in backends.BACKENDS:
        assert name in out
    for name in backends.available():
        assert backends.available()[name]["version"] in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["backends"]) == set(backends.available())
    assert isinstance(info["threadpools"], list)


def test_help_documents_subcommands(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    from lowrank_precond.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        assert name in out
