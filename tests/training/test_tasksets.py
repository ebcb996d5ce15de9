"""The shipped offline task sets load, validate and score their own references correctly."""

import json
import re
from collections import Counter

import pytest

from training.pipeline.metrics import code_pass_rate, math_answer, math_equal
from training.pipeline.tasks import TASK_KINDS
from training.pipeline.tasksets import TaskFileError, load_tasks

TASKS = load_tasks()
CODE = [task for task in TASKS if task.kind == "code"]
MATH = [task for task in TASKS if task.kind == "math"]
DOCUMENTS = [task for task in TASKS if task.kind == "document"]
VALID = {
    "id": "t-1",
    "kind": "math",
    "split": "train",
    "description": "a sum",
    "goal": "What is 2 + 2?",
    "reference": "4",
}


def write_lines(path, rows):
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    )
    return path


def test_every_kind_ships_eight_train_and_four_heldout_tasks():
    counts = Counter((task.kind, task.split) for task in TASKS)
    assert counts == {
        (kind, split): n for kind in TASK_KINDS for split, n in (("train", 8), ("heldout", 4))
    }


def test_filters_select_by_kind_and_split():
    heldout_code = load_tasks("code", "heldout")
    assert len(heldout_code) == 4
    assert {(task.kind, task.split) for task in heldout_code} == {("code", "heldout")}


def test_every_document_reference_is_120_to_220_words_and_inside_its_goal():
    for task in DOCUMENTS:
        assert 120 <= len(task.reference.split()) <= 220, task.id
        assert task.reference in task.goal, task.id


def test_every_document_names_one_of_the_three_paper_document_types():
    types = Counter(task.metadata["doc_type"] for task in DOCUMENTS)
    assert set(types) == {"blog_post", "creative_writing", "personal_statement"}


@pytest.mark.parametrize("task", CODE, ids=lambda task: task.id)
def test_each_code_solution_passes_all_of_its_tests(task):
    result = code_pass_rate(task.metadata["solution"], task.reference, task.entry_point or "")
    assert result.error is None
    assert result.pass_rate == 1.0 and 3 <= result.total <= 6


@pytest.mark.parametrize("task", CODE, ids=lambda task: task.id)
def test_each_code_task_fails_a_wrong_solution(task):
    wrong = f"def {task.entry_point}(*args, **kwargs):\n    return None\n"
    result = code_pass_rate(wrong, task.reference, task.entry_point or "")
    assert result.passed < result.total


def test_code_tests_import_only_the_standard_library():
    for task in CODE:
        for module in re.findall(r"^\s*(?:from|import)\s+(\w+)", task.reference, re.M):
            assert module in {"math", "re", "itertools", "collections", "string"}, task.id


def reformatted(value):
    """The same answer as a model might write it: a LaTeX fraction, a padded decimal, boxed."""
    if "/" in value:
        top, bottom = value.split("/")
        return f"$\\frac{{{top}}}{{{bottom}}}$."
    return f"{value}0" if "." in value else f"\\boxed{{{value}}}"


@pytest.mark.parametrize("task", MATH, ids=lambda task: task.id)
def test_each_math_reference_equals_itself_and_a_reformatted_version(task):
    assert math_equal(task.reference, task.reference)
    assert math_equal(reformatted(task.reference), task.reference)


@pytest.mark.parametrize("task", MATH, ids=lambda task: task.id)
def test_each_math_reference_survives_extraction_from_a_worked_answer(task):
    reply = f"Working through it step by step, the answer is {task.reference}."
    assert math_equal(math_answer(reply), task.reference)


def test_math_references_mix_integers_fractions_and_decimals():
    forms = {task.metadata["answer_form"] for task in MATH}
    assert forms == {"integer", "fraction", "decimal"}


def test_a_user_file_is_loaded_instead_of_the_shipped_sets(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [VALID, "", {**VALID, "id": "t-2"}])
    assert [task.id for task in load_tasks(path=path)] == ["t-1", "t-2"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**VALID, "kind": "poetry"}, "unknown kind"),
        ({key: value for key, value in VALID.items() if key != "goal"}, "'goal'"),
        ({**VALID, "kind": "code"}, "no entry_point"),
        ({**VALID, "split": "test"}, "unknown split"),
        ({**VALID, "metadata": {"level": 5}}, "metadata"),
        ({**VALID, "answer": "4"}, "unknown field"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_line_is_reported_with_its_file_and_line(tmp_path, row, message):
    path = write_lines(tmp_path / "bad.jsonl", [VALID, "", row])
    with pytest.raises(TaskFileError, match=re.escape("bad.jsonl:3: ") + ".*" + re.escape(message)):
        load_tasks(path=path)


def test_a_duplicate_id_is_reported(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [VALID, VALID])
    with pytest.raises(
        TaskFileError, match=r"dup.jsonl:2: duplicate task id 't-1' \(first at .*dup.jsonl:1\)"
    ):
        load_tasks(path=path)
