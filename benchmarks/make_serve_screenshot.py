"""Screenshot of the web app with a segmented organ, taken in headless Chromium: ``docs/serve_screenshot.png``.

Starts ``samadapt serve``'s app (the packaged ``tiny`` model) on a loopback port with one CT phantom in its
data folder, opens it in the page, draws a box around the liver on its largest slice, assigns the mask as
``liver``, then draws a box around the spleen and leaves that mask as a preview, and screenshots the page.
Needs Debian's Chromium (``apt-get install chromium``) and Playwright's Python package; no browser download.

    python benchmarks/make_serve_screenshot.py [--out docs/serve_screenshot.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import expect, sync_playwright

from samadapt.data.phantoms import generate_phantom
from samadapt.inference.model_source import load_model
from samadapt.io.volume import write_volume
from samadapt.serve.app import create_app
from samadapt.serve.background import BackgroundServer
from samadapt.serve.sessions import ServeSettings

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = Path(__file__).resolve().parent.parent / "docs" / "serve_screenshot.png"


def drag_box(page, mask: np.ndarray) -> None:
    """Drag a box around ``mask`` (``h x w`` bool, slice frame) on the page's canvas."""
    rows, cols = np.nonzero(mask)
    frame = page.locator("#view").bounding_box()
    sx, sy = frame["width"] / mask.shape[1], frame["height"] / mask.shape[0]
    page.mouse.move(frame["x"] + (cols.min() + 0.5) * sx, frame["y"] + (rows.min() + 0.5) * sy)
    page.mouse.down()
    page.mouse.move(frame["x"] + (cols.max() + 0.5) * sx, frame["y"] + (rows.max() + 0.5) * sy, steps=8)
    page.mouse.up()
    expect(page.locator("#mask-info")).not_to_have_attribute("data-area", "-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    case = generate_phantom(np.random.default_rng([0, 1]), size=(32, 160, 160), spacing=(2.5, 2.5, 6.0))
    liver = np.isin(case.label, (1, 10))
    k = int(liver.sum(axis=(1, 2)).argmax())
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        data = Path(folder) / "data"
        write_volume(case.image, case.geometry, data / "phantom_001.nii.gz")
        app = create_app(load_model("tiny"), ServeSettings(data_dir=data))
        with BackgroundServer(app) as url:
            context = playwright.chromium.launch_persistent_context(
                str(Path(folder) / "profile"), executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1010, "height": 800})
            page = context.new_page()
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            page.click("#open-btn")
            expect(page.locator("#view")).to_have_attribute("data-loaded", "1")
            page.locator("#slice-slider").fill(str(k))
            expect(page.locator("#view")).to_have_attribute("data-slice", str(k))
            drag_box(page, liver[k])
            for name in ("liver", "spleen"):
                page.fill("#new-class", name)
                page.click("#add-class-btn")
            page.select_option("#class-select", "liver")
            page.click("#assign-btn")
            expect(page.locator("#status")).to_contain_text("assigned to liver")
            page.select_option("#class-select", "spleen")
            drag_box(page, case.label[k] == 2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            context.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
