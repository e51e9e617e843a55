"""Attacks and defenses register themselves by name; a user's own come in as module:factory."""
import subprocess
import sys
import textwrap

import pytest
import torch

from advrepair.attacks import ATTACKS, PGD, make_attack, parse_spec
from advrepair.attacks.registry import register_attack
from advrepair.apps.cli import build_parser
from advrepair.defenses import DEFENSES, JPEGCompression, TotalVariation, make_defense, register_defense
from advrepair.errors import InputError
from advrepair.evaluation import AttackSpec


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_plugins.py").write_text(textwrap.dedent("""
        from torch import nn
        from advrepair.attacks import PGD

        def make_attack(model, eps, steps=3):
            return PGD(model, eps=eps, alpha=eps / 2, steps=steps)

        class Halve(nn.Module):
            def __init__(self, seed):
                super().__init__()
                self.seed = seed

            def forward(self, x):
                return x / 2

        def make_defense(seed):
            return Halve(seed)

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_plugins"


def test_every_attack_module_registers_its_attacks():
    assert set(ATTACKS) == {"fgsm", "pgd", "bim", "mifgsm", "difgsm", "tifgsm", "cw", "cw-pgd", "ssp", "apgd",
                            "apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "square", "fab", "fab-t", "hopskipjump", "genattack",
                            "spsa", "rfgsm", "transfer"}
    assert ATTACKS["pgd"] is PGD
    with pytest.raises(InputError, match="already registered"):
        register_attack("pgd")(type("OtherPGD", (PGD,), {}))


@pytest.mark.parametrize("module", ["advrepair.attacks.transfer", "advrepair.attacks.autoattack",
                                    "advrepair.attacks.registry", "advrepair.defenses.registry"])
def test_any_module_imports_first_without_a_cycle(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_users_attack_by_module_factory(user_module, random_cnn):
    assert parse_spec(f"{user_module}:make_attack:eps=0.1,steps=2") == (f"{user_module}:make_attack",
                                                                        {"eps": 0.1, "steps": 2})
    assert parse_spec("pgd:eps=0.1") == ("pgd", {"eps": 0.1})
    attack = make_attack(f"{user_module}:make_attack", random_cnn, eps=0.1, steps=2)
    assert isinstance(attack, PGD) and attack.steps == 2
    assert AttackSpec(f"{user_module}:make_attack", {"eps": 0.1}).build(random_cnn).eps == 0.1
    with pytest.raises(InputError, match="cannot take"):
        make_attack(f"{user_module}:make_attack", random_cnn, eps=0.1, colour="red")
    with pytest.raises(InputError, match="not a callable"):
        make_attack(f"{user_module}:not_callable", random_cnn)
    with pytest.raises(InputError, match="cannot import"):
        make_attack("no_such_package_here:make", random_cnn)


def test_defenses_by_name_with_the_papers_settings_and_a_users_own(user_module):
    assert {"jpeg", "tv", "median", "bit-depth", "resize-pad"} <= set(DEFENSES)
    assert make_defense("jpeg").params() == JPEGCompression(quality=75).params()
    tv = make_defense("tv", seed=3)
    assert isinstance(tv, TotalVariation) and tv.seed == 3 and tv.params()["solver"] == "bregman"
    assert make_defense("jpeg", quality=30).params()["quality"] == 30
    with pytest.raises(InputError, match="no parameters"):
        make_defense("median", quality=3)
    with pytest.raises(InputError, match="unknown defense"):
        make_defense("blur")
    with pytest.raises(InputError, match="already registered"):
        register_defense("jpeg")(TotalVariation)
    halve = make_defense(f"{user_module}:make_defense", seed=5)
    assert halve.seed == 5 and torch.equal(halve(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.5))


def test_eval_takes_a_users_defense_on_the_command_line():
    args = build_parser().parse_args(["eval", "--model-dir", "m", "--attack", "clean", "--out", "o",
                                      "--defense", "mypkg.defenses:make", "--defense", "jpeg"])
    assert args.defense == ["mypkg.defenses:make", "jpeg"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--model-dir", "m", "--out", "o", "--defense", "blur"])
