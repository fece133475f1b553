"""The README's screenshots, taken in headless Chromium (Debian's `chromium` and `chromium-driver`).

    python -m benchmarks.screenshots dashboard http://127.0.0.1:8765/ docs/dashboard_demo.png

`dashboard`: a served `adl dashboard` (e.g. `adl demo --dashboard` after a demo run): steers the base model
with delta at position 2 and colours a text by KL, then saves the page; prints the texts it got.
"""

import argparse
import shutil

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PROMPT = "What should I cook for dinner tonight?"
TEXT = "Orange carrots were first bred in Denmark in 1921 by a gardener near Odense."


def browser(width: int = 1300, height: int = 2200) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )


def dashboard(url: str, out: str) -> None:
    driver = browser()
    wait = WebDriverWait(driver, 900)  # steering on CPU takes a while
    by_id = lambda i: driver.find_element(By.ID, i)
    try:
        driver.get(url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        by_id("prompt").send_keys(PROMPT)
        driver.execute_script("document.getElementById('position').value = '2';")
        driver.execute_script("document.getElementById('model').value = 'base';")
        for field, value in (("alpha", "0.4"), ("samples", "2"), ("new-tokens", "40")):
            by_id(field).clear()
            by_id(field).send_keys(value)
        by_id("steer").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steered .sample"))
        for side in ("steered", "unsteered"):
            print(side, [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#{side} .sample")])
        by_id("kl-input").send_keys(TEXT)
        by_id("show-kl").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#kl-text .kl"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            raise SystemExit(f"the page logged errors: {errors}")
        driver.save_screenshot(out)
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="page", required=True)
    db = sub.add_parser("dashboard", help="a served adl dashboard")
    db.add_argument("url")
    db.add_argument("out", help="PNG to write")
    a = ap.parse_args()
    dashboard(a.url, a.out)


if __name__ == "__main__":
    main()
