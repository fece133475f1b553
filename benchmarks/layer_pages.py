"""Screenshots of the layer profile and the cross-organism page, from finished audits with `--layers all`.

Each audit directory is linked as OUT/NAME (the cross-organism layout), its report.html rebuilt, then
OUT/organisms.html written; headless Chromium takes OUT/NAME_layer_profile.png (the report's layer-profile
section) and OUT/organisms.png, and each profile's finding is printed. For the demo organism and two
organisms of a mixing sweep, audited with every layer (a new --out: the delta of `--layers all` is another run):

    adl audit --base gemma-3-270m --finetuned DEMO/final --finetune-data DATA --layers all --out runs/demo_layers ...
    python -m benchmarks.layer_pages --out runs/pages demo=runs/demo_layers mix25=... mix75=...

Needs Chromium, chromedriver and selenium (apt-get install chromium chromium-driver; pip install selenium).
"""

import argparse
import shutil
from pathlib import Path

from adl_jax import io
from adl_jax.errors import InputError


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


def take_screenshots(out: Path, names: list[str], width: int = 1200) -> list[Path]:
    """The layer-profile section of each OUT/NAME/report.html, and the whole OUT/organisms.html, as PNGs."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    from adl_jax.experiments.organisms import PAGE
    from adl_jax.report.audit import screenshot

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )
    shots = []
    try:
        for name in names:
            driver.get((out / name / "report.html").resolve().as_uri())
            section = driver.find_element(By.ID, "layer-profile")
            shots.append(out / f"{name}_layer_profile.png")
            section.screenshot(str(shots[-1]))
    finally:
        driver.quit()
    shots.append(screenshot(out / PAGE, out / "organisms.png", width=width, height=900 + 60 * len(names)))
    return shots


def main():
    from adl_jax.experiments.layer_profile import finding
    from adl_jax.experiments.organisms import cross_organism
    from adl_jax.report.audit import write_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where the links, organisms.html and the PNGs go")
    ap.add_argument("runs", nargs="+", metavar="NAME=AUDIT_DIR", help="finished audits with --layers all")
    args = ap.parse_args()
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
    for png in take_screenshots(out, list(runs)):
        print(png)


if __name__ == "__main__":
    main()
