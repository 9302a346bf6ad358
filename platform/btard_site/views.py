from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render


def home(request):
    from runs.selectors import open_runs

    return render(request, "home.html", {"runs": open_runs()[:20]})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True, "database": connection.vendor})


def _too_many(request, wait: int, *, template: str, context: dict):
    from django.contrib import messages

    minutes = max(1, wait // 60)
    text = f"Too many attempts; please wait about {minutes} minute{'s' if minutes != 1 else ''} and try again."
    messages.error(request, text)
    response = render(request, template, {**context, "limited": text}, status=429)
    response["Retry-After"] = str(wait)
    return response


def _login_wait(request) -> int | None:
    """Throttle a login attempt per address and per account (F10); every POST counts."""
    from django.conf import settings

    from .security import throttled

    if request.method != "POST":
        return None
    return throttled(request, "login", account=request.POST.get("username") or None,
                     limit_address=settings.LOGIN_LIMIT_PER_ADDRESS, limit_account=settings.LOGIN_LIMIT_PER_ACCOUNT,
                     window=settings.LOGIN_LIMIT_WINDOW_SECONDS)


def login(request, *args, **kwargs):
    """``/login/``: Django's login view behind the per-address and per-account throttle."""
    from django.contrib.auth import views as auth_views
    from django.contrib.auth.forms import AuthenticationForm

    wait = _login_wait(request)
    if wait is not None:
        return _too_many(request, wait, template="registration/login.html",
                         context={"form": AuthenticationForm(request), "next": request.GET.get("next", "")})
    return auth_views.LoginView.as_view()(request, *args, **kwargs)


def admin_login(request, *args, **kwargs):
    """``/admin/login/``: the admin's login behind the same throttle."""
    from django.contrib import admin
    from django.http import HttpResponse

    wait = _login_wait(request)
    if wait is not None:
        response = HttpResponse("Too many login attempts; try again later.", status=429,
                                content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(wait)
        return response
    return admin.site.login(request, *args, **kwargs)
