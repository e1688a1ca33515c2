"""torch.optim wrappers (being written)."""

__all__: list[str] = []
