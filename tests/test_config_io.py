"""Config files read as bounded plain data: every hostile file is one ConfigError line."""
import subprocess
import sys
import textwrap

import pytest
import yaml

from schemas.audit import load_audit_config
from schemas.config import load_config
from schemas.config_io import MAX_EXPANDED_NODES, ConfigError, parse_yaml_text, read_yaml
from schemas.train_config import load_train_config
from tests.conftest import REPO, SMALL, write_config

LOADERS = {"build": load_config, "audit": load_audit_config, "train": load_train_config}

BOMB = textwrap.dedent("""\
    options:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
    """)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_alias_bomb_in_a_nested_mapping_is_refused(tmp_path, kind):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError) as err:
        LOADERS[kind](path)
    assert str(err.value) == f"{path}: line 6: YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values; write the values out"


def test_alias_bomb_costs_no_memory(tmp_path):
    """The refusal happens before any expansion: the child's peak RSS stays that of the import."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    # The child reports its own peak, VmHWM of its address space. Not getrusage: RUSAGE_CHILDREN here is the
    # largest child of the whole session, and Linux carries ru_maxrss across fork + exec, so a child of
    # this (torch-sized) pytest process would report at least the parent's RSS.
    code = (f"from schemas.config_io import read_yaml, ConfigError\ntry:\n  read_yaml({str(path)!r})\n"
            "except ConfigError as e:\n  print(e)\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    message, peak_kib = proc.stdout.strip().splitlines()
    assert "YAML aliases expand" in message
    assert int(peak_kib) < 1024 * 1024  # KiB: under 1 GB


def test_small_aliases_still_work():
    data = parse_yaml_text("base: &r {num_cpus: 1}\na: *r\nb: *r\n", "x.yaml")
    assert data == {"base": {"num_cpus": 1}, "a": {"num_cpus": 1}, "b": {"num_cpus": 1}}


def test_self_referring_alias_is_refused():
    with pytest.raises(ConfigError, match=r"^x.yaml: line 1: a YAML alias refers to itself$"):
        parse_yaml_text("&a [*a]\n", "x.yaml")


def test_deep_nesting_is_refused():
    with pytest.raises(ConfigError, match=r"^x.yaml: line 1: nested deeper than 64 levels$"):
        parse_yaml_text("[" * 100 + "]" * 100, "x.yaml")
    with pytest.raises(ConfigError, match=r"^x.yaml: "):
        parse_yaml_text("[" * 100_000 + "]" * 100_000, "x.yaml")


def test_python_tags_are_refused():
    with pytest.raises(ConfigError, match=r"^x.yaml: line 1: invalid YAML"):
        parse_yaml_text("a: !!python/object/apply:os.system [echo hi]\n", "x.yaml")


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_config_not_utf8(tmp_path, kind):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: demo\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        LOADERS[kind](path)
    assert str(err.value) == f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 16)"


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_config_path_is_a_folder(tmp_path, kind):
    with pytest.raises(ConfigError) as err:
        LOADERS[kind](tmp_path)
    assert str(err.value) == f"{tmp_path}: is a folder, expected a YAML file"


def test_config_path_is_a_fifo(tmp_path):
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe.yaml: not a regular file$"):
        read_yaml(fifo)  # would block forever on open() if it were read


def test_boolean_is_not_a_number(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["categories"]["aesthetics"]["quota"] = True
    path = write_config(tmp_path / "b.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: categories.aesthetics.quota: expected a number, got the boolean true"


def test_boolean_is_not_a_float_either(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["pairing"]["min_margin"] = False
    path = write_config(tmp_path / "b.yaml", data)
    with pytest.raises(ConfigError, match=r"pairing.min_margin: expected a number, got the boolean false$"):
        load_config(path)


def test_booleans_still_fill_boolean_fields(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "train-demo.yaml").read_text())
    data.setdefault("data", {})["random_flip"] = True
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_train_config(path).data.random_flip is True
