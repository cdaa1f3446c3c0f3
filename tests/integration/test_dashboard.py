"""The dashboard in a real browser: headless Chromium sees six nodes up, a killed node go down, and come back.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and selenium;
skipped, with the reason, where they are missing. OBJSTORE_UPDATE_SCREENSHOTS=1 writes the screenshots to
docs/ (dashboard.png, all nodes up after the restart; dashboard-node-down.png); otherwise they go to the
test's temp dir, so a test run never changes tracked files.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from objstore.ops import set_pause
from tests.cluster import DevCluster, DevClusterFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs"
NODES_UP_TIMEOUT = 30.0
DOWN_TIMEOUT = 20.0  # down_after is 2 s, the page polls every second: a dead node shows down in a few seconds
TRAFFIC_SECONDS = 60.0

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a fresh profile and nothing fetched from outside."""
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_dashboard(driver: Any, cluster: DevCluster) -> None:
    """Send the admin's Basic credentials with every request of the page (as a browser does once signed in)."""
    token = base64.b64encode(f"{cluster.access_key}:{cluster.secret_key}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    driver.get(cluster.endpoint + "/_objstore/")


def node_states(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-node]')).map(e => [e.dataset.node, e.dataset.state]);"))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, driver: Any) -> float:
    """Poll until true; fail with what the page showed. Returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"dashboard: no {what} after {timeout:g}s; nodes shown: {node_states(driver)}")
        time.sleep(0.2)
    return time.monotonic() - start


class Traffic:
    """A little S3 traffic in a thread, so the charts have something to draw; bounded in time."""

    def __init__(self, cluster: DevCluster) -> None:
        self.s3 = cluster.s3(retries={"max_attempts": 1})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.requests = 0

    def run(self) -> None:
        self.s3.create_bucket(Bucket="dashboard")
        deadline = time.monotonic() + TRAFFIC_SECONDS
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = f"k{i % 20}"
            try:
                # 40 kB to 1.2 MB: small objects live inline in records, larger ones as shard files
                self.s3.put_object(Bucket="dashboard", Key=key, Body=os.urandom((i % 4) ** 3 * 40_000 + 40_000))
                self.s3.get_object(Bucket="dashboard", Key=key)["Body"].read()
                self.requests += 2
            except Exception:  # noqa: BLE001, S110 - a request that lands while a node dies may fail; the
                pass  # chart shows it and the test goes on
            i += 1
            self.stop.wait(0.05)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("OBJSTORE_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)
    return path


def test_dashboard_shows_a_killed_node_down_and_back_up(dev_cluster_factory: DevClusterFactory, browser: Any,
                                                       tmp_path: Path) -> None:
    cluster = dev_cluster_factory(down_after=2, node_settings={"heartbeat_interval": 0.3})
    cluster.require_gateway()
    ids = [n.id for n in cluster.nodes]
    open_dashboard(browser, cluster)
    assert "objstore" in browser.title

    with Traffic(cluster) as traffic:
        wait_for(lambda: node_states(browser) == {i: "up" for i in ids}, NODES_UP_TIMEOUT, "6 nodes up", browser)
        assert browser.find_element("id", "nodes-up").text == "6 / 6"
        zones = browser.execute_script("return Array.from(document.querySelectorAll('[data-zone]'))"
                                       ".map(z => z.dataset.zone).sort();")
        assert zones == sorted({n.zone for n in cluster.nodes})

        wait_for(lambda: traffic.requests >= 30, NODES_UP_TIMEOUT, "S3 traffic", browser)

        cluster.kill_node("n3")
        wait_for(lambda: node_states(browser).get("n3") == "down", DOWN_TIMEOUT, "n3 down", browser)
        assert browser.find_element("id", "nodes-up").text == "5 / 6"
        assert {k: v for k, v in node_states(browser).items() if k != "n3"} == {i: "up" for i in ids if i != "n3"}
        # the gateway finds it silent first; then the peers' failure detectors call it down too (down_after=2)
        n3_seen = "return document.querySelector('[data-node=\"n3\"] .seen').textContent;"
        wait_for(lambda: "see it down" in browser.execute_script(n3_seen), DOWN_TIMEOUT, "peers seeing n3 down",
                 browser)
        save_screenshot(browser, tmp_path, "dashboard-node-down.png")

        cluster.start_node("n3")
        wait_for(lambda: node_states(browser) == {i: "up" for i in ids}, NODES_UP_TIMEOUT, "n3 up again", browser)

        # An operator's pause of repair and scrub shows on the repair card until it is lifted.
        repair_tag = "return document.getElementById('repair-state').textContent;"
        paused = asyncio.run(set_pause(cluster.cluster_map(), cluster.secret, 600))
        assert set(paused) == set(ids) and all(isinstance(v, float) and v > 590 for v in paused.values()), paused
        wait_for(lambda: browser.execute_script(repair_tag) == "paused", DOWN_TIMEOUT, "repair paused", browser)
        assert "objstore resume" in browser.find_element("id", "repair-state").get_attribute("title")
        asyncio.run(set_pause(cluster.cluster_map(), cluster.secret, 0))
        wait_for(lambda: browser.execute_script(repair_tag) != "paused", DOWN_TIMEOUT, "repair resumed", browser)
        time.sleep(3.0)  # a few more polls, so the charts show the traffic after the restart
    assert traffic.requests > 0
    assert browser.find_element("id", "live").get_attribute("data-live") == "ok"
    shot = save_screenshot(browser, tmp_path, "dashboard.png")
    assert shot.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
