"""spembed/_enums.py mirrors the C enums of include/spembed/spembed.h: every
`typedef enum spembed_<name> { ... } spembed_<name>_t;` of the header has an
IntEnum with the same constants (less their prefix) and the same values.

The header is parsed here and _enums.py is loaded from its file, so this
test needs neither torch's op library nor a GPU (only the source tree)."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "include" / "spembed" / "spembed.h"
ENUMS_PY = ROOT / "python_bindings" / "spembed" / "_enums.py"

# C enum -> (Python IntEnum in _enums.py, prefix its constants drop).
MIRRORS = {
    "spembed_status": ("Status", "SPEMBED_STATUS_"),
    "spembed_pooling": ("Pooling", "SPEMBED_POOLING_"),
    "spembed_bounds_policy": ("BoundsPolicy", "SPEMBED_BOUNDS_"),
    "spembed_report_field": ("ReportField", "SPEMBED_REPORT_"),
    "spembed_backward_algorithm": ("BackwardAlgorithm", "SPEMBED_BACKWARD_"),
    "spembed_optimizer": ("Optimizer", "SPEMBED_OPTIMIZER_"),
    "spembed_attention_mask": ("AttentionMask", "SPEMBED_ATTENTION_MASK_"),
}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_TYPEDEF_ENUM = re.compile(r"typedef\s+enum\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", re.S)
_ENTRY = re.compile(r"^(\w+)\s*(?:=\s*(.+))?$", re.S)


def _load_enums():
    spec = importlib.util.spec_from_file_location("_spembed_enums_under_test", ENUMS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_header_enums(text):
    """{enum name: (typedef name, {constant: value})} of every typedef enum."""
    enums = {}
    for name, body, typedef in _TYPEDEF_ENUM.findall(_COMMENT.sub(" ", text)):
        values, nxt = {}, 0
        for entry in filter(None, (e.strip() for e in body.split(","))):
            m = _ENTRY.match(entry)
            assert m, f"{HEADER}: enum {name}: cannot parse entry {entry!r}"
            constant, value = m.group(1), m.group(2)
            if value is not None:
                try:
                    nxt = int(value.strip().rstrip("uUlL"), 0)
                except ValueError:
                    pytest.fail(f"{HEADER}: enum {name}: {constant} = {value.strip()!r} is not "
                                "an integer literal; extend parse_header_enums")
            assert constant not in values, f"{HEADER}: enum {name}: {constant} twice"
            values[constant] = nxt
            nxt += 1
        enums[name] = (typedef, values)
    return enums


HEADER_ENUMS = parse_header_enums(HEADER.read_text())


def test_header_parsed():
    assert HEADER_ENUMS, f"no `typedef enum ... {{ ... }} ..._t;` found in {HEADER}"
    for name, (typedef, values) in HEADER_ENUMS.items():
        assert typedef == name + "_t", f"{HEADER}: typedef enum {name} is named {typedef}"
        assert values, f"{HEADER}: enum {name} has no constants"


def test_every_header_enum_is_mirrored():
    missing = sorted(set(HEADER_ENUMS) - set(MIRRORS))
    stale = sorted(set(MIRRORS) - set(HEADER_ENUMS))
    assert not missing, (f"{HEADER} declares enum(s) {missing} with no IntEnum in {ENUMS_PY}: "
                         "add one there and to MIRRORS in this test")
    assert not stale, (f"MIRRORS names enum(s) {stale} that {HEADER} no longer declares: "
                       f"remove them from {ENUMS_PY} and from MIRRORS")


@pytest.mark.parametrize("c_name", sorted(MIRRORS))
def test_enum_matches_header(c_name):
    if c_name not in HEADER_ENUMS:
        pytest.skip(f"{c_name} is not in the header (test_every_header_enum_is_mirrored fails)")
    py_name, prefix = MIRRORS[c_name]
    enums = _load_enums()
    assert hasattr(enums, py_name), f"{ENUMS_PY} has no class {py_name} (mirror of {c_name})"
    py_enum = getattr(enums, py_name)
    _, c_values = HEADER_ENUMS[c_name]
    unprefixed = sorted(c for c in c_values if not c.startswith(prefix))
    assert not unprefixed, f"{HEADER}: {c_name} constants {unprefixed} lack the prefix {prefix}"
    expected = {c[len(prefix):]: v for c, v in c_values.items()}
    actual = {m.name: int(m.value) for m in py_enum}
    aliases = sorted(set(py_enum.__members__) - set(actual))  # equal values collapse to one member
    assert not aliases, f"{py_name}: members {aliases} are aliases (duplicate values)"
    diffs = []
    for member in sorted(set(expected) | set(actual), key=lambda k: expected.get(k, actual.get(k))):
        want, got = expected.get(member), actual.get(member)
        if want != got:
            diffs.append(f"  {prefix}{member} = {'(absent)' if want is None else want} in the "
                         f"header, {py_name}.{member} = {'(absent)' if got is None else got} "
                         "in Python")
    assert not diffs, (f"{py_name} ({ENUMS_PY}) does not mirror {c_name} ({HEADER}):\n"
                       + "\n".join(diffs))


def test_parser_on_sample():
    sample = """
    /* typedef enum commented_out { X = 9 } commented_out_t; */
    typedef enum spembed_sample {
      SPEMBED_SAMPLE_A = 0,   /* first, with a comma, in a comment */
      SPEMBED_SAMPLE_B,       // implicit: 1
      SPEMBED_SAMPLE_C = 0x10
    } spembed_sample_t;
    """
    assert parse_header_enums(sample) == {
        "spembed_sample": ("spembed_sample_t",
                           {"SPEMBED_SAMPLE_A": 0, "SPEMBED_SAMPLE_B": 1, "SPEMBED_SAMPLE_C": 16})}


def test_optimizer_states_match_the_cpp_descriptor():
    """_enums.OPTIMIZER_STATES (which state buffers spembed.nn allocates)
    equals kernels/embedding_bag/optimizer_kinds.h's optimizer_kind()."""
    text = _COMMENT.sub("", (ROOT / "kernels" / "embedding_bag" / "optimizer_kinds.h").read_text())
    shape = {"kNone": None, "kPerElement": "element", "kPerRow": "row"}
    entries = re.findall(r'return\s*\{\s*"(\w+)"\s*,\s*StateShape::(\w+)\s*,\s*StateShape::(\w+)',
                         text)
    cpp = {name: (shape[s1], shape[s2]) for name, s1, s2 in entries}
    enums = _load_enums()
    python = {o.name: states for o, states in enums.OPTIMIZER_STATES.items()}
    assert set(cpp) == {o.name for o in enums.Optimizer}, cpp
    assert python == cpp
