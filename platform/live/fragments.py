"""The registry of live fragments: each app registers, by view name, the renderer of the htmx
out-of-band fragment its page needs for a live event (``runs.fragments``, ``moderation.fragments``,
``credit.fragments``, registered from their ``AppConfig.ready``). ``/ws/live/?view=<name>`` pushes what
the view's renderer returns; a renderer returns ``""`` for an event its page does not show.
"""

from __future__ import annotations

from collections.abc import Callable

from btard_wire.registry import Registry

Renderer = Callable[..., str]  # renderer(event, *, run_id: int | None) -> str
RENDERERS: Registry[Renderer] = Registry("live view")


def register(view: str) -> Callable[[Renderer], Renderer]:
    """Register the fragment renderer of ``view`` (one per view name; a second one raises ValueError)."""
    return RENDERERS.register(view)


def registered_views() -> list[str]:
    return RENDERERS.names()


def render_fragment(event, *, view: str, run_id: int | None) -> str:
    """The htmx out-of-band fragment ``view`` needs for ``event`` (``""`` when none).

    The apps' renderers use the same partial templates as the pages, so a push and a reload look the same.
    """
    renderer = RENDERERS.get(view)
    return renderer(event, run_id=run_id) if renderer is not None else ""
