"""Versioned system prompts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from models_serving import prompts
from models_serving.prompts import PromptNotFoundError, list_prompts, load_prompt


@pytest.fixture
def prompt_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the loader at an empty prompt folder for the test."""
    monkeypatch.setattr(prompts, "_ROOT", tmp_path)
    return tmp_path


def write_prompt(root: Path, name: str, version: str, text: str) -> None:
    (root / name).mkdir(exist_ok=True)
    (root / name / f"{version}.txt").write_text(text, encoding="utf-8")


def test_without_a_version_the_numerically_highest_one_is_loaded(prompt_root):
    for version in ("v1", "v2", "v10"):
        write_prompt(prompt_root, "tone", version, f"text of {version}")
    assert load_prompt("tone").version == "v10"


def test_an_explicit_version_is_loaded_as_asked(prompt_root):
    write_prompt(prompt_root, "tone", "v1", "old")
    write_prompt(prompt_root, "tone", "v2", "new")
    assert load_prompt("tone", "v1").text == "old"


def test_the_ref_names_the_version_and_the_start_of_the_content_hash(prompt_root):
    write_prompt(prompt_root, "tone", "v3", "Be kind.\n")
    digest = hashlib.sha256(b"Be kind.").hexdigest()
    assert load_prompt("tone").ref == f"tone@v3#{digest[:12]}"


def test_editing_a_prompt_file_changes_its_ref(prompt_root):
    write_prompt(prompt_root, "tone", "v1", "Be kind.")
    before = load_prompt("tone").ref
    write_prompt(prompt_root, "tone", "v1", "Be brief.")
    assert load_prompt("tone").ref != before


def test_the_none_prompt_is_empty_with_ref_none():
    prompt = load_prompt("none")
    assert (prompt.text, prompt.ref) == ("", "none")


def test_an_unknown_name_is_an_error_that_lists_the_known_ones():
    with pytest.raises(PromptNotFoundError, match="collabllm"):
        load_prompt("no-such-prompt")


def test_an_unknown_version_is_an_error_that_lists_the_available_ones():
    with pytest.raises(PromptNotFoundError, match="available: v1"):
        load_prompt("proactive", "v99")


def test_a_name_that_points_outside_the_prompt_folder_is_unknown():
    with pytest.raises(PromptNotFoundError):
        load_prompt("../prompts")


def test_list_prompts_includes_the_shipped_proactive_and_collabllm_prompts():
    assert {("proactive", "v1"), ("collabllm", "v1")} <= set(list_prompts())


@pytest.mark.parametrize("name", ["proactive", "collabllm"])
def test_each_shipped_prompt_has_text(name):
    assert load_prompt(name).text.strip()
