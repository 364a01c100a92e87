"""`diffkit bench`: solver speed against quality, measured against exact answers.

The sweep is split into small modules, one concept each:

- `spec`: what to run (`BenchConfig`) and one unit of work (`RunSpec`, with its resume key);
- `plan`: which solvers and how each NFE budget becomes steps or an adaptive tolerance;
- `runner`: runners that execute a `RunSpec` (diffkit's own; the peer libraries' runners in
  `diffkit.peers.runners` plug in the same way);
- `quality`: exact comparison sets, metric floors and the tight-tolerance reference solution;
- `records`: the row schema and the results store (atomic rewrite per row, resume by key);
- `sweep`: the loop tying them together; `report` and `pareto`: tables, summary and plot;
- `compare`: diffkit against peer libraries (best per budget, per-step overhead per algorithm).
"""
