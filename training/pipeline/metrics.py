"""Task metrics for finished artefacts: BLEU (documents), final-answer accuracy (math), unit-test
pass rate (code). Model output is untrusted and often malformed, so nothing here raises on it.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass
from fractions import Fraction

import sacrebleu

from training.pipeline.sandbox import run_python

# Longest numeral we turn into a Fraction; longer strings are compared as text instead.
MAX_NUMBER_CHARS = 200


def bleu(candidate: str, reference: str) -> float:
    """Sentence BLEU of candidate against reference, scaled to [0, 1]; 0.0 for empty text."""
    if not candidate.strip() or not reference.strip():
        return 0.0
    try:
        score = sacrebleu.sentence_bleu(candidate, [reference]).score / 100
    except Exception:  # sacrebleu can choke on odd input; a bad output scores 0
        return 0.0
    return min(max(score, 0.0), 1.0)


NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
ANSWER_IS = re.compile(r"answer\s*(?:is\b|:)\s*:?\s*([^\n]+?)\s*(?:\.\s|\.?\s*$|\n)", re.I | re.M)
ENDS_WITH_EQUALS = re.compile(r"=\s*([^=\n]+?)\s*\.?\s*$")


def _last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None


def math_answer(text: str) -> str | None:
    """Final answer in text: last \\boxed{}, "answer is X", a closing "= X", or the last number."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    stated = ANSWER_IS.findall(text)
    if stated:
        return stated[-1].strip().strip("$").strip() or None
    stripped = text.strip()
    last_line = stripped.splitlines()[-1] if stripped else ""
    equals = ENDS_WITH_EQUALS.search(last_line)
    if equals:
        return equals.group(1).strip().strip("$").strip() or None
    numbers = re.findall(NUMBER, text)
    return numbers[-1].replace(" ", "") if numbers else None


def _normalise(answer: str) -> str:
    """Strip formatting that does not change a final answer's value."""
    text = answer.strip().replace("\u2212", "-")
    boxed = _last_boxed(text)
    text = boxed if boxed is not None else text
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", text)
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\%", "%", "$", "\\$", "^\\circ"):
        text = text.replace(junk, "")
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text.strip())  # "x = 7" -> "7"
    text = text.strip().rstrip(".").strip()
    unit = re.fullmatch(rf"({NUMBER})\s+[a-zA-Z][a-zA-Z .]*", text)  # "12 apples" -> "12"
    if unit:
        text = unit.group(1)
    text = re.sub(r"\s+", "", text)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    return text


def _as_fraction(text: str) -> Fraction | None:
    """Exact value of an integer, finite decimal or a/b, else None (no scientific notation)."""
    if len(text) > MAX_NUMBER_CHARS:
        return None
    plain = r"\(?(-?\d+(?:\.\d+)?)\)?"
    single = re.fullmatch(plain, text)
    if single:
        return Fraction(single.group(1))
    ratio = re.fullmatch(rf"(-?){plain}/{plain}", text)
    if ratio:
        sign, top, bottom = ratio.groups()
        if Fraction(bottom) == 0:
            return None
        value = Fraction(top) / Fraction(bottom)
        return -value if sign else value
    return None


def math_equal(answer: str | None, reference: str) -> bool:
    """Whether answer has the same value as reference (exact fractions; text match otherwise)."""
    if answer is None:
        return False
    left, right = _normalise(answer), _normalise(reference)
    if not left:
        return False
    left_value, right_value = _as_fraction(left), _as_fraction(right)
    if left_value is not None and right_value is not None:
        return left_value == right_value
    return left == right


@dataclass(frozen=True)
class CodeResult:
    """How many of a task's test functions the candidate code passed."""

    pass_rate: float
    passed: int
    total: int
    error: str | None = None


FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)

