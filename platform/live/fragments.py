"""The registry of live fragments: each app registers, by view name, the renderer of the htmx
out-of-band fragment its page needs for a live event (``runs.fragments``, ``moderation.fragments``,
``credit.fragments``, registered from their ``AppConfig.ready``). ``/ws/live/?view=<name>`` pushes what
the view's renderer returns; a renderer returns ``""`` for an event its page does not show.
"""

from __future__ import annotations

from collections.abc import Callable

Renderer = Callable[..., str]  # renderer(event, *, run_id: int | None) -> str
_RENDERERS: dict[str, Renderer] = {}


def register(view: str) -> Callable[[Renderer], Renderer]:
    """Register the fragment renderer of ``view`` (one per view name)."""

    def add(renderer: Renderer) -> Renderer:
        if _RENDERERS.get(view, renderer) is not renderer:
            raise ValueError(f"live view {view!r} already has a fragment renderer")
        _RENDERERS[view] = renderer
        return renderer

    return add


def registered_views() -> list[str]:
    return sorted(_RENDERERS)


def render_fragment(event, *, view: str, run_id: int | None) -> str:
    """The htmx out-of-band fragment ``view`` needs for ``event`` (``""`` when none).

    The apps' renderers use the same partial templates as the pages, so a push and a reload look the same.
    """
    renderer = _RENDERERS.get(view)
    return renderer(event, run_id=run_id) if renderer is not None else ""
