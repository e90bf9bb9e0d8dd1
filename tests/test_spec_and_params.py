import pytest

from harness import Param, ParamError, SpecError, expand_grid, parse_spec
from harness.backends.spec import format_spec


def test_parse_single_and_composite():
    (part,) = parse_spec("topk:k=8,bits=4")
    assert part.name == "topk" and part.params == (("k", "8"), ("bits", "4"))
    parts = parse_spec("dynamic-quant+topk:k=16")
    assert [p.name for p in parts] == ["dynamic-quant", "topk"]
    assert format_spec(parts) == "dynamic-quant+topk:k=16"


@pytest.mark.parametrize("bad, message", [
    ("", "empty backend spec"),
    ("Top K", "bad backend name"),
    ("topk:", "nothing after ':'"),
    ("topk:k", "write key=value"),
    ("topk:k=1,k=2", "given twice"),
    ("topk:k=[1,2", "unbalanced"),
    ("topk:k=[]", "empty list"),
])
def test_parse_errors_say_what_is_wrong(bad, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(bad)


def test_expand_grid_is_a_stable_cartesian_product():
    assert expand_grid("topk:k=[4,8],bits=[4,8]") == [
        "topk:k=4,bits=4", "topk:k=4,bits=8", "topk:k=8,bits=4", "topk:k=8,bits=8"]
    assert expand_grid("dynamic-quant:modules=[ffn,all]+topk:k=[2,3]") == [
        "dynamic-quant:modules=ffn+topk:k=2", "dynamic-quant:modules=ffn+topk:k=3",
        "dynamic-quant:modules=all+topk:k=2", "dynamic-quant:modules=all+topk:k=3"]
    assert expand_grid("dense") == ["dense"]


def test_param_parse_and_validate():
    k = Param("k", int, 8, min=1)
    assert k.parse("16", backend="topk") == 16
    with pytest.raises(ParamError, match="must be an integer"):
        k.parse("eight", backend="topk")
    with pytest.raises(ParamError, match=r"must be in 1\.\."):
        k.parse("0", backend="topk")
    flag = Param("smooth_k", bool, False)
    assert flag.parse("true", backend="topk") is True and flag.parse("0", backend="topk") is False
    with pytest.raises(ParamError, match="true or false"):
        flag.parse("maybe", backend="topk")
    choice = Param("granularity", str, "head", choices=("tensor", "head", "token"))
    with pytest.raises(ParamError, match="one of tensor, head, token"):
        choice.parse("row", backend="topk")
    assert Param("x", float, 0.5).parse("1", backend="b") == 1.0


@pytest.mark.parametrize("param, message", [
    (Param("Bad-Name", int, 1), "lower-case identifier"),
    (Param("x", list, []), "type must be"),
    (Param("x", int, 0, min=1), "default is invalid"),
    (Param("x", str, "a", choices=("a",), min=1), "either choices or bounds"),
])
def test_param_declaration_errors(param, message):
    with pytest.raises(ValueError, match=message):
        param.check_declaration()


def test_describe():
    assert Param("k", int, 8, min=1).describe() == "k: int = 8 [1..]"
    assert Param("g", str, "head", choices=("tensor", "head")).describe() == "g: str = head {tensor|head}"
