"""ComfyUI progress bars that also honour the user's interrupt.

ComfyUI surface used: `comfy.utils.ProgressBar(total, node_id)` / `.update_absolute`,
`comfy.model_management.throw_exception_if_processing_interrupted`.
"""

from __future__ import annotations

import comfy.model_management
import comfy.utils


class NodeProgress:
    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.bar = comfy.utils.ProgressBar(max(total, 1), node_id=node_id)

    def update(self, done: int, total: int | None = None) -> None:
        """Report `done` of `total`; raises ComfyUI's interrupt exception if the user pressed cancel."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)
