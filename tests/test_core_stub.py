"""The hand-written stub python/music_flamingo/_core.pyi against the compiled module, and the typed seam itself.

The stub is checked name by name: every public name of the module is in it and nothing else; every class has the
same public attributes and methods; a field written ``x: T`` is writable and one written as a ``@property`` is
read-only; every function and method takes the same parameters (names, keyword-only or not, defaulted or not, and
the same literal defaults) as pybind11's signature says. ``test_the_check_finds_drift`` shows each check failing.
Fast: no model is loaded here.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import fields
from importlib import resources
from typing import Any

import numpy as np
import pytest

from music_flamingo import GenerationStats, Prompt, _core

STUB = resources.files("music_flamingo").joinpath("_core.pyi")


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _targets(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


def _is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)


Param = tuple[str, str, Any]  # name, "pos" or "kw", default (NO_DEFAULT, a literal, or ANY for "...")
NO_DEFAULT, ANY = "<none>", "<any>"


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return NO_DEFAULT
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ANY  # `...` in the stub, an object's repr in pybind11's signature


def _params(fn: ast.FunctionDef) -> list[Param]:
    a = fn.args
    pos = a.posonlyargs + a.args
    pos_defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = [(p.arg, "pos", _default(d)) for p, d in zip(pos, pos_defaults)]
    out += [(p.arg, "kw", _default(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return [p for p in out if p[0] != "self"]


def _native_params(obj: Any) -> list[Param]:
    """Parameters from pybind11's signature line (``name(a: T, *, b: T = 1) -> R``), parsed as Python."""
    line = obj.__doc__.splitlines()[0]
    line = re.sub(r"<[^<>]*>", "...", line)  # defaults shown by repr: <Framing.Mtmd: 0>, <... object at 0x...>
    return _params(ast.parse(f"def {line}: ...").body[0])


def _same_params(where: str, stub: list[Param], native: list[Param]) -> list[str]:
    if [p[:2] for p in stub] != [p[:2] for p in native]:
        return [f"{where}: parameters {[p[:2] for p in stub]} in the stub, {[p[:2] for p in native]} compiled"]
    problems = []
    for (name, _, s), (_, _, n) in zip(stub, native):
        if (s == NO_DEFAULT) != (n == NO_DEFAULT):
            problems.append(f"{where}({name}): default in only one of stub and module")
        elif ANY not in (s, n) and s != n:
            problems.append(f"{where}({name}): default {s!r} in the stub, {n!r} compiled")
    return problems


def _class_problems(node: ast.ClassDef, cls: type) -> list[str]:
    problems = []
    stub_members: dict[str, ast.stmt] = {}
    for item in node.body:
        for name in _targets(item):
            stub_members[name] = item
        if isinstance(item, ast.FunctionDef):
            stub_members[item.name] = item
    stub_public, native_public = _public(stub_members), _public(dir(cls))
    for name in sorted(native_public - stub_public):
        problems.append(f"{cls.__name__}.{name} is in the module, not in the stub")
    for name in sorted(stub_public - native_public):
        problems.append(f"{cls.__name__}.{name} is in the stub, not in the module")
    for name in sorted(stub_public & native_public):
        item, attr = stub_members[name], inspect.getattr_static(cls, name)
        if isinstance(attr, property):
            writable = attr.fset is not None
            if isinstance(item, ast.FunctionDef) and not _is_property(item):
                problems.append(f"{cls.__name__}.{name} is an attribute, the stub has a method")
            elif writable != isinstance(item, ast.AnnAssign):
                problems.append(
                    f"{cls.__name__}.{name} is {'writable' if writable else 'read-only'} but the stub "
                    f"says otherwise (x: T for writable, @property for read-only)"
                )
        elif isinstance(item, ast.FunctionDef):
            if _is_property(item):
                problems.append(f"{cls.__name__}.{name} is a method, the stub has a property")
            else:
                problems += _same_params(f"{cls.__name__}.{name}", _params(item), _native_params(getattr(cls, name)))
    init = next((i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
    if init is not None:
        problems += _same_params(f"{cls.__name__}.__init__", _params(init), _native_params(cls.__init__))
    return problems


def stub_problems(source: str, module: Any = _core) -> list[str]:
    """What differs between the stub's text and the compiled module; empty when they agree."""
    tree = ast.parse(source)
    stub: dict[str, ast.stmt] = {}
    for node in tree.body:
        for name in _targets(node):
            stub[name] = node
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stub[node.name] = node
    problems = [f"{n} is in the module, not in the stub" for n in sorted(_public(dir(module)) - _public(stub))]
    problems += [f"{n} is in the stub, not in the module" for n in sorted(_public(stub) - _public(dir(module)))]
    for name in sorted(_public(stub) & _public(dir(module))):
        node, obj = stub[name], getattr(module, name)
        if isinstance(node, ast.ClassDef):
            problems += _class_problems(node, obj) if isinstance(obj, type) else [f"{name} is not a class"]
        elif isinstance(node, ast.FunctionDef):
            problems += _same_params(name, _params(node), _native_params(obj))
    return problems


def test_the_stub_is_shipped_with_a_typed_marker():
    assert STUB.is_file()
    assert resources.files("music_flamingo").joinpath("py.typed").is_file()


def test_the_stub_matches_the_compiled_module():
    assert stub_problems(STUB.read_text()) == []


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("    repeat_last_n: int\n", "", "SamplingParams.repeat_last_n is in the module"),
        ("def build_info", "def build_infos", "build_info is in the module"),
        ("def list_devices", "def list_devices2() -> None: ...\ndef list_devices", "list_devices2 is in the stub"),
        ("    seed: int\n", "    seed: int\n    sede: int\n", "SamplingParams.sede is in the stub"),
        ("repeat_last_n: int = 64", "repeat_last_n: int = 32", "default 32 in the stub, 64 compiled"),
        (
            "    max_tokens: int\n",
            "    @property\n    def max_tokens(self) -> int: ...\n",
            "PromptRequest.max_tokens is writable",
        ),
        (
            "    @property\n    def audio_seconds(self) -> float: ...\n",
            "    audio_seconds: float\n",
            "audio_seconds is read-only",
        ),
        ('tracks_in_flight: int | str = "auto",', "in_flight: int = 0,", "RunRequest.__init__: parameters"),
        ("def set_log_level(level: int)", "def set_log_level(*, level: int)", "set_log_level: parameters"),
        ("    Reference: ClassVar[Framing]\n", "", "Framing.Reference is in the module"),
    ],
)
def test_the_check_finds_drift(old, new, expect):
    source = STUB.read_text()
    assert source.count(old) == 1, old
    problems = stub_problems(source.replace(old, new))
    assert any(expect in p for p in problems), problems


