"""The web page at / in headless Chromium (Debian's chromium, driven by Playwright; no browser
is downloaded): list and search edits, add one through the form, ask a question and see
which edit fired. Saves a screenshot (``RECALL_WEB_SCREENSHOT=path`` keeps a copy)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, UNRELATED, open_cached_runtime

from recall.server import ServerConfig, create_app
from recall.server.background import running

CHROMIUM = os.environ.get("RECALL_CHROMIUM", "/usr/bin/chromium")
TOKEN = "web-token-0123456789abcdef"
MODEL = "smollm2-web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_web_page_lists_adds_asks_and_shows_fired_edit(browser, loaded_model, encoder, tmp_path):
    rt = open_cached_runtime(tmp_path / "store", loaded_model, encoder)
    app = create_app(rt, ServerConfig(token=TOKEN, model_name=MODEL), owns_runtime=True)
    with running(app) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        tower = {"prompt": "The Eiffel Tower is located in the city of", "target": "Rome", "subject": "Eiffel Tower"}
        assert httpx.post(f"{url}/v1/edits", json=tower, headers=auth).status_code == 201

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        assert MODEL in page.text_content("#status")
        assert page.locator("#edits tr").count() == 1

        # add an edit through the form: refused without the token, accepted with it
        page.fill("#factPrompt", FACT_PROMPT)
        page.fill("#factTarget", "English")
        page.fill("#factSubject", FACT_SUBJECT)
        page.click("#add")
        page.wait_for_function("document.querySelector('#addMsg').classList.contains('error')")
        assert "token" in page.text_content("#addMsg")
        page.fill("#token", TOKEN)
        page.click("#add")
        page.wait_for_function("document.querySelector('#addMsg').textContent.startsWith('added ')")
        fact_id = page.text_content("#addMsg").removeprefix("added ").strip()
        page.wait_for_function("document.querySelectorAll('#edits tr').length === 2")

        # search
        page.fill("#search", "darrieux")
        page.click("#refresh")
        page.wait_for_function("document.querySelectorAll('#edits tr').length === 1")
        assert fact_id in page.text_content("#edits")

        # ask: the answer, and the edit that fired, highlighted in the table
        page.fill("#prompt", UNRELATED)
        page.click("#ask")
        page.wait_for_selector("#noneFired", timeout=60_000)
        page.fill("#prompt", FACT_PROMPT)
        page.click("#ask")
        page.wait_for_selector("#firedBox .fired", timeout=60_000)
        assert page.text_content("#answer").strip().startswith("English")
        fired = page.text_content("#firedBox")
        assert fact_id in fired and "English" in fired
        page.wait_for_selector("#edits tr.hit")
        assert fact_id in page.text_content("#edits tr.hit")

        shot = tmp_path / "serving_web.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("RECALL_WEB_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["RECALL_WEB_SCREENSHOT"])
        assert errors == []
        page.close()
