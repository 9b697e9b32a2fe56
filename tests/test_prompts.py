"""The prompt library (capacity, determinism, distinctness, grammar) and user prompt files."""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.prompt_vocab import TEMPLATES, VOCAB
from pipeline.prompts import (
    HELD_OUT_PER_TEMPLATE_DIVISOR,
    MAX_PROMPT_CHARS,
    Permutation,
    PromptFileResult,
    Template,
    _key,
    capacity,
    fix_articles,
    held_out_capacity,
    held_out_indices,
    held_out_prompts,
    iter_held_out,
    iter_prompts,
    library_prompts,
    load_prompt_files,
    templates,
)
from schemas.categories import CATEGORIES, IMAGE_CATEGORIES, VIDEO_CATEGORIES
from schemas.ids import prompt_id
from schemas.tables import PROMPTS

REPO = Path(__file__).resolve().parents[1]
TARGET = {**{c: 200_000 for c in IMAGE_CATEGORIES}, **{c: 100_000 for c in VIDEO_CATEGORIES}}


def _outside_quotes(text: str) -> str:
    return " ".join(text.split('"')[::2])


# --------------------------------------------------------------------------------------------------
# library


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_capacity_meets_the_paper_targets(category):
    assert capacity(category) >= TARGET[category]
    assert capacity(category) + held_out_capacity(category) == sum(t.size for t in templates(category))
    held = [t.size // HELD_OUT_PER_TEMPLATE_DIVISOR for t in templates(category)]
    assert held_out_capacity(category) == sum(held) > 0


def test_every_category_has_templates_and_unknown_category_is_refused():
    assert set(TEMPLATES) == set(CATEGORIES)
    with pytest.raises(ValueError, match="unknown category 'landscapes'"):
        next(iter_prompts("landscapes", 0))
    with pytest.raises(ValueError, match="unknown category"):
        capacity("landscapes")
    with pytest.raises(ValueError, match="unknown category"):
        held_out_capacity("landscapes")
    with pytest.raises(ValueError, match="unknown category 'landscapes'"):
        next(iter_held_out("landscapes", 0))


@pytest.mark.parametrize("name", sorted(VOCAB))
def test_vocabularies_are_clean(name):
    words = VOCAB[name]
    assert len(words) == len(set(words)), [w for w in words if words.count(w) > 1]
    for w in words:
        assert w and w == w.strip() and "  " not in w, repr(w)
        assert not set(w) & set('{}"\t\n'), repr(w)
        assert fix_articles(w) == w, f"{name}: {w!r} has the wrong article"


def test_fast_render_equals_the_plain_format_with_fixed_articles():
    rng = np.random.default_rng(0)
    for category in CATEGORIES:
        for t in templates(category):
            for i in rng.integers(0, t.size, 100).tolist():
                assert t.render(i) == fix_articles(t.text.format(**t.values(i))), t.text


def test_each_template_makes_distinct_prompts():
    """Index -> prompt is injective (a sample per template; `capacity` counts on it)."""
    rng = np.random.default_rng(1)
    for category in CATEGORIES:
        seen: dict[str, str] = {}
        for t in templates(category):
            idx = np.unique(rng.integers(0, t.size, min(t.size, 20_000)))
            texts = t.render_many(idx)
            assert len(set(texts)) == len(idx), t.text
            for x in texts:
                assert seen.setdefault(x, t.text) == t.text, f"{x!r} made by two templates"


def test_a_whole_template_enumerates_exactly_its_size():
    t = Template.parse("a {colour} {shape} and a {colour2} {shape2} {relation} a {colour3} {thing}")
    assert t.size == 12 * 11 * 10 * 16 * 15 * 9 * 24
    t = Template.parse("a {colour} {shape} {relation} an {colour2} {shape2}")
    assert t.size == 12 * 11 * 16 * 15 * 9
    texts = t.render_many(np.arange(t.size))
    assert len(set(texts)) == t.size
    d = t.digits(np.arange(t.size))
    assert not (d["colour"] == d["colour2"]).any() and not (d["shape"] == d["shape2"]).any()
    assert t.render(0) == "a red cube on top of a blue sphere"
    assert "an orange cube on top of a red sphere" in texts
    assert Template.parse("{colour} and {colour2} and {colour3}").size == 12 * 11 * 10
    same = Template.parse("{colour} is {colour}")
    assert same.size == 12 and same.render(3) == "yellow is yellow"
    with pytest.raises(IndexError):
        t.render(t.size)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4097, 70_001])
