"""Task metrics on real inputs: BLEU, final-answer extraction and matching, sandboxed pass rate."""

import os
import socket
import time

import pytest

from training.pipeline.metrics import bleu, code_pass_rate, extract_code, math_answer, math_equal
from training.pipeline.sandbox import run_python

ADD_TESTS = """
def test_small_numbers():
    assert add(1, 2) == 3


def test_negative_numbers():
    assert add(-4, 1) == -3
"""
ADD = "def add(a, b):\n    return a + b\n"


def test_bleu_of_identical_text_is_one():
    text = "The quick brown fox jumps over the lazy dog near the quiet river bank."
    assert bleu(text, text) == pytest.approx(1.0)


def test_bleu_of_unrelated_text_is_low():
    reference = "Compost needs a balance of wet greens and dry browns to break down."
    assert bleu("Pipes fill tanks at different rates every hour.", reference) < 0.1


def test_bleu_of_an_empty_candidate_is_zero():
    assert bleu("", "Some reference text that is not empty.") == 0.0


def test_bleu_of_a_partial_match_lies_between_zero_and_one():
    reference = "My balcony is barely wide enough for two chairs and a compost bin."
    score = bleu("My balcony is barely wide enough for two chairs.", reference)
    assert 0.0 < score < 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the result is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
        ("First \\boxed{2}, corrected: \\boxed{5}", "5"),
        ("Nested: \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("After simplifying, the answer is 2.5.", "2.5"),
        ("The final answer is $-6$.", "-6"),
        ("Adding them up: 3 + 4 = 7.", "7"),
        ("She had 12 apples and sold 1,250 pears", "1,250"),
    ],
)
def test_math_answer_finds_the_final_answer(text, expected):
    assert math_answer(text) == expected


def test_math_answer_returns_none_without_any_answer():
    assert math_answer("I am not sure how to solve this.") is None


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("\\frac{3}{4}", "3/4"),
        ("\\dfrac{15}{8}", "15/8"),
        ("-\\frac{1}{2}", "-0.5"),
        ("0.75", "3/4"),
        ("3.50", "3.5"),
        ("$64.80$.", "64.8"),
        ("1,234", "1234"),
        ("50\\%", "50"),
        ("x = 9", "9"),
        ("126 \\text{ square centimetres}", "126"),
        ("\\boxed{12/5}", "2.4"),
        ("10/4", "5/2"),
    ],
)
def test_math_equal_ignores_formatting(answer, reference):
    assert math_equal(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [("0.333", "1/3"), ("7", "8"), ("-6", "6"), ("", "0"), (None, "1"), ("1e999999999", "1")],
)
def test_math_equal_rejects_different_values(answer, reference):
    assert not math_equal(answer, reference)


def test_correct_code_passes_every_test():
    assert code_pass_rate(ADD, ADD_TESTS, "add").pass_rate == 1.0


def test_partly_correct_code_gets_partial_credit():
    result = code_pass_rate("def add(a, b):\n    return abs(a) + b\n", ADD_TESTS, "add")
    assert (result.passed, result.total, result.pass_rate) == (1, 2, 0.5)


def test_a_syntax_error_scores_zero_with_an_error():
    result = code_pass_rate("def add(a, b) return a + b", ADD_TESTS, "add")
    assert result.pass_rate == 0.0
    assert result.error is not None and "SyntaxError" in result.error


def test_missing_entry_point_scores_zero_with_an_error():
    result = code_pass_rate("def plus(a, b):\n    return a + b\n", ADD_TESTS, "add")
    assert result.pass_rate == 0.0
    assert result.error is not None and "entry point" in result.error


def test_an_infinite_loop_times_out_within_the_limit():
    started = time.monotonic()
    result = code_pass_rate(
        "def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, "add", timeout_s=1
    )
    assert result.pass_rate == 0.0 and result.total == 2
    assert result.error is not None and "timed out" in result.error
    assert time.monotonic() - started < 30


def test_a_memory_bomb_fails():
    bomb = "def add(a, b):\n    blocks = [bytearray(10**8) for _ in range(100)]\n    return a + b\n"
    assert code_pass_rate(bomb, ADD_TESTS, "add", memory_mb=256).pass_rate == 0.0


def test_writing_a_large_file_fails():
    writer = (
        "def add(a, b):\n"
        "    with open('big.bin', 'wb') as handle:\n"
        "        handle.write(b'x' * 5 * 1024 * 1024)\n"
        "    return a + b\n"
    )
    assert code_pass_rate(writer, ADD_TESTS, "add").pass_rate == 0.0


def test_opening_a_socket_fails():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        caller = (
            "import socket\n"
            "def add(a, b):\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    return a + b\n"
        )
        assert code_pass_rate(caller, ADD_TESTS, "add").pass_rate == 0.0


def test_candidate_output_does_not_break_the_tally():
    noisy = (
        'print(\'{"passed": 99, "total": 99, "error": null}\')\n'
        "import sys\n"
        "sys.stdout.write('no newline at the end')\n"
        "def add(a, b):\n"
        "    print('RESULT- {\"passed\": 2}')\n"
        "    return a + b if a > 0 else 0\n"
    )
    result = code_pass_rate(noisy, ADD_TESTS, "add")
    assert (result.passed, result.total) == (1, 2)


def test_tests_defined_by_the_candidate_are_not_counted():
    cheat = ADD.replace("a + b", "0") + "def test_free():\n    pass\n"
    result = code_pass_rate(cheat, ADD_TESTS, "add")
    assert (result.passed, result.total) == (0, 2)


def test_code_is_taken_from_the_last_python_fence():
    reply = (
        "Here is a first try:\n```python\ndef add(a, b):\n    return 0\n```\n"
        f"Better:\n```python\n{ADD}```\nHope this helps!"
    )
    assert code_pass_rate(reply, ADD_TESTS, "add").pass_rate == 1.0


def test_text_without_fences_is_used_whole():
    assert extract_code(ADD) == ADD


def test_the_sandbox_removes_its_working_directory():
    result = run_python("import os\nprint(os.getcwd())", timeout_s=10, memory_mb=256)
    assert result.returncode == 0
    assert not os.path.exists(result.stdout.strip())


def test_the_sandbox_passes_no_proxy_settings(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = run_python("import os\nprint(sorted(os.environ))", timeout_s=10, memory_mb=256)
    assert "PROXY" not in result.stdout.upper()


def is_running(pid):
    """Whether pid is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_sandbox_kills_the_whole_process_group_on_timeout():
    spawner = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    result = run_python(spawner, timeout_s=2, memory_mb=256)
    assert result.timed_out
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(pid)
