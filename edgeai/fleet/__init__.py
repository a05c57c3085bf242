"""``edgeai fleet status``: the fleet as the collector sees it, as a table or JSON."""

__all__: list[str] = []