def test_permutation_is_a_bijection(n):
    order = list(Permutation(n, "k"))
    assert sorted(order) == list(range(n))
    if n >= 1000:
        assert order != list(range(n)) and order != list(Permutation(n, "other key"))
        assert order == list(Permutation(n, "k"))


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_prompts_are_deterministic_distinct_and_well_formed(category):
    first = list(itertools.islice(iter_prompts(category, 7), 20_000))
    assert first == list(itertools.islice(iter_prompts(category, 7), 20_000))
    assert len(set(first)) == len(first) == 20_000
    assert first[:100] != list(itertools.islice(iter_prompts(category, 8), 100))
    for x in first:
        assert x == x.strip() and "  " not in x and " ," not in x and ",," not in x, x
        assert "{" not in x and "}" not in x, x
        assert x.count('"') % 2 == 0, x
        plain = _outside_quotes(x)
        assert not re.search(r"\b[Aa] [aeiouAEIOU]", plain) or re.search(r"\b[Aa] (one|uni|use|eu)", plain), x
        assert not re.search(r"\b[Aa]n (?!hour|honest|heir)[b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z]", plain), x


@pytest.mark.parametrize("category, n", [("composition", 200_000), ("motion_quality", 100_000)])
def test_drawing_a_full_category_target_is_fast_and_distinct(category, n):
    t0 = time.process_time()
    texts = list(itertools.islice(iter_prompts(category, 3), n))
    cpu = time.process_time() - t0
    assert len(texts) == len(set(texts)) == n
    assert cpu < 5.0, f"{n} prompts took {cpu:.1f} s of CPU"


def test_templates_take_turns_so_any_prefix_mixes_the_kinds_of_prompt():
    first = list(itertools.islice(iter_prompts("text_rendering", 0), 600))  # 6 templates, 100 rounds
    markers = ('that says "', 'the words "', 'with the text "', "birthday cake", "sign that reads", "cover titled")
    for marker in markers:
        assert sum(marker in x for x in first) == 100, marker


def test_order_is_the_same_in_another_process():
    code = (
        "import itertools, json; from pipeline.prompts import iter_prompts; "
        "print(json.dumps(list(itertools.islice(iter_prompts('portrait_quality', 11), 50))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == list(itertools.islice(iter_prompts("portrait_quality", 11), 50))


def test_the_library_runs_dry_at_capacity():
    tiny = [t for t in templates("video_text_alignment") if t.size < 1000]
    assert tiny, "expected a small template to exhaust"
    texts = [tiny[0].render(i) for i in range(tiny[0].size)]
    drawn = set(itertools.islice(iter_prompts("video_text_alignment", 0), 100_000))
    assert set(texts) <= drawn  # a small template is used up and the others carry on


def test_library_prompts_table():
    counts = {"aesthetics": 30, "text_rendering": 20, "motion_quality": 10}
    table = library_prompts(counts, seed=5)
    assert table.schema == PROMPTS
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == sorted(r["prompt_id"] for r in rows)
    assert all(r["prompt_id"] == prompt_id(r["category"], r["prompt"]) for r in rows)
    assert all(r["source"] == "library" for r in rows)
    assert all(r["modality"] == CATEGORIES[r["category"]].modality for r in rows)
    for category, n in counts.items():
        got = {r["prompt"] for r in rows if r["category"] == category}
        assert got == set(itertools.islice(iter_prompts(category, 5), n))
    assert library_prompts(counts, seed=5).equals(table)
    with pytest.raises(ValueError, match="asked for"):
        library_prompts({"motion_quality": capacity("motion_quality") + 1}, seed=0)


# --------------------------------------------------------------------------------------------------
# held-out prompts


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 65, 257, 1000, 1025, 4097, 65_537, 70_001])
def test_permutation_apply_and_invert_are_inverse_bijections(n):
    p = Permutation(n, f"k{n}")
    x = np.arange(n)
    y = p.apply(x)
    assert y.dtype == np.int64 and np.array_equal(np.sort(y), x)  # a permutation of range(n)
    assert np.array_equal(y, p.take(0, n))  # the forward map of positions, on values
    assert np.array_equal(p.invert(y), x) and np.array_equal(p.apply(p.invert(x)), x)
    rng = np.random.default_rng(n)
    some = rng.integers(0, n, 50)  # arbitrary values, repeats and order kept
    assert np.array_equal(p.invert(p.apply(some)), some) and np.array_equal(p.apply(p.invert(some)), some)
    assert p.apply(np.zeros(0, dtype=np.int64)).size == 0
    for bad in ([-1], [n]):
        with pytest.raises(IndexError):
            p.apply(bad)
        with pytest.raises(IndexError):
            p.invert(bad)


