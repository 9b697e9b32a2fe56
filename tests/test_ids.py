import hashlib

from schemas.ids import candidate_id, canonical_json, derive_seed, pair_id, prompt_id


def _h(*parts):
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def test_ids_are_the_documented_digests():
    assert prompt_id("aesthetics", "a fox") == _h("aesthetics", "a fox")
    assert candidate_id("p1", "sd15", 7, {"b": 1, "a": 2}) == _h("p1", "sd15", "7", '{"a":2,"b":1}')
    assert pair_id("w", "l") == _h("w", "l")
    assert pair_id("w", "l") != pair_id("l", "w")


def test_ids_are_hex_without_dots():
    for i in (prompt_id("composition", "two cats. one dog"), candidate_id("x", "g.v2", 1, {"k": "v.1"})):
        assert len(i) == 16 and set(i) <= set("0123456789abcdef")


def test_canonical_json_and_seed():
    assert canonical_json({"é": 1, "a": [1, 2]}) == '{"a":[1,2],"é":1}'
    s = derive_seed("p", "g", "{}", "0")
    assert s == derive_seed("p", "g", "{}", "0") and 0 <= s < 2**31
    assert s != derive_seed("p", "g", "{}", "1")
