"""The browser check itself: a page with a console error, a failing script or a broken image must fail it."""

from __future__ import annotations

import pytest
from headless_chromium import check_page, require_browser

if require_browser() is None:
    pytest.skip("chromium is not installed (make test installs it as root)", allow_module_level=True)


def test_a_clean_page_passes_and_is_captured(tmp_path):
    page = tmp_path / "ok.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><h1>hello</h1></body></html>'
    )
    check = check_page(page)
    assert check.console_errors == [] and check.broken_images == [] and check.images == 0
    assert check.screenshot_array().shape[2] == 3


def test_console_errors_exceptions_and_broken_images_are_caught(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="missing.png" alt="gone"><script>console.error("boom"); undefined_function();</script>'
        "</body></html>"
    )
    check = check_page(page)
    assert check.images == 1 and check.broken_images == ["missing.png"]
    text = "\n".join(check.console_errors)
    assert "boom" in text and "undefined_function" in text
    assert "missing.png" in text  # the failed load, from the browser's own log
