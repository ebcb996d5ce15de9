"""The stream benchmark's command refuses options it cannot run with, before it starts anything."""

import pytest

from benchmarks import stream_overhead


@pytest.mark.parametrize("value", ["0", "-2"])
def test_the_stream_benchmark_refuses_fewer_than_one_web_process(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        stream_overhead.parse_args(["--web-processes", value])
    assert exit_.value.code == 2  # argparse's usage error, with the reason
    assert "--web-processes" in capsys.readouterr().err


def test_the_stream_benchmark_takes_several_web_processes():
    assert stream_overhead.parse_args(["--web-processes", "3"]).web_processes == 3
    assert stream_overhead.parse_args([]).web_processes == 1
