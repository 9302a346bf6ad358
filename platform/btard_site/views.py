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