@pytest.mark.parametrize("category, t", [("text_rendering", 0), ("text_rendering", 3), ("text_rendering", 4),
                                         ("video_text_alignment", 2), ("video_text_alignment", 3)])
def test_held_out_indices_are_exactly_those_the_permutation_sends_below_h(category, t):
    template = templates(category)[t]
    h = template.size // HELD_OUT_PER_TEMPLATE_DIVISOR
    held = held_out_indices(category, t)
    assert len(held) == len(np.unique(held)) == h
    brute = np.flatnonzero(Permutation(template.size, _key("held-out", category, t)).apply(np.arange(template.size)) < h)
    assert np.array_equal(held, brute)
    if h >= 50:  # spread over the template, not a range of it
        assert held.max() - held.min() > template.size // 2


def _whole_category(category: str) -> set[str]:
    return {x for t in templates(category) for x in t.render_many(np.arange(t.size))}


def test_held_out_and_drawn_partition_a_whole_category():
    """motion_quality (the smallest category), for two seeds: every prompt a build can draw and every
    held-out prompt; the library runs dry exactly at capacity, and the two parts are disjoint and make
    up the whole library."""
    category = "motion_quality"
    everything = _whole_category(category)
    assert len(everything) == capacity(category) + held_out_capacity(category)
    held = {x for t, template in enumerate(templates(category))
            for x in template.render_many(held_out_indices(category, t))}
    for seed in (0, 1):
        drawn = list(iter_prompts(category, seed))
        assert len(drawn) == len(set(drawn)) == capacity(category)
        out = list(iter_held_out(category, seed))
        assert len(out) == len(set(out)) == held_out_capacity(category)
        assert set(out) == held
        assert not held & set(drawn)
        assert held | set(drawn) == everything


def test_no_build_draws_a_held_out_prompt():
    category = "video_text_alignment"  # one template holds none out (600 prompts)
    held = set(iter_held_out(category, 0))
    assert len(held) == held_out_capacity(category) == 9_846
    for seed in (0, 12345):
        first = list(itertools.islice(iter_prompts(category, seed), 50_000))
        assert len(set(first)) == 50_000 and not held & set(first)


def test_held_out_prompts_table_and_order():
    category = "text_rendering"
    a, b = list(iter_held_out(category, 1)), list(iter_held_out(category, 2))
    assert a != b and set(a) == set(b) and len(a) == held_out_capacity(category)
    assert a == list(iter_held_out(category, 1))
    markers = ('that says "', 'the words "', 'with the text "', "birthday cake", "sign that reads", "cover titled")
    assert all(sum(m in x for x in a[:42]) == 7 for m in markers)  # templates take turns (each has >= 7)
    full = {category: held_out_capacity(category)}
    assert held_out_prompts(full, seed=1).equals(held_out_prompts(full, seed=2))  # the same set, sorted
    counts = {"aesthetics": 30, "text_rendering": 20, "motion_quality": 10}
    table = held_out_prompts(counts, seed=5)
    assert table.schema == PROMPTS
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == sorted(r["prompt_id"] for r in rows)
    assert all(r["prompt_id"] == prompt_id(r["category"], r["prompt"]) for r in rows)
    assert all(r["source"] == "held_out" for r in rows) and len(rows) == 60
    for c, n in counts.items():
        assert {r["prompt"] for r in rows if r["category"] == c} == set(itertools.islice(iter_held_out(c, 5), n))
    assert held_out_prompts(counts, seed=5).equals(table)
    assert not held_out_prompts(counts, seed=6).equals(table)
    with pytest.raises(ValueError, match="category 'motion_quality': asked for 662 held-out prompts"):
        held_out_prompts({"motion_quality": held_out_capacity("motion_quality") + 1}, seed=0)


