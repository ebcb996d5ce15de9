"""Participant-facing strings are marked for translation (makemessages finds them)."""

import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

REPO = Path(settings.BASE_DIR)
pytestmark = pytest.mark.skipif(
    shutil.which("xgettext") is None or shutil.which("msguniq") is None,
    reason="GNU gettext (xgettext, msguniq) is not installed",
)


def make_po(tmp_path: Path, monkeypatch, settings, domain: str, copies: dict[str, str]) -> str:
    """Copy sources into tmp_path, run makemessages there and return the .po text.

    LOCALE_PATHS points into tmp_path so nothing is ever written into the repository.
    """
    for target, source in copies.items():
        shutil.copytree(REPO / source, tmp_path / target, ignore=shutil.ignore_patterns("vendor"))
    (tmp_path / "locale").mkdir()
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    monkeypatch.chdir(tmp_path)
    call_command("makemessages", locale=["xx"], domain=domain, no_wrap=True, verbosity=0)
    po = tmp_path / "locale" / "xx" / "LC_MESSAGES" / f"{domain}.po"
    return po.read_text() if po.exists() else ""  # makemessages writes nothing when it finds none


@pytest.mark.parametrize(
    "msgid",
    [
        "I agree and want to take part",
        "Check my answers",
        "Your completion code is",
        "Preview: nothing you do here enters the study's data.",
        "The time for this study has run out. Thank you.",
        "You did not consent; you may close this page.",
        "What did the assistant do well?",
        "Please write at least %(shortest)s characters so the assistant can help you.",
        "Please rate the conversation so far to continue.",
        "Only the last reply that was cut off at the length limit can be continued.",
        "This document was changed in another tab.",
        "Yes, finish the chat",
        "Submit rating",
        "The assistant is writing…",
        "Jump to the latest message",
        "Copy the code",
    ],
)
def test_participant_page_strings_are_extracted(tmp_path, monkeypatch, settings, msgid):
    po = make_po(
        tmp_path,
        monkeypatch,
        settings,
        "django",
        {"studies": "studies", "webapp": "webapp"},
    )
    assert f'msgid "{msgid}"' in po


@pytest.mark.parametrize(
    "msgid",
    [
        "Retry this reply",
        "Turns completed: %(done)s of at least %(min)s.",
        "Reconnecting… your messages are safe.",
        "This reply was cut off at the length limit.",
        "Assistant (continued)",
        "Insert into document",
        "Not saved: %(reason)s",
        "Time left: %(time)s",
        "Please choose a rating from 1 to 10 first.",
        "Copied",
    ],
)
def test_chat_script_strings_are_extracted(tmp_path, monkeypatch, settings, msgid):
    po = make_po(tmp_path, monkeypatch, settings, "djangojs", {"js": "webapp/static/js"})
    # xgettext only knows gettext()/ngettext()/...: an alias such as t("...") is not extracted.
    assert f'msgid "{msgid}"' in po, f"{msgid!r} is not marked with gettext() in chat.js"
