"""The sandboxed `bash` default tool (SPEC §5): the `just-bash` interpreter over our VFS.

- `tool`     the tool itself (`bash_tool`): a fresh interpreter per call, limits, output;
- `fs`       the just-bash filesystem adapter over an instance's VFS;
- `patches`  fixes to just-bash where it differs from bash;
- `limits`   command, loop and wall-clock limits on just-bash's own counters;
- `output`   JSON-safe output cut to the tool-output limit.
"""

from regina.runtime.tools.bash.fs import VFSBashFs
from regina.runtime.tools.bash.output import truncate_output
from regina.runtime.tools.bash.tool import BashParams, bash_tool

__all__ = ["BashParams", "VFSBashFs", "bash_tool", "truncate_output"]