def test_held_out_prompts_are_the_same_in_another_process():
    code = (
        "import json; from pipeline.prompts import held_out_prompts; "
        "print(json.dumps(held_out_prompts({'portrait_quality': 40, 'motion_quality': 5}, 11)['prompt'].to_pylist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    here = held_out_prompts({"portrait_quality": 40, "motion_quality": 5}, 11)["prompt"].to_pylist()
    assert json.loads(out.stdout) == here


# --------------------------------------------------------------------------------------------------
# prompt files

LONG = "x" * (MAX_PROMPT_CHARS + 1)


def _rows(result: PromptFileResult) -> list[tuple[str, str, str]]:
    return sorted((r["category"], r["prompt"], r["source"]) for r in result.table.to_pylist())


def _check_table(result: PromptFileResult) -> None:
    assert result.table.schema == PROMPTS
    rows = result.table.to_pylist()
    assert [r["prompt_id"] for r in rows] == sorted({r["prompt_id"] for r in rows})
    assert all(r["prompt_id"] == prompt_id(r["category"], r["prompt"]) for r in rows)
    assert all(r["modality"] == CATEGORIES[r["category"]].modality for r in rows)


def test_txt_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(
        "# my prompts\n"  # 1
        "aesthetics\ta fox in the snow, oil painting\n"  # 2
        "\n"  # 3
        "   \n"  # 4
        "  # an indented comment\n"  # 5
        "landscapes\ta mountain\n"  # 6 unknown category
        "composition\t   \n"  # 7 empty prompt
        "no tab on this line\n"  # 8
        f"aesthetics\t{LONG}\n"  # 9 too long
        " motion_quality \t  a dog running, tracking shot  \n"  # 10 stripped
        "aesthetics\ta fox in the snow, oil painting\n"  # 11 duplicate: kept once
        "text_rendering\ta sign that says \"tab\there\"\n",  # 12 a tab inside the prompt is kept
        encoding="utf-8",
    )
    result = load_prompt_files([str(path)])
    _check_table(result)
    assert result.problems == [
        f"{path}:6: unknown category 'landscapes'",
        f"{path}:7: empty prompt",
        f"{path}:8: expected 'category<TAB>prompt'",
        f"{path}:9: prompt is 2001 characters long, more than 2000",
    ]
    assert _rows(result) == [
        ("aesthetics", "a fox in the snow, oil painting", "mine.txt"),
        ("motion_quality", "a dog running, tracking shot", "mine.txt"),
        ("text_rendering", 'a sign that says "tab\there"', "mine.txt"),
    ]


def test_categories_filter(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("aesthetics\tone\nmotion_quality\ttwo\ncomposition\tthree\n", encoding="utf-8")
    result = load_prompt_files([str(path)], categories=["aesthetics", "composition"])
    assert result.problems == [
        f"{path}:2: category 'motion_quality' is not one of the requested categories ['aesthetics', 'composition']"
    ]
    assert [r[1] for r in _rows(result)] == ["one", "three"]
    with pytest.raises(ValueError, match="unknown categories"):
        load_prompt_files([str(path)], categories=["landscapes"])


def test_jsonl_file(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"prompt": "a red cube on a blue sphere", "category": "composition", "extra": 1}),  # 1
        "",  # 2 blank
        "{not json",  # 3
        json.dumps({"prompt": "no category"}),  # 4
        json.dumps([1, 2]),  # 5
        json.dumps({"prompt": 42, "category": "aesthetics"}),  # 6
        json.dumps({"prompt": None, "category": "aesthetics"}),  # 7
        json.dumps({"prompt": "  spaced out  ", "category": "visual_quality"}),  # 8
        json.dumps({"prompt": "x", "category": "Aesthetics"}),  # 9 names are exact
        json.dumps({"category": "aesthetics"}),  # 10
        json.dumps({"prompt": LONG, "category": "aesthetics"}),  # 11
        json.dumps({"prompt": "un café \u00e9t\u00e9 \u2014 ok", "category": "aesthetics"}),  # 12
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = load_prompt_files([str(path)])
    _check_table(result)
    assert result.problems == [
        f"{path}:3: bad JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:4: missing field 'category'",
        f"{path}:5: expected a JSON object, got list",
        f"{path}:6: prompt must be a string, got int",
        f"{path}:7: missing prompt",
        f"{path}:9: unknown category 'Aesthetics'",
        f"{path}:10: missing field 'prompt'",
        f"{path}:11: prompt is 2001 characters long, more than 2000",
    ]
    assert _rows(result) == [
        ("aesthetics", "un café été — ok", "p.jsonl"),
        ("composition", "a red cube on a blue sphere", "p.jsonl"),
        ("visual_quality", "spaced out", "p.jsonl"),
    ]


def test_csv_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "id,prompt,category\n"  # 1
        '1,"three apples, two pears and a lemon",composition\n'  # 2 quoted comma
        '2,"a sign that says ""OPEN""",text_rendering\n'  # 3 quoted quotes
        "\n"  # 4 blank
        '3,"a poem\nover two lines",aesthetics\n'  # 5-6 a quoted field spanning lines
        "4,,aesthetics\n"  # 7 empty prompt
        "5,a fox,landscapes\n"  # 8
        "6,a fox\n"  # 9 short row
        "7,a fox,aesthetics,surplus\n"  # 10 long row
        f"8,{LONG},aesthetics\n"  # 11
        "9,  a koi pond , aesthetics \n",  # 12 stripped
        encoding="utf-8",
    )
    result = load_prompt_files([str(path)])
    _check_table(result)
    assert result.problems == [
        f"{path}:7: empty prompt",
        f"{path}:8: unknown category 'landscapes'",
        f"{path}:9: missing field 'category'",
        f"{path}:10: 4 fields, the header has 3",
        f"{path}:11: prompt is 2001 characters long, more than 2000",
    ]
    assert _rows(result) == [
        ("aesthetics", "a koi pond", "p.csv"),
        ("aesthetics", "a poem\nover two lines", "p.csv"),
        ("composition", "three apples, two pears and a lemon", "p.csv"),
        ("text_rendering", 'a sign that says "OPEN"', "p.csv"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,aesthetics\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompt_files([str(bad)])


def test_parquet_file(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table(
        {
            "prompt": ["a tiger by a river", None, "  ", "a fox", LONG, " a lake at dawn "],
            "category": ["aesthetics", "aesthetics", "composition", "nope", "aesthetics", "video_text_alignment"],
            "other": [1, 2, 3, 4, 5, 6],
        }
    )
    pq.write_table(table, path)
    result = load_prompt_files([str(path)])
    _check_table(result)
    assert result.problems == [
        f"{path}:row 1: missing prompt",
        f"{path}:row 2: empty prompt",
        f"{path}:row 3: unknown category 'nope'",
        f"{path}:row 4: prompt is 2001 characters long, more than 2000",
    ]
    assert _rows(result) == [
        ("aesthetics", "a tiger by a river", "p.parquet"),
        ("video_text_alignment", "a lake at dawn", "p.parquet"),
    ]
    categorical = tmp_path / "categorical.parquet"  # pandas categoricals arrive dictionary-encoded
    pq.write_table(pa.table({"prompt": ["a", "b"], "category": ["aesthetics", "composition"]}).cast(
        pa.schema([("prompt", pa.string()), ("category", pa.dictionary(pa.int32(), pa.string()))])), categorical)
    assert [r[0] for r in _rows(load_prompt_files([str(categorical)]))] == ["aesthetics", "composition"]
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": ["x"], "category": ["aesthetics"]}), wrong)
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompt_files([str(wrong)])


def test_several_files_dedupe_by_prompt_id_first_file_wins(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("aesthetics\ta fox\ncomposition\ta fox\n", encoding="utf-8")
    b.write_text(
        json.dumps({"prompt": " a fox ", "category": "aesthetics"}) + "\n"
        + json.dumps({"prompt": "a hare", "category": "aesthetics"}) + "\n",
        encoding="utf-8",
    )
    result = load_prompt_files([str(a), str(b)])
    _check_table(result)
    assert result.problems == []
    assert _rows(result) == [
        ("aesthetics", "a fox", "a.txt"),
        ("aesthetics", "a hare", "b.jsonl"),
        ("composition", "a fox", "a.txt"),
    ]
    empty = load_prompt_files([])
    assert empty.table.num_rows == 0 and empty.table.schema == PROMPTS and empty.problems == []


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"prompt file not found: .*missing\.txt"):
        load_prompt_files([str(tmp_path / "missing.txt")])
    other = tmp_path / "prompts.md"
    other.write_text("aesthetics\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported prompt file type '\.md'"):
        load_prompt_files([str(other)])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("aesthetics\tcaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_prompt_files([str(latin)])
