"""The restricted runtime an algorithm runs in (pipeline step 5, issue #3).

Defence in depth, each layer assuming the others fail:

1. compile policy (``policy``): RestrictedPython plus OPAL rules; imports
   resolve to facades of vetted functions;
2. runtime guards (``_guards``): per-type attribute allowlists, vetted
   callables, writes only to the algorithm's own containers;
3. process isolation (``_isolation``, ``_zygote``): a fresh forked child per
   run with an empty environment, no inherited descriptors, rlimits, an
   unprivileged uid, seccomp, an empty network namespace, its own PID and IPC
   namespaces and an empty read-only root; no clock (``_clock``);
4. one output channel: the contributions table as Arrow IPC, checked by the
   trusted side against the declared columns and the caps on columns, rows,
   bytes, label length and gate memory before any pandas work; errors carry
   type and line, never data.

See docs/sandbox.md.
"""

from opal.sandbox.limits import LAYERS, Limits
from opal.sandbox.policy import check_source
from opal.sandbox.runtime import Runtime, active_layers, run_algorithm

__all__ = ["LAYERS", "Limits", "Runtime", "active_layers", "check_source", "run_algorithm"]
