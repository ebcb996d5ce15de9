"""The stream_overhead benchmark (benchmarks/stream_overhead.py is its command), in parts that
each read alone:

- config.py: the settings of a run (`Config`), defaults, the progress log;
- stamped_model.py: the fake model whose every token carries its emission time;
- processes.py: the child processes (the fake, the web processes);
- database.py: the benchmark's database, its seeded participants and its commit counters;
- counters.py: CPU counters of every process and of the machine;
- clients.py: the measuring clients, platform path (websockets) and direct path (httpx);
- stats.py: percentiles and summaries over the turns;
- harness.py: the phases per token gap and N, and the whole run;
- report.py: the targets and the markdown tables.
"""
