"""Real Chromium (Debian's, via Playwright; nothing downloaded) on the product pages: the join box's copy
button, the charts (drawn, hover values, bans marked, updated live), the live leaderboard, and an organiser
creating, pausing, resuming and finishing a run. Saves the README screenshots under docs/img/."""

from __future__ import annotations

import re

import pytest

from tests.conftest import CHROMIUM_ARGS, ROOT
from tests.site.btard_site.test_browser import live_site  # noqa: F401 - the Daphne fixture

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]
IMG = ROOT / "docs" / "img"


@pytest.fixture
def people(db, settings):
    """Staff carol and volunteers alice and bob with real passwords (the server checks them)."""
    from tests.factories import UserFactory

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    out = {}
    for name, staff in (("carol", True), ("alice", False), ("bob", False)):
        user = UserFactory(username=name, is_staff=staff)
        user.set_password(f"{name}-long-password")
        user.save()
        out[name] = user
    return out


@pytest.fixture
def busy_run(people):
    """A run with five applied steps by alice, bob and erin, and erin banned at step 3 (with evidence)."""
    from moderation import services as moderation

    from tests.factories import RunFactory, UserFactory, make_peer
    from tests.site.product import play_step

    run = RunFactory(name="digits-demo", peers_per_group=4, min_peers=2, batch_size=32, checkpoint_every=0)
    erin = UserFactory(username="erin")
    made = [make_peer(run=run, user=u, client_version="0.1.0") for u in (people["alice"], people["bob"], erin)]
    peers = [peer for peer, _ in made]
    run.identities = [identity for _, identity in made]
    for i in range(5):
        play_step(run, peers, loss=2.3 * 0.8 ** i, accuracy=min(0.95, 0.2 + 0.15 * i))
    moderation.ban_peer(peer=peers[2], reason="part does not match its commitment", evidence_kind="bad_commitment",
                        evidence={"signers": 2, "group_size": 3}, source="verdict", step=3)
    return run, peers