# --- the seam itself ----------------------------------------------------------------------------------------------

SAMPLING = [f.name for f in fields(Prompt) if f.name not in ("text", "max_tokens", "name", "followups", "answer")]


def test_every_sampling_field_crosses_by_name_with_the_engines_defaults():
    """A sampling field of Prompt exists in the engine's SamplingParams and vice versa, with the same default."""
    native = _core.SamplingParams()
    assert set(SAMPLING) == _public(dir(native))
    defaults = Prompt("x")
    for name in SAMPLING:
        assert getattr(native, name) == pytest.approx(getattr(defaults, name)), name
    assert Prompt("x").max_tokens == _core.PromptRequest("x").max_tokens


def test_to_native_is_the_engines_request():
    p = Prompt(
        "Describe.",
        max_tokens=7,
        temperature=np.float32(0.5),
        top_p=0.9,
        top_k=np.int64(40),
        min_p=0.05,
        repeat_penalty=1.1,
        seed=np.uint32(2**32 - 1),
        ignore_eos=True,
        repeat_last_n=128,
        name="n",
    )
    r = p.to_native()
    assert isinstance(r, _core.PromptRequest) and (r.text, r.max_tokens) == ("Describe.", 7)
    s = r.sampling
    assert (s.top_k, s.seed, s.ignore_eos, s.repeat_last_n) == (40, 2**32 - 1, True, 128)
    assert (s.temperature, s.top_p, s.min_p, s.repeat_penalty) == pytest.approx((0.5, 0.9, 0.05, 1.1))


@pytest.mark.parametrize(
    "kw", [{"temprature": 0.5}, {"name": "x"}, {"seed": -1}, {"top_k": 2**31}, {"repeat_last_n": "64"}]
)
def test_an_unknown_or_unrepresentable_sampling_field_is_a_type_error(kw):
    with pytest.raises(TypeError):
        _core.SamplingParams(**kw)


def test_the_engines_stats_are_the_python_stats():
    """GenerationStats.from_native copies every field by name: the two classes have the same fields."""
    assert {f.name for f in fields(GenerationStats)} - {"devices"} == _public(dir(_core.GenerateStats))


def test_framings_are_the_engines_enum():
    from music_flamingo.gguf_backend import FRAMINGS, native_framing

    assert set(FRAMINGS.values()) == set(_core.Framing.__members__)
    assert native_framing("reference") == _core.Framing.Reference
    with pytest.raises(ValueError, match="framing must be one of"):
        native_framing("bogus")
