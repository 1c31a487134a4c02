"""Fake of comfy.utils.ProgressBar; every update is kept in UPDATES for the tests to read."""

UPDATES: list[tuple[str | None, int, int]] = []


class ProgressBar:
    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total, self.current, self.node_id = total, 0, node_id

    def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append((self.node_id, self.current, self.total))

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)
