"""F14 (site security review): the production Content-Security-Policy, under which the htmx pages and
their live sockets work in a real Chromium; docker-compose publishes only the TLS proxy's ports; Daphne
keeps websocket close reasons."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

import pytest
import yaml

from tests.conftest import CHROMIUM_ARGS, ROOT
from tests.site.helpers import running_daphne


def test_compose_publishes_only_the_proxys_ports_and_trusts_only_its_address():
    import ipaddress

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"proxy"}
    assert sorted(services["proxy"]["ports"]) == ["443:443", "80:80"]
    proxy_ip = services["proxy"]["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(proxy_ip) in ipaddress.ip_network(subnet)
    assert services["web"]["environment"]["BTARD_TRUSTED_PROXIES"] == proxy_ip
    assert "web:8000" in services["proxy"]["command"]


def production_settings(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(BTARD_PRODUCTION="1", SECRET_KEY="s" * 60, ALLOWED_HOSTS="testserver",
               PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
               DJANGO_SETTINGS_MODULE="btard_site.settings", **extra)
    return env


def test_production_settings_send_a_csp_and_refuse_numeric_passwords(tmp_path):
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "assert 'btard_site.security.SecurityHeadersMiddleware' in s.MIDDLEWARE; "
            "assert any(v['NAME'].endswith('NumericPasswordValidator') for v in s.AUTH_PASSWORD_VALIDATORS); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=production_settings(BTARD_VAR_DIR=str(tmp_path)),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.django_db
def test_the_csp_header_forbids_inline_script_eval_and_framing(client, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "btard_site.security.SecurityHeadersMiddleware"]
    policy = client.get("/").headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "Permissions-Policy" in client.get("/").headers


@pytest.fixture(scope="module")
def csp_site(tmp_path_factory):
    """Daphne with the CSP on, on its own SQLite database with one run; stopped by PID."""
    var = tmp_path_factory.mktemp("csp-site")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BTARD_VAR_DIR=str(var), BTARD_CSP="1", LOG_LEVEL="WARNING",
               PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
               DJANGO_SETTINGS_MODULE="btard_site.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], env=env, cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    subprocess.run([*manage, "shell", "-c", "from runs.models import Run; Run.objects.create(name='csp-run')"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    with running_daphne(env=env, log_path=var / "daphne.log", timeout=60) as base:
        yield base


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_htmx_pages_and_their_live_sockets_work_under_the_csp_in_chromium(csp_site, chromium_path):
    from playwright.sync_api import expect, sync_playwright

    with urllib.request.urlopen(csp_site + "/bans/") as response:
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                                    " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
            page = context.new_page()
            page.set_default_timeout(20_000)
            console = []
            page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
            for path, live in (("/", False), ("/signup/", False), ("/login/", False), ("/bans/", True),
                               ("/runs/1/", True), ("/leaderboard/", True), ("/network/", False)):
                page.goto(csp_site + path)
                if live:
                    expect(page.locator("body[data-live=open]")).to_have_count(1)
                    page.wait_for_timeout(300)
                assert page.evaluate("window.__csp") == [], (path, page.evaluate("window.__csp"))
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            browser.close()


@pytest.mark.timeout(120)
def test_daphne_keeps_the_reason_of_a_websocket_close(csp_site):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def refused():
        async with connect(csp_site.replace("http", "ws") + "/ws/worker/", open_timeout=20) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except ConnectionClosed as exc:
                return exc.rcvd.code, exc.rcvd.reason
        return None

    code, reason = asyncio.run(refused())
    assert code == 4001 and "token" in reason
