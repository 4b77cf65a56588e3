"""Physical (structured) channel pruning of conv nets, with its own dependency analysis.

- ``graph``: which output channels can be removed together (fx dependency analysis),
  ``channel_graph`` / ``cached_graph`` -> ``ChannelGraph`` of ``ChannelGroup``s.
- ``macs``: the analytic MACs model of a graph, exact for any group widths.
- ``selection``: ``select_channels``, the channels each group keeps for a MACs budget.
- ``surgery``: ``shrink`` (cut the channels out) and ``check_forward``.
- ``trace``: ``trace_model``, torch.fx tracing whose error names the module that failed.
"""

from pipeline.pruning.structure.graph import ChannelGraph, ChannelGroup, UnsupportedModelError, cached_graph, channel_graph
from pipeline.pruning.structure.selection import lowest_macs_ratio, select_channels
from pipeline.pruning.structure.surgery import check_forward, shrink

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "UnsupportedModelError",
    "cached_graph",
    "channel_graph",
    "check_forward",
    "lowest_macs_ratio",
    "select_channels",
    "shrink",
]
