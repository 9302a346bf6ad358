"""Volunteer pages (sign-up, my page, tokens) and the worker's token check. Thin: parse, call, render."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import selectors, services
from .forms import SignupForm
from .models import WorkerToken


def client_address(request) -> str:
    """The client's address: ``X-Forwarded-For`` only from a configured trusted proxy."""
    from btard_site.security import client_address as real_address

    return real_address(request)


def signup(request):
    if request.user.is_authenticated:
        return redirect("/me/")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        from btard_site.security import throttle

        try:
            services.check_signup_allowed(address=client_address(request))
            if throttle("signup:email", form.cleaned_data["email"].strip().casefold(),
                        limit=settings.SIGNUP_LIMIT_PER_EMAIL, window=settings.SIGNUP_LIMIT_WINDOW_SECONDS):
                raise services.SignupLimited("Too many sign-ups with this e-mail address; please try again later.",
                                             settings.SIGNUP_LIMIT_WINDOW_SECONDS)
        except services.SignupLimited as exc:
            response = render(request, "registration/signup.html", {"form": form, "limited": str(exc)}, status=429)
            response["Retry-After"] = str(exc.retry_after)
            return response
        user = services.sign_up(username=form.cleaned_data["username"], email=form.cleaned_data["email"],
                                password=form.cleaned_data["password1"])
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Create a worker token to start contributing.")
        return redirect("/tokens/")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def me(request):
    return render(request, "volunteers/me.html", selectors.volunteer_page(request.user))


@login_required
def tokens(request):
    volunteer = services.volunteer_for(request.user)
    created = None
    if request.method == "POST":
        if volunteer.is_banned:
            return render(request, "volunteers/tokens.html",
                          {"tokens": selectors.tokens_of(request.user), "can_create": False}, status=403)
        from btard_site.security import throttle

        wait = throttle("tokens:addr", client_address(request), limit=settings.TOKENS_PER_ADDRESS_PER_HOUR,
                        window=3600)
        try:
            if wait is not None:
                raise services.TokenLimit(f"Too many tokens created from your address; try again in "
                                          f"{max(1, wait // 60)} minutes.")
            created = services.create_worker_token(user=request.user, name=request.POST.get("name", ""))
        except services.TokenLimit as exc:
            messages.error(request, str(exc))
            response = render(request, "volunteers/tokens.html",
                              {"tokens": selectors.tokens_of(request.user), "can_create": True,
                               "limited": str(exc)}, status=429)
            response["Cache-Control"] = "no-store"
            return response
    context = {"tokens": selectors.tokens_of(request.user), "created": created,
               "can_create": not volunteer.is_banned}
    # shown once: rendered into this response only, never stored or redirected through the session
    response = render(request, "volunteers/tokens.html", context, status=201 if created else 200)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def revoke_token(request, pk: int):
    token = get_object_or_404(WorkerToken, pk=pk, user=request.user)
    services.revoke_worker_token(token=token, actor=request.user)
    messages.info(request, f"Token {token.name} revoked; its worker was disconnected.")
    return redirect("/tokens/")


@require_GET
def worker_check(request):
    """``GET /api/worker/check`` with ``Authorization: Bearer <token>``: 200, or 401/403 with the close
    code the websocket would use and a reason for humans."""
    from btard_site.security import throttle

    wait = throttle("token-check:addr", client_address(request), limit=settings.TOKEN_CHECK_LIMIT_PER_ADDRESS,
                    window=60)
    if wait is not None:
        response = JsonResponse({"ok": False, "code": "rate_limited",
                                 "reason": f"too many token checks from your address; retry in {wait} s"}, status=429)
        response["Retry-After"] = str(wait)
        return response
    try:
        token = services.authenticate_bearer(request.headers.get("Authorization"))
    except services.TokenRefused as exc:
        return JsonResponse({"ok": False, "code": exc.close_code, "reason": exc.reason}, status=exc.http_status)
    return JsonResponse({"ok": True, "account": token.user.username, "token": f"btard_{token.prefix}_...",
                         "name": token.name})
