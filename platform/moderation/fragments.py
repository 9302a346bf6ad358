"""The ban list's live fragments (``/ws/live/?view=bans``), registered in ``live.fragments``."""

from __future__ import annotations

from django.template.loader import render_to_string
from live.fragments import register

from .models import Ban
from .selectors import ban_row


@register("bans")
def ban_list_fragment(event, *, run_id: int | None) -> str:
    """A new ban is added to the list, a lifted one removed."""
    if event.type == "peer_banned":
        ban = Ban.objects.select_related("run", "user").filter(pk=event.ban_id).first()
        if ban is None:
            return ""
        return render_to_string("moderation/_ban_push.html", {"ban": ban_row(ban)})
    if event.type == "peer_unbanned":
        return f'<div id="ban-{event.ban_id}" hx-swap-oob="delete"></div>'
    return ""