def browser_for(pw, chromium_path):
    # a document served through page.route() has no address space of its own: without this flag Chromium's
    # local-network checks would block its websocket to 127.0.0.1
    return pw.chromium.launch(executable_path=chromium_path, headless=True,
                              args=[*CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"])


def site_policy() -> str:
    """The production Content-Security-Policy (no inline scripts), else a strict stand-in."""
    try:
        from btard_site.security import content_security_policy
    except ImportError:
        return "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:"
    return content_security_policy()


def _with_policy(route, request=None):
    """Serve every response of the site with the production CSP, whatever the test server's settings."""
    if route.request.resource_type != "document":
        route.continue_()
        return
    response = route.fetch(max_redirects=0)
    route.fulfill(response=response, headers={**response.headers, "content-security-policy": site_policy()})


def new_page(browser, base, *, login=None, width=1280, height=900, clipboard=False):
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=base)
    context.route("**/*", _with_policy)  # a CSP violation is a console error, which fails the test
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []
    # errors in the console (a CSP violation, a script error) and failed loads, except the browser's favicon
    page.on("console", lambda m: page.errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    if login:
        page.goto("/login/")
        page.fill("#id_username", login)
        page.fill("#id_password", f"{login}-long-password")
        page.click("main button[type=submit]")
        page.wait_for_url("**/me/")
    return page


def test_the_join_box_copies_this_sites_commands(live_site, busy_run, chromium_path, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    run, _ = busy_run
    with sync_playwright() as pw:
        browser = browser_for(pw, chromium_path)
        try:
            page = new_page(browser, live_site, login="alice", clipboard=True)
            page.goto(f"/runs/{run.pk}/")
            expect(page.locator("#join-token-link")).to_have_attribute("href", "/tokens/")
            button = page.locator("#join-box button.copy")
            button.focus()
            page.keyboard.press("Enter")  # keyboard works as well as a click
            expect(button).to_have_text("Copied")
            copied = page.evaluate("navigator.clipboard.readText()")
            assert f"btard-worker doctor --server {live_site}\n" in copied
            assert f"btard-worker --server {live_site} --run {run.pk}\n" in copied
            assert "BTARD_TOKEN" in copied and "pip install" in copied
            assert not page.errors, page.errors
        finally:
            browser.close()


def test_the_charts_draw_with_axes_hover_values_and_bans_and_follow_the_run_live(live_site, busy_run, people,  # noqa: F811
                                                                                chromium_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    from tests.site.product import play_step

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    run, peers = busy_run
    with sync_playwright() as pw:
        browser = browser_for(pw, chromium_path)
        try:
            page = new_page(browser, live_site)
            page.goto(f"/runs/{run.pk}/")
            charts = page.locator("#run-charts")
            expect(charts).to_have_attribute("data-ready", "1")
            expect(charts).to_have_attribute("data-points", "5")
            expect(charts).to_have_attribute("data-bans", "1")
            expect(page.locator("#run-charts canvas")).to_have_count(3)
            expect(page.locator("#chart-throughput .u-title")).to_have_text("throughput (samples/s)")
            expect(page.locator("#chart-loss .u-axis")).to_have_count(2)
            page.locator("#chart-accuracy").scroll_into_view_if_needed()
            box = page.locator("#chart-accuracy .u-over").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
            page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2, steps=5)
            legend = page.locator("#chart-accuracy .u-legend .u-series").nth(1).locator(".u-value")
            expect(legend).to_have_text(re.compile(r"^0\.\d{3}$"))
            expect(page.locator("#chart-accuracy .u-legend .u-series").nth(0).locator(".u-value")).to_have_text("4")
            expect(page.locator("body[data-live=open]")).to_have_count(1)
            page.screenshot(path=str(IMG / "run-page.png"), full_page=True)
            page.evaluate("window.__notReloaded = true")

            # two more steps, then an announcement from the organiser page: the push carries the new series
            play_step(run, peers[:2], loss=0.7, accuracy=0.9)
            play_step(run, peers[:2], loss=0.6, accuracy=0.92)
            staff = new_page(browser, live_site, login="carol")
            staff.goto("/organise/")
            staff.fill(f"#ann-{run.pk}", "checkpoint soon: keep your workers running")
            staff.locator(f"#organise-run-{run.pk} form[action$='/announce/'] button").click()
            staff.wait_for_url("**/organise/")
            expect(page.locator("#run-announcements")).to_contain_text("checkpoint soon", timeout=10_000)
            expect(charts).to_have_attribute("data-points", "7")
            assert page.evaluate("window.__notReloaded") is True
            assert not page.errors, page.errors

            phone = new_page(browser, live_site, width=390, height=844)
            phone.goto(f"/runs/{run.pk}/")
            expect(phone.locator("#run-charts")).to_have_attribute("data-ready", "1")
            too_wide = phone.evaluate("""[...document.querySelectorAll('body *')].filter(e => {
                const r = e.getBoundingClientRect(); return r.right > 391 && !e.closest('.table-wrap, pre');
            }).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)""")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1, too_wide
            phone.screenshot(path=str(IMG / "run-page-phone.png"), full_page=False)
        finally:
            browser.close()


def test_the_leaderboard_ranks_by_credit_and_updates_live(live_site, busy_run, people, chromium_path,  # noqa: F811
                                                         monkeypatch):
    from moderation import services as moderation
    from playwright.sync_api import expect, sync_playwright
    from runs import services as runs

    from tests.site.helpers import envelope

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    run, peers = busy_run
    with sync_playwright() as pw:
        browser = browser_for(pw, chromium_path)
        try:
            page = new_page(browser, live_site, login="alice")
            page.goto("/leaderboard/")
            rows = page.locator("#leaderboard-table tbody tr")
            expect(rows).to_have_count(3)
            expect(rows.nth(0)).to_have_class("me")
            expect(page.locator("#credit-rules")).to_contain_text("the samples the site assigned")
            expect(page.locator("tr[data-account=alice] td").nth(2)).to_have_text("160")
            expect(page.locator("body[data-live=open]")).to_have_count(1)
            page.screenshot(path=str(IMG / "leaderboard.png"), full_page=True)
            page.evaluate("window.__notReloaded = true")

            # an ELIMINATE case against bob's peer; staff confirm the ban in the browser (server-side event)
            alice_peer, bob_peer = peers[0], peers[1]
            identity = run.identities[0]
            runs.start_step_if_ready(run=run)
            run.refresh_from_db()
            entry = runs.accept_broadcast(peer=alice_peer, envelope=envelope(
                identity, run, phase="eliminate", payload={"type": "eliminate", "target": bob_peer.peer_id,
                                                           "reason": "never sent its part"}))
            case = moderation.record_elimination(entry=entry)
            staff = new_page(browser, live_site, login="carol")
            staff.goto("/moderation/")
            form = staff.locator(f"#case-{case.pk} form")
            form.locator("input[name=reason]").fill("withholds its parts")
            form.locator("select[name=peer]").select_option(str(bob_peer.pk))
            form.locator("button[value=ban]").click()
            staff.wait_for_url("**/moderation/")
            expect(page.locator("tr[data-account=bob] td").nth(5)).to_have_text("1", timeout=10_000)
            assert page.evaluate("window.__notReloaded") is True

            me = new_page(browser, live_site, login="alice")
            me.goto("/me/")
            expect(me.locator("#my-rank")).to_have_text("#1")
            expect(me.locator("#contribution")).to_have_text("160")

            # the public status and trust pages, and a ban's evidence, under the same CSP and by keyboard
            me.goto("/network/")
            expect(me.locator(f"#network-run-{run.pk} .network-online")).to_have_text("1")  # bob was just banned
            expect(me.locator("svg.histogram rect")).not_to_have_count(0)
            me.goto("/trust/")
            expect(me.locator("#no-secrets")).to_contain_text("never ask for your worker token or your password")
            me.keyboard.press("Tab")
            expect(me.locator("a.skip-link")).to_be_focused()
            me.locator("#trust-bans a").first.click()
            expect(me.locator("#ban-evidence")).to_contain_text("never sent its part")  # the newest: bob's, on the case
            assert not page.errors and not me.errors, page.errors + me.errors
        finally:
            browser.close()


def test_an_organiser_creates_pauses_resumes_and_finishes_a_run(live_site, people, chromium_path,  # noqa: F811
                                                               monkeypatch):
    from playwright.sync_api import expect, sync_playwright
    from runs.models import Run

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = browser_for(pw, chromium_path)
        try:
            page = new_page(browser, live_site, login="carol")
            page.goto("/organise/")
            page.fill("#id_name", "fashion-night")
            page.select_option("#id_task", "fashion-cnn")
            page.fill("#id_min_peers", "99")  # above the group size: refused with the reason, nothing lost
            page.click("#create-run-form button[type=submit]")
            expect(page.locator("#organise-error")).to_be_visible()
            expect(page.locator("#create-run-form")).to_contain_text("cannot exceed the group size")
            expect(page.locator("#id_name")).to_have_value("fashion-night")
            page.fill("#id_min_peers", "3")
            page.click("#create-run-form button[type=submit]")
            page.wait_for_url("**/organise/")
            run = Run.objects.get(name="fashion-night")
            assert (run.task, run.batch_size, run.min_peers) == ("fashion-cnn", 64, 3)
            row = page.locator(f"#organise-run-{run.pk}")
            expect(row).to_have_attribute("data-state", "open")
            page.screenshot(path=str(IMG / "organiser.png"), full_page=True)

            row.locator("button[value=pause]").click()
            expect(page.locator(f"#organise-run-{run.pk}")).to_have_attribute("data-state", "paused")
            page.locator(f"#organise-run-{run.pk} button[value=resume]").click()
            expect(page.locator(f"#organise-run-{run.pk}")).to_have_attribute("data-state", "open")
            page.locator(f"#organise-run-{run.pk} details.finish summary").click()
            page.fill(f"#finish-reason-{run.pk}", "target accuracy reached")
            page.locator(f"#organise-run-{run.pk} button[value=finish]").click()
            expect(page.locator(f"#organise-run-{run.pk}")).to_have_attribute("data-state", "finished")
            expect(page.locator("#organise-audit")).to_contain_text("run_finish")
            expect(page.locator("#organise-audit")).to_contain_text("target accuracy reached")

            page.goto(f"/runs/{run.pk}/")
            expect(page.locator("#run-state")).to_have_text("finished")
            expect(page.locator("#join-box")).to_contain_text("has finished")
            assert page.errors == [f"400 {live_site}/organise/runs/new/"], page.errors  # the refused form only
        finally:
            browser.close()
