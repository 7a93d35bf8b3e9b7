"""Selective INT8: keep a node in INT8 only where it is measurably faster than FP32 with its Q/DQ.

Full INT8 coverage is not always a win. On small convolutions (MediaPipe's face mesh: 16-32
channel depthwise/pointwise blocks) ORT's u8s8 kernels are no faster than its FP32 NCHWc
kernels, and every float-only op (per-channel PRelu: ORT has no QDQ selector for it) costs a
standalone QuantizeLinear + DequantizeLinear + layout Transposes. :func:`quantize_selective`

1. quantizes the whole model with :func:`edgequant.qdq.quantize_static_optimized`;
2. profiles FP32 and INT8 per node on a device (ORT profiler ``_kernel_time`` events on the CPU;
   names at the ALL level are the original node names plus ``_nchwc`` / ``_token_N`` suffixes);
3. fits a cost model ``sum(INT8 or FP32 node time) + c * elements crossing a float/INT8 boundary``
   whose two end points (all INT8, all FP32) reproduce the measured profiles exactly, and
   searches (greedy, legal moves only) for the set of nodes to leave in float;
4. builds the candidates by *removing* Q/DQ around the float nodes (a post-pass on the INT8
   model, see :func:`apply_float_nodes`), checks on ORT's optimized graph that they really run
   float, and A/B-times FP32, full INT8 and the candidates interleaved in one process;
5. returns the fastest candidate that beats FP32 outside the noise, or says that no faster
   INT8 model was found, with the per-node profile that shows why.

Why a post-pass and not ``nodes_to_exclude``: ORT 1.32's ``WeightBiasQuantization`` re-quantizes
a float-weight Conv/Gemm sitting between a DequantizeLinear and a QuantizeLinear at load time,
so an excluded node whose neighbours are quantized runs INT8 anyway (benchmarks/FINDINGS.md).
Here a float node reads its input *before* the Q when the producer is float too, and a float
node that would still sit between a DQ (from an INT8 producer) and a Q (to an INT8 consumer)
is an illegal configuration the search never proposes.

One job per module: :mod:`.plan` (graph analysis), :mod:`.cost` (cost model and search),
:mod:`.rewrite` (the Q/DQ post-pass), :mod:`.search` (the measured end-to-end job).
"""

from edgequant.qdq.selective.cost import CostModel, profile_aliases, search_float_nodes
from edgequant.qdq.selective.plan import QdqPlan, analyse, boundaries, boundary_elements, sandwiched
from edgequant.qdq.selective.rewrite import apply_float_nodes
from edgequant.qdq.selective.search import Profiler, SelectiveSummary, Timer, device_timer, quantize_selective

__all__ = ["CostModel", "Profiler", "QdqPlan", "SelectiveSummary", "Timer", "analyse", "apply_float_nodes",
           "boundaries", "boundary_elements", "device_timer", "profile_aliases", "quantize_selective",
           "sandwiched", "search_float_nodes"]
