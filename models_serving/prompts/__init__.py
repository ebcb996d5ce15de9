"""Versioned system prompts, stored as <name>/v<N>.txt beside this file."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

NO_PROMPT = "none"
_ROOT = Path(__file__).resolve().parent
_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_VERSION = re.compile(r"v([1-9][0-9]*)")


class PromptNotFoundError(LookupError):
    """No prompt file exists for the requested name or version."""


@dataclass(frozen=True)
class Prompt:
    """One system prompt text, pinned to its version and content hash."""

    name: str
    version: str
    text: str
    sha256: str

    @property
    def ref(self) -> str:
        """Return the reference stored on every assistant message: name@version#hash12."""
        if self.name == NO_PROMPT:
            return NO_PROMPT
        return f"{self.name}@{self.version}#{self.sha256[:12]}"


def _versions(name: str) -> list[str]:
    """Return the versions present for a prompt name, oldest first."""
    folder = _ROOT / name
    if not _NAME.fullmatch(name) or not folder.is_dir():
        return []
    found = [p.stem for p in folder.glob("v*.txt") if _VERSION.fullmatch(p.stem)]
    return sorted(found, key=lambda v: int(v[1:]))


def list_prompts() -> list[tuple[str, str]]:
    """Return every (name, version) available, sorted by name then version."""
    names = sorted(p.name for p in _ROOT.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))
    return [(name, version) for name in names for version in _versions(name)]


def load_prompt(name: str, version: str | None = None) -> Prompt:
    """Load a prompt by name and version (None = the highest vN); "none" is the empty prompt."""
    if name == NO_PROMPT:
        if version not in (None, ""):
            raise PromptNotFoundError(f'the "none" prompt has no versions (asked for {version!r})')
        return Prompt(name=NO_PROMPT, version="", text="", sha256=hashlib.sha256(b"").hexdigest())
    versions = _versions(name)
    if not versions:
        known = ", ".join(sorted({n for n, _ in list_prompts()} | {NO_PROMPT}))
        raise PromptNotFoundError(f"unknown prompt {name!r}; known prompts: {known}")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise PromptNotFoundError(
            f"prompt {name!r} has no version {version!r}; available: {', '.join(versions)}"
        )
    text = (_ROOT / name / f"{chosen}.txt").read_text(encoding="utf-8").strip()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Prompt(name=name, version=chosen, text=text, sha256=digest)