# Runs inside the sandbox after the candidate's CODE, the TESTS and the TEST_NAMES to call. The
# marker comes from stdin, so a candidate printing a result-shaped line is not taken for the
# harness. Everything used after the candidate runs is bound beforehand (default arguments), so
# patching builtins, json or sys from the candidate does not change the tally; the numbers are
# formatted with %d, and the error is one of a few fixed stage names (details go to stderr).
# Progress is printed after every test so a later hang or crash still leaves the tally so far.
# This stops accidents and cheap tricks, not a determined adversary (see sandbox.py).
RUNNER = """
import builtins, os, sys, traceback


def _harness(code, tests, entry_point, test_names, write=os.write, run=exec, build=compile,
             fault=BaseException, print_exc=traceback.print_exc, flush=sys.stdout.flush,
             settrace=sys.settrace, setprofile=sys.setprofile, total=len(TEST_NAMES)):
    marker = sys.stdin.readline().strip()

    def report(passed, error):
        try:
            flush()
        except fault:
            pass
        line = '\\n%s {"passed": %d, "total": %d, "error": %s}\\n' % (
            marker, passed, total, '"' + error + '"' if error else "null")
        write(1, line.encode())

    report(0, None)
    namespace = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        run(build(code, "<candidate>", "exec"), namespace)
    except fault:
        print_exc()
        return report(0, "candidate")
    settrace(None)
    setprofile(None)
    if entry_point not in namespace:
        return report(0, "entry_point")
    try:
        run(build(tests, "<tests>", "exec"), namespace)
    except fault:
        print_exc()
        return report(0, "tests")
    passed = 0
    for name in test_names:
        try:
            namespace[name]()
            passed += 1
        except fault:
            print_exc()
        report(passed, None)


_harness(CODE, TESTS, ENTRY_POINT, TEST_NAMES)
"""

STAGE_ERRORS = {
    "candidate": "the code raised before the tests ran",
    "entry_point": "the code does not define the entry point",
    "tests": "the test code raised at import",
}


def extract_code(text: str) -> str:
    """The last ```python fenced block, else the last unlabelled fence, else the whole text."""
    blocks = FENCE.findall(text)
    for wanted in (("python", "py", "python3"), ("",)):
        labelled = [body for lang, body in blocks if lang.lower() in wanted]
        if labelled:
            return labelled[-1]
    return text


def _parse_report(stdout: str, marker: str) -> dict[str, object] | None:
    """The last harness line in stdout, or None when the harness never reported."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker + " "):
            try:
                report = json.loads(line[len(marker) + 1 :])
            except ValueError:
                return None
            return report if isinstance(report, dict) else None
    return None


def _test_names(tests: str) -> list[str] | None:
    """Top-level `def test_*` names in the test source, in order; None if it does not parse."""
    try:
        module = ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    names = [
        node.name
        for node in module.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
    return list(dict.fromkeys(names))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def code_pass_rate(
    code: str, tests: str, entry_point: str, *, timeout_s: float = 10, memory_mb: int = 512
) -> CodeResult:
    """Run the candidate code, then call each `test_*` function of tests, in the sandbox."""
    names = _test_names(tests)
    if not names:
        return CodeResult(0.0, 0, 0, "the tests define no test_* functions or do not parse")
    marker = "RESULT-" + secrets.token_hex(16)
    source = (
        f"CODE = {extract_code(code)!r}\nTESTS = {tests!r}\n"
        f"ENTRY_POINT = {entry_point!r}\nTEST_NAMES = {names!r}\n{RUNNER}"
    )
    result = run_python(source, timeout_s=timeout_s, memory_mb=memory_mb, stdin=marker + "\n")
    report = _parse_report(result.stdout, marker) or {}
    passed = report.get("passed")
    passed = passed if isinstance(passed, int) and 0 <= passed <= len(names) else 0
    stage = report.get("error")
    if result.timed_out:
        error: str | None = f"timed out after {timeout_s:g}s"
    elif isinstance(stage, str):
        error = f"{STAGE_ERRORS.get(stage, stage)}: {_last_line(result.stderr)}"
    elif not report:
        error = f"the test harness did not report: {_last_line(result.stderr)}"
    elif result.returncode != 0 and passed < len(names):
        error = f"the run exited with status {result.returncode}"
    else:
        error = None
    return CodeResult(passed / len(names), passed, len(names), error)
