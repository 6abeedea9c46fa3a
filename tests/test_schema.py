"""The one hyper-parameter schema: TOODHyp, the docs/tal.md table and yolo-tood compare's variants all agree with it."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path

import pytest

from yolo_tood.checks import check_int
from yolo_tood.train.hyp import TOODHyp, hyp_schema

ROOT = Path(__file__).resolve().parents[1]


def readme_hyp_table() -> list[tuple[str, str]]:
    """Return (key, default) of the table of TOOD YAML keys in docs/tal.md, in order."""
    text = (ROOT / "docs" / "tal.md").read_text()
    table = text[text.index("| key | default | meaning |") :].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", table, flags=re.M)


def test_readme_table_matches_the_schema():
    rows = readme_hyp_table()
    assert rows, "table of TOOD keys not found in docs/tal.md"
    assert [k for k, _ in rows] == [k.name for k in hyp_schema()], "docs/tal.md keys differ from yolo_tood.train.hyp"
    for (name, default), key in zip(rows, hyp_schema()):
        if default == "null":
            value = None
        else:
            value = key.type(default)
        if key.type is float:  # the table rounds 1/3 to 0.333
            assert math.isclose(value, key.default, rel_tol=1e-3), f"docs/tal.md default of {name} is {default}"
        else:
            assert value == key.default, f"docs/tal.md default of {name} is {default}, the schema's {key.default}"


def test_schema_is_the_dataclass():
    schema = hyp_schema()
    assert [k.name for k in schema] == [f.name for f in fields(TOODHyp)]
    assert TOODHyp() == TOODHyp.from_yaml({k.name: k.default for k in schema})
    for key in schema:
        assert key.type in (int, float, str) and key.help, key
        assert isinstance(key.default, key.type) or (key.optional and key.default is None), key
        key.check(key.default)  # defaults are inside their own bounds
        if key.type is str:
            assert key.default in key.choices
            with pytest.raises(ValueError, match=key.name):
                key.check("no such choice")
            continue
        with pytest.raises(ValueError, match=key.name):
            key.check(key.minimum - 1)
        if key.maximum is not None:
            with pytest.raises(ValueError, match=rf"'{key.name}' must be a finite number in \["):
                key.check(key.maximum + 0.5)


@pytest.mark.parametrize("value", [0, -3, True, 1.0, "2", None])
def test_check_int_rejects(value):
    with pytest.raises(ValueError, match=r"^X: 'n' must be an integer >= 1, got "):
        check_int(value, "n", "X")


def test_check_int_accepts():
    assert check_int(0, "atss_epochs", minimum=0) == 0 and check_int(7, "n") == 7
