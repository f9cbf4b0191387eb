"""The HTML report in a real browser (Debian's Chromium through Selenium): it loads with no
console errors and no network request, every metric's plot is drawn, and the numbers in
its tables equal summary.json (a run) and the means of the points' summaries (a sweep)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import fedsim
from fedsim.html_report import metric_names, write_html
from fedsim.report import collect
from fedsim.results import read_metrics
from fedsim.tracking import flatten
from tests.conftest import small_scenario


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "make test installs Debian's chromium and chromium-driver"
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=options)
    yield b
    b.quit()


def load(browser, page) -> None:
    """Open the page; no console message above info, and no request but the page itself."""
    browser.get_log("browser"), browser.get_log("performance")  # drop earlier pages' entries
    browser.get(page.as_uri())
    browser.execute_script("return document.readyState")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    urls = set()
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            urls.add(event["params"]["request"]["url"])
    assert urls == {page.as_uri()}


def drawn(browser, metric: str) -> list[int]:
    """[lines, filled bands] drawn in a metric's figure (plotly draws each as an SVG path)."""
    return browser.execute_script(
        "const d = document.getElementById(arguments[0]);"
        "if (!d) return [-1, -1];"
        "const n = (s) => Array.from(d.querySelectorAll(s)).filter((p) =>"
        "  (p.getAttribute('d') || '').length > 2 &&"
        "  (p.classList.contains('js-fill') || getComputedStyle(p).strokeWidth !== '0px')).length;"
        "return [n('.scatterlayer path.js-line'), n('.scatterlayer path.js-fill')];",
        f"plot-{metric}",
    )


def table(browser, table_id: str) -> dict[str, tuple[str, str]]:
    """data-key -> (exact value, shown text) of a key-value table's cells."""
    cells = browser.find_elements(By.CSS_SELECTOR, f"#{table_id} td[data-key]")
    return {c.get_attribute("data-key"): (c.get_attribute("data-value"), c.text) for c in cells}


def test_a_private_runs_page(browser, tmp_path):
    dp = {"mechanism": "dp_sgd", "noise_multiplier": 1.0}
    result = fedsim.run(small_scenario(rounds=3, privacy=dp), out=tmp_path / "run", quiet=True)
    page = write_html(result.run_dir)
    load(browser, page)
    rows = read_metrics(result.run_dir)
    metrics = metric_names(rows)
    assert {"train_loss", "eval_accuracy", "epsilon"} <= set(metrics)
    for metric in metrics:
        assert drawn(browser, metric) == [3, 0], metric  # one line per panel, no band

    summary = result.summary
    shown = table(browser, "final")
    expected = {f"final.{k}": v for k, v in summary["final"].items()} | {
        k: v for k, v in summary.items() if k not in ("final", "privacy")
    }
    numbers = {k: v for k, v in expected.items() if not isinstance(v, bool | str)}
    assert {k for k in shown if shown[k][0] is not None} == set(numbers)
    for key, value in numbers.items():
        exact, text = shown[key]
        assert float(exact) == value, key
        assert text == (f"{value:.6g}" if isinstance(value, float) else str(value)), key

    privacy = flatten(summary["privacy"])
    cells = table(browser, "privacy")
    assert set(cells) == set(privacy) and summary["privacy"]["mechanism"] == "dp_sgd"
    for key, value in privacy.items():
        exact, text = cells[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert float(exact) == value, key
        else:
            assert text == ("—" if value is None else str(value)), key

    clients = browser.find_elements(By.CSS_SELECTOR, "#clients tbody tr")
    assert len(clients) == len({r["partition"] for r in result.clients.to_dict("records")})
    assert "dp_sgd" in browser.find_element(By.ID, "scenario").text
    browser.save_screenshot(str(tmp_path / "run.png"))


def test_a_sweeps_page(browser, tmp_path):
    (tmp_path / "base.toml").write_text(small_scenario(rounds=2).to_toml())
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'name = "lr"\nbase = "base.toml"\nseeds = [0, 1]\n'
        '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.05, 0.3]\n'
    )
    result = fedsim.sweep(sweep, out=tmp_path / "out", quiet=True)
    page = write_html(result.sweep_dir)
    load(browser, page)
    _, rows = collect(result.sweep_dir)
    for metric in ("train_loss", "eval_accuracy"):
        assert drawn(browser, metric) == [2 * 3, 2 * 3], metric  # a line and a band per point

    cells = browser.find_elements(By.CSS_SELECTOR, "#means tbody tr")
    assert len(cells) == 2
    for point in (0, 1):
        summaries = [
            json.loads(
                (
                    result.sweep_dir / "points" / f"{point:03d}" / f"seed{s}" / "summary.json"
                ).read_text()
            )
            for s in (0, 1)
        ]
        row = browser.find_elements(By.CSS_SELECTOR, "#means tbody tr")[point]
        values = {
            c.get_attribute("data-key"): c.get_attribute("data-value")
            for c in row.find_elements(By.CSS_SELECTOR, "td[data-value]")
        }
        acc = [s["final"]["eval_accuracy"] for s in summaries]
        assert float(values["final_eval_accuracy mean"]) == pytest.approx(np.mean(acc), abs=0)
        assert float(values["final_eval_accuracy std"]) == pytest.approx(np.std(acc), abs=0)
        up = [s["total_bytes_up"] for s in summaries]
        assert float(values["total_bytes_up mean"]) == np.mean(up)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == len(rows) == 4
