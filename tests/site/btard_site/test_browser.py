"""One real browser: sign up, create a token (shown once), and watch a ban arrive on the ban list page
without reloading. Chromium from Debian, driven by Playwright; the site runs under Daphne in a
subprocess against the test database (PostgreSQL, so the server process sees the test's commits)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import CHROMIUM_ARGS, ROOT
from tests.site.helpers import running_daphne

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

@pytest.fixture
def live_site(postgres_url, output_dir):
    """Daphne serving the site on the test database; stopped by PID even when the test fails."""
    from django.db import connection

    db = connection.settings_dict
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(DATABASE_URL=url, PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
               DJANGO_SETTINGS_MODULE="btard_site.settings", LOG_LEVEL="WARNING")
    with running_daphne(env=env, log_path=output_dir / "daphne.log", timeout=30) as base:
        yield base


@pytest.fixture
def pending_case(db, settings):
    """A staff member and an ELIMINATE case against bob's peer, ready to be confirmed."""
    from moderation import services as moderation
    from runs import services as runs

    from tests.factories import RunFactory, UserFactory, make_peer
    from tests.site.helpers import envelope

    # the server process checks passwords with the real hashers
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    carol = UserFactory(username="carol", is_staff=True)
    carol.set_password("carol-staff-password")
    carol.save()
    run = RunFactory(name="browser-run")
    (sender, identity), (target, _) = (make_peer(run=run, user=UserFactory(username="alice"), seed="s"),
                                       make_peer(run=run, user=UserFactory(username="bob"), seed="t"))
    runs.start_step_if_ready(run=run)
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id,
                                                   "reason": "never sent its part"}))
    case = moderation.record_elimination(entry=entry)
    return case, target


def test_a_volunteer_signs_up_gets_a_token_once_and_sees_a_ban_arrive_live(live_site, pending_case, chromium_path,
                                                                           output_dir, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    case, target = pending_case
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            volunteer = browser.new_context().new_page()
            volunteer.set_default_timeout(20_000)
            volunteer.goto(live_site + "/signup/")
            volunteer.fill("#id_username", "erin")
            volunteer.fill("#id_email", "erin@example.org")
            volunteer.fill("#id_password1", "a-long-pass-phrase-42")
            volunteer.fill("#id_password2", "a-long-pass-phrase-42")
            volunteer.click("button[type=submit]")
            volunteer.wait_for_url("**/tokens/")
            volunteer.fill("#token-name", "home-gpu")
            volunteer.click("#new-token-form button")
            secret = volunteer.locator("#token-secret")
            expect(secret).to_have_text(__import__("re").compile(r"^btard_[0-9a-f]{8}_\S+$"))
            raw = secret.inner_text()
            volunteer.screenshot(path=str(output_dir / "token-once.png"))
            volunteer.goto(live_site + "/tokens/")
            assert raw not in volunteer.content()
            expect(volunteer.locator("#token-list")).to_contain_text("home-gpu")

            volunteer.goto(live_site + "/bans/")
            expect(volunteer.locator("body[data-live=open]")).to_have_count(1)
            volunteer.evaluate("window.__notReloaded = true")
            expect(volunteer.locator(".ban-account")).to_have_count(0)

            staff = browser.new_context().new_page()
            staff.set_default_timeout(20_000)
            staff.goto(live_site + "/login/")
            staff.fill("#id_username", "carol")
            staff.fill("#id_password", "carol-staff-password")
            staff.click("button[type=submit]")
            staff.wait_for_url("**/me/")
            staff.goto(live_site + "/moderation/")
            form = staff.locator(f"#case-{case.pk} form")
            form.locator("input[name=reason]").fill("withholds its parts every epoch")
            form.locator("select[name=peer]").select_option(str(target.pk))
            form.locator("button[value=ban]").click()
            staff.wait_for_url("**/moderation/")

            # pushed over /ws/live/ (polling only runs while the socket is down)
            expect(volunteer.locator(".ban-account")).to_have_text("bob", timeout=10_000)
            assert volunteer.evaluate("window.__notReloaded") is True
            expect(volunteer.locator("#ban-rows")).to_contain_text("withholds its parts every epoch")
            volunteer.screenshot(path=str(output_dir / "ban-live.png"))
        finally:
            browser.close()
