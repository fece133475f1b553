"""The README's screenshots, taken in headless Chromium (Debian's `chromium` and `chromium-driver`, selenium).

    python -m benchmarks.screenshots layers --out runs/pages demo=runs/demo_layers mix05=... mix10=...
    python -m benchmarks.screenshots dashboard http://127.0.0.1:8765/ docs/dashboard_demo.png

`layers`: finished audits with `--layers all` (a new --out: the delta of `--layers all` is another run) are
linked as OUT/NAME (the cross-organism layout), their report.html rebuilt and OUT/organisms.html written;
the PNGs are each report's layer-profile section (OUT/NAME_layer_profile.png) and OUT/organisms.png, and each
profile's finding is printed. `dashboard`: a served `adl dashboard` (e.g. `adl demo --dashboard` after a
demo run) steers the base model with delta at position 2 and colours a text by KL, then the page is saved.
"""

import argparse
import shutil
from pathlib import Path

from adl_jax import io
from adl_jax.errors import InputError

PROMPT = "What should I cook for dinner tonight?"
TEXT = "Orange carrots were first bred in Denmark in 1921 by a gardener near Odense."


def browser(width: int = 1200, height: int = 2000):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )


def link_runs(out: Path, runs: dict[str, Path]) -> None:
    """OUT/NAME -> each audit directory (an existing OUT/NAME that is not that link is refused)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        if not (run / "summary.json").exists():
            raise InputError(f"{run} holds no finished audit (summary.json missing)")
        if not io.read_json(run / "summary.json").get("layer_profile"):
            raise InputError(f"{run} has no layer profile: audit it with --layers all (into a new --out)")
        link = out / name
        if link.is_symlink() and link.resolve() == run.resolve():
            continue
        if link.exists() or link.is_symlink():
            raise InputError(f"{link} exists and is not a link to {run}: choose another --out or name")
        link.symlink_to(run.resolve(), target_is_directory=True)


def layer_pages(out: Path, names: list[str], width: int = 1200) -> list[Path]:
    """The layer-profile section of each OUT/NAME/report.html, and the whole OUT/organisms.html, as PNGs."""
    from selenium.webdriver.common.by import By

    from adl_jax.experiments.organisms import PAGE
    from adl_jax.report.audit import screenshot

    driver = browser(width)
    shots = []
    try:
        for name in names:
            driver.get((out / name / "report.html").resolve().as_uri())
            shots.append(out / f"{name}_layer_profile.png")
            driver.find_element(By.ID, "layer-profile").screenshot(str(shots[-1]))
    finally:
        driver.quit()
    shots.append(screenshot(out / PAGE, out / "organisms.png", width=width, height=900 + 60 * len(names)))
    return shots


def dashboard(url: str, out: str) -> None:
    """Steer and colour a text in a served dashboard, print what it showed, save the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser(1300, 2200)
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


def main():
    from adl_jax.report.layers import finding
    from adl_jax.experiments.organisms import cross_organism
    from adl_jax.report.audit import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="page", required=True)
    ly = sub.add_parser("layers", help="layer profiles and the cross-organism page of finished audits")
    ly.add_argument("--out", required=True, help="where the links, organisms.html and the PNGs go")
    ly.add_argument("runs", nargs="+", metavar="NAME=AUDIT_DIR", help="finished audits with --layers all")
    db = sub.add_parser("dashboard", help="a served adl dashboard")
    db.add_argument("url")
    db.add_argument("png", help="PNG to write")
    args = ap.parse_args()
    if args.page == "dashboard":
        return dashboard(args.url, args.png)
    runs = {}
    for entry in args.runs:
        name, _, run = entry.partition("=")
        if not run:
            raise SystemExit(f"{entry!r}: give NAME=AUDIT_DIR")
        runs[name] = Path(run)
    out = Path(args.out)
    link_runs(out, runs)
    for name in runs:
        write_report(out / name)
        print(f"{name}: {finding(io.read_json(out / name / 'summary.json')['layer_profile'])}")
    cross_organism(out, list(runs))
    for png in layer_pages(out, list(runs)):
        print(png)


if __name__ == "__main__":
    main()
