"""Browser tests of the status page (headless Chromium)."""
