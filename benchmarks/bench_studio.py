"""How fast ``emorig studio`` answers a slider, in a real browser, on a 512^2 photo.

Usage: ``python benchmarks/bench_studio.py [--moves N] [--screenshot PATH]``

Starts the studio on a free local port, opens it in Debian's headless Chromium (Selenium
through Debian's chromedriver), uploads scikit-image's astronaut (512 x 512) and moves the
smile, jaw, yaw and emotion controls N times each. Reported per control: the round trip from
the key press to the new preview image in the page (median / max), and the server's own
preview time (what the page's timing line says) as the baseline measured in the same run;
target: the round trip within ``TARGET_S``. With ``--screenshot`` the page is saved after the
last move (the README's picture: ``--screenshot docs/images/studio.png``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

TARGET_S = 1.0


def _wait(condition, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except Exception:  # re-rendered under us
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("the page did not answer")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1250"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _src(driver) -> str | None:
    images = driver.find_elements("css selector", "#preview img")
    return images[0].get_attribute("src") if images else None


def _move(driver, elem_id: str, value) -> tuple[float, float]:
    """Set a control; (round trip s, server preview s)."""
    from selenium.webdriver.common.keys import Keys

    before = _src(driver)
    if elem_id == "emotion":
        box = driver.find_element("css selector", "#emotion input")
        start = time.perf_counter()
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.ENTER)
    else:
        box = driver.find_element("css selector", f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        start = time.perf_counter()
        box.send_keys(str(value), Keys.ENTER)
    try:
        _wait(lambda: (s := _src(driver)) != before and s, 30)
    except TimeoutError:
        raise TimeoutError(f"no new preview after setting {elem_id} to {value}") from None
    round_trip = time.perf_counter() - start
    text = driver.find_element("css selector", "#timing").text
    found = re.search(r"preview (\d+\.\d+) s", text)
    return round_trip, float(found.group(1)) if found else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moves", type=int, default=5)
    p.add_argument("--screenshot", type=Path)
    args = p.parse_args()
    from skimage import data

    work = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    photo = work / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    from emorig.cli.studio import serve_in_background

    page, url = serve_in_background(work)
    driver = _browser()
    try:
        driver.get(url)
        _wait(lambda: _src(driver))
        driver.find_element("css selector", "#upload input[type=file]").send_keys(str(photo))
        _wait(lambda: "found by" in driver.find_element("css selector", "#quality").text, 120)
        plans = {
            "smile": [0.5, 1.0, 1.5, 1.0, 0.5],
            "jaw": [4, 8, 12, 8, 4],
            "yaw": [-8, -4, 4, 8, 0],
            "emotion": ["sad", "surprise", "happy", "fear", "none"],
        }
        print(f"{'control':8s} round trip median / max (s)   server preview median (s)")
        for name, values in plans.items():
            runs = [_move(driver, name, v) for v in (values * 4)[: args.moves]]
            trips, server = [r[0] for r in runs], [r[1] for r in runs]
            print(
                f"{name:8s} {statistics.median(trips):6.3f} / {max(trips):6.3f}"
                f"                  {statistics.median(server):6.3f}"
            )
        if args.screenshot:
            _move(driver, "smile", 0.0)
            _move(driver, "emotion", "surprise")
            _move(driver, "jaw", 6)
            body = driver.find_element("css selector", "body")
            _wait(lambda: "processing" not in body.text, 30)
            time.sleep(1.0)  # the last image fades in
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshot))
            print(f"screenshot -> {args.screenshot}")
    finally:
        driver.quit()
        page.close()
    print(f"target: a round trip within {TARGET_S:.0f} s on a 512^2 photo")


if __name__ == "__main__":
    main()
